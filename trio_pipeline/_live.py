"""Terminal views of a run: a state tracker and a rich live display.

`RunTracker` is a sink that only keeps state (which stages are pending, running,
done), for the live view and for the CLI's interrupt messages. `LiveSink` prints a
line per finished stage above a live area (running stages with their elapsed time,
pending/running/done counts, a progress bar over all stages) and the summary line.

Ownership: `open_live_sink` owns the rich `Live` display and the one task that
refreshes it; the display is transient and stopped in a ``finally``, so no exit path
(an exception, cancellation, Ctrl-C) leaves a bar on the screen. Everything runs in
the Trio thread: rich's own refresh thread is off, so no lock guards the state.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

import trio
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from ._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageProgress,
    StageRetrying,
    StageStarted,
)
from ._items import format_item_counts
from ._sinks import format_stage_line, format_summary
from ._state import StageStatus

REFRESH_INTERVAL = 0.125
"""Seconds between repaints of the live area (elapsed times and the spinner)."""

MAX_RUNNING_ROWS = 12
"""Running stages listed at most; the rest are counted in one line."""

_MARKS: dict[StageStatus, tuple[str, str]] = {
    StageStatus.SUCCEEDED: ("✓", "green"),
    StageStatus.FAILED: ("✗", "bold red"),
    StageStatus.BLOCKED: ("⊘", "yellow"),
    StageStatus.CANCELLED: ("■", "magenta"),
    StageStatus.SKIPPED: ("-", "dim"),
    StageStatus.CACHED: ("↺", "cyan"),
}
_OK = frozenset({StageStatus.SUCCEEDED, StageStatus.SKIPPED, StageStatus.CACHED})


class RunTracker:
    """A sink that keeps the run's state as its events describe it.

    It lags the engine by the events not yet dispatched, which is what a display wants.
    """

    def __init__(self) -> None:
        self.pipeline = ""
        self.total = 0
        self.started_at: float | None = None
        self.running: dict[str, float] = {}  # stage -> start of its current attempt
        self.done: dict[str, StageStatus] = {}
        self.progress: dict[str, StageProgress] = {}  # item stages' latest counts
        self.finished: RunFinished | None = None

    @property
    def pending(self) -> int:
        return self.total - len(self.running) - len(self.done)

    async def handle(self, event: Event, /) -> None:
        self.update(event)

    async def aclose(self) -> None:
        pass

    def update(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.pipeline = event.pipeline
            self.total = len(event.stages)
            self.started_at = event.time
        elif isinstance(event, StageStarted):
            self.running[event.stage] = event.time
        elif isinstance(event, StageRetrying):
            self.running.pop(event.stage, None)
        elif isinstance(event, StageProgress):
            self.progress[event.stage] = event
        elif isinstance(event, StageFinished):
            self.running.pop(event.stage, None)
            self.progress.pop(event.stage, None)
            self.done[event.stage] = event.status
        elif isinstance(event, RunFinished):
            self.finished = event

    def partial_summary(self, now: float) -> str:
        """A summary line for a run that never finished (the CLI's forced exit)."""
        counts = {status: 0 for status in _MARKS}
        for status in self.done.values():
            counts[status] += 1
        parts = [f"{n} {status.value}" for status, n in counts.items() if n]
        if self.running:
            parts.append(f"{len(self.running)} still running")
        if self.pending:
            parts.append(f"{self.pending} pending")
        elapsed = 0.0 if self.started_at is None else now - self.started_at
        return f"Summary: {', '.join(parts) or 'no stages'} in {elapsed:.2f}s (forced exit)"


class LiveSink:
    """Stage lines and a live progress area on a terminal `console`.

    Create it with `open_live_sink`, which starts and stops the display. `aclose`
    (called by the run after its last event) stops the display too.

    Args:
        console: A terminal console; the live area is drawn at its bottom.
        logs: Also print each `StageLog` as ``"<stage> | <message>"``.
    """

    def __init__(self, console: Console, *, logs: bool = True) -> None:
        self.console = console
        self.tracker = RunTracker()
        self._logs = logs
        self._now: float | None = None
        self._lines: list[Text] = []  # printed by the next refresh
        self._live = Live(
            console=console,
            auto_refresh=False,
            transient=True,
            get_renderable=self._render,
        )

    def start(self) -> None:
        self._live.start(refresh=True)

    def stop(self) -> None:
        """Print the lines not yet shown, erase the live area, show the cursor. Idempotent."""
        self._print_lines()
        self._live.stop()

    def refresh(self) -> None:
        """Print the lines that arrived since the last call and repaint the live area."""
        self._now = trio.current_time()
        if self._live.is_started:
            self._print_lines()
            self._live.refresh()

    async def handle(self, event: Event, /) -> None:
        # O(1): rendering happens in `refresh`, a few times a second, however many
        # events arrive. A render per event made a 5,000-stage run take minutes.
        self.tracker.update(event)
        line = self._line(event)
        if line is not None:
            self._lines.append(line)

    def _print_lines(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
            self.console.print(Group(*lines))

    async def aclose(self) -> None:
        self.stop()

    def _line(self, event: Event) -> Text | None:
        if isinstance(event, StageFinished):
            mark, style = _MARKS[event.status]
            return Text.assemble((mark + " ", style), format_stage_line(event))
        if isinstance(event, StageRetrying):
            detail = f"{event.stage}: attempt {event.attempt} failed ({event.error})"
            return Text.assemble(("↻ ", "yellow"), f"{detail}; retrying in {event.delay:g}s")
        if isinstance(event, StageLog) and self._logs:
            return Text(f"  {event.stage} | {event.message}", style="dim")
        if isinstance(event, RunStarted):
            noun = "stage" if len(event.stages) == 1 else "stages"
            return Text(f"Running {event.pipeline!r}: {len(event.stages)} {noun}", style="bold")
        if isinstance(event, RunFinished):
            ok = all(event.counts.get(s, 0) == 0 for s in _MARKS if s not in _OK)
            return Text(format_summary(event), style="bold green" if ok else "bold red")
        return None

    def _render(self) -> RenderableType:
        tracker = self.tracker
        if tracker.started_at is None:
            return Group()  # nothing to show before RunStarted
        now = self._now
        rows = Table.grid(padding=(0, 1))
        running = tracker.running  # in start order
        for name, started in itertools.islice(running.items(), MAX_RUNNING_ROWS):
            elapsed = "" if now is None else f"{max(0.0, now - started):.1f}s"
            progress = tracker.progress.get(name)
            if progress is not None:  # an item stage: counts and rate so far
                counts = format_item_counts(
                    progress.items_in,
                    progress.items_out,
                    progress.items_failed,
                    0,
                    progress.time - started,
                )
                elapsed = f"{elapsed} · {counts}"
            rows.add_row(Spinner("dots", style="cyan"), Text(name), Text(elapsed, style="dim"))
        if len(running) > MAX_RUNNING_ROWS:
            rows.add_row("", Text(f"... and {len(running) - MAX_RUNNING_ROWS} more", "dim"), "")
        done = len(tracker.done)
        status = Table.grid(padding=(0, 1))
        status.add_row(
            ProgressBar(total=max(tracker.total, 1), completed=done, width=30),
            Text(f"{done}/{tracker.total}"),
            Text(
                f"pending {tracker.pending} · running {len(tracker.running)} · done {done}",
                style="dim",
            ),
        )
        return Group(rows, status) if running else status


@asynccontextmanager
async def open_live_sink(console: Console, *, logs: bool = True) -> AsyncGenerator[LiveSink]:
    """A started `LiveSink`, repainted every `REFRESH_INTERVAL` by a task this block owns.

    On leaving the block (however it is left) the refresh task is cancelled and the
    display stopped: the live area is erased and the cursor shown.
    """
    sink = LiveSink(console, logs=logs)
    sink.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_repaint, sink)
            yield sink
            nursery.cancel_scope.cancel()
    finally:
        sink.stop()


async def _repaint(sink: LiveSink) -> None:
    while True:
        sink.refresh()
        await trio.sleep(REFRESH_INTERVAL)
