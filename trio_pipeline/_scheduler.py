"""The scheduler: every rule of a run, as tables and pure methods. No trio import.

Theory of operation
-------------------
Facts in, decisions out (h11's ``_state.py`` is the model). The engine reports each
thing that happened by calling one method, passing the run clock's ``now``:

    begin                   the run starts
    attempt_succeeded       an attempt returned a value
    attempt_failed          an attempt raised an Exception
    attempt_timed_out       the attempt's own cancel scope stopped it (its timeout,
                            the teardown deadline, or a `cancel` decision for it)
    attempt_cancelled       Cancelled reached the attempt from outside it
    attempt_crashed         an attempt raised KeyboardInterrupt, SystemExit, ...
    cache_hit, cache_miss   a stage's cache lookup (an `Outbox.lookup` decision) answered
    retry_due               a retry delay elapsed
    retry_wait_cancelled    a retry wait was cut short
    request_close, cancel   the run is asked to stop (gracefully / now)
    teardown_expired        the teardown deadline passed
    pause_starts, resume_starts   backpressure: start nothing new / start again,
                            with room for so many more starts
    log                     a running stage logs a message
    drained                 the dispatcher finished (with or without overrunning)

A method first checks that its fact is possible; an impossible one (a stage that is
not running cannot succeed) raises `TransitionError` and changes nothing. Then it
updates the state and appends its decisions to `out` (an `Outbox`): events to emit,
in order; attempts to start; retry waits; cancellations; the teardown deadline;
whether the run has finished. The engine carries them out and clears the outbox.

Two rules, as in h11:

1. Every scheduling rule lives in this file, as a table where it fits
   (`TRIGGER_RULES`, `STOP_RULES`, the transition tables of `_state`). The engine
   owns nurseries and cancel scopes and decides nothing.
2. The scheduler never waits and never reads a clock: time comes with each fact.

Per-stage state is kept in flat lists indexed like `Plan.stages` (and sparse dicts
for what few stages have), not in an object per stage: a 100,000-stage run then
holds a handful of large objects for the garbage collector to walk instead of
several hundred thousand small ones.

Readiness: a stage's trigger rule (`TRIGGER_RULES`) reads a summary of its upstream
stages' terminal statuses; the first row whose condition holds decides whether it
waits, runs, ends BLOCKED (a failure is stronger than a skip: the "failed" rows come
first), SKIPPED or CANCELLED. Ready stages start by priority (higher first), then
definition order, while ``max_parallel`` and the backlog room (below) allow; a stage
that cannot take all its pool slots at once is parked on that pool without holding
anything, and the stages behind it go ahead; an exclusive stage starts only when
nothing runs, and nothing starts while it runs (while it waits, the stages behind it
wait too: otherwise it could wait forever).

Stream groups (`_items`) are one unit in the ready heap, led by their first member:
each member's rule is applied as above to its own dependencies, its stream input
counted as it was decided (`_evaluate_group`); the members it ends without running
end at once, and the group is queued once no rule waits. It ranks by its highest
member priority, then its first member's index; it takes its members' whole-call
pool slots all at once or is parked holding none; each member gives its own back
when it ends, and the group's ``max_parallel`` slot comes back with its last member.

Stops (`STOP_RULES`): a fail-fast failure, `request_close` and `cancel` each say
which unstarted stages may still start (by trigger) and whether running attempts are
cancelled. Teardown stages (`Trigger.ALWAYS`) are never cancelled by a stop; after a
cancellation they run shielded until the teardown deadline (``teardown_timeout``
seconds after the cancellation). A stage waiting out a retry delay has started: a
stop cancels it unless it is a teardown stage. Only a running run (or a teardown
stage) retries.

Backpressure: each start emits a `StageStarted` that the sinks have yet to handle, so
starts are counted against a room: ``max_backlog`` at `begin` (after `RunStarted`),
then what each `resume_starts` gives. A decision that would start a stage with no
room left starts nothing more and sets `Outbox.held`; the engine answers with
`resume_starts` (at once if the sinks keep up). So the backlog bound holds inside one
decision too: `begin` of a wide graph starts ``max_backlog`` stages, not all of them.
`pause_starts` (the sinks fell behind through other events) holds starts the same way.
"""

from __future__ import annotations

import heapq
import math
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from ._errors import StageTimeout, TransitionError
from ._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageRetrying,
    StageStarted,
    describe_error,
)
from ._items import stream_plan
from ._options import DEFAULT_OPTIONS, Trigger
from ._params import NO_PARAMS
from ._result import StageOutcome, count_statuses
from ._state import OK_STATUSES, STAGE_TRANSITIONS, Machine, RunState, StageStatus, run_machine

if TYPE_CHECKING:
    from ._graph import Plan

_PENDING = StageStatus.PENDING
_RUNNING = StageStatus.RUNNING
_SUCCEEDED = StageStatus.SUCCEEDED
_FAILED = StageStatus.FAILED
_BLOCKED = StageStatus.BLOCKED
_SKIPPED = StageStatus.SKIPPED
_CANCELLED = StageStatus.CANCELLED
_CACHED = StageStatus.CACHED
_ALWAYS = Trigger.ALWAYS
_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Verdict(StrEnum):
    """What a trigger rule decides for a stage that has not started."""

    WAIT = "wait"
    RUN = "run"
    BLOCK = "block"
    SKIP = "skip"
    CANCEL = "cancel"


_T, _V = Trigger, Verdict
TRIGGER_RULES: Mapping[Trigger, tuple[tuple[str, Verdict], ...]] = {
    # Conditions on the upstream stages: "failed" one FAILED or was BLOCKED,
    # "cancelled" one was CANCELLED, "waiting" one is not terminal yet, "skipped" one
    # was SKIPPED, "else" always holds. The first row that holds decides.
    _T.ALL_SUCCESS: (
        ("failed", _V.BLOCK),
        ("cancelled", _V.CANCEL),
        ("waiting", _V.WAIT),
        ("skipped", _V.SKIP),
        ("else", _V.RUN),
    ),
    _T.NONE_FAILED: (
        ("failed", _V.BLOCK),
        ("cancelled", _V.CANCEL),
        ("waiting", _V.WAIT),
        ("else", _V.RUN),
    ),
    _T.ONE_FAILED: (
        ("failed", _V.RUN),
        ("waiting", _V.WAIT),
        ("cancelled", _V.CANCEL),
        ("else", _V.SKIP),
    ),
    _T.ALL_DONE: (("waiting", _V.WAIT), ("else", _V.RUN)),
    _T.ALWAYS: (("waiting", _V.WAIT), ("else", _V.RUN)),
}


class Stop(StrEnum):
    """Why a run stopped starting stages; the value is the `StageFinished.reason`."""

    FAIL_FAST = "fail-fast stop"
    CLOSE = "close requested"
    CANCEL = "run cancelled"


class StopRule(NamedTuple):
    """What a stop does."""

    run_state: RunState
    """Where the run moves (from RUNNING, or from CLOSING for a cancel)."""
    still_start: frozenset[Trigger]
    """Unstarted stages with these triggers still start when their rule fires."""
    cancels_running: bool
    """Running attempts, except teardown stages', are cancelled."""


STOP_RULES: Mapping[Stop, StopRule] = {
    Stop.FAIL_FAST: StopRule(
        RunState.CLOSING, frozenset({_T.ALWAYS, _T.ALL_DONE, _T.ONE_FAILED}), True
    ),
    Stop.CLOSE: StopRule(RunState.CLOSING, frozenset({_T.ALWAYS}), False),
    Stop.CANCEL: StopRule(RunState.CANCELLED, frozenset({_T.ALWAYS}), True),
}
del _T, _V

TEARDOWN_EXPIRED = "teardown_timeout passed"
"""The reason of a teardown stage cut off by the teardown deadline."""


class _Marks:
    """The upstream summary of a stage whose readiness is not the plain fast path."""

    __slots__ = ("cancelled", "decided", "failed", "skipped")

    def __init__(self) -> None:
        self.failed: str | None = None  # the failed root stage (blocked_by)
        self.skipped: str | None = None
        self.cancelled: str | None = None
        self.decided = False  # the rule fired: queued, running or ended


class Outbox:
    """The decisions of the facts reported since the engine last cleared it.

    The engine carries them out in this order: emit `events`; if `cancel_running`,
    cancel every running attempt that is not shielded; cancel the attempts and
    retry waits in `cancel`; give the scopes of the stages in `deadline` the
    scheduler's `teardown_deadline`; start the attempts in `start`; wait out each
    ``(stage, delay)`` in `wait`; if `timer`, report `Scheduler.teardown_expired`
    at the teardown deadline unless the run finished first; if `finished`, close
    the event channel; if `held` (no room left to start a ready stage: see
    `Scheduler.resume_starts`), report `resume_starts` once the sinks have room.
    `rare` says whether anything but `events`, `start` and `lookup` is set.
    `lookup`: ready stages the engine looks up in the cache (no slot taken); each
    answer comes back as `Scheduler.cache_hit` or `Scheduler.cache_miss`.
    """

    __slots__ = (
        "cancel",
        "cancel_running",
        "close_streams",
        "deadline",
        "events",
        "finished",
        "held",
        "lookup",
        "rare",
        "slots_freed",
        "start",
        "timer",
        "wait",
    )

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.start: list[int] = []
        self.lookup: list[int] = []  # ready stages to look up in the cache (issue 14)
        self.wait: list[tuple[int, float]] = []
        self.cancel: list[int] = []
        self.deadline: list[int] = []
        self.cancel_running = False
        self.close_streams = False  # ask running stream groups to close their sources
        self.slots_freed = False  # pool slots came back: wake item calls waiting for some
        self.timer = False
        self.finished = False
        self.held = False
        self.rare = False

    def clear(self) -> None:
        self.events.clear()
        self.start.clear()
        self.lookup.clear()
        if self.rare:
            self.wait.clear()
            self.cancel.clear()
            self.deadline.clear()
            self.cancel_running = False
            self.close_streams = False
            self.slots_freed = False
            self.timer = False
            self.held = False
            self.rare = False


class Scheduler:
    """The state of one run of a `Plan`, advanced by facts (see the module docs).

    Args:
        plan: The validated pipeline.
        run_id: Carried by every event.
        keep_going: On a failure block only its downstream (else: fail-fast stop).
        max_parallel: Attempts running at once at most (None: no limit).
        pools: ``{pool: slots}``, already checked against the stages' ``uses``.
        teardown_timeout: Seconds teardown stages get after a cancellation.
        params: The run's parameters (carried by `RunStarted`).
        max_backlog: Starts `begin` may decide (each emits a `StageStarted` the sinks
            have not handled yet); later ones as `resume_starts` allows. None: no bound.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        run_id: str,
        keep_going: bool = False,
        max_parallel: int | None = None,
        pools: Mapping[str, int] | None = None,
        teardown_timeout: float = 30.0,
        params: Mapping[str, Any] = NO_PARAMS,
        lookups: frozenset[int] = frozenset(),
        max_backlog: int | None = None,
    ) -> None:
        n = len(plan.stages)
        # Issue 14: stages looked up in the cache when they become ready, before
        # they take a slot; `_looking` holds those whose answer is still out.
        self._lookups = lookups
        self._looking: set[int] = set()
        self._miss_reasons: dict[int, str] = {}
        self.params = params
        self.plan = plan
        self.run_id = run_id
        self.keep_going = keep_going
        self.teardown_timeout = teardown_timeout
        self.out = Outbox()
        self.machine: Machine[RunState] = run_machine(run_id)
        self.status: list[StageStatus] = [_PENDING] * n
        # Numbers live in arrays, which the garbage collector does not walk (a list
        # of 300,000 ints is visited item by item in every full collection).
        self.attempts = array("l", bytes(8 * n)) if n else array("l")
        self.values: list[Any] = [None] * n
        # First start time while a stage runs; its duration once it is terminal.
        self._times = array("d", bytes(8 * n)) if n else array("d")
        # Upstream stages not yet terminal.
        self._remaining = array("l", [len(ups) for ups in plan.upstream])
        self._errors: dict[int, BaseException] = {}
        self._blocked_by: dict[int, str] = {}
        self._reasons: dict[int, str] = {}
        self._ready: list[int] = []  # heap of keys (see `_key`)
        self._seq = 0
        self._unfinished = n
        self._running = 0
        self._limit = sys.maxsize if max_parallel is None else max_parallel
        self.paused = False
        self._room = sys.maxsize if max_backlog is None else max_backlog  # see resume_starts
        self.stop: Stop | None = None
        self._still_start: frozenset[Trigger] | None = None  # None: anything may start
        self._group_cancelled = False
        self._cancel_reason: str | None = None  # of the first stop that cancelled attempts
        self._ended: list[int] = []  # ended stages whose downstream is not yet updated
        self._settling = False
        self.shielded: set[int] = set()  # attempts and retry waits in a scope of their own
        self._cancel_sent: set[int] = set()
        self._waiting: set[int] = set()  # retry waits in progress
        self.teardown_deadline = math.inf
        self.started_at = 0.0
        self.finished_at = 0.0
        self._finished = False
        self._index: dict[str, int] | None = None  # see `log`
        # Options, sparse: most stages have none of these.
        self._marks: dict[int, _Marks] = {}
        self._trigger: dict[int, Trigger] = {}
        self._uses: dict[int, tuple[tuple[str, int], ...]] = {}
        self._item_uses: dict[int, tuple[tuple[str, int], ...]] = {}  # each= stages
        self._free: dict[str, int] = dict(pools or {})
        self._parked: dict[str, list[int]] = {}
        teardown: set[int] = set()
        exclusive: set[int] = set()
        priorities: dict[int, int] = {}
        member_uses: dict[int, tuple[tuple[str, int], ...]] = {}
        for i, stage in enumerate(plan.stages):
            options = stage.options
            if options is DEFAULT_OPTIONS:
                continue
            if options.trigger is not Trigger.ALL_SUCCESS:
                self._trigger[i] = options.trigger
                self._marks[i] = _Marks()
                if options.trigger is _ALWAYS:
                    teardown.add(i)
            if options.uses and stage.items is not None:
                if stage.items.kind == "each":
                    self._item_uses[i] = tuple(options.uses.items())  # per item call
                else:
                    member_uses[i] = tuple(options.uses.items())  # for the whole call
            elif options.uses:
                self._uses[i] = tuple(options.uses.items())
            if options.exclusive:
                exclusive.add(i)
            if options.priority:
                priorities[i] = options.priority
        # Stream groups (`_items`): one scheduling unit each, led by its first member,
        # which stands for the group in the ready heap and holds its one slot.
        self.streams = streams = stream_plan(plan)
        self._lead: dict[int, int] = {}  # member -> its group's first member
        self._members: dict[int, tuple[int, ...]] = {}  # first member -> members
        self._order: dict[int, tuple[int, ...]] = {}  # ... producers before their readers
        self._to_start: dict[int, tuple[int, ...]] = {}  # first -> members whose rule said run
        self._started: dict[int, tuple[int, ...]] = {}  # first -> members it started
        self._evaluating: set[int] = set()  # groups being decided (`_evaluate_group`)
        self._live: dict[int, int] = {}  # first member -> members still running
        self._counts: dict[int, Any] = {}  # member -> its final item counts
        # Whole-call pool slots of sources and consumes= stages: a group takes those of
        # the members it starts all at once (`_take_group`); each member gives its own
        # back when it ends.
        self._member_uses = member_uses
        self._held: dict[int, tuple[tuple[str, int], ...]] = {}  # running member -> slots
        pooled_groups: set[int] = set()
        for group in streams.groups:
            first = group.members[0]
            self._members[first] = group.members
            self._order[first] = _producers_first(group.members, streams.stream_input)
            # The group ranks by its best member (ties: the first member's definition order).
            best = max(priorities.get(m, 0) for m in group.members)
            if best:
                priorities[first] = best
            else:
                priorities.pop(first, None)
            for m in group.members:
                self._lead[m] = first
                self._marks.setdefault(m, _Marks())  # readiness: `_evaluate_group`
                if m in exclusive:
                    exclusive.add(first)  # a group with an exclusive member runs alone
                if m in member_uses:
                    pooled_groups.add(first)
        self._pooled_groups: frozenset[int] = frozenset(pooled_groups)
        self.teardown: frozenset[int] = frozenset(teardown)
        self._exclusive: frozenset[int] = frozenset(exclusive)
        self._special: frozenset[int] = frozenset(exclusive | set(self._uses) | pooled_groups)
        self._alone = -1  # the running exclusive stage
        # Heap keys: the index, or with priorities -priority * n + index, which
        # orders by priority (higher first), then index, and gives the index back
        # as key % n.
        self._keys: list[int] | None = None
        if priorities:
            self._keys = [-priorities.get(i, 0) * n + i for i in range(n)]

    # -- reading --------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        return self.machine.state

    @property
    def emitted(self) -> int:
        """Events emitted so far (the next event's seq)."""
        return self._seq

    @property
    def finished(self) -> bool:
        """Whether every stage is terminal (`RunFinished` was emitted)."""
        return self._finished

    def inputs_of(self, i: int) -> Mapping[str, Any]:
        """The values of stage `i`'s upstream stages that succeeded, by name."""
        upstream = self.plan.upstream[i]
        if not upstream:
            return _EMPTY
        stages, status, values = self.plan.stages, self.status, self.values
        inputs: dict[str, Any] = {}
        for j in upstream:  # a loop, not a comprehension: one frame less per stage
            if status[j] is _SUCCEEDED or status[j] in OK_STATUSES:
                inputs[stages[j].name] = values[j]
        return MappingProxyType(inputs)

    def outcomes(self) -> Mapping[str, StageOutcome]:
        """Every stage's `StageOutcome` by name, in definition order, built on access.

        Lazily: building 300,000 outcomes at the end of a run cost about 1 us a stage
        and, as fresh tracked objects, a full garbage collection.
        """
        return Outcomes(self)

    def outcome_of(self, i: int) -> StageOutcome:
        status = self.status[i]
        return StageOutcome(
            status,
            self.values[i],
            self._errors.get(i) if status is _FAILED else None,
            self.attempts[i],
            self._times[i] if status.is_terminal else 0.0,
            self._blocked_by.get(i),
            self._reasons.get(i),
            *_item_counts(self._counts.get(i)),
        )

    def outcome_columns(self) -> OutcomeColumns:
        """Every stage's outcome field by field (see `OutcomeColumns`), building no
        `StageOutcome`: ~0.01 us a stage, against ~1 us for each outcome."""
        status, times = self.status, self._times
        if self._unfinished:  # a running stage's entry is its start time, not a duration
            times = array("d", times)
            for i, s in enumerate(status):
                if not s.is_terminal:
                    times[i] = 0.0
        errors = {i: e for i, e in self._errors.items() if status[i] is _FAILED}
        names = [stage.name for stage in self.plan.stages]
        return OutcomeColumns(names, status, self.attempts, times, errors, self._blocked_by)

    def counts(self) -> dict[StageStatus, int]:
        status = self.status
        # Mostly called once every stage is terminal: then the list itself, counted in C.
        return count_statuses(
            status if not self._unfinished else (s for s in status if s.is_terminal)
        )

    # -- facts: the run ---------------------------------------------------------------

    def begin(self, now: float, *, wall_time: float | None = None) -> None:
        """The run starts (`wall_time`: ``time.time()``): emit `RunStarted`, start what is ready."""
        self.machine.advance(RunState.RUNNING)
        self.started_at = now
        plan = self.plan
        stages = plan.stages
        self._emit(
            RunStarted(
                self.run_id,
                self._next_seq(),
                now,
                plan.name,
                tuple(stage.name for stage in stages),
                self.params,
                tuple(stage.after for stage in stages),
                wall_time,
            )
        )
        marks, remaining = self._marks, self._remaining
        ready = [i for i, r in enumerate(remaining) if r == 0 and i not in marks]
        if self._lookups:
            ready = [i for i in ready if not self._look_up(i)]
        keys = self._keys
        if keys is not None:
            ready = [keys[i] for i in ready]
            heapq.heapify(ready)
        self._ready = ready  # ascending indices already form a heap
        for i in [i for i in marks if remaining[i] == 0]:  # evaluating may add marks
            if self.status[i] is _PENDING and not marks[i].decided:
                self._evaluate(i, now)
        self._pump(now)
        self._check_done(now)

    def request_close(self, now: float) -> None:
        """Start no new stage but teardown stages; running ones finish.

        A no-op once the run was cancelled or is draining.
        """
        if self.machine.state in (RunState.RUNNING, RunState.CLOSING) and (
            self.stop is not Stop.CLOSE
        ):
            self._stop(Stop.CLOSE, now)
            self._pump(now)
            self._check_done(now)

    def cancel(self, now: float) -> None:
        """Cancel running attempts (teardown stages: at the teardown deadline).

        For `RunHandle.cancel`, an outer cancellation and fatal exceptions. A no-op
        once the run was cancelled or is draining.
        """
        if self.machine.state in (RunState.RUNNING, RunState.CLOSING):
            self._stop(Stop.CANCEL, now)
            self._pump(now)
            self._check_done(now)

    def teardown_expired(self, now: float) -> None:
        """The teardown deadline passed: teardown stages not running end CANCELLED."""
        if now < self.teardown_deadline:
            raise TransitionError(f"run {self.run_id}", "teardown running", "expired")
        for i in sorted(self.teardown):
            if self.status[i] is _PENDING:
                self._cancel_waiting(i)
                self._finish(i, _CANCELLED, now, reason=TEARDOWN_EXPIRED)
        self._check_done(now)

    def pause_starts(self) -> None:
        """Decide no new attempt start until `resume_starts` (running ones go on)."""
        self.paused = True

    def resume_starts(self, now: float, room: int = sys.maxsize) -> None:
        """Start ready stages again, at most `room` of them until the next `resume_starts`.

        The engine's answer to `pause_starts` and to `Outbox.held`: `room` is how many
        more `StageStarted` events the slowest sink can take before it is over the run's
        ``max_backlog``.
        """
        self.paused = False
        self._room = room
        self._pump(now)

    def drained(self, *, overran: bool) -> None:
        """The dispatcher is done: CLOSED, or CANCELLED if it overran its deadline.

        Also when it died before the run finished (the run then ends CANCELLED).
        """
        machine = self.machine
        if machine.state is RunState.DRAINING:
            machine.advance(RunState.CANCELLED if overran else RunState.CLOSED)
        elif machine.state in (RunState.RUNNING, RunState.CLOSING):
            machine.advance(RunState.CANCELLED)

    def log(self, name: str, message: str, now: float) -> StageLog:
        """The event for a stage's log line (the engine emits it).

        Raises:
            RuntimeError: the stage has finished.
        """
        index = self._index
        if index is None:
            # Built at the first log line, not per run: a name -> index dict costs
            # about 50 bytes a stage, and most runs never log.
            index = self._index = {stage.name: i for i, stage in enumerate(self.plan.stages)}
        i = index[name]
        if self.status[i].is_terminal:
            raise RuntimeError(f"stage {name!r} has finished; its context no longer logs")
        return StageLog(self.run_id, self._next_seq(), now, name, message)

    def queue_log(self, name: str, message: str, now: float) -> None:
        """`log`, with the event queued in the outbox behind those decided before it.

        For a log line reported between facts whose outbox is carried out later (a
        group of commits): sent at once, it would overtake their events.
        """
        self._emit(self.log(name, message, now))

    # -- facts: attempts ----------------------------------------------------------------

    def attempt_succeeded(self, i: int, value: Any, now: float) -> None:
        # The per-stage path: the helpers' fast cases are inlined (measured).
        if self.status[i] is not _RUNNING:
            self._expect(i, _RUNNING, "succeed")
        self._running -= 1
        if i == self._alone or self.shielded or self._uses:
            self._release_slots(i)
        self.values[i] = value
        # A stage that missed the cache says why, when the run explains (issue 14).
        why = self._miss_reasons.pop(i, None) if self._miss_reasons else None
        self._finish(i, _SUCCEEDED, now, reason=why)
        if self._ready and not self.paused:
            self._pump(now)
        if not self._unfinished:
            self._check_done(now)

    def _look_up(self, i: int) -> bool:
        """Send ready stage `i` to the cache first if it is cached; True if it was."""
        if i not in self._lookups or i in self._looking or self.attempts[i]:
            return False
        self._looking.add(i)
        self.out.lookup.append(i)
        return True

    def _lookup_answered(self, i: int, to: StageStatus) -> bool:
        """Stage `i`'s lookup is back; False if a stop ended the stage meanwhile.

        Raises TransitionError (changing nothing) if no lookup of `i` was out.
        """
        if i not in self._looking:
            raise TransitionError(f"stage {self.plan.stages[i].name!r}", self.status[i], to)
        self._looking.discard(i)
        return self.status[i] is _PENDING

    def cache_hit(self, i: int, value: Any, reason: str, now: float) -> None:
        """Stage `i`'s lookup found its value: it ends CACHED (no attempt, no slot).

        A no-op when a stop ended the stage while its lookup was out.
        """
        if not self._lookup_answered(i, _CACHED):
            return
        self.values[i] = value
        self._finish(i, _CACHED, now, reason=reason)
        if self._ready and not self.paused:
            self._pump(now)
        if not self._unfinished:
            self._check_done(now)

    def cache_miss(self, i: int, now: float, reason: str | None = None) -> None:
        """Stage `i`'s lookup found nothing usable: it waits for a slot like any ready stage.

        A no-op when a stop ended the stage while its lookup was out.
        """
        self.cache_misses((i,), now, None if reason is None else (reason,))

    def cache_misses(
        self, stages: Sequence[int], now: float, reasons: Sequence[str] | None = None
    ) -> None:
        """`cache_miss` of each of `stages` (with `reasons[k]` for `stages[k]`), at once.

        The ready ones start in order as the limits allow once all are queued (a cold
        run's layer of misses is one pass over the ready queue, not one per stage).

        Raises TransitionError, changing nothing, if a stage's lookup was not out (or
        a stage is named twice).
        """
        looking = self._looking
        if len(stages) > 1 and len(set(stages)) < len(stages):
            first = next(i for k, i in enumerate(stages) if i in stages[:k])
            raise TransitionError(
                f"stage {self.plan.stages[first].name!r}", self.status[first], _RUNNING
            )
        for i in stages:
            if i not in looking:
                self._lookup_answered(i, _RUNNING)  # raises: nothing was changed yet
        for k, i in enumerate(stages):
            if not self._lookup_answered(i, _RUNNING):
                continue
            if reasons is not None:
                self._miss_reasons[i] = reasons[k]  # its StageFinished says why it ran
            self._push(i)
        self._pump(now)

    def attempt_failed(self, i: int, error: BaseException, now: float) -> None:
        """The attempt raised `error` (an Exception): retry it, or the stage FAILED."""
        self._expect(i, _RUNNING, "fail")
        self._release(i)
        attempt = self.attempts[i]
        policy = self.plan.stages[i].options.retry
        if self._may_retry(i, now) and policy.should_retry(error, attempt):
            delay = policy.delay_before(attempt)
            self._errors[i] = error
            self._move(i, _PENDING)
            name = self.plan.stages[i].name
            self._emit(
                StageRetrying(
                    self.run_id, self._next_seq(), now, name, attempt, describe_error(error), delay
                )
            )
            if delay > 0:
                self._waiting.add(i)
                if self._group_cancelled or i in self.teardown:
                    self.shielded.add(i)
                out = self.out
                out.wait.append((i, delay))
                out.rare = True
            else:
                self._push(i)
        else:
            self._fail(i, error, now)
        self._pump(now)
        self._check_done(now)

    def attempt_timed_out(self, i: int, now: float) -> None:
        """The attempt's own scope stopped it: a timeout unless it was cancelled."""
        self._expect(i, _RUNNING, "time out")
        if i in self._cancel_sent:
            self._release(i)
            self._finish(i, _CANCELLED, now, reason=self._cancel_reason)
        elif now >= self.teardown_deadline and i in self.teardown:
            self._release(i)
            self._finish(i, _CANCELLED, now, reason=TEARDOWN_EXPIRED)
        else:
            stage = self.plan.stages[i]
            timeout = stage.options.timeout
            if timeout is None:
                raise TransitionError(f"stage {stage.name!r}", "without a timeout", "timed out")
            self.attempt_failed(i, StageTimeout(stage.name, timeout, self.attempts[i]), now)
            return
        self._pump(now)
        self._check_done(now)

    def attempt_cancelled(self, i: int, now: float) -> None:
        """Cancelled reached the attempt. If the scheduler did not ask, the run is cancelled."""
        self._expect(i, _RUNNING, "be cancelled")
        requested = i in self._cancel_sent or (self._group_cancelled and i not in self.shielded)
        self._release(i)
        reason = self._cancel_reason if requested else Stop.CANCEL.value
        self._finish(i, _CANCELLED, now, reason=reason)
        if not requested:
            self.cancel(now)
        self._pump(now)
        self._check_done(now)

    def attempt_crashed(self, i: int, error: BaseException, now: float) -> None:
        """The attempt raised a BaseException that is not a cancellation: cancel the run."""
        self._expect(i, _RUNNING, "crash")
        self._release(i)
        self._finish(i, _CANCELLED, now, reason=f"raised {type(error).__name__}")
        self.cancel(now)
        self._pump(now)
        self._check_done(now)

    def retry_due(self, i: int, now: float) -> None:
        """A retry delay elapsed: the stage is ready again.

        Harmless when a stop already cancelled the stage: the wake-up can race it.
        """
        if self.status[i].is_terminal:
            return
        self._expect_waiting(i)
        self._waiting.discard(i)
        self.shielded.discard(i)
        self._push(i)
        self._pump(now)

    def retry_wait_cancelled(self, i: int, now: float) -> None:
        """A retry wait was cut short (harmless if the scheduler cancelled it)."""
        if self.status[i].is_terminal:
            return  # a stop cancelled it
        self._expect_waiting(i)
        self._waiting.discard(i)
        self.shielded.discard(i)
        if i in self.teardown and now >= self.teardown_deadline:
            self._finish(i, _CANCELLED, now, reason=TEARDOWN_EXPIRED)
        else:
            self._finish(i, _CANCELLED, now, reason=Stop.CANCEL)
            self.cancel(now)
        self._pump(now)
        self._check_done(now)

    # -- facts: stream groups -----------------------------------------------------------

    def next_seq(self) -> int:
        """A seq for an event the engine builds itself (`StageProgress`, `ItemFailed`)."""
        return self._next_seq()

    def take_item_slots(self, i: int) -> bool:
        """An item call of each= stage `i` takes its pool slots, all at once, if free.

        False: some are taken; the engine waits for `Outbox.slots_freed` and asks
        again. The call holds nothing while it waits (no hold-and-wait), and gives
        the slots back (`give_item_slots`) before its result is emitted.
        """
        self._expect(i, _RUNNING, "take pool slots for an item")
        uses, free = self._item_uses[i], self._free
        if any(free[pool] < slots for pool, slots in uses):
            return False
        for pool, slots in uses:
            free[pool] -= slots
        return True

    def give_item_slots(self, i: int, now: float) -> None:
        """An item call of stage `i` is over: its slots are free for stages and items."""
        self._give_back(self._item_uses[i])
        self._pump(now)

    def group_of(self, i: int) -> tuple[int, ...] | None:
        """The members of the stream group that stage `i` leads, or None."""
        return self._members.get(i)

    def started_members(self, first: int) -> tuple[int, ...]:
        """The members the running group led by `first` started (its trigger rules said
        run); the others ended before it started."""
        return self._started[first]

    def member_finished(
        self,
        i: int,
        status: StageStatus,
        now: float,
        *,
        value: Any,
        error: BaseException | None,
        blocked_by: str | None,
        reason: str | None,
        counts: Any,
    ) -> None:
        """A stream group member ended (`_streams` decided how, from its items).

        CANCELLED with reason "run cancelled" means Cancelled reached it: if the
        scheduler did not ask for that, the run is cancelled. The group's slot is
        given back when its last member ends.
        """
        self._expect(i, _RUNNING, f"end {status}")
        self._counts[i] = counts
        first = self._lead[i]
        left = self._live[first] - 1
        if left:
            self._live[first] = left
        else:
            del self._live[first]
            del self._started[first]
            self._running -= 1
            self._release_slots(first)
        held = self._held.pop(i, None) if self._held else None
        if held is not None:
            self._give_back(held)  # its whole call is over
        requested = True
        if status is _SUCCEEDED:
            self.values[i] = value
            self._finish(i, _SUCCEEDED, now, reason=reason)
        elif status is _FAILED:
            assert error is not None
            self._fail(i, error, now)
        elif status is _BLOCKED:
            self._finish(i, _BLOCKED, now, blocked_by=blocked_by, reason=reason)
        else:
            if reason == Stop.CANCEL.value:  # Cancelled reached it
                requested = self._group_cancelled
                reason = self._cancel_reason if requested else reason
            self._finish(i, _CANCELLED, now, reason=reason)
        if not requested:
            self.cancel(now)
        self._pump(now)
        self._check_done(now)

    def _start_group(self, first: int, now: float) -> None:
        """Start the members of the group `first` leads that its rules said run: one
        unit, one ``max_parallel`` slot (their whole-call pool slots are taken)."""
        members = self._starting(first)
        del self._to_start[first]
        out = self.out
        for m in members:
            self._move(m, _RUNNING)
            self.attempts[m] = 1
            self._times[m] = now
            name = self.plan.stages[m].name
            out.events.append(StageStarted(self.run_id, self._next_seq(), now, name, 1))
            held = self._member_uses.get(m)
            if held is not None:
                self._held[m] = held
        self._running += 1
        self._live[first] = len(members)
        self._started[first] = members
        if first in self._exclusive:
            self._alone = first
        out.start.append(first)

    def _evaluate_group(self, first: int, now: float) -> None:
        """Apply the group members' trigger rules; start the group once all decided.

        Each member's rule reads its own dependencies from outside the group and, for
        a stream reader, its stream input as decided here: a producer that will run
        counts as live (not failed, not waiting), one that does not as it ended
        (BLOCKED, SKIPPED or CANCELLED), one still undecided as waiting. A member
        whose rule ends it (BLOCKED, SKIPPED, CANCELLED) ends at once; the group is
        queued when no rule waits any more, with the members whose rule said run (a
        reader whose producer does not run reads an empty stream).
        """
        if first in self._to_start or first in self._started or first in self._evaluating:
            return  # decided (queued or running), or being decided (a member ending below)
        self._evaluating.add(first)
        try:
            self._decide_group(first, now)
        finally:
            self._evaluating.discard(first)

    def _decide_group(self, first: int, now: float) -> None:
        status, marks = self.status, self._marks
        decided: dict[int, tuple[Verdict, str | None]] = {}
        waiting = False
        for m in self._order[first]:
            if status[m] is _PENDING:  # (a stop may have ended some already)
                decision = self._member_verdict(first, m, decided)
                if decision[0] is Verdict.WAIT:
                    waiting = True
                else:
                    decided[m] = decision
        still = self._still_start
        start: list[int] = []
        for m, (verdict, culprit) in decided.items():
            if status[m] is not _PENDING:
                continue  # ended by an ending below (a stop)
            trigger = self._trigger.get(m, Trigger.ALL_SUCCESS)
            if verdict is Verdict.RUN:
                if still is None or trigger in still:
                    start.append(m)
                    continue
                verdict = Verdict.CANCEL
            marks[m].decided = True
            if verdict is Verdict.BLOCK:
                reason = f"upstream {culprit!r} failed"
                self._finish(m, _BLOCKED, now, blocked_by=culprit, reason=reason)
            elif verdict is Verdict.SKIP:
                why = "no upstream failed" if culprit is None else f"upstream {culprit!r} skipped"
                self._finish(m, _SKIPPED, now, reason=f"trigger {trigger} not met: {why}")
            else:
                why = self.stop.value if self.stop else f"upstream {culprit!r} cancelled"
                self._finish(m, _CANCELLED, now, reason=why)
        if waiting:
            return
        start = [m for m in start if status[m] is _PENDING]
        if start:
            for m in start:
                marks[m].decided = True
            self._to_start[first] = tuple(start)
            self._push(first)

    def _member_verdict(
        self, first: int, m: int, decided: Mapping[int, tuple[Verdict, str | None]]
    ) -> tuple[Verdict, str | None]:
        """Member `m`'s trigger rule (`TRIGGER_RULES`) and the stage it names, if any."""
        status, stages = self.status, self.plan.stages
        failed = cancelled = skipped = None
        waiting = False
        for j in self.plan.upstream[m]:
            name = stages[j].name
            if j in decided:  # its stream input, decided just now
                verdict, culprit = decided[j]
                if verdict is Verdict.BLOCK and failed is None:
                    failed = culprit
                elif verdict is Verdict.SKIP and skipped is None:
                    skipped = name
                elif verdict is Verdict.CANCEL and cancelled is None:
                    cancelled = name
                continue
            sj = status[j]
            if sj is _FAILED and failed is None:
                failed = name
            elif sj is _BLOCKED and failed is None:
                failed = self._blocked_by[j]
            elif sj is _SKIPPED and skipped is None:
                skipped = name
            elif sj is _CANCELLED and cancelled is None:
                cancelled = name
            elif not sj.is_terminal:
                waiting = True  # outside: not ended; inside: its own rule waits
        holds = {
            "failed": failed is not None,
            "cancelled": cancelled is not None,
            "waiting": waiting,
            "skipped": skipped is not None,
            "else": True,
        }
        trigger = self._trigger.get(m, Trigger.ALL_SUCCESS)
        verdict = next(v for condition, v in TRIGGER_RULES[trigger] if holds[condition])
        culprit = {
            Verdict.BLOCK: failed,
            Verdict.SKIP: skipped,
            Verdict.CANCEL: cancelled,
        }.get(verdict)
        return verdict, culprit

    # -- rules ------------------------------------------------------------------------

    def _expect(self, i: int, status: StageStatus, what: str) -> None:
        if self.status[i] is not status:
            name = self.plan.stages[i].name
            raise TransitionError(f"stage {name!r}", self.status[i], f"{what} (needs {status})")

    def _expect_waiting(self, i: int) -> None:
        if i not in self._waiting:
            name = self.plan.stages[i].name
            raise TransitionError(f"stage {name!r}", self.status[i], "retry (not waiting)")

    def _may_retry(self, i: int, now: float) -> bool:
        if self.machine.state is RunState.RUNNING:
            return True
        return i in self.teardown and now < self.teardown_deadline

    def _stop_reason(self) -> str:
        return self.stop.value if self.stop is not None else Stop.CANCEL.value

    def _move(self, i: int, target: StageStatus) -> None:
        current = self.status[i]
        if target not in STAGE_TRANSITIONS[current]:
            raise TransitionError(f"stage {self.plan.stages[i].name!r}", current, target)
        self.status[i] = target

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = seq + 1
        return seq

    def _emit(self, event: Event) -> None:
        self.out.events.append(event)

    def _push(self, i: int) -> None:
        keys = self._keys
        heapq.heappush(self._ready, i if keys is None else keys[i])

    def _pump(self, now: float) -> None:
        """Start ready stages in order while the limits allow."""
        ready = self._ready
        if not ready or self.paused:
            return
        status, keys, special = self.status, self._keys, self._special
        n = len(status)
        while ready and self._running < self._limit:
            key = ready[0]
            i = key if keys is None else key % n
            if status[i] is not _PENDING and not (i in self._to_start and self._starting(i)):
                heapq.heappop(ready)  # ended while queued (a stop)
                continue
            if self._alone >= 0:
                return  # an exclusive stage runs alone
            if self._room <= 0:
                # No room for its StageStarted: wait for the engine's resume_starts.
                self.paused = True
                out = self.out
                out.held = out.rare = True
                return
            if i in special:
                if i in self._exclusive and self._running:
                    return  # it waits for the running ones; so do the stages behind it
                if i in self._uses and not self._take(i):
                    heapq.heappop(ready)
                    continue
                if i in self._pooled_groups and not self._take_group(i):
                    heapq.heappop(ready)
                    continue
            heapq.heappop(ready)
            if i in self._members:
                self._room -= len(self._members[i])  # a StageStarted per member
                self._start_group(i, now)
            else:
                self._room -= 1
                self._start(i, now)

    def _take(self, i: int) -> bool:
        """Take all of stage `i`'s pool slots at once, or park it on a short pool."""
        free = self._free
        uses = self._uses[i]
        for pool, slots in uses:
            if free[pool] < slots:
                self._parked.setdefault(pool, []).append(i)
                return False
        for pool, slots in uses:
            free[pool] -= slots
        return True

    def _starting(self, first: int) -> tuple[int, ...]:
        """The members of queued group `first` it starts: those a stop did not end."""
        status = self.status
        return tuple(m for m in self._to_start[first] if status[m] is _PENDING)

    def _take_group(self, first: int) -> bool:
        """Take the whole-call slots of the members group `first` starts, all at once,
        or park the group on a short pool (holding nothing)."""
        need: dict[str, int] = {}
        for m in self._starting(first):
            for pool, slots in self._member_uses.get(m, ()):
                need[pool] = need.get(pool, 0) + slots
        free = self._free
        for pool, slots in need.items():
            if free[pool] < slots:
                self._parked.setdefault(pool, []).append(first)
                return False
        for pool, slots in need.items():
            free[pool] -= slots
        return True

    def _give_back(self, uses: tuple[tuple[str, int], ...]) -> None:
        """Slots come back: wake the stages parked on their pools and waiting item calls."""
        free, parked = self._free, self._parked
        for pool, slots in uses:
            free[pool] += slots
            for j in parked.pop(pool, ()):
                self._push(j)
        if self._item_uses:
            out = self.out
            out.slots_freed = True
            out.rare = True

    def _start(self, i: int, now: float) -> None:
        current = self.status[i]
        if _RUNNING not in STAGE_TRANSITIONS[current]:
            raise TransitionError(f"stage {self.plan.stages[i].name!r}", current, _RUNNING)
        self.status[i] = _RUNNING
        attempt = self.attempts[i] + 1
        self.attempts[i] = attempt
        if attempt == 1:
            self._times[i] = now
        self._running += 1
        if i in self._exclusive:
            self._alone = i
        if self._group_cancelled or i in self.teardown:
            self.shielded.add(i)
        seq = self._seq
        self._seq = seq + 1
        out = self.out
        out.events.append(StageStarted(self.run_id, seq, now, self.plan.stages[i].name, attempt))
        out.start.append(i)

    def _release(self, i: int) -> None:
        """The attempt is over: give back its slots (every exit path comes here)."""
        self._running -= 1
        self._release_slots(i)

    def _release_slots(self, i: int) -> None:
        if i == self._alone:
            self._alone = -1
        if self.shielded:
            self.shielded.discard(i)
            self._cancel_sent.discard(i)
        uses = self._uses.get(i) if self._uses else None
        if uses is not None:
            free, parked = self._free, self._parked
            for pool, slots in uses:
                free[pool] += slots
                waiters = parked.pop(pool, None)
                if waiters:
                    for j in waiters:
                        self._push(j)
            if self._item_uses:
                self.out.slots_freed = True  # item calls may be waiting for them
                self.out.rare = True

    def _cancel_waiting(self, i: int) -> None:
        if i in self._waiting:
            self._waiting.discard(i)
            self.shielded.discard(i)
            out = self.out
            out.cancel.append(i)
            out.rare = True

    def _fail(self, i: int, error: BaseException, now: float) -> None:
        self._errors[i] = error
        self._finish(i, _FAILED, now, error=error)
        if not self.keep_going and self.machine.state is RunState.RUNNING:
            self._stop(Stop.FAIL_FAST, now)

    def _finish(
        self,
        i: int,
        status: StageStatus,
        now: float,
        *,
        error: BaseException | None = None,
        blocked_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        """The one way into a terminal status: exactly one StageFinished per stage."""
        current = self.status[i]
        if status not in STAGE_TRANSITIONS[current]:
            raise TransitionError(f"stage {self.plan.stages[i].name!r}", current, status)
        self.status[i] = status
        self._unfinished -= 1
        attempts = self.attempts[i]
        duration = now - self._times[i] if attempts else 0.0
        self._times[i] = duration
        if reason is not None:
            self._reasons[i] = reason
        if blocked_by is not None:
            self._blocked_by[i] = blocked_by
        seq = self._seq
        self._seq = seq + 1
        self.out.events.append(
            StageFinished(
                self.run_id,
                seq,
                now,
                self.plan.stages[i].name,
                status,
                attempts,
                duration,
                None if error is None else describe_error(error),
                blocked_by,
                reason,
                # An item stage's final counts (none for a task stage).
                *(_item_counts(self._counts.get(i)) if self._counts else ()),
            )
        )
        if self._lead and status is not _SUCCEEDED and i in self._lead:
            # A member ended unstarted (a stop): its group may now be decided.
            self._evaluate_group(self._lead[i], now)
        downstream = self.plan.downstream[i]
        if not downstream:
            return
        if status is _SUCCEEDED or status is _CACHED:
            # The fast path: a success only makes plain stages ready.
            remaining, marks, stat, lookups = (
                self._remaining,
                self._marks,
                self.status,
                self._lookups,
            )
            for j in downstream:
                left = remaining[j] - 1
                remaining[j] = left
                if j in marks:
                    self._upstream_ended(j, i, status, now)
                elif left == 0 and stat[j] is _PENDING and not (lookups and self._look_up(j)):
                    keys = self._keys
                    heapq.heappush(self._ready, j if keys is None else keys[j])
            return
        # Other endings may end downstream stages in turn (a chain of BLOCKED): a
        # worklist, not recursion, so a 100,000-stage chain stays flat.
        ended = self._ended
        ended.append(i)
        if self._settling:
            return
        self._settling = True
        try:
            while ended:
                k = ended.pop()
                kstatus = self.status[k]
                remaining = self._remaining
                for j in self.plan.downstream[k]:
                    remaining[j] -= 1
                    self._upstream_ended(j, k, kstatus, now)
        finally:
            self._settling = False

    def _upstream_ended(self, j: int, i: int, status: StageStatus, now: float) -> None:
        """Upstream `i` of `j` ended with `status` (slow path: not a plain success)."""
        m = self._marks.get(j)
        if m is None:
            m = self._marks[j] = _Marks()
        # The first of each kind is kept: it names the culprit in the reason.
        if status is _FAILED and m.failed is None:
            m.failed = self.plan.stages[i].name
        elif status is _BLOCKED and m.failed is None:
            m.failed = self._blocked_by[i]  # the failed root, not the blocked stage
        elif status is _SKIPPED and m.skipped is None:
            m.skipped = self.plan.stages[i].name
        elif status is _CANCELLED and m.cancelled is None:
            m.cancelled = self.plan.stages[i].name
        if not m.decided and self.status[j] is _PENDING:
            self._evaluate(j, now)

    def _evaluate(self, j: int, now: float) -> None:
        """Apply stage `j`'s trigger rule to what its upstream stages did so far."""
        if j in self._lead:
            self._evaluate_group(self._lead[j], now)
            return
        m = self._marks.get(j)
        if m is None:
            m = self._marks[j] = _Marks()
        trigger = self._trigger.get(j, Trigger.ALL_SUCCESS)
        holds = {
            "failed": m.failed is not None,
            "cancelled": m.cancelled is not None,
            "waiting": self._remaining[j] > 0,
            "skipped": m.skipped is not None,
            "else": True,
        }
        verdict = next(v for condition, v in TRIGGER_RULES[trigger] if holds[condition])
        if verdict is Verdict.WAIT:
            return
        m.decided = True
        if verdict is Verdict.RUN:
            if self._still_start is not None and trigger not in self._still_start:
                self._finish(j, _CANCELLED, now, reason=self._stop_reason())
            elif j in self.teardown and now >= self.teardown_deadline:
                self._finish(j, _CANCELLED, now, reason=TEARDOWN_EXPIRED)
            elif not (self._lookups and self._look_up(j)):
                self._push(j)
        elif verdict is Verdict.BLOCK:
            assert m.failed is not None
            why = f"upstream {m.failed!r} failed"
            self._finish(j, _BLOCKED, now, blocked_by=m.failed, reason=why)
        elif verdict is Verdict.SKIP:
            if m.skipped is not None:
                why = f"upstream {m.skipped!r} skipped"
            else:
                why = "no upstream failed"
            self._finish(j, _SKIPPED, now, reason=f"trigger {trigger} not met: {why}")
        else:
            why = self.stop.value if self.stop else f"upstream {m.cancelled!r} cancelled"
            self._finish(j, _CANCELLED, now, reason=why)

    def _stop(self, stop: Stop, now: float) -> None:
        rule = STOP_RULES[stop]
        machine = self.machine
        if machine.state is not rule.run_state:
            machine.advance(rule.run_state)
        if self.stop is not Stop.CANCEL:
            self.stop = stop
        still = rule.still_start
        if self._still_start is not None:
            still = still & self._still_start
        self._still_start = still
        out = self.out
        if rule.cancels_running:
            if self._cancel_reason is None:
                self._cancel_reason = stop.value
            if not self._group_cancelled:
                self._group_cancelled = True
                out.cancel_running = True
                out.rare = True
            for i in sorted(self.shielded):
                if (
                    i not in self.teardown
                    and self.status[i] is _RUNNING
                    and i not in self._cancel_sent
                ):
                    self._cancel_sent.add(i)
                    out.cancel.append(i)
                    out.rare = True
        if stop is Stop.CLOSE and self._live:
            out.close_streams = True  # sources stop at their next yield; the rest drains
            out.rare = True
        if stop is Stop.CANCEL and self.teardown_deadline == math.inf:
            self.teardown_deadline = now + self.teardown_timeout
            out.timer = any(not self.status[i].is_terminal for i in self.teardown)
            out.rare = out.rare or out.timer
            for i in sorted(self.teardown):
                if self.status[i] is _RUNNING or i in self._waiting:
                    out.deadline.append(i)
                    out.rare = True
        reason = self._stop_reason()
        trigger = self._trigger
        status = self.status
        for i in range(len(status)):
            if status[i] is not _PENDING or i in self.teardown:
                continue
            if self.attempts[i]:
                # Started, now waiting out a retry delay (or queued for its retry).
                self._cancel_waiting(i)
                self._finish(i, _CANCELLED, now, reason=reason)
            elif trigger.get(i, Trigger.ALL_SUCCESS) not in still:
                self._finish(i, _CANCELLED, now, reason=reason)
        if stop is Stop.CANCEL and self.teardown_deadline <= now:
            self.teardown_expired(now)

    def _check_done(self, now: float) -> None:
        if self._unfinished or self._finished:
            return
        self._finished = True
        machine = self.machine
        if machine.state is RunState.RUNNING:
            machine.advance(RunState.CLOSING)
        final = RunState.CANCELLED if machine.state is RunState.CANCELLED else RunState.CLOSED
        self.finished_at = now
        self._emit(
            RunFinished(
                self.run_id,
                self._next_seq(),
                now,
                final,
                self.counts(),
                now - self.started_at,
            )
        )
        if machine.state is RunState.CLOSING:
            machine.advance(RunState.DRAINING)
        out = self.out
        out.finished = True
        out.rare = True


def _producers_first(members: tuple[int, ...], stream_input: Mapping[int, int]) -> tuple[int, ...]:
    """A group's members ordered so that every producer comes before its readers."""

    def depth(m: int) -> int:
        d = 0
        while m in stream_input:
            m = stream_input[m]
            d += 1
        return d

    return tuple(sorted(members, key=lambda m: (depth(m), m)))


def _item_counts(counts: Any) -> tuple[int | None, ...]:
    if counts is None:
        return ()
    return (
        counts.items_in,
        counts.items_out,
        counts.items_failed,
        counts.items_cancelled,
        counts.items_ok,
    )


class OutcomeColumns(NamedTuple):
    """Every stage's outcome in definition order, a sequence per field (as `StageOutcome`'s).

    Some are the scheduler's own tables: read them, never change them.
    """

    names: Sequence[str]
    statuses: Sequence[StageStatus]
    attempts: Sequence[int]
    durations: Sequence[float]
    errors: Mapping[int, BaseException]
    """The error of each FAILED stage, by index."""
    blocked_by: Mapping[int, str]
    """By index, the failed stage that blocked a stage (as `StageOutcome.blocked_by`)."""


class Outcomes(Mapping[str, StageOutcome]):
    """A read-only view of a scheduler's outcomes: `RunResult.stages`."""

    __slots__ = ("_built", "_index", "_names", "_sched")

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched
        self._names = [stage.name for stage in sched.plan.stages]
        self._index: dict[str, int] | None = None
        self._built: dict[int, StageOutcome] = {}

    def __getitem__(self, name: str) -> StageOutcome:
        index = self._index
        if index is None:
            index = self._index = {n: i for i, n in enumerate(self._names)}
        i = index[name]
        outcome = self._built.get(i)
        if outcome is None:
            outcome = self._built[i] = self._outcome(i)
        return outcome

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in (self._index if self._index is not None else self._names)

    def _outcome(self, i: int) -> StageOutcome:
        return self._sched.outcome_of(i)

    def columns(self) -> OutcomeColumns:
        """The outcomes as columns, without building them (the run history reads these)."""
        return self._sched.outcome_columns()

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __reduce__(self) -> tuple[type[dict[str, StageOutcome]], tuple[dict[str, StageOutcome]]]:
        return (dict, (dict(self.items()),))  # a plain dict: the scheduler stays behind


def start_order(plan: Plan, pools: Mapping[str, int] | None = None) -> list[str]:
    """Stage names in the order an unlimited, failure-free run starts them."""
    return failure_free_run(plan, pools).started


class FailureFreeRun(NamedTuple):
    """What an unlimited run in which every attempt succeeds does with each stage."""

    started: list[str]
    """The stages it starts, in start order."""
    skipped: dict[str, str]
    """The others (their trigger is not met): stage -> `StageFinished.reason`, in the
    order it decides them."""


def failure_free_run(plan: Plan, pools: Mapping[str, int] | None = None) -> FailureFreeRun:
    """Run the scheduler itself, every attempt succeeding in the order it started.

    A stream group's members start together and succeed in their group's order.
    Each stage is either started or skipped: with no failure, nothing is blocked or
    cancelled.
    """
    sched = Scheduler(plan, run_id="start-order", keep_going=True, pools=pools)
    sched.begin(0.0)
    names = [stage.name for stage in plan.stages]
    result = FailureFreeRun([], {})
    queue: list[int] = []
    head = 0
    while True:
        out = sched.out
        started = list(out.start)
        for event in out.events:
            if isinstance(event, StageFinished) and event.status is StageStatus.SKIPPED:
                result.skipped[event.stage] = event.reason or "skipped"
        out.clear()
        for i in started:
            members = sched.started_members(i) if sched.group_of(i) is not None else (i,)
            result.started.extend(names[m] for m in members)
        queue.extend(started)
        if head == len(queue):
            return result
        i = queue[head]
        head += 1
        if sched.group_of(i) is None:
            sched.attempt_succeeded(i, None, 0.0)
            continue
        for m in sched.started_members(i):
            sched.member_finished(
                m,
                _SUCCEEDED,
                0.0,
                value=None,
                error=None,
                blocked_by=None,
                reason=None,
                counts=_NO_ITEMS,
            )


class _NoItems:
    items_in = items_out = items_failed = items_cancelled = items_ok = 0


_NO_ITEMS = _NoItems()
