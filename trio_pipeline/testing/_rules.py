"""The scheduling rules, replayed from a run's events with `check_run`'s own logic.

Deliberately not the engine's scheduler: `Schedule` re-derives, event by event, what
the rules of the issue text allow, from nothing but the pipeline's stage options and
the events so far, so a scheduler bug cannot hide behind the same bug here.

- Triggers: a stage starts only when its rule holds for its upstream stages'
  statuses so far; it ends SKIPPED only when the rule can no longer hold and nothing
  failed (the reason says which trigger was not met), BLOCKED only when an upstream
  FAILED or was BLOCKED and its rule cares, CANCELLED unstarted only after a stop.
- Stops (fail-fast, close, cancel, seen through the events' reasons): afterwards only
  the triggers the stop still allows start, and only teardown stages retry.
- Teardown stages (`Trigger.ALWAYS`) always run, and only a cancellation's teardown
  deadline (or their own crash) cancels them.
- Pools and exclusive stages: slots in use never exceed a pool's size; an exclusive
  stage runs alone.
- Priorities: when a stage starts, no stage that was ready for its first attempt and
  could have started (its slots free, nothing exclusive in the way) outranks it:
  higher priority, or the same priority and defined earlier. And no such stage waits
  while the clock moves on with a `max_parallel` slot free (no hold-and-wait).
- Retries: a retry's delay is the policy's (within its jitter) and the retry starts
  no earlier; a failed attempt with retries left is retried unless `retry_on`
  rejects its error or the run was stopped. A timeout fires no earlier than the
  attempt's `StageStarted.time` plus the stage's timeout.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping

from .._events import StageFinished, StageRetrying, StageStarted
from .._graph import Pipeline, Stage
from .._options import RetryPolicy, Trigger
from .._result import RunResult
from .._state import StageStatus
from ._items import stream_units

_S = StageStatus
# CACHED (a result-cache hit) counts as a success once it exists.
_OK = frozenset(s for s in StageStatus if s is _S.SUCCEEDED or str(s) == "cached")
_FAILED = frozenset({_S.FAILED, _S.BLOCKED})

# The StageFinished.reason of the stages a stop ends, and what each stop still starts.
_STOP_REASONS = {
    "fail-fast stop": "fail-fast",
    "close requested": "close",
    "run cancelled": "cancel",
}
_STILL_START: Mapping[str, frozenset[Trigger]] = {
    "fail-fast": frozenset({Trigger.ALWAYS, Trigger.ALL_DONE, Trigger.ONE_FAILED}),
    "close": frozenset({Trigger.ALWAYS}),
    "cancel": frozenset({Trigger.ALWAYS}),
}
TEARDOWN_EXPIRED = "teardown_timeout passed"

_EPSILON = 1e-9


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= _EPSILON * max(1.0, abs(a), abs(b))


class RuleError(AssertionError):
    """A broken scheduling rule; `check_run` re-raises it with its invariant name."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"invariant broken: {invariant}: {detail}")


def can_run(trigger: Trigger, upstream: Iterable[StageStatus | None]) -> bool:
    """Whether a stage with `trigger` may start given its upstreams' statuses (None: not done)."""
    ups = list(upstream)
    done = all(s is not None for s in ups)
    if trigger is Trigger.ALL_SUCCESS:
        return all(s in _OK for s in ups)
    if trigger is Trigger.NONE_FAILED:
        return done and all(s in _OK or s is _S.SKIPPED for s in ups)
    if trigger is Trigger.ONE_FAILED:
        return any(s in _FAILED for s in ups)
    return done  # ALL_DONE, ALWAYS


def may_skip(trigger: Trigger, upstream: Iterable[StageStatus | None]) -> bool:
    """Whether the rule can no longer hold, with nothing failed: the stage may end SKIPPED."""
    ups = list(upstream)
    if any(s is None for s in ups) or any(s in _FAILED for s in ups):
        return False
    if trigger is Trigger.ALL_SUCCESS:
        return any(s is _S.SKIPPED for s in ups)
    return trigger is Trigger.ONE_FAILED


def expected_delay(policy: RetryPolicy, retry: int) -> tuple[float, float]:
    """The bounds of the delay before retry number `retry` (from 1), jitter included."""
    delay = policy.delay
    if isinstance(delay, tuple):
        base = delay[min(retry, len(delay)) - 1]
    elif delay == 0:
        return 0.0, 0.0
    else:
        try:
            base = delay * policy.backoff ** (retry - 1)
        except OverflowError:
            base = math.inf
    if policy.max_delay is not None:
        base = min(base, policy.max_delay)
    return base * (1 - policy.jitter), base * (1 + policy.jitter)


def _retryable(policy: RetryPolicy, error: BaseException | None) -> bool | None:
    """Whether `retry_on` accepts `error` (None: cannot tell, e.g. a predicate)."""
    if error is None:
        return None
    retry_on = policy.retry_on
    if retry_on is None:
        return isinstance(error, Exception)
    if isinstance(retry_on, type | tuple):
        return isinstance(error, retry_on)
    return None


class Schedule:
    """Replays one run's stage events and raises `RuleError` at the first broken rule.

    `check_run` feeds it every stage event in order, after its own bookkeeping
    checks (numbering, one StageFinished per stage, ...) passed for that event.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        result: RunResult,
        *,
        keep_going: bool | None,
        pools: Mapping[str, int] | None,
        stopped: bool | None,
        max_parallel: int | None = None,
    ) -> None:
        self.stages: Mapping[str, Stage] = pipeline.stages
        self.order = {name: i for i, name in enumerate(self.stages)}
        self.result = result
        self.keep_going = keep_going
        self.stopped = stopped
        self.max_parallel = max_parallel
        self.free = dict(pipeline.pools if pools is None else pools)
        self.size = dict(self.free)
        self.downstream: dict[str, list[str]] = {name: [] for name in self.stages}
        for name, stage in self.stages.items():
            for up in stage.after:
                self.downstream[up].append(name)
        # Stream groups (item stages): members start as one unit, named by its first
        # member; each member's trigger rule reads its own dependencies.
        self.units, self.stream_input = stream_units(pipeline)
        self.members: dict[str, list[str]] = {}
        for member, unit in self.units.items():
            self.members.setdefault(unit, []).append(member)
        self.started_units: set[str] = set()
        # Pools item calls take (each= stages' uses=): not visible in the events
        # (`PoolTracker` checks them from inside the calls).
        self.item_pools = {
            pool
            for stage in self.stages.values()
            if stage.items is not None and stage.items.kind == "each"
            for pool in stage.options.uses
        }
        self.status: dict[str, StageStatus] = {}
        self.running: set[str] = set()
        self.alone: str | None = None  # the running exclusive stage (or stream group)
        self.started: set[str] = set()
        self.retry_due: dict[str, float] = {}
        self.attempt_started: dict[str, float] = {}
        self.stops: list[str] = []
        self.still: frozenset[Trigger] | None = None  # None: no stop yet
        # Stages the cache looks up first (issue 14): the lookup holds no slot and
        # answers later, so such a stage may start after lower-ranked ones.
        self.looked_up = {
            name
            for name, stage in self.stages.items()
            if (getattr(pipeline, "cache", None) if stage.cache is None else stage.cache.cache)
            or (stage.cache is not None and (stage.cache.deps or stage.cache.outs))
        }
        # Ready for a first attempt; `_ranked` orders them (priority, then definition),
        # holding stale entries that `ready` no longer has.
        self.ready: set[str] = set()
        self._ranked: list[tuple[int, int, str]] = []
        for name in self.stages:
            if self._may_start(name):
                self._make_ready(name)

    # -- what the rules say ---------------------------------------------------------

    def _trigger(self, name: str) -> Trigger:
        return self.stages[name].options.trigger

    def _after(self, name: str) -> list[str]:
        """What `name`'s trigger rule reads: its dependencies (a stream reader's include
        the stream it reads)."""
        return list(self.stages[name].after)

    def _upstream(self, name: str) -> list[StageStatus | None]:
        """The statuses its rule reads; a stream input that has not ended is live (it
        runs with its reader), which counts as a success."""
        producer = self.stream_input.get(name)
        return [
            _S.SUCCEEDED if up == producer and up not in self.status else self.status.get(up)
            for up in self._after(name)
        ]

    def _may_start(self, name: str) -> bool:
        """Ready for its first attempt: unstarted, its rule holds, no stop forbids it.

        A stream group member: whether its group may start (`_unit_may_start`)."""
        unit = self.units.get(name)
        if unit is not None:
            return self._unit_may_start(unit)
        if name in self.started or name in self.status:
            return False
        trigger = self._trigger(name)
        if self.still is not None and trigger not in self.still:
            return False
        return can_run(trigger, self._upstream(name))

    def _unit_live(self, unit: str) -> list[str]:
        """The members of unit `unit` that have not ended and that no stop forbids."""
        still = self.still
        return [
            m
            for m in self.members[unit]
            if m not in self.status and (still is None or self._trigger(m) in still)
        ]

    def _unit_may_start(self, unit: str) -> bool:
        """A stream group starts once every member's rule decided: the members that do
        not run have ended (before it starts), and the rule of each other one holds."""
        if unit in self.started_units:
            return False
        live = self._unit_live(unit)
        return bool(live) and all(can_run(self._trigger(m), self._upstream(m)) for m in live)

    def _fits(self, name: str) -> bool:
        """Whether `name` could start now as far as pools and exclusive stages go."""
        if self._in_the_way(name):
            return False
        uses = self._unit_uses(name) if name in self.members else self._uses(name)
        if any(pool in self.item_pools for pool in uses):
            return False  # item calls may hold these slots: events do not show it
        return all(self.free.get(pool, 0) >= n for pool, n in uses.items())

    def _uses(self, name: str) -> Mapping[str, int]:
        """Slots held for the whole attempt or call (an each= stage's are per item call)."""
        stage = self.stages[name]
        if stage.items is not None and stage.items.kind == "each":
            return {}
        return stage.options.uses

    def _unit_uses(self, unit: str) -> Mapping[str, int]:
        """What a stream group takes at once when it starts: its live members' slots."""
        need: dict[str, int] = {}
        for m in self._unit_live(unit):
            for pool, n in self._uses(m).items():
                need[pool] = need.get(pool, 0) + n
        return need

    def _exclusive(self, name: str) -> bool:
        """Exclusive: the stage, or for a stream group member, any member of its group."""
        unit = self.units.get(name)
        if unit is None:
            return self.stages[name].options.exclusive
        return any(self.stages[m].options.exclusive for m, u in self.units.items() if u == unit)

    def _in_the_way(self, name: str) -> bool:
        """Whether an exclusive stage (or group) keeps `name` from starting, or the reverse."""
        unit = self.units.get(name, name)
        others = [n for n in self.running if self.units.get(n, n) != unit]
        alone = self.alone
        if alone is not None and self.units.get(alone, alone) != unit:
            return True
        return self._exclusive(name) and bool(others)

    def _rank(self, name: str) -> tuple[int, int]:
        """Priority (higher first), then definition order; a stream group ranks by its
        best member's priority, then its first member's place."""
        members = self.members.get(name)
        if members is not None:
            return -max(self.stages[m].options.priority for m in members), self.order[name]
        return -self.stages[name].options.priority, self.order[name]

    def _make_ready(self, name: str) -> None:
        name = self.units.get(name, name)  # a stream group is ready as one, by its first member
        if name in self.looked_up:
            return  # ready only once its lookup missed, which no event shows
        self.ready.add(name)
        heapq.heappush(self._ranked, (*self._rank(name), name))

    def _passed_over(self, name: str) -> str | None:
        """A ready stage that outranks `name` and could have started instead, if any."""
        ranked, ready = self._ranked, self.ready
        while ranked and ranked[0][2] not in ready:
            heapq.heappop(ranked)
        rank = self._rank(name)
        if not ranked or ranked[0][:2] >= rank:
            return None  # the usual case: `name` is the best ready stage
        # Rare: better stages wait (for pool slots, or behind an exclusive one).
        for *key, other in sorted(ranked):
            if tuple(key) >= rank:
                break
            if other in ready and self._fits(other):
                return other
        return None

    def _stop(self, kind: str) -> None:
        if kind not in self.stops:
            self.stops.append(kind)
        still = _STILL_START[kind]
        self.still = still if self.still is None else self.still & still
        self.ready = {name for name in self.ready if self._may_start(name)}

    def time_passes(self, now: float) -> None:
        """The clock moves on to `now`: no stage that could have started may still wait.

        Checked only when the limit is known (`max_parallel`). A stage waiting for pool
        slots holds nothing, so the stages behind it that fit must not wait; those
        behind a waiting exclusive stage may (it waits for the running ones to end).
        """
        running = {self.units.get(n, n) for n in self.running}  # a stream group is one unit
        if self.max_parallel is None or len(running) >= self.max_parallel:
            return
        ranked, ready = self._ranked, self.ready
        while ranked and ranked[0][2] not in ready:
            heapq.heappop(ranked)
        if not ranked:
            return
        for *_, name in sorted(ranked) if len(ranked) > 1 else ranked:
            if name not in ready:
                continue
            if self._fits(name):
                raise RuleError(
                    "a ready stage that can take its slots starts at once",
                    f"{name!r} was ready and fit but still waited at t={now}"
                    f" ({len(running)} of {self.max_parallel} running)",
                )
            if self._exclusive(name):
                return

    # -- events ---------------------------------------------------------------------

    def started_attempt(self, event: StageStarted) -> None:
        name = event.stage
        options = self.stages[name].options
        trigger = options.trigger
        if event.attempt == 1:
            self._check_first_start(event, trigger)
        else:
            if self.still is not None and trigger is not Trigger.ALWAYS:
                raise RuleError(
                    "only a running run retries (teardown stages excepted)",
                    f"{name!r} attempt {event.attempt} after a {self.stops[0]} stop",
                )
            due = self.retry_due.pop(name, -math.inf)
            if event.time < due and not _close(event.time, due):
                raise RuleError(
                    "a retry starts only after its delay",
                    f"{name!r} attempt {event.attempt} at {event.time}, due at {due}",
                )
        if self._in_the_way(name):
            raise RuleError(
                "an exclusive stage runs alone",
                f"{name!r} started at seq={event.seq} while {sorted(self.running)} ran",
            )
        for pool, n in self._uses(name).items():
            if pool not in self.free:
                raise RuleError("stages use only the run's pools", f"{name!r} uses {pool!r}")
            if self.free[pool] < n:
                used = self.size[pool] - self.free[pool]
                raise RuleError(
                    "pool limits are never exceeded",
                    f"{name!r} took {n} of pool {pool!r} ({used} of {self.size[pool]} in use)"
                    f" at seq={event.seq}",
                )
        unit = self.units.get(name)
        if unit is None or unit not in self.started_units:  # a group: at its first start
            other = self._passed_over(name if unit is None else unit)
            if other is not None:
                raise RuleError(
                    "ready stages start by priority, then definition order",
                    f"{name!r} started at seq={event.seq} while {other!r} was ready and fit",
                )
        if unit is not None:
            self.started_units.add(unit)
            self.ready.discard(unit)
        self.ready.discard(name)
        self.started.add(name)
        self.running.add(name)
        self.attempt_started[name] = event.time
        if self._exclusive(name):
            self.alone = self.units.get(name, name)  # a stream group runs alone as one
        for pool, n in self._uses(name).items():
            self.free[pool] -= n

    def _check_first_start(self, event: StageStarted, trigger: Trigger) -> None:
        name = event.stage
        if self.still is not None and trigger not in self.still:
            if self.stops[0] == "fail-fast":
                invariant = "fail-fast: no stage starts after a failure"
            else:
                invariant = f"after a {self.stops[0]} stop only teardown stages start"
            raise RuleError(invariant, f"{name!r} ({trigger}) started at seq={event.seq}")
        unit = self.units.get(name)
        if unit is not None and unit not in self.started_units and not self._unit_may_start(unit):
            raise RuleError(
                "a stream group starts once every member's trigger rule decided",
                f"{name!r} started at seq={event.seq} while members of its group"
                f" {self.members[unit]} still waited",
            )
        upstream = self._upstream(name)
        if not can_run(trigger, upstream):
            statuses = dict(zip(self._after(name), upstream, strict=True))
            invariant = (
                "a stage starts only after every upstream SUCCEEDED"
                if trigger is Trigger.ALL_SUCCESS
                else f"a stage starts only when its trigger rule holds ({trigger})"
            )
            raise RuleError(invariant, f"{name!r} started while upstream was {statuses}")

    def _release(self, name: str) -> None:
        if name not in self.running:
            return
        self.running.discard(name)
        unit = self.units.get(name, name)
        if self.alone == unit and not any(self.units.get(n, n) == unit for n in self.running):
            self.alone = None  # (a stream group's last running member ended)
        for pool, n in self._uses(name).items():
            self.free[pool] += n

    def _check_timeout(self, name: str, error: str | None, now: float) -> None:
        """A timeout fires no earlier than the attempt's StageStarted.time + timeout."""
        timeout = self.stages[name].options.timeout
        if timeout is None or not (error or "").startswith("StageTimeout"):
            return
        deadline = self.attempt_started.get(name, -math.inf) + timeout
        if now < deadline and not _close(now, deadline):
            raise RuleError(
                "a timeout fires no earlier than StageStarted.time + timeout",
                f"{name!r} timed out at {now}, its deadline {deadline}",
            )

    def retrying(self, event: StageRetrying) -> None:
        name = event.stage
        self._check_timeout(name, event.error, event.time)
        policy = self.stages[name].options.retry
        if event.attempt > policy.retries:
            raise RuleError(
                "a stage is retried at most `retries` times",
                f"{name!r} retries after attempt {event.attempt} of {policy.retries + 1}",
            )
        low, high = expected_delay(policy, event.attempt)
        delay = event.delay
        if not (low <= delay <= high or _close(delay, low) or _close(delay, high)):
            raise RuleError(
                "retry delays follow the stage's RetryPolicy",
                f"{name!r} retry {event.attempt}: delay {event.delay}, policy says"
                f" {low if low == high else (low, high)}",
            )
        self._release(name)
        self.retry_due[name] = event.time + event.delay

    def finished(self, event: StageFinished) -> None:
        name = event.stage
        reason = getattr(event, "reason", None)
        kind = _STOP_REASONS.get(reason or "")
        if kind is None and reason is not None and reason.startswith("raised "):
            kind = "cancel"  # a crashing stage cancels the run
        stopped_before = bool(self.stops)
        if kind is not None:
            self._stop(kind)
        trigger = self._trigger(name)
        upstream = self._upstream(name)
        status = event.status
        if trigger is Trigger.ALWAYS:
            self._check_teardown_end(event, reason)
        if not event.attempt:
            self._check_unstarted_end(event, trigger, upstream, reason, stopped_before)
        if status is _S.FAILED:
            self._check_timeout(name, event.error, event.time)
            if not stopped_before:
                self._check_retries_used(event)
        self._release(name)
        self.retry_due.pop(name, None)
        self.ready.discard(name)
        self.status[name] = status
        if status is _S.FAILED and self.keep_going is False and not self.stops:
            self._stop("fail-fast")
        unit = self.units.get(name)
        if unit is not None and unit not in self.ready and self._unit_may_start(unit):
            self._make_ready(unit)  # the member ended before its group started
        for down in self.downstream[name]:
            if self.units.get(down, down) not in self.ready and self._may_start(down):
                self._make_ready(down)

    def _check_unstarted_end(
        self,
        event: StageFinished,
        trigger: Trigger,
        upstream: list[StageStatus | None],
        reason: str | None,
        stopped_before: bool,
    ) -> None:
        name, status = event.stage, event.status
        statuses = dict(zip(self._after(name), upstream, strict=True))
        if status is _S.SKIPPED:
            if not may_skip(trigger, upstream):
                raise RuleError(
                    "SKIPPED only when the trigger rule can no longer hold and nothing failed",
                    f"{name!r} ({trigger}) skipped with upstream {statuses}",
                )
            if not reason or not reason.startswith(f"trigger {trigger.value} not met"):
                raise RuleError(
                    "a SKIPPED stage's reason names its trigger",
                    f"{name!r}: reason {reason!r}, trigger {trigger.value}",
                )
        elif status is _S.BLOCKED:
            if trigger not in (Trigger.ALL_SUCCESS, Trigger.NONE_FAILED) or not any(
                s in _FAILED for s in upstream
            ):
                raise RuleError(
                    "BLOCKED only when an upstream FAILED or was BLOCKED and the trigger cares",
                    f"{name!r} ({trigger}) blocked with upstream {statuses}",
                )
            culprit = event.blocked_by
            if reason is not None and repr(culprit) not in reason:
                raise RuleError(
                    "a BLOCKED stage's reason names the failed stage",
                    f"{name!r}: reason {reason!r}, blocked_by {culprit!r}",
                )
        elif status is _S.CANCELLED:
            if (
                self.still is not None
                and trigger in self.still
                and can_run(trigger, upstream)
                and reason != TEARDOWN_EXPIRED
            ):
                raise RuleError(
                    "after a stop a stage whose trigger rule fires still runs",
                    f"{name!r} ({trigger}) cancelled after a {self.stops[0]} stop with"
                    f" upstream {statuses}",
                )
            cancelled_up = any(s is _S.CANCELLED for s in upstream)
            stopped = stopped_before or bool(self.stops) or cancelled_up
            if self.stopped is False and not stopped and reason != TEARDOWN_EXPIRED:
                raise RuleError(
                    "stages end CANCELLED only when the run is stopped",
                    f"{name!r} cancelled before it started, with no stop",
                )

    def _check_teardown_end(self, event: StageFinished, reason: str | None) -> None:
        name, status = event.stage, event.status
        if not event.attempt and reason != TEARDOWN_EXPIRED:
            raise RuleError(
                "teardown stages always run",
                f"{name!r} ended {status} without starting (reason {reason!r})",
            )
        if status is _S.CANCELLED and not (
            "cancel" in self.stops
            or reason == TEARDOWN_EXPIRED
            or (reason is not None and reason.startswith("raised "))
        ):
            raise RuleError(
                "only a cancellation's teardown deadline cancels a teardown stage",
                f"{name!r} cancelled after stops {self.stops} (reason {reason!r})",
            )

    def _check_retries_used(self, event: StageFinished) -> None:
        name = event.stage
        policy = self.stages[name].options.retry
        if self.stopped is not False or event.attempt > policy.retries:
            return
        if self.stages[name].items is not None:
            return  # an item stage retries per item call, not as a stage
        outcome = self.result.stages.get(name)
        if _retryable(policy, None if outcome is None else outcome.error):
            raise RuleError(
                "a failed attempt with retries left is retried",
                f"{name!r} FAILED at attempt {event.attempt} of {policy.retries + 1}:"
                f" {event.error}",
            )
