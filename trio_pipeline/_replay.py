"""A finished run from its JSONL log: check its invariants, or show it again.

`check_log` verifies what a log alone can show (no pipeline needed): the invariants
of `trio_pipeline._logcheck.LogChecker`, which `check_run` checks too. `replay` feeds
the events to sinks again, paced like the run.
`trio-pipeline check` and `trio-pipeline replay` are thin wrappers.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Iterable, Sequence

import trio

from ._events import Event, RunFinished, RunStarted
from ._jsonl import JsonlFormatError, read_jsonl
from ._logcheck import LogChecker, LogInvariantError
from ._sinks import ConsoleSink, Sink

__all__ = ["LogInvariantError", "check_log", "cmd_check", "cmd_replay", "load_log", "replay"]


def check_log(events: Iterable[Event]) -> list[Event]:
    """Check the pipeline-free invariants of one run's events; return them as a list.

    The invariants are `LogChecker`'s (the same `check_run` checks).

    Raises:
        LogInvariantError: (an AssertionError) naming the first broken invariant.
    """
    log = list(events)
    for _ in LogChecker(log):
        pass
    return log


async def replay(events: Sequence[Event], sinks: Sequence[Sink], *, speed: float = 1.0) -> None:
    """Hand `events` to each sink in order, paced `speed` times as fast as the run.

    Times are shifted to the current clock, so sinks see a run happening now (and a
    summary's duration is the original one). ``speed=math.inf`` (or 0): no pauses.
    Each sink is closed at the end, also when this is cancelled.
    """
    now = trio.current_time()
    origin = events[0].time if events else 0.0
    pace = 0.0 if speed in (0, math.inf) else 1.0 / speed
    try:
        for event in events:
            at = now + (event.time - origin) * pace
            await trio.sleep_until(at)
            # Stamped when handed over (not when due): a sink that shows how long it
            # lagged behind the run (the summary's duration) must see no lag here.
            shifted = dataclasses.replace(event, time=max(at, trio.current_time()))
            for sink in sinks:
                await sink.handle(shifted)
    finally:
        with trio.CancelScope(shield=True):
            for sink in sinks:
                await sink.aclose()


# -- the commands ---------------------------------------------------------------------


def load_log(path: str) -> list[Event]:
    """`read_jsonl`, with a torn last line reported on stderr instead of as a warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        events = list(read_jsonl(path))
    for warning in caught:
        sys.stderr.write(f"trio-pipeline: warning: {warning.message}\n")
    return events


def _unreadable(path: str, exc: OSError) -> int:
    sys.stderr.write(f"trio-pipeline: error: {path}: {exc.strerror or exc}\n")
    return 2


def cmd_check(path: str) -> int:
    """``trio-pipeline check RUN.jsonl``: 0 when every invariant holds, else 1 (named).

    2 when the file cannot be read.
    """
    try:
        log = check_log(load_log(path))
    except (LogInvariantError, JsonlFormatError) as exc:
        sys.stdout.write(f"{path}: {exc}\n")
        return 1
    except OSError as exc:
        return _unreadable(path, exc)
    first, last = log[0], log[-1]
    assert isinstance(first, RunStarted)
    assert isinstance(last, RunFinished)
    stages = f"{len(first.stages)} stage" + ("" if len(first.stages) == 1 else "s")
    sys.stdout.write(
        f"{path}: ok: {len(log)} events, {stages},"
        f" run {first.run_id} of {first.pipeline!r} {last.state}\n"
    )
    return 0


def cmd_replay(path: str, *, speed: float, live: bool) -> int:
    """``trio-pipeline replay RUN.jsonl``: the run again, through the live view or plain lines."""
    try:
        events = load_log(path)
    except JsonlFormatError as exc:
        sys.stdout.write(f"{path}: {exc}\n")
        return 1
    except OSError as exc:
        return _unreadable(path, exc)

    async def main() -> None:
        if live:
            from rich.console import Console

            from ._live import open_live_sink

            async with open_live_sink(Console()) as sink:
                await replay(events, [sink], speed=speed)
        else:
            await replay(events, [ConsoleSink(sys.stdout, logs=True)], speed=speed)

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        return 130
    except KeyboardInterrupt:
        return 130
    return 0
