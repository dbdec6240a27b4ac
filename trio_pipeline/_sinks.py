"""Sinks: where events go. The dispatcher calls one sink at a time, in `seq` order."""

from __future__ import annotations

import json
import os
import sys
from typing import IO, Protocol, runtime_checkable

from ._events import (
    Event,
    RunFinished,
    StageFinished,
    StageLog,
    event_to_dict,
)
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
        head += f" [{_item_counts(event)}]"
    if status is StageStatus.SUCCEEDED:
        return f"{head} ({event.duration:.2f}s)"
    if status is StageStatus.FAILED:
        detail = event.error or "failed"
        if event.attempt > 1:
            detail += f"; {event.attempt} attempts"
        return f"{head} ({detail})"
    if status is StageStatus.BLOCKED:
        return f"{head} (upstream {event.blocked_by!r} failed)"
    return head


def _item_counts(event: StageFinished) -> str:
    return format_item_counts(
        event.items_in or 0,
        event.items_out or 0,
        event.items_failed or 0,
        event.items_cancelled or 0,
        event.duration,
    )


def format_summary(event: RunFinished) -> str:
    """``"Summary: 1 succeeded, 1 failed, 1 blocked in 0.02s"``: non-zero counts, enum order."""
    parts = [f"{n} {status.value}" for status, n in event.counts.items() if n]
    body = ", ".join(parts) if parts else "no stages"
    return f"Summary: {body} in {event.duration:.2f}s"


class ConsoleSink:
    """Plain text: one line per finished stage, then the summary line.

    Args:
        file: Where to write; default `sys.stderr` at construction time.
        logs: Also print each `StageLog` as ``"<stage> | <message>"``.
    """

    def __init__(self, file: IO[str] | None = None, *, logs: bool = False) -> None:
        self._file = file if file is not None else sys.stderr
        self._logs = logs

    async def handle(self, event: Event, /) -> None:
        if isinstance(event, StageFinished):
            self._write(format_stage_line(event))
        elif isinstance(event, RunFinished):
            self._write(format_summary(event))
        elif self._logs and isinstance(event, StageLog):
            self._write(f"{event.stage} | {event.message}")

    async def aclose(self) -> None:
        pass

    def _write(self, line: str) -> None:
        # Line-at-a-time synchronous writes: a console is fast, and a crash keeps
        # every line already handled.
        self._file.write(line + "\n")
        self._file.flush()


class JsonlSink:
    """One JSON object per event, one per line, flushed as it is written.

    Rows carry the event's fields plus ``"type"`` (the class name); enums appear as
    their values, errors as text. The file is created (truncated) at the first event,
    or appended to when `append` is true.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False) -> None:
        self.path = os.fspath(path)
        self._mode = "a" if append else "w"
        self._file: IO[str] | None = None

    async def handle(self, event: Event, /) -> None:
        self._write(json.dumps(event_to_dict(event), separators=(",", ":")))

    async def aclose(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _write(self, line: str) -> None:
        # Synchronous on purpose: an append of one line is cheaper than a thread
        # round-trip, and flushing per event is what makes the file crash-safe.
        if self._file is None:
            self._file = open(self.path, self._mode, encoding="utf-8")  # noqa: SIM115
        self._file.write(line + "\n")
        self._file.flush()

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r})"
