"""What a finished run reports. Pure: no trio import."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ._slots import set_slots_directly
from ._state import TERMINAL_STATUSES, RunState, StageStatus

if TYPE_CHECKING:
    from ._delivery import SinkDelivery
    from ._sinks import Sink


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """How one stage ended.

    Attributes:
        status: A terminal `StageStatus`.
        value: What the stage function returned (None unless SUCCEEDED).
        error: The exception of the last failed attempt (None unless FAILED).
        attempts: Attempts started; 0 for a stage that never started.
        duration: Seconds from the first start to the end; 0.0 if never started.
        blocked_by: The failed stage that blocked this one (only when BLOCKED).
        reason: Why it ended as it did when it neither succeeded nor failed (as
            `StageFinished.reason`).
        items_in, items_out, items_failed, items_cancelled, items_ok: Final item
            counts of an item stage, as on its `StageFinished` (None for a task stage).
    """

    status: StageStatus
    value: Any = None
    error: BaseException | None = None
    attempts: int = 0
    duration: float = 0.0
    blocked_by: str | None = None
    reason: str | None = None
    items_in: int | None = None
    items_out: int | None = None
    items_failed: int | None = None
    items_cancelled: int | None = None
    items_ok: int | None = None


set_slots_directly(StageOutcome)  # built once per stage at the end of every run


def count_statuses(statuses: Iterable[StageStatus]) -> dict[StageStatus, int]:
    """Counts per terminal status, every terminal status present (zeros included), enum order.

    Raises:
        KeyError: a status is not terminal.
    """
    tally = Counter(statuses)  # a C loop: a run counts all its stages twice at the end
    counts = {status: tally.pop(status, 0) for status in StageStatus if status in TERMINAL_STATUSES}
    if tally:
        raise KeyError(next(iter(tally)))
    return counts


@dataclass(frozen=True, slots=True)
class RunResult:
    """The outcome of a run. Stage failures are data here, not exceptions.

    Attributes:
        state: CLOSED, or CANCELLED if the run was cancelled or draining overran.
        stages: Every stage's `StageOutcome`, in definition order.
        counts: Stages per terminal status (every terminal status is a key).
        run_id: The id carried by every event of the run.
        duration: Seconds from start to the end of draining.
        sink_errors: Sinks that raised, with their first exception; they were disabled.
        undelivered: Per healthy sink, events it never received (empty when all arrived).
        deliveries: Per sink (keyed as passed, wrappers removed), its `SinkDelivery`.
    """

    state: RunState
    stages: Mapping[str, StageOutcome]
    counts: Mapping[StageStatus, int]
    run_id: str
    duration: float
    sink_errors: Mapping[Sink, BaseException]
    undelivered: Mapping[Sink, int]
    deliveries: Mapping[Sink, SinkDelivery] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ok(self) -> bool:
        """True when every stage SUCCEEDED, was SKIPPED or CACHED."""
        # From the counts, not the outcomes: `stages` builds those on access.
        counts = self.counts
        fine = (StageStatus.SUCCEEDED, StageStatus.SKIPPED, StageStatus.CACHED)
        return sum(counts.get(status, 0) for status in fine) == len(self.stages)

    def raise_for_failures(self) -> None:
        """Raise an ExceptionGroup of the failed stages' errors; return if none failed.

        Each error gets a note naming its stage.
        """
        errors: list[Exception] = []
        for name, outcome in self.stages.items():
            error = outcome.error
            if outcome.status is StageStatus.FAILED and isinstance(error, Exception):
                note = f"in stage {name!r}"
                if note not in getattr(error, "__notes__", ()):
                    error.add_note(note)
                errors.append(error)
        if errors:
            noun = "stage" if len(errors) == 1 else "stages"
            raise ExceptionGroup(f"{len(errors)} {noun} failed", errors)
