"""Event records. Pure: no trio import.

Every state change of a run is one event. Events of a run carry the run's id, a
sequence number counting 0, 1, 2, ... without gaps, and the trio clock time at which
they were emitted. `RunStarted` is always first and `RunFinished` always last.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from ._params import NO_PARAMS
from ._slots import set_slots_directly
from ._state import RunState, StageStatus


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The run began; `stages` lists every stage of the run in definition order.

    `stages` holds only the selected stages when the run has targets; `params` is
    the run's read-only parameters (empty when none were given). `after[i]` names
    the stages that `stages[i]` waits for, so that a log alone can draw the graph;
    `wall_time` is ``time.time()`` at the start (the trio clock's `time` has no
    fixed origin); both are empty/None in events built by hand.
    """

    run_id: str
    seq: int
    time: float
    pipeline: str
    stages: tuple[str, ...]
    params: Mapping[str, Any] = NO_PARAMS
    after: tuple[tuple[str, ...], ...] = ()
    wall_time: float | None = None


@dataclass(frozen=True, slots=True)
class StageStarted:
    """One attempt of a stage began (one event per attempt; `attempt` is 1-based)."""

    run_id: str
    seq: int
    time: float
    stage: str
    attempt: int


@dataclass(frozen=True, slots=True)
class StageLog:
    """A message a stage emitted through `StageContext.log`."""

    run_id: str
    seq: int
    time: float
    stage: str
    message: str


@dataclass(frozen=True, slots=True)
class StageRetrying:
    """Attempt `attempt` failed with `error` (text); the next starts in `delay` seconds.

    The stage gave back its concurrency slot: it is PENDING until the retry starts.
    """

    run_id: str
    seq: int
    time: float
    stage: str
    attempt: int
    error: str
    delay: float


@dataclass(frozen=True, slots=True)
class StageFinished:
    """A stage reached a terminal status. Exactly one per stage per run.

    `attempt` is the number of attempts started (0 if the stage never started),
    `duration` the seconds from its first start to now (0.0 if never started),
    `error` the failure as ``"Type: message"`` text, `blocked_by` the failed stage
    that blocked it, `reason` why a stage that did not succeed or fail ended as it did
    (``"upstream 'a' failed"``, ``"fail-fast stop"``, ``"close requested"``, ``"run
    cancelled"``, ``"trigger all_success not met: upstream 'a' skipped"``, ``"raised
    KeyboardInterrupt"``, ...; None for FAILED, and for SUCCEEDED but a cache miss's
    explanation and a ``trigger="all_done"`` stream reader's shortfall, ``"upstream 'a'
    failed: received 7 of its 9 items"``). The item counts are None
    for a task stage; for an item stage
    ``items_in == items_ok + items_failed + items_cancelled`` (see `StageProgress`):
    items taken in, finished, failed after their retries, and cancelled or left unread.
    """

    run_id: str
    seq: int
    time: float
    stage: str
    status: StageStatus
    attempt: int
    duration: float
    error: str | None
    blocked_by: str | None
    reason: str | None = None
    items_in: int | None = None
    items_out: int | None = None
    items_failed: int | None = None
    items_cancelled: int | None = None
    items_ok: int | None = None


@dataclass(frozen=True, slots=True)
class StageProgress:
    """Item counts of a running item stage, at most one per `progress_interval` per stage.

    `items_in` counts items the stage took from its input, `items_out` items it
    emitted, `items_failed` items whose call failed after its retries.
    """

    run_id: str
    seq: int
    time: float
    stage: str
    items_in: int
    items_out: int
    items_failed: int


@dataclass(frozen=True, slots=True)
class ItemFailed:
    """Item `index` (0-based, in the stage's input order) of an ``on_item_error="skip"``
    stage failed after its retries with `error` (text); the stage went on without it."""

    run_id: str
    seq: int
    time: float
    stage: str
    index: int
    error: str


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run's last event. `state` is CLOSED or CANCELLED; `counts` covers terminal statuses."""

    run_id: str
    seq: int
    time: float
    state: RunState
    counts: Mapping[StageStatus, int]
    duration: float


Event = (
    RunStarted
    | StageStarted
    | StageLog
    | StageRetrying
    | StageFinished
    | StageProgress
    | ItemFailed
    | RunFinished
)
"""Any event a run emits."""

EVENT_TYPES: tuple[type[Event], ...] = (
    RunStarted,
    StageStarted,
    StageLog,
    StageRetrying,
    StageFinished,
    StageProgress,
    ItemFailed,
    RunFinished,
)


for _event_type in EVENT_TYPES:
    set_slots_directly(_event_type)  # same signature, cheaper: see _slots


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict: the event's fields plus ``"type"``; enums become their values."""
    row: dict[str, Any] = {"type": type(event).__name__}
    for field in dataclasses.fields(event):
        row[field.name] = _jsonable(getattr(event, field.name))
    return row


def _jsonable(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        items = cast(Mapping[object, object], value).items()
        return {str(_jsonable(k)): _jsonable(v) for k, v in items}
    if isinstance(value, tuple):
        return [_jsonable(v) for v in cast(tuple[object, ...], value)]
    return value


def describe_error(error: BaseException) -> str:
    """``"Type: message"``, or just ``"Type"`` when the message is empty.

    Never raises: an exception whose ``__str__`` raises is described as the
    standard library's `traceback` does, so a stage's odd error cannot break the run.
    """
    try:
        text = str(error)
    except Exception:
        text = "<exception str() failed>"
    name = type(error).__name__
    return f"{name}: {text}" if text else name
