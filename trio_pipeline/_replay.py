"""A finished run from its JSONL log: check its invariants, or show it again.

`check_log` verifies what a log alone can show (no pipeline needed): seq gap-free
from 0, one run id, time never going backwards, RunStarted first and RunFinished
last, exactly one StageFinished per stage and nothing after it, attempts numbered
1, 2, ..., logs only from a running stage, counts in RunFinished matching the
StageFinished events. `replay` feeds the events to sinks again, paced like the run.
`trio-pipeline check` and `trio-pipeline replay` are thin wrappers.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence

import trio

from ._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageRetrying,
    StageStarted,
)
from ._jsonl import JsonlFormatError, read_jsonl
from ._result import count_statuses
from ._sinks import ConsoleSink, Sink
from ._state import StageStatus


class LogInvariantError(AssertionError):
    """An invariant of a run does not hold in its log; the message names it."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"invariant broken: {invariant}: {detail}")
        self.invariant = invariant


def check_log(events: Iterable[Event]) -> list[Event]:
    """Check the pipeline-free invariants of one run's events; return them as a list.

    Raises:
        LogInvariantError: (an AssertionError) naming the first broken invariant.
    """
    log = list(events)
    if not log:
        raise LogInvariantError("RunStarted first", "the log is empty")
    first = log[0]
    if not isinstance(first, RunStarted):
        raise LogInvariantError("RunStarted first", f"first event is {type(first).__name__}")
    stages = set(first.stages)
    status: dict[str, StageFinished] = {}
    attempts: dict[str, int] = {}
    running: set[str] = set()
    last_time = -math.inf
    for index, event in enumerate(log):
        if event.seq != index:
            raise LogInvariantError("seq gap-free from 0", f"event #{index} has seq={event.seq}")
        if event.run_id != first.run_id:
            raise LogInvariantError("one run id", f"seq={event.seq}: {event.run_id!r}")
        if event.time < last_time:
            raise LogInvariantError("time never goes backwards", f"at seq={event.seq}")
        last_time = event.time
        if isinstance(event, RunStarted):
            if index:
                raise LogInvariantError("RunStarted exactly once", f"again at seq={event.seq}")
            continue
        if isinstance(event, RunFinished):
            if index != len(log) - 1:
                raise LogInvariantError("RunFinished last", f"at seq={event.seq} of {len(log)}")
            missing = sorted(stages - set(status))
            if missing:
                raise LogInvariantError(
                    "one StageFinished per stage", f"none for {', '.join(missing)}"
                )
            counted = count_statuses(e.status for e in status.values())
            if dict(event.counts) != counted:
                raise LogInvariantError(
                    "counts consistent",
                    f"RunFinished says {_counts(event.counts)}, the events {_counts(counted)}",
                )
            continue
        _check_stage_event(event, stages, status, attempts, running)
    if not isinstance(log[-1], RunFinished):
        raise LogInvariantError(
            "RunFinished last", f"the log ends at seq={log[-1].seq} without RunFinished"
        )
    return log


def _check_stage_event(
    event: Event,
    stages: set[str],
    status: dict[str, StageFinished],
    attempts: dict[str, int],
    running: set[str],
) -> None:
    assert not isinstance(event, RunStarted | RunFinished)
    name = event.stage
    if name not in stages:
        raise LogInvariantError("events name only the run's stages", f"seq={event.seq}: {name!r}")
    if name in status:
        if isinstance(event, StageFinished):
            raise LogInvariantError("one StageFinished per stage", f"{name!r} again at {event.seq}")
        raise LogInvariantError(
            "nothing happens to a stage after its StageFinished",
            f"{type(event).__name__} for {name!r} at seq={event.seq}",
        )
    if isinstance(event, StageStarted):
        attempts[name] = attempts.get(name, 0) + 1
        if event.attempt != attempts[name] or name in running:
            raise LogInvariantError("attempts numbered 1, 2, ...", f"seq={event.seq}: {name!r}")
        running.add(name)
    elif isinstance(event, StageLog):
        if name not in running:
            raise LogInvariantError("logs only from a running stage", f"seq={event.seq}: {name!r}")
    elif isinstance(event, StageRetrying):
        if name not in running:
            raise LogInvariantError("a retry ends a running attempt", f"seq={event.seq}: {name!r}")
        running.discard(name)
    else:
        assert isinstance(event, StageFinished)
        if event.attempt != attempts.get(name, 0):
            raise LogInvariantError(
                "StageFinished.attempt counts the attempts",
                f"seq={event.seq}: {name!r} says {event.attempt}, started {attempts.get(name, 0)}",
            )
        status[name] = event
        running.discard(name)


def _counts(counts: Mapping[StageStatus, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "nothing"


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
