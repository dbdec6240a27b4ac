"""Terminal views of a run: a state tracker and a live display that keeps up.

`RunTracker` is a sink that only keeps state (which stages are pending, running,
done), for the live view and for the CLI's interrupt messages. `LiveSink` prints a
line per finished stage (and per log line) above a live area (running stages with
their elapsed time, pending/running/done counts, a progress bar) and the summary.

Cost model. `handle` folds an event into the tracker and queues it: O(1), no
formatting (over a million events a second). A repaint, every `REFRESH_INTERVAL`,
formats the queued lines as plain strings with pre-rendered ANSI styles (no rich
wrapping: the terminal wraps what is above the area), renders only the area with
rich (at most as many rows as fit on the screen), and hands the whole frame to a
writer thread, so a slow terminal never blocks the Trio loop. A repaint formats at
most `FRAME_BUDGET` seconds' worth of lines; the rest go in the next frame, which
then follows at once.

Ownership: `open_live_sink` owns the display, the repaint task and the writer
thread; the display is stopped in a ``finally``, so no exit path (an exception,
cancellation, Ctrl-C) leaves a live area on the screen or the cursor hidden. While
it is shown, `sys.stdout` and `sys.stderr` are redirected so that text written to
them appears above the area instead of through it.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from typing import IO, Any, TextIO, cast

import trio
from rich.cells import cell_len, set_cell_size
from rich.console import Console
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
from ._sinks import format_retry_line, format_stage_line, format_summary
from ._state import StageStatus
from ._writer import BackgroundWriter

REFRESH_INTERVAL = 0.125
"""Seconds between repaints of the live area (elapsed times and the spinner)."""

MAX_RUNNING_ROWS = 12
"""Running stages listed at most (fewer on a short terminal); the rest are counted in one line."""

FRAME_BUDGET = 0.003
"""Seconds of line formatting per repaint, at most; what is left goes in the next frame."""

PENDING_LIMIT = 200_000
"""Lines queued for the screen above which `handle` waits for the terminal (backpressure)."""

_MARKS: dict[StageStatus, tuple[str, str]] = {
    StageStatus.SUCCEEDED: ("✓", "green"),
    StageStatus.FAILED: ("✗", "bold red"),
    StageStatus.BLOCKED: ("⊘", "yellow"),
    StageStatus.CANCELLED: ("■", "magenta"),
    StageStatus.SKIPPED: ("-", "dim"),
    StageStatus.CACHED: ("↺", "cyan"),
}
_OK = frozenset({StageStatus.SUCCEEDED, StageStatus.SKIPPED, StageStatus.CACHED})
# What rich's Text strips too: these would move the cursor and break the area's erase.
_STRIP: dict[int, None] = dict.fromkeys((7, 8, 11, 12, 13))


class RunTracker:
    """A sink that keeps the run's state as its events describe it.

    It lags the engine by the events not yet delivered to it, which is what a display wants.
    """

    def __init__(self) -> None:
        self.pipeline = ""
        self.total = 0
        self.started_at: float | None = None
        self.running: dict[str, float] = {}  # stage -> start of its current attempt
        self.done: dict[str, StageStatus] = {}
        self.finished: RunFinished | None = None
        self.progress: dict[str, StageProgress] = {}  # item stages' latest counts
        # By type, not an isinstance chain: StageLog, the commonest, would test all five.
        self._update: dict[type[Any], Callable[[Any], None]] = {
            RunStarted: self._run_started,
            StageStarted: self._stage_started,
            StageRetrying: self._stage_retrying,
            StageFinished: self._stage_finished,
            StageProgress: self._stage_progress,
            RunFinished: self._run_finished,
        }

    @property
    def pending(self) -> int:
        return self.total - len(self.running) - len(self.done)

    async def handle(self, event: Event, /) -> None:
        self.update(event)

    async def aclose(self) -> None:
        pass

    def update(self, event: Event) -> None:
        update = self._update.get(type(event))
        if update is not None:
            update(event)

    def _run_started(self, event: RunStarted) -> None:
        self.pipeline = event.pipeline
        self.total = len(event.stages)
        self.started_at = event.time

    def _stage_started(self, event: StageStarted) -> None:
        self.running[event.stage] = event.time

    def _stage_retrying(self, event: StageRetrying) -> None:
        self.running.pop(event.stage, None)

    def _stage_finished(self, event: StageFinished) -> None:
        self.running.pop(event.stage, None)
        self.progress.pop(event.stage, None)
        self.done[event.stage] = event.status

    def _stage_progress(self, event: StageProgress) -> None:
        self.progress[event.stage] = event

    def _run_finished(self, event: RunFinished) -> None:
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

    def __repr__(self) -> str:
        return "RunTracker()"


class _Styles:
    """ANSI prefix and suffix per rich style, rendered once for the console's colour system."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._cache: dict[str, tuple[str, str]] = {}

    def __call__(self, style: str, text: str) -> str:
        cached = self._cache.get(style)
        if cached is None:
            with self._console.capture() as capture:
                self._console.print(Text("\0", style=style), end="")
            prefix, _, suffix = capture.get().partition("\0")
            cached = self._cache[style] = (prefix, suffix)
        return f"{cached[0]}{text}{cached[1]}"


class _Redirect:
    """Stands in for sys.stdout / sys.stderr while the area is shown: text goes above it."""

    def __init__(self, lines: list[Event | str], real: IO[str]) -> None:
        self._lines = lines  # the live sink's pending lines
        self._real = real
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        self._lines.extend(lines)
        return len(text)

    def flush(self) -> None:
        if self._partial:
            self._lines.append(self._partial)
            self._partial = ""

    def isatty(self) -> bool:
        return self._real.isatty()

    def fileno(self) -> int:
        return self._real.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


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
        self._pending: list[Event | str] = []  # lines for the next frame, unformatted
        lined: set[type[Any]] = {StageFinished, StageRetrying, RunStarted, RunFinished}
        self._lined = frozenset(lined | {StageLog} if logs else lined)
        self._style = _Styles(console)
        self._out: IO[str] = console.file
        self._area_height = 0  # rows of the live area on the screen now
        self._started = False
        self._writer: BackgroundWriter[str] | None = None
        self._room: trio.Event | None = None
        self._saved: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return "LiveSink()"

    # -- the sink -------------------------------------------------------------------

    async def handle(self, event: Event, /) -> None:
        # O(1): everything else happens in the repaint, a few times a second.
        self.tracker.update(event)
        if type(event) in self._lined:
            pending = self._pending
            pending.append(event)
            if len(pending) > PENDING_LIMIT and self._writer is not None:
                # The terminal is slower than the run: hold this feed back (and with it,
                # through max_backlog, new stages) rather than buffer without bound.
                self._room = room = trio.Event()
                await room.wait()

    async def aclose(self) -> None:
        self.stop()

    # -- display --------------------------------------------------------------------

    def start(self) -> None:
        """Hide the cursor, redirect stdout/stderr above the area, draw the area."""
        if self._started:
            return
        self._started = True
        self._out = self.console.file
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = cast(TextIO, _Redirect(self._pending, sys.stdout))
        sys.stderr = cast(TextIO, _Redirect(self._pending, sys.stderr))
        self._write_now("\x1b[?25l" + self._frame(budget=None))

    def stop(self) -> None:
        """Print the lines not yet shown, erase the live area, show the cursor. Idempotent."""
        if not self._started:
            return
        self._started = False
        if self._writer is not None:
            self._writer.close_now()  # joins the thread: frames are written in order
            self._writer = None
        if self._saved is not None:
            for proxy in (sys.stdout, sys.stderr):
                if isinstance(proxy, _Redirect):
                    proxy.flush()
            sys.stdout, sys.stderr = self._saved
            self._saved = None
        self._write_now(self._frame(budget=None, area=False) + "\x1b[?25h")
        self._release()

    def refresh(self) -> None:
        """Print the lines that arrived since the last call and repaint the live area."""
        self._now = trio.current_time()
        if self._started:
            if self._writer is not None:
                self._writer.wait_written_now()  # frames go out in order
            self._write_now(self._frame(budget=None))
            self._release()

    async def repaint(self) -> None:
        """Repaint every REFRESH_INTERVAL, or at once while lines are left over; forever.

        Frames for a real file (a terminal) are written by a thread, one in flight
        while the next is prepared; an in-memory file is written directly.
        """
        try:
            self._out.fileno()
        except (OSError, ValueError, AttributeError):
            writer = None
        else:
            writer = self._writer = BackgroundWriter(self._write_frames, name="LiveSink writer")
        while True:
            self._now = trio.current_time()
            frame = self._frame(budget=FRAME_BUDGET)
            if writer is None:
                self._write_now(frame)
            else:
                writer.put(frame)
                if writer.pending > 1:
                    await writer.wait_written()
            self._release()
            if self._pending:
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(REFRESH_INTERVAL)

    def _release(self) -> None:
        room = self._room
        if room is not None and len(self._pending) <= PENDING_LIMIT // 2:
            self._room = None
            room.set()

    def _write_now(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    def _write_frames(self, frames: list[str]) -> None:  # in the writer thread
        self._out.write("".join(frames))
        self._out.flush()

    def _frame(self, *, budget: float | None, area: bool = True) -> str:
        """Erase the area, the pending lines (as many as `budget` allows), the area again."""
        parts: list[str] = []
        height = self._area_height
        if height:
            parts.append("\r" + "\x1b[2K\x1b[1A" * (height - 1) + "\x1b[2K")
        parts.append(self._format_pending(budget))
        if area and self.tracker.started_at is not None:
            text = self._render_area()
            parts.append(text)
            self._area_height = text.count("\n") + 1
        else:
            self._area_height = 0
        return "".join(parts)

    def _format_pending(self, budget: float | None) -> str:
        pending = self._pending
        if not pending:
            return ""
        line = self._line
        out: list[str] = []
        if budget is None:
            out = [line(item) for item in pending]
            taken = len(pending)
        else:
            clock = _budget_clock
            deadline = clock() + budget
            taken = 0
            while taken < len(pending):
                chunk = pending[taken : taken + 256]
                out.extend([line(item) for item in chunk])
                taken += len(chunk)
                if clock() > deadline:
                    break
        del pending[:taken]
        out.append("")
        return "\n".join(out)

    def _line(self, item: Event | str) -> str:
        style = self._style
        if isinstance(item, str):
            return item
        if isinstance(item, StageLog):
            return style("dim", f"  {item.stage} | {item.message}".translate(_STRIP))
        if isinstance(item, StageFinished):
            mark, mark_style = _MARKS[item.status]
            return style(mark_style, mark) + " " + format_stage_line(item).translate(_STRIP)
        if isinstance(item, StageRetrying):
            return style("yellow", "↻") + " " + format_retry_line(item).translate(_STRIP)
        if isinstance(item, RunStarted):
            noun = "stage" if len(item.stages) == 1 else "stages"
            return style("bold", f"Running {item.pipeline!r}: {len(item.stages)} {noun}")
        assert isinstance(item, RunFinished)
        ok = all(item.counts.get(s, 0) == 0 for s in _MARKS if s not in _OK)
        # The duration is what the user waited: the run, plus however long this view
        # lagged behind it.
        summary = format_summary(item, now=trio.current_time())
        return style("bold green" if ok else "bold red", summary)

    def _render_area(self) -> str:
        """The live area as text: rows that fit the screen, each cut to the width.

        Hand-rendered (rich took 26 ms for 13 rows on a loaded machine; this takes
        well under one), looking like rich's grid, spinner and progress bar.
        """
        console = self.console
        width = console.width
        max_rows = max(1, min(MAX_RUNNING_ROWS, console.height - 3))
        tracker, now, style = self.tracker, self._now, self._style
        lines: list[str] = []
        running = tracker.running  # in start order
        if running:
            shown = [
                (_fit(name, max(1, width - 10)), started)
                for name, started in itertools.islice(running.items(), max_rows)
            ]
            name_width = max(cell_len(name) for name, _ in shown)
            spinner = style("cyan", _SPINNER[int(time.monotonic() / 0.08) % len(_SPINNER)])
            for name, started in shown:
                if now is None:
                    lines.append(f"{spinner} {name}")
                    continue
                pad = " " * (name_width - cell_len(name))
                text = f"{max(0.0, now - started):.1f}s"
                progress = tracker.progress.get(name)
                if progress is not None:  # an item stage: counts and rate so far
                    text += " · " + format_item_counts(
                        progress.items_in,
                        progress.items_out,
                        progress.items_failed,
                        0,
                        progress.time - started,
                    )
                lines.append(f"{spinner} {name}{pad} {style('dim', text)}")
            if len(running) > max_rows:
                lines.append("  " + style("dim", f"... and {len(running) - max_rows} more"))
        done, total = len(tracker.done), tracker.total
        counts = _fit(
            f"pending {tracker.pending} · running {len(running)} · done {done}",
            max(1, width - 32 - len(f"{done}/{total}")),
        )
        lines.append(f"{self._bar(done, max(total, 1))} {done}/{total} {style('dim', counts)}")
        return "\n".join(lines)

    def _bar(self, completed: int, total: int, width: int = 30) -> str:
        """rich's ProgressBar: full and half cells of the done part, the rest dimmed."""
        halves = min(width * 2, width * 2 * completed // total)
        full, half = divmod(halves, 2)
        finished = completed >= total
        done_style = "rgb(114,156,31)" if finished else "rgb(249,38,114)"
        bar = self._style(done_style, "━" * full + "╸" * half) if halves else ""
        rest = width - full - half
        if rest and self.console.color_system is not None and not self.console.no_color:
            left = "╺" if not half and full else ""
            return bar + self._style("grey23", left + "━" * (rest - len(left)))
        return bar + " " * rest


_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"  # rich's "dots"
_budget_clock = time.perf_counter  # a seam for tests


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` terminal cells (an area row must not wrap)."""
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, width - 1) + "…"


@asynccontextmanager
async def open_live_sink(console: Console, *, logs: bool = True) -> AsyncGenerator[LiveSink]:
    """A started `LiveSink`, repainted by a task (and written by a thread) this block owns.

    On leaving the block (however it is left) the repaint task is cancelled and the
    display stopped: the remaining lines are printed, the live area is erased and the
    cursor shown.
    """
    sink = LiveSink(console, logs=logs)
    sink.start()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.repaint)
            yield sink
            nursery.cancel_scope.cancel()
    finally:
        sink.stop()
