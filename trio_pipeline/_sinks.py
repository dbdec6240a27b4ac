"""Sinks: where events go. The dispatcher calls one sink at a time, in `seq` order."""

from __future__ import annotations

import sys
from typing import IO, Protocol, runtime_checkable

import trio

from ._events import Event, RunFinished, StageFinished, StageLog, StageRetrying
from ._items import format_item_counts
from ._state import StageStatus


@runtime_checkable
class Sink(Protocol):
    """Receives every event of a run, exactly once each, in `seq` order.

    `handle` may await (a slow sink holds up delivery; it never loses events).
    An exception from `handle` or `aclose` disables the sink and is reported in
    `RunResult.sink_errors`; `Cancelled` must be let through. `aclose` is awaited
    once, after the last event (or when the drain deadline passes, already
    cancelled, so a sink should release what it holds before its first await).
    """

    async def handle(self, event: Event, /) -> None: ...

    async def aclose(self) -> None: ...


def format_stage_line(event: StageFinished) -> str:
    """``"<stage>: <status>"`` plus detail, as ConsoleSink prints it."""
    status = event.status
    head = f"{event.stage}: {status.value}"
    if event.items_in is not None:  # an item stage: its final counts and rate
        head += (
            " ["
            + format_item_counts(
                event.items_in,
                event.items_out or 0,
                event.items_failed or 0,
                event.items_cancelled or 0,
                event.duration,
            )
            + "]"
        )
    if status is StageStatus.SUCCEEDED:
        if event.items_in is not None and event.reason:
            # An all_done reader whose producer failed: how much of its stream it got.
            return f"{head} ({event.duration:.2f}s; {event.reason})"
        return f"{head} ({event.duration:.2f}s)"
    if status is StageStatus.FAILED:
        detail = event.error or "failed"
        if event.attempt > 1:
            detail += f"; {event.attempt} attempts"
        return f"{head} ({detail})"
    if status is StageStatus.BLOCKED:
        return f"{head} (upstream {event.blocked_by!r} failed)"
    return head


def format_retry_line(event: StageRetrying) -> str:
    """``"<stage>: attempt 1 failed (<error>); retrying in 0.5s"``, as both views print it."""
    detail = f"{event.stage}: attempt {event.attempt} failed ({event.error})"
    return f"{detail}; retrying in {event.delay:g}s"


def format_summary(event: RunFinished, *, now: float | None = None) -> str:
    """``"Summary: 1 succeeded, 1 failed, 1 blocked in 0.02s"``: non-zero counts, enum order.

    With `now` (the run's clock when the line is shown) the duration includes how long
    the event took to get there, so it is the time the user waited.
    """
    parts = [f"{n} {status.value}" for status, n in event.counts.items() if n]
    body = ", ".join(parts) if parts else "no stages"
    duration = event.duration if now is None else event.duration + max(0.0, now - event.time)
    return f"Summary: {body} in {duration:.2f}s"


class ConsoleSink:
    """Plain text: one line per finished stage and per retry, then the summary line.

    Args:
        file: Where to write; default `sys.stderr` at construction time.
        logs: Also print each `StageLog` as ``"<stage> | <message>"``.
    """

    def __init__(self, file: IO[str] | None = None, *, logs: bool = False) -> None:
        self._file = file if file is not None else sys.stderr
        self._logs = logs

    def __repr__(self) -> str:
        return f"ConsoleSink({getattr(self._file, 'name', type(self._file).__name__)!r})"

    async def handle(self, event: Event, /) -> None:
        if isinstance(event, StageFinished):
            self._write(format_stage_line(event))
        elif isinstance(event, RunFinished):
            self._write(format_summary(event, now=trio.current_time()))
        elif isinstance(event, StageRetrying):
            self._write(format_retry_line(event))
        elif self._logs and isinstance(event, StageLog):
            self._write(f"{event.stage} | {event.message}")

    async def aclose(self) -> None:
        pass

    def _write(self, line: str) -> None:
        # Line-at-a-time synchronous writes: a console is fast, and a crash keeps
        # every line already handled.
        self._file.write(line + "\n")
        self._file.flush()


from ._jsonl import JsonlSink  # noqa: E402 - re-exported; it needs nothing from here

__all__ = [
    "ConsoleSink",
    "JsonlSink",
    "Sink",
    "format_retry_line",
    "format_stage_line",
    "format_summary",
]
