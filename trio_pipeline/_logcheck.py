"""The invariants a run's events promise that need no pipeline to check. Pure: no trio import.

One checker for both users: `trio_pipeline._replay.check_log` (a log alone, `trio-pipeline
check`) and `trio_pipeline.testing.check_run`, which adds what only the pipeline and the
result can show (the stages' retries, the scheduling rules, the graph, the sinks).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping, Sequence

from ._events import (
    Event,
    ItemFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageProgress,
    StageRetrying,
    StageStarted,
)
from ._result import count_statuses
from ._state import StageStatus


class LogInvariantError(AssertionError):
    """An invariant of a run does not hold in its events; the message names it."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"invariant broken: {invariant}: {detail}")
        self.invariant = invariant


_StageEvent = StageStarted | StageLog | StageRetrying | StageFinished | StageProgress | ItemFailed

# A stage whose status is one of these was decided without running it.
_NEVER_STARTED = (StageStatus.BLOCKED, StageStatus.SKIPPED, StageStatus.CACHED)


class LogChecker:
    """Walk one run's events, checking each before it is yielded.

    Construction checks the framing: `RunStarted` first and, with `finished` (the
    default), `RunFinished` last. Iterating checks every event in order; the state
    (`running`, `attempts`, `status`) is current for the event just yielded, so a
    caller can add its own checks in the loop.

    Invariants: seq contiguous from 0; one run id; time never goes backwards;
    `RunStarted` exactly once, first; `RunFinished` last, after one `StageFinished`
    per stage with counts matching them; events name only the run's stages; nothing
    happens to a stage after its `StageFinished`; one attempt of a stage at a time,
    numbered 1, 2, ..., each ended by `StageRetrying` or `StageFinished`; logs and item
    events only from a running stage; `StageFinished` carries a terminal status and the
    number of attempts; SUCCEEDED and FAILED only from a running attempt; BLOCKED,
    SKIPPED and CACHED stages never started; `error` exactly for FAILED; `blocked_by`
    exactly for BLOCKED, naming an already FAILED stage.

    Args:
        events: The run's events, in order.
        finished: Require the run's end (`RunFinished` last). False for a prefix.
        stream_readers: Stages that read a stream (they may end BLOCKED after
            starting, when their producer failed). None: not known (a log alone),
            so a BLOCKED stage may have started.

    Raises:
        LogInvariantError: (an AssertionError) naming the first broken invariant.
    """

    def __init__(
        self,
        events: Sequence[Event],
        *,
        finished: bool = True,
        stream_readers: Collection[str] | None = None,
    ) -> None:
        if not events:
            raise LogInvariantError("RunStarted first", "the log is empty")
        first = events[0]
        if not isinstance(first, RunStarted):
            raise LogInvariantError("RunStarted first", f"first event is {type(first).__name__}")
        if finished and not isinstance(events[-1], RunFinished):
            raise LogInvariantError(
                "RunFinished last", f"the log ends at seq={events[-1].seq} without RunFinished"
            )
        self._events = events
        self._first = first
        self._stages = frozenset(first.stages)
        self._stream_readers = stream_readers
        self.status: dict[str, StageFinished] = {}
        self.attempts: dict[str, int] = {}
        self.running: set[str] = set()
        self.last_time = -math.inf

    def __iter__(self) -> Iterator[Event]:
        first, length = self._first, len(self._events)
        for index, event in enumerate(self._events):
            if event.seq != index:
                raise LogInvariantError(
                    "seq contiguous from 0", f"event #{index} has seq={event.seq}"
                )
            if event.run_id != first.run_id:
                raise LogInvariantError("one run id", f"seq={event.seq}: {event.run_id!r}")
            if event.time < self.last_time:
                raise LogInvariantError("time never goes backwards", f"at seq={event.seq}")
            self.last_time = event.time
            if isinstance(event, RunStarted):
                if index:
                    raise LogInvariantError("RunStarted exactly once", f"again at seq={event.seq}")
            elif isinstance(event, RunFinished):
                if index != length - 1:
                    raise LogInvariantError("RunFinished last", f"at seq={event.seq} of {length}")
                self._check_run_finished(event)
            else:
                self._check_stage_event(event)
            yield event

    def _check_run_finished(self, event: RunFinished) -> None:
        missing = sorted(self._stages - set(self.status))
        if missing:
            raise LogInvariantError(
                "exactly one StageFinished per stage", f"none for {', '.join(missing)}"
            )
        counted = count_statuses(e.status for e in self.status.values())
        if dict(event.counts) != counted:
            raise LogInvariantError(
                "RunFinished.counts matches the events",
                f"RunFinished says {_counts(event.counts)}, the events {_counts(counted)}",
            )

    def _check_stage_event(
        self,
        event: StageStarted | StageLog | StageRetrying | StageFinished | StageProgress | ItemFailed,
    ) -> None:
        name, seq = event.stage, event.seq
        if name not in self._stages:
            raise LogInvariantError("events name only the run's stages", f"seq={seq}: {name!r}")
        if name in self.status:
            if isinstance(event, StageFinished):
                raise LogInvariantError(
                    "exactly one StageFinished per stage", f"{name!r} again at seq={seq}"
                )
            raise LogInvariantError(
                "nothing happens to a stage after its StageFinished",
                f"{type(event).__name__} for {name!r} at seq={seq}",
            )
        running = self.running
        if isinstance(event, StageStarted):
            if name in running:
                raise LogInvariantError("one attempt of a stage at a time", f"seq={seq}: {name!r}")
            self.attempts[name] = self.attempts.get(name, 0) + 1
            if event.attempt != self.attempts[name]:
                raise LogInvariantError(
                    "attempts numbered 1, 2, ...",
                    f"seq={seq}: {name!r} attempt {event.attempt}, expected {self.attempts[name]}",
                )
            running.add(name)
        elif isinstance(event, StageRetrying):
            if name not in running or event.attempt != self.attempts.get(name):
                raise LogInvariantError(
                    "StageRetrying ends the running attempt", f"seq={seq}: {name!r}"
                )
            running.discard(name)
        elif isinstance(event, StageLog | StageProgress | ItemFailed):
            if name not in running:
                raise LogInvariantError(
                    "logs and item events come only from a running stage",
                    f"{type(event).__name__} seq={seq}: {name!r}",
                )
        else:
            self._check_finished(event)
            self.status[name] = event
            running.discard(name)

    def _check_finished(self, event: StageFinished) -> None:
        name, status, seq = event.stage, event.status, event.seq
        if not status.is_terminal:
            raise LogInvariantError(
                "StageFinished carries a terminal status", f"seq={seq}: {name!r} {status}"
            )
        started = self.attempts.get(name, 0)
        if event.attempt != started:
            raise LogInvariantError(
                "StageFinished.attempt counts the StageStarted events",
                f"seq={seq}: {name!r} says {event.attempt}, started {started}",
            )
        if status in (StageStatus.SUCCEEDED, StageStatus.FAILED) and name not in self.running:
            raise LogInvariantError(
                "StageStarted before its StageFinished", f"seq={seq}: {name!r} {status}"
            )
        # A stream reader ends BLOCKED after finishing what its failed producer sent it.
        readers = self._stream_readers
        reader_blocked = status is StageStatus.BLOCKED and (readers is None or name in readers)
        if status in _NEVER_STARTED and started and not reader_blocked:
            raise LogInvariantError(f"a {status} stage never started", f"seq={seq}: {name!r}")
        if (status is StageStatus.FAILED) != (event.error is not None):
            raise LogInvariantError(
                "StageFinished.error is set exactly for FAILED", f"seq={seq}: {name!r} {status}"
            )
        if status is StageStatus.BLOCKED:
            culprit = event.blocked_by
            verdict = self.status.get(culprit or "")
            if culprit is None or verdict is None or verdict.status is not StageStatus.FAILED:
                raise LogInvariantError(
                    "BLOCKED names an already FAILED stage in blocked_by",
                    f"{name!r} blocked_by={culprit!r}"
                    f" ({verdict.status if verdict is not None else 'unfinished'})",
                )
        elif event.blocked_by is not None:
            raise LogInvariantError(
                "blocked_by is set only for BLOCKED", f"seq={seq}: {name!r} {status}"
            )


def _counts(counts: Mapping[StageStatus, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "nothing"
