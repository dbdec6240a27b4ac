"""The stage and run state machines. Pure: no trio import.

Theory of operation
-------------------
A run and each of its stages has one state, changed only through `Machine.advance`.
Every legal move is listed in a table below; anything else raises `TransitionError`
and leaves the state as it was. Two rules keep the engine honest:

1. The engine never assigns a state directly. It asks the machine to move, so an
   impossible sequence (a stage finishing twice, a run closing after it was
   cancelled) is a loud error at the point it happens rather than a wrong summary.
2. Terminal states have no way out. A stage that reached SUCCEEDED, FAILED, BLOCKED,
   SKIPPED or CANCELLED stays there, which is what makes "exactly one StageFinished
   per stage" checkable: the event is emitted by the one transition into a terminal
   state.

A stage waiting out a retry delay is PENDING again (it holds no concurrency slot),
so RUNNING -> PENDING is legal. The per-stage states live in the scheduler's flat
lists (`_scheduler`), which checks every move against `STAGE_TRANSITIONS`; the run
has one `Machine`.

The run moves IDLE -> RUNNING when it starts, RUNNING -> CLOSING when no further
stage may start (every stage is done, a fail-fast failure, or `request_close`),
CLOSING -> DRAINING once `RunFinished` is emitted and the event channel closed, and
DRAINING -> CLOSED when the dispatcher reports every event delivered. CANCELLED is
reached from RUNNING, CLOSING or DRAINING when the run is cancelled (from outside or
by `RunHandle.cancel`) or when draining overruns its deadline.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

from ._errors import TransitionError


class StageStatus(enum.StrEnum):
    """Where a stage is in its life. The last five are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BLOCKED = "blocked"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    CACHED = "cached"  # answered from the cache without running; counts as SUCCEEDED

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class RunState(enum.StrEnum):
    """Where a run is in its life. CLOSED and CANCELLED are final."""

    IDLE = "idle"
    RUNNING = "running"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[StageStatus] = frozenset(
    {
        StageStatus.SUCCEEDED,
        StageStatus.FAILED,
        StageStatus.BLOCKED,
        StageStatus.SKIPPED,
        StageStatus.CANCELLED,
        StageStatus.CACHED,
    }
)

OK_STATUSES: frozenset[StageStatus] = frozenset({StageStatus.SUCCEEDED, StageStatus.CACHED})
"""Terminal statuses that count as success downstream (their value is an input)."""

_S = StageStatus
STAGE_TRANSITIONS: Mapping[StageStatus, frozenset[StageStatus]] = {
    _S.PENDING: frozenset({_S.RUNNING, _S.BLOCKED, _S.SKIPPED, _S.CANCELLED, _S.CACHED}),
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLED, _S.PENDING}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.BLOCKED: frozenset(),
    _S.SKIPPED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.CACHED: frozenset(),
}

_R = RunState
RUN_TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    _R.IDLE: frozenset({_R.RUNNING}),
    _R.RUNNING: frozenset({_R.CLOSING, _R.CANCELLED}),
    _R.CLOSING: frozenset({_R.DRAINING, _R.CANCELLED}),
    _R.DRAINING: frozenset({_R.CLOSED, _R.CANCELLED}),
    _R.CLOSED: frozenset(),
    _R.CANCELLED: frozenset(),
}
del _S, _R

_State = TypeVar("_State", StageStatus, RunState)


class Machine(Generic[_State]):
    """One state and the table of moves allowed out of each state."""

    __slots__ = ("_table", "name", "state")

    def __init__(
        self, name: str, initial: _State, table: Mapping[_State, frozenset[_State]]
    ) -> None:
        self.name = name
        self.state: _State = initial
        self._table: Mapping[_State, frozenset[_State]] = table

    def advance(self, target: _State) -> None:
        """Move to `target`, or raise `TransitionError` and change nothing."""
        if target not in self._table[self.state]:
            raise TransitionError(self.name, self.state, target)
        self.state = target

    def __repr__(self) -> str:
        return f"<Machine {self.name} {self.state!s}>"


def run_machine(run_id: str) -> Machine[RunState]:
    return Machine(f"run {run_id}", RunState.IDLE, RUN_TRANSITIONS)
