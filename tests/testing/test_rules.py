"""check_run's scheduling rules, on synthetic event streams: each rule passes a stream
that keeps it and names itself for a stream that breaks it.

The streams are written by hand (`Script`), not recorded from the engine, so every
rule is tested whether or not the engine implements the feature yet.
"""

# Scripts are one-line lambdas: a def per stream would hide the streams among the names.
# ruff: noqa: E731

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

import trio_pipeline as tp
from trio_pipeline._result import count_statuses
from trio_pipeline.testing import check_run
from trio_pipeline.testing._rules import can_run, expected_delay, may_skip

S = tp.StageStatus
T = tp.Trigger
_HAS_REASON = "reason" in {f.name for f in dataclasses.fields(tp.StageFinished)}


@dataclasses.dataclass(frozen=True, slots=True)
class _FinishedWithReason(tp.StageFinished):
    # Until the engine's StageFinished has `reason` (issue 10), the streams carry it here.
    reason: str | None = None


async def _noop(ctx: tp.StageContext) -> None:
    pass


def pipeline(*stages: tuple[str, list[str], dict[str, Any]], pools: Any = None) -> tp.Pipeline:
    pipe = tp.Pipeline("p", pools=pools)
    for name, after, options in stages:
        pipe.add_stage(name, _noop, after=after, **options)
    return pipe


class Script:
    """Writes a run's events one call at a time, with `seq` and the clock filled in."""

    def __init__(self, pipe: tp.Pipeline) -> None:
        self.pipe = pipe
        self.now = 0.0
        self.events: list[tp.Event] = [tp.RunStarted("r", 0, 0.0, "p", tuple(pipe.stages))]
        self.errors: dict[str, BaseException] = {}
        self.attempts: dict[str, int] = {}

    def at(self, now: float) -> Script:
        self.now = now
        return self

    def _seq(self) -> int:
        return len(self.events)

    def start(self, *names: str) -> Script:
        for name in names:
            attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
            self.events.append(tp.StageStarted("r", self._seq(), self.now, name, attempt))
        return self

    def retry(self, name: str, delay: float, error: str = "E: x") -> Script:
        attempt = self.attempts[name]
        event = tp.StageRetrying("r", self._seq(), self.now, name, attempt, error, delay)
        self.events.append(event)
        return self

    def end(
        self,
        name: str,
        status: tp.StageStatus = S.SUCCEEDED,
        *,
        reason: str | None = None,
        blocked_by: str | None = None,
        error: BaseException | None = None,
    ) -> Script:
        if status is S.FAILED:
            self.errors[name] = error or ValueError("boom")
        fields: dict[str, Any] = {
            "run_id": "r",
            "seq": self._seq(),
            "time": self.now,
            "stage": name,
            "status": status,
            "attempt": self.attempts.get(name, 0),
            "duration": 0.0,
            "error": "ValueError: boom" if status is S.FAILED else None,
            "blocked_by": blocked_by,
        }
        kind: Callable[..., tp.StageFinished] = (
            tp.StageFinished if _HAS_REASON else _FinishedWithReason
        )
        self.events.append(kind(**fields, reason=reason))
        return self

    def finish(self, state: tp.RunState = tp.RunState.CLOSED) -> tuple[list[tp.Event], Any]:
        done = [e for e in self.events if isinstance(e, tp.StageFinished)]
        counts = count_statuses(e.status for e in done)
        by_name = {e.stage: e for e in done}
        outcomes = {
            name: tp.StageOutcome(
                status=by_name[name].status,
                error=self.errors.get(name),
                attempts=by_name[name].attempt,
                blocked_by=by_name[name].blocked_by,
            )
            for name in self.pipe.stages
        }
        self.events.append(tp.RunFinished("r", self._seq(), self.now, state, counts, self.now))
        result = tp.RunResult(
            state=state,
            stages=MappingProxyType(outcomes),
            counts=MappingProxyType(counts),
            run_id="r",
            duration=self.now,
            sink_errors=MappingProxyType({}),
            undelivered=MappingProxyType({}),
        )
        return self.events, result


Case = tuple[tp.Pipeline, Callable[[Script], Script], dict[str, Any]]


def _check(case: Case) -> None:
    pipe, write, options = case
    events, result = write(Script(pipe)).finish(options.pop("state", tp.RunState.CLOSED))
    check_run(events, pipe, result, **options)


def _broken(case: Case, invariant: str) -> None:
    with pytest.raises(AssertionError, match=f"invariant broken: {invariant}"):
        _check(case)


# -- trigger rules ----------------------------------------------------------------------

FAN_IN: list[tuple[str, list[str], dict[str, Any]]] = [("a", [], {}), ("b", [], {})]


def _two_up(trigger: T, **options: Any) -> tp.Pipeline:
    return pipeline(*FAN_IN, ("c", ["a", "b"], {"trigger": trigger, **options}))


def test_all_done_waits_for_every_upstream_whatever_it_did() -> None:
    pipe = _two_up(T.ALL_DONE)
    _check(
        (
            pipe,
            lambda s: s.start("a", "b").end("a", S.FAILED).end("b").start("c").end("c"),
            {"keep_going": True},
        )
    )
    _broken(
        (pipe, lambda s: s.start("a", "b").end("a", S.FAILED).start("c").end("c").end("b"), {}),
        r"a stage starts only when its trigger rule holds \(all_done\)",
    )


def test_one_failed_runs_at_the_first_failure_and_is_skipped_without_one() -> None:
    pipe = _two_up(T.ONE_FAILED)
    early = lambda s: s.start("a", "b").end("a", S.FAILED).start("c").end("c").end("b")
    _check((pipe, early, {"keep_going": True}))
    skipped = "trigger one_failed not met: no upstream failed"
    _check(
        (
            pipe,
            lambda s: s.start("a", "b").end("a").end("b").end("c", S.SKIPPED, reason=skipped),
            {},
        )
    )
    _broken(
        (pipe, lambda s: s.start("a", "b").end("a").start("c").end("c").end("b"), {}),
        r"a stage starts only when its trigger rule holds \(one_failed\)",
    )
    _broken(
        (
            pipe,
            lambda s: (
                s.start("a", "b").end("a", S.FAILED).end("b").end("c", S.SKIPPED, reason=skipped)
            ),
            {"keep_going": True},
        ),
        "SKIPPED only when the trigger rule can no longer hold and nothing failed",
    )


def test_none_failed_runs_past_skips_and_is_blocked_by_a_failure() -> None:
    pipe = pipeline(
        ("a", [], {"trigger": T.ONE_FAILED}),  # no upstream: always SKIPPED
        ("b", [], {}),
        ("c", ["a", "b"], {"trigger": T.NONE_FAILED}),
    )
    skip_a = "trigger one_failed not met: no upstream failed"
    _check(
        (
            pipe,
            lambda s: s.end("a", S.SKIPPED, reason=skip_a).start("b").end("b").start("c").end("c"),
            {},
        )
    )
    blocked = lambda s: (
        s.end("a", S.SKIPPED, reason=skip_a)
        .start("b")
        .end("b", S.FAILED)
        .end("c", S.BLOCKED, blocked_by="b", reason="upstream 'b' failed")
    )
    _check((pipe, blocked, {"keep_going": True}))
    _broken(
        (
            pipe,
            lambda s: (
                s.end("a", S.SKIPPED, reason=skip_a)
                .start("b")
                .end("b", S.FAILED)
                .start("c")
                .end("c")
            ),
            {"keep_going": True},
        ),
        r"a stage starts only when its trigger rule holds \(none_failed\)",
    )


def test_all_success_is_skipped_by_a_skip_but_blocked_by_a_failure() -> None:
    pipe = pipeline(
        ("a", [], {"trigger": T.ONE_FAILED}),
        ("b", [], {}),
        ("c", ["a", "b"], {}),
    )
    skip_a = "trigger one_failed not met: no upstream failed"
    skip_c = "trigger all_success not met: upstream 'a' skipped"
    _check(
        (
            pipe,
            lambda s: (
                s.end("a", S.SKIPPED, reason=skip_a)
                .start("b")
                .end("b")
                .end("c", S.SKIPPED, reason=skip_c)
            ),
            {},
        )
    )
    _broken(
        (
            pipe,
            lambda s: s.end("a", S.SKIPPED, reason=skip_a).start("b").end("b").end("c", S.SKIPPED),
            {},
        ),
        "a SKIPPED stage's reason names its trigger",
    )
    # A failure is stronger than a skip.
    _broken(
        (
            pipe,
            lambda s: (
                s.end("a", S.SKIPPED, reason=skip_a)
                .start("b")
                .end("b", S.FAILED)
                .end("c", S.SKIPPED, reason=skip_c)
            ),
            {"keep_going": True},
        ),
        "SKIPPED only when the trigger rule can no longer hold and nothing failed",
    )


def test_blocked_only_where_the_trigger_cares_about_failures() -> None:
    pipe = _two_up(T.ALL_DONE)
    _broken(
        (
            pipe,
            lambda s: (
                s.start("a", "b").end("a", S.FAILED).end("b").end("c", S.BLOCKED, blocked_by="a")
            ),
            {"keep_going": True},
        ),
        "BLOCKED only when an upstream FAILED or was BLOCKED and the trigger cares",
    )
    plain = pipeline(("a", [], {}), ("c", ["a"], {}))
    _broken(
        (
            plain,
            lambda s: (
                s.start("a")
                .end("a", S.FAILED)
                .end("c", S.BLOCKED, blocked_by="a", reason="upstream 'x' failed")
            ),
            {},
        ),
        "a BLOCKED stage's reason names the failed stage",
    )


def test_the_rule_tables_read_as_the_issue_says() -> None:
    ok, bad, skip, blocked = S.SUCCEEDED, S.FAILED, S.SKIPPED, S.BLOCKED
    assert can_run(T.ALL_SUCCESS, [ok, ok])
    assert not can_run(T.ALL_SUCCESS, [ok, skip])
    assert can_run(T.NONE_FAILED, [ok, skip])
    assert not can_run(T.NONE_FAILED, [ok, blocked])
    assert not can_run(T.NONE_FAILED, [ok, None])
    assert can_run(T.ONE_FAILED, [blocked, None])
    assert not can_run(T.ONE_FAILED, [ok, skip])
    assert can_run(T.ALL_DONE, [bad, skip])
    assert not can_run(T.ALL_DONE, [bad, None])
    assert can_run(T.ALWAYS, [])
    assert can_run(T.ALL_SUCCESS, [])
    assert may_skip(T.ALL_SUCCESS, [ok, skip])
    assert not may_skip(T.ALL_SUCCESS, [bad, skip])
    assert may_skip(T.ONE_FAILED, [ok, skip])
    assert not may_skip(T.ONE_FAILED, [ok, None])
    assert not may_skip(T.NONE_FAILED, [skip])
    assert not may_skip(T.ALWAYS, [skip])


# -- stops and teardown -----------------------------------------------------------------


def test_after_a_fail_fast_stop_only_always_all_done_and_one_failed_start() -> None:
    pipe = pipeline(
        ("bad", [], {}),
        ("slow", [], {}),
        ("join", ["slow"], {"trigger": T.ALL_DONE}),
        ("plain", ["slow"], {}),
    )
    ok = lambda s: (
        s.start("bad", "slow")
        .end("bad", S.FAILED)
        .end("slow", S.CANCELLED, reason="fail-fast stop")
        .start("join")
        .end("join")
        .end("plain", S.CANCELLED, reason="fail-fast stop")
    )
    _check((pipe, ok, {"keep_going": False, "stopped": False}))
    late = lambda s: (
        s.start("bad", "slow")
        .end("bad", S.FAILED)
        .end("slow")
        .start("plain", "join")
        .end("plain")
        .end("join")
    )
    _broken((pipe, late, {"keep_going": False}), "fail-fast: no stage starts after a failure")
    join_cancelled = lambda s: (
        s.start("bad", "slow")
        .end("bad", S.FAILED)
        .end("slow", S.CANCELLED, reason="fail-fast stop")
        .end("join", S.CANCELLED, reason="fail-fast stop")
        .end("plain", S.CANCELLED, reason="fail-fast stop")
    )
    _broken(
        (pipe, join_cancelled, {"keep_going": False}),
        "after a stop a stage whose trigger rule fires still runs",
    )


def test_after_a_close_only_teardown_stages_start_and_nothing_retries() -> None:
    pipe = pipeline(
        ("a", [], {"retries": 2}),
        ("join", ["a"], {"trigger": T.ALL_DONE}),
        ("teardown", ["a"], {"trigger": T.ALWAYS}),
        ("other", [], {}),
    )
    close = "close requested"
    ok = lambda s: (
        s.start("a")
        .end("other", S.CANCELLED, reason=close)
        .at(1)
        .end("a")
        .end("join", S.CANCELLED, reason=close)
        .start("teardown")
        .end("teardown")
    )
    _check((pipe, ok, {}))
    join_runs = lambda s: (
        s.start("a")
        .end("other", S.CANCELLED, reason=close)
        .at(1)
        .end("a")
        .start("join", "teardown")
        .end("join")
        .end("teardown")
    )
    _broken((pipe, join_runs, {}), "after a close stop only teardown stages start")
    retried = lambda s: (
        s.start("a")
        .end("other", S.CANCELLED, reason=close)
        .retry("a", 0.0)
        .start("a")
        .end("a")
        .end("join", S.CANCELLED, reason=close)
        .start("teardown")
        .end("teardown")
    )
    _broken((pipe, retried, {}), r"only a running run retries \(teardown stages excepted\)")


def test_teardown_stages_always_run_and_only_a_cancel_deadline_stops_them() -> None:
    pipe = pipeline(("bad", [], {}), ("teardown", ["bad"], {"trigger": T.ALWAYS}))
    ran = lambda s: s.start("bad").end("bad", S.FAILED).start("teardown").end("teardown")
    _check((pipe, ran, {"keep_going": False}))
    _broken(
        (
            pipe,
            lambda s: (
                s.start("bad")
                .end("bad", S.FAILED)
                .end("teardown", S.CANCELLED, reason="fail-fast stop")
            ),
            {},
        ),
        "teardown stages always run",
    )
    _broken(
        (
            pipe,
            lambda s: (
                s.start("bad")
                .end("bad", S.FAILED)
                .start("teardown")
                .end("teardown", S.CANCELLED, reason="fail-fast stop")
            ),
            {"keep_going": False},
        ),
        "only a cancellation's teardown deadline cancels a teardown stage",
    )
    expired = "teardown_timeout passed"
    cut_off = lambda s: (
        s.start("bad")
        .end("bad", S.CANCELLED, reason="run cancelled")
        .start("teardown")
        .at(30)
        .end("teardown", S.CANCELLED, reason=expired)
    )
    _check((pipe, cut_off, {"state": tp.RunState.CANCELLED}))
    never = lambda s: (
        s.start("bad")
        .end("teardown", S.CANCELLED, reason=expired)
        .at(31)
        .end("bad", S.CANCELLED, reason="run cancelled")
    )
    _check((pipe, never, {"state": tp.RunState.CANCELLED}))


def test_nothing_ends_cancelled_in_a_run_nobody_stopped() -> None:
    pipe = pipeline(("a", [], {}), ("b", [], {}))
    cancelled = lambda s: s.start("a").end("a").end("b", S.CANCELLED)
    _check((pipe, cancelled, {"stopped": None}))
    _broken(
        (pipe, cancelled, {"stopped": False}), "stages end CANCELLED only when the run is stopped"
    )


# -- pools, exclusive stages, priorities -------------------------------------------------


def test_pool_slots_are_never_overdrawn() -> None:
    pipe = pipeline(("a", [], {"uses": {"gpu": 2}}), ("b", [], {"uses": "gpu"}), pools={"gpu": 2})
    _check((pipe, lambda s: s.start("a").end("a").start("b").end("b"), {}))
    _broken(
        (pipe, lambda s: s.start("a", "b").end("a").end("b"), {}),
        "pool limits are never exceeded",
    )
    # The run's pools= overrides the pipeline's.
    _check((pipe, lambda s: s.start("a", "b").end("a").end("b"), {"pools": {"gpu": 3}}))
    _broken(
        (pipe, lambda s: s.start("a").end("a").start("b").end("b"), {"pools": {"cpu": 3}}),
        "stages use only the run's pools",
    )


def test_an_exclusive_stage_runs_alone() -> None:
    first = pipeline(("x", [], {"exclusive": True}), ("a", [], {}))
    _check((first, lambda s: s.start("x").end("x").start("a").end("a"), {}))
    _broken(
        (first, lambda s: s.start("x", "a").end("x").end("a"), {}), "an exclusive stage runs alone"
    )
    second = pipeline(("a", [], {}), ("x", [], {"exclusive": True}))
    _check((second, lambda s: s.start("a").end("a").start("x").end("x"), {}))
    _broken(
        (second, lambda s: s.start("a", "x").end("x").end("a"), {}), "an exclusive stage runs alone"
    )


def test_ready_stages_start_by_priority_then_definition_order() -> None:
    pipe = pipeline(("low", [], {}), ("high", [], {"priority": 5}), ("tie", [], {}))
    _check((pipe, lambda s: s.start("high", "low", "tie").end("high").end("low").end("tie"), {}))
    _broken(
        (pipe, lambda s: s.start("low", "high", "tie").end("high").end("low").end("tie"), {}),
        "ready stages start by priority, then definition order: 'low' started .* while 'high'",
    )
    _broken(
        (pipe, lambda s: s.start("high", "tie", "low").end("high").end("low").end("tie"), {}),
        "ready stages start by priority, then definition order: 'tie' started .* while 'low'",
    )


def test_a_stage_that_cannot_take_its_slots_lets_the_others_go_ahead() -> None:
    pipe = pipeline(
        ("hog", [], {"uses": "gpu"}),
        ("waits", [], {"uses": "gpu", "priority": 9}),
        ("other", [], {}),
        pools={"gpu": 1},
    )
    ok = lambda s: s.start("waits", "other").end("waits").start("hog").end("hog").end("other")
    _check((pipe, ok, {}))
    # Once the pool frees up, the waiting stage outranks the others again.
    later = pipeline(
        ("gate", [], {}),
        ("hog", [], {"uses": "gpu"}),
        ("other", [], {"retries": 1}),
        ("waits", ["gate"], {"uses": "gpu", "priority": 9}),
        pools={"gpu": 1},
    )
    fair = lambda s: (
        s.start("gate", "hog", "other")
        .end("gate")
        .retry("other", 0.0)
        .start("other")
        .end("hog")
        .start("waits")
        .end("waits")
        .end("other")
    )
    _check((later, fair, {}))
    passed_over = lambda s: (
        s.start("gate", "hog", "other")
        .end("gate")
        .end("hog")
        .retry("other", 0.0)
        .start("other")
        .start("waits")
        .end("waits")
        .end("other")
    )
    _broken(
        (later, passed_over, {}),
        "ready stages start by priority, then definition order: 'other' started .* while 'waits'",
    )


# -- retry policies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "delays"),
    [
        ({"retry_delay": 0.5}, [0.5, 1.0, 2.0]),
        ({"retry_delay": 1.0, "retry_backoff": 3.0, "retry_max_delay": 4.0}, [1.0, 3.0, 4.0]),
        ({"retry_delay": [1.0, 5.0]}, [1.0, 5.0, 5.0]),
        ({"retry_delay": 2.0, "retry_backoff": 1.0}, [2.0, 2.0, 2.0]),
    ],
)
def test_retry_delays_follow_the_policy(options: dict[str, Any], delays: list[float]) -> None:
    pipe = pipeline(("s", [], {"retries": 3, **options}))

    def write(wrong: int | None) -> Callable[[Script], Script]:
        def run(s: Script) -> Script:
            now = 0.0
            s.start("s")
            for i, delay in enumerate(delays):
                s.retry("s", delay + (0.25 if i == wrong else 0.0))
                now += delay + (0.25 if i == wrong else 0.0)
                s.at(now).start("s")
            return s.end("s")

        return run

    _check((pipe, write(None), {}))
    for wrong in range(len(delays)):
        _broken((pipe, write(wrong), {}), "retry delays follow the stage's RetryPolicy")


def test_jitter_stays_within_its_bounds() -> None:
    pipe = pipeline(("s", [], {"retries": 1, "retry_delay": 2.0, "retry_jitter": 0.25}))
    assert expected_delay(pipe.stages["s"].options.retry, 1) == (1.5, 2.5)
    for delay, good in [(1.5, True), (2.4, True), (2.5, True), (1.4, False), (2.6, False)]:

        def write(s: Script, d: float = delay) -> Script:
            return s.start("s").retry("s", d).at(d).start("s").end("s")

        case: Case = (pipe, write, {})
        if good:
            _check(case)
        else:
            _broken(case, "retry delays follow the stage's RetryPolicy")


def test_a_retry_starts_no_earlier_than_its_delay() -> None:
    pipe = pipeline(("s", [], {"retries": 1, "retry_delay": 2.0}))
    _broken(
        (pipe, lambda s: s.start("s").retry("s", 2.0).at(1.5).start("s").end("s"), {}),
        "a retry starts only after its delay",
    )
    _broken(
        (
            pipe,
            lambda s: (
                s.start("s")
                .retry("s", 2.0)
                .at(2)
                .start("s")
                .retry("s", 4.0)
                .at(6)
                .start("s")
                .end("s")
            ),
            {},
        ),
        "a stage is retried at most `retries` times",
    )


def test_a_failure_with_retries_left_is_retried_unless_retry_on_rejects_it() -> None:
    pipe = pipeline(("s", [], {"retries": 2}))
    failed_early = lambda s: s.start("s").end("s", S.FAILED)
    _check((pipe, failed_early, {}))  # stopped unknown: a close may explain it
    _broken(
        (pipe, failed_early, {"stopped": False}), "a failed attempt with retries left is retried"
    )
    picky = pipeline(("s", [], {"retries": 2, "retry_on": KeyError}))
    _check((picky, failed_early, {"stopped": False}))  # a ValueError is not retried
    keyed = lambda s: s.start("s").end("s", S.FAILED, error=KeyError("k"))
    _broken((picky, keyed, {"stopped": False}), "a failed attempt with retries left is retried")


def test_no_stage_that_could_start_waits_while_time_passes() -> None:
    pipe = pipeline(
        ("a", [], {"uses": "gpu"}), ("b", [], {"uses": "gpu"}), ("c", [], {}), pools={"gpu": 1}
    )
    # b waits for the pool without holding anything: c, behind it, goes ahead.
    went_ahead = lambda s: s.start("a", "c").at(1).end("a").start("b").at(2).end("b").end("c")
    _check((pipe, went_ahead, {"max_parallel": 3}))
    held_up = lambda s: s.start("a").at(1).end("a").start("b", "c").at(2).end("b").end("c")
    _broken(
        (pipe, held_up, {"max_parallel": 3}),
        "a ready stage that can take its slots starts at once: 'c' was ready and fit but still"
        " waited at t=1",
    )
    one_by_one = lambda s: s.start("a").at(1).end("a").start("b").at(2).end("b").start("c").end("c")
    _check((pipe, one_by_one, {"max_parallel": 1}))  # no slot was free
    _check((pipe, held_up, {}))  # the limit unknown: not checked


def test_stages_behind_a_waiting_exclusive_stage_may_wait() -> None:
    pipe = pipeline(
        ("gate", [], {}),
        ("a", [], {}),
        ("x", ["gate"], {"exclusive": True, "priority": 5}),
        ("d", ["gate"], {}),
    )
    behind = lambda s: (
        s.start("gate", "a")
        .at(1)
        .end("gate")
        .at(2)
        .end("a")
        .start("x")
        .at(3)
        .end("x")
        .start("d")
        .at(4)
        .end("d")
    )
    _check((pipe, behind, {"max_parallel": 4}))


def test_a_timeout_fires_no_earlier_than_its_deadline() -> None:
    pipe = pipeline(("s", [], {"timeout": 1.5, "retries": 1}))
    timed_out = "StageTimeout: stage 's' timed out after 1.5s (attempt 1)"
    on_time = lambda s: s.at(1).start("s").at(2.5).retry("s", 0.0, timed_out).start("s").end("s")
    _check((pipe, on_time, {}))
    early = lambda s: s.at(1).start("s").at(2).retry("s", 0.0, timed_out).start("s").end("s")
    _broken((pipe, early, {}), r"a timeout fires no earlier than StageStarted.time \+ timeout")
