"""The scheduler without trio: facts in, decisions out, illegal facts change nothing.

`Driver` reports facts by stage name and collects the decisions; the Hypothesis
state machine at the end feeds random facts to random plans and checks the
invariants after every step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import trio_pipeline as tp
from trio_pipeline._scheduler import (
    STOP_RULES,
    TEARDOWN_EXPIRED,
    TRIGGER_RULES,
    Outcomes,
    Scheduler,
    Stop,
    start_order,
)

S = tp.StageStatus
R = tp.RunState
T = tp.Trigger


async def noop(ctx: tp.StageContext) -> None:
    pass


class Boom(Exception):
    pass


class Driver:
    """Reports facts to a `Scheduler` by stage name and keeps what it decided."""

    def __init__(self, pipe: tp.Pipeline, **options: Any) -> None:
        self.plan = pipe.compile()
        self.sched = Scheduler(self.plan, run_id="r", **options)
        self.names = [stage.name for stage in self.plan.stages]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.events: list[tp.Event] = []
        self.started: list[str] = []  # attempts, in the order they were decided
        self.waits: dict[str, float] = {}
        self.cancelled: list[str] = []
        self.cancel_running = 0
        self.lookups: list[str] = []  # cache lookups decided (issue 14)
        self.held = 0  # decisions that ran out of backlog room
        self.now = 0.0

    def i(self, name: str) -> int:
        return self.index[name]

    def drain(self) -> None:
        out = self.sched.out
        self.events += out.events
        self.started += [self.names[i] for i in out.start]
        self.waits.update({self.names[i]: delay for i, delay in out.wait})
        self.cancelled += [self.names[i] for i in out.cancel]
        self.cancel_running += out.cancel_running
        self.lookups += [self.names[i] for i in out.lookup]
        self.held += out.held
        out.clear()

    def begin(self) -> Driver:
        self.sched.begin(self.now)
        self.drain()
        return self

    def ok(self, name: str, value: object = None) -> None:
        self.sched.attempt_succeeded(self.i(name), value, self.now)
        self.drain()

    def fail(self, name: str, error: BaseException | None = None) -> None:
        self.sched.attempt_failed(self.i(name), error or Boom(name), self.now)
        self.drain()

    def status(self, name: str) -> tp.StageStatus:
        return self.sched.status[self.i(name)]

    def statuses(self) -> dict[str, tp.StageStatus]:
        return {name: self.status(name) for name in self.names}

    def finished(self, name: str) -> tp.StageFinished:
        (event,) = [e for e in self.events if isinstance(e, tp.StageFinished) and e.stage == name]
        return event

    def running(self) -> set[str]:
        return {n for n in self.names if self.status(n) is S.RUNNING}


def pipeline(*specs: tuple[str, list[str], dict[str, Any]], **kwargs: Any) -> tp.Pipeline:
    pipe = tp.Pipeline("p", **kwargs)
    for name, after, options in specs:
        pipe.add_stage(name, noop, after=after, **options)
    return pipe


# -- order and limits --------------------------------------------------------------------


def test_ready_stages_start_by_priority_then_definition_order() -> None:
    pipe = pipeline(
        ("a", [], {}),
        ("b", [], {"priority": 5}),
        ("c", [], {"priority": 5}),
        ("d", [], {"priority": -1}),
        ("e", [], {}),
    )
    d = Driver(pipe, max_parallel=1).begin()
    for _ in range(4):
        d.ok(d.started[-1])
    assert d.started == ["b", "c", "a", "e", "d"]


def test_max_parallel_starts_the_next_one_as_one_ends() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {}), ("c", [], {})), max_parallel=2).begin()
    assert d.started == ["a", "b"]
    d.ok("b")
    assert d.started == ["a", "b", "c"]


def test_start_order_is_what_an_unlimited_failure_free_run_starts() -> None:
    pipe = pipeline(("a", [], {}), ("c", ["a"], {}), ("b", [], {}), ("alert", ["a"], {}))
    assert start_order(pipe.compile()) == ["a", "b", "c", "alert"]
    skipping = pipeline(("a", [], {}), ("alert", ["a"], {"trigger": T.ONE_FAILED}))
    assert start_order(skipping.compile()) == ["a"]  # a failure-free run skips alert
    assert skipping.start_order() == ["a"]
    assert skipping.skipped_stages() == {"alert": "trigger one_failed not met: no upstream failed"}
    assert pipe.skipped_stages() == {}


# -- pools and exclusive stages ----------------------------------------------------------


def test_a_stage_takes_all_its_pool_slots_at_once_or_none() -> None:
    pipe = pipeline(
        ("hog", [], {"uses": {"gpu": 2}}),
        ("both", [], {"uses": {"cpu": 1, "gpu": 1}}),
        ("cpu_only", [], {"uses": "cpu"}),
    )
    d = Driver(pipe, pools={"gpu": 2, "cpu": 1}).begin()
    # `both` cannot have a gpu slot, so it takes nothing: cpu_only gets the cpu.
    assert d.started == ["hog", "cpu_only"]
    d.ok("cpu_only")
    assert d.started == ["hog", "cpu_only"]  # still no gpu
    d.ok("hog")
    assert d.started == ["hog", "cpu_only", "both"]


def test_a_stage_waiting_for_a_pool_holds_no_parallel_slot_and_blocks_nobody() -> None:
    pipe = pipeline(
        ("a", [], {"uses": "gpu"}),
        ("b", [], {"uses": "gpu", "priority": 1}),
        ("c", [], {}),
    )
    d = Driver(pipe, max_parallel=2, pools={"gpu": 1}).begin()
    assert d.started == ["b", "c"]  # a waits for the gpu, c goes ahead of it
    d.ok("c")
    assert d.started == ["b", "c"]
    d.fail("b")  # slots come back on the error path too (keep_going: see below)
    assert d.status("b") is S.FAILED


def test_pool_slots_come_back_on_failure_and_retry_wait() -> None:
    pipe = pipeline(
        ("a", [], {"uses": "gpu", "retries": 1, "retry_delay": 5}), ("b", [], {"uses": "gpu"})
    )
    d = Driver(pipe, pools={"gpu": 1}, keep_going=True).begin()
    assert d.started == ["a"]
    d.fail("a")  # waits out its retry delay without the slot
    assert d.waits == {"a": 5.0}
    assert d.started == ["a", "b"]
    d.sched.retry_due(d.i("a"), 5.0)
    d.drain()
    assert d.started == ["a", "b"]  # a waits for b's slot now
    d.ok("b")
    assert d.started == ["a", "b", "a"]


def test_an_exclusive_stage_runs_alone() -> None:
    pipe = pipeline(
        ("a", [], {}),
        ("gate", [], {}),
        ("x", ["gate"], {"exclusive": True}),
        ("behind", ["gate"], {}),
    )
    d = Driver(pipe).begin()
    assert d.started == ["a", "gate"]
    d.ok("gate")
    # x waits for a to end; the stage behind it waits too (else x could wait forever)
    assert d.started == ["a", "gate"]
    d.ok("a")
    assert d.started == ["a", "gate", "x"]
    assert d.running() == {"x"}
    d.ok("x")
    assert d.started == ["a", "gate", "x", "behind"]


# -- trigger rules -------------------------------------------------------------------------

# Upstream outcome -> facts that produce it: "ok", "fail", "skip" (a one_failed stage
# with nothing failed), "block" (downstream of a failure).
OUTCOME_SPECS: dict[str, list[tuple[str, list[str], dict[str, Any]]]] = {
    "ok": [("u", [], {})],
    "fail": [("u", [], {})],
    "skip": [("g", [], {}), ("u", ["g"], {"trigger": T.ONE_FAILED})],
    "block": [("g", [], {}), ("u", ["g"], {})],
}


def _run_two_upstreams(trigger: tp.Trigger, first: str, second: str) -> Driver:
    specs: list[tuple[str, list[str], dict[str, Any]]] = []
    for prefix, outcome in (("x", first), ("y", second)):
        for name, after, options in OUTCOME_SPECS[outcome]:
            specs.append((prefix + name, [prefix + a for a in after], options))
    specs.append(("t", ["xu", "yu"], {"trigger": trigger}))
    d = Driver(pipeline(*specs), keep_going=True).begin()
    for prefix, outcome in (("x", first), ("y", second)):
        if outcome == "ok":
            d.ok(prefix + "u")
        elif outcome == "fail":
            d.fail(prefix + "u")
        elif outcome == "skip":
            d.ok(prefix + "g")
        else:
            d.fail(prefix + "g")
    return d


EXPECTED = {
    # trigger: {(outcome, outcome): status of t} (order-independent)
    T.ALL_SUCCESS: {
        ("ok", "ok"): S.RUNNING,
        ("ok", "skip"): S.SKIPPED,
        ("ok", "fail"): S.BLOCKED,
        ("ok", "block"): S.BLOCKED,
        ("skip", "fail"): S.BLOCKED,  # a failure is stronger than a skip
        ("skip", "skip"): S.SKIPPED,
    },
    T.NONE_FAILED: {
        ("ok", "ok"): S.RUNNING,
        ("ok", "skip"): S.RUNNING,
        ("skip", "skip"): S.RUNNING,
        ("ok", "fail"): S.BLOCKED,
        ("skip", "block"): S.BLOCKED,
    },
    T.ONE_FAILED: {
        ("ok", "ok"): S.SKIPPED,
        ("ok", "skip"): S.SKIPPED,
        ("ok", "fail"): S.RUNNING,
        ("skip", "block"): S.RUNNING,
    },
    T.ALL_DONE: {
        ("ok", "ok"): S.RUNNING,
        ("fail", "block"): S.RUNNING,
        ("skip", "fail"): S.RUNNING,
    },
    T.ALWAYS: {
        ("ok", "ok"): S.RUNNING,
        ("fail", "skip"): S.RUNNING,
    },
}


@pytest.mark.parametrize(
    ("trigger", "first", "second", "expected"),
    [
        (trigger, first, second, expected)
        for trigger, table in EXPECTED.items()
        for (a, b), expected in table.items()
        for first, second in {(a, b), (b, a)}
    ],
)
def test_trigger_rule(
    trigger: tp.Trigger, first: str, second: str, expected: tp.StageStatus
) -> None:
    d = _run_two_upstreams(trigger, first, second)
    assert d.status("t") is expected
    if expected is S.BLOCKED:
        event = d.finished("t")
        culprit = "xu" if first == "fail" else "yu" if second == "fail" else event.blocked_by
        assert event.blocked_by in ("xg", "yg", "xu", "yu")
        assert event.blocked_by == culprit
        assert event.reason == f"upstream {culprit!r} failed"
    if expected is S.SKIPPED:
        reason = d.finished("t").reason
        assert reason is not None
        assert reason.startswith(f"trigger {trigger} not met: ")


def test_a_rule_without_upstream_stages_is_decided_at_the_start() -> None:
    pipe = pipeline(
        ("td", [], {"trigger": T.ALWAYS}),
        ("alert", [], {"trigger": T.ONE_FAILED}),
        ("join", [], {"trigger": T.ALL_DONE}),
    )
    d = Driver(pipe).begin()
    assert d.statuses() == {"td": S.RUNNING, "alert": S.SKIPPED, "join": S.RUNNING}


def test_skip_reasons_name_the_skipped_upstream_or_the_missing_failure() -> None:
    d = _run_two_upstreams(T.ALL_SUCCESS, "ok", "skip")
    assert d.finished("t").reason == "trigger all_success not met: upstream 'yu' skipped"
    d = _run_two_upstreams(T.ONE_FAILED, "ok", "ok")
    assert d.finished("t").reason == "trigger one_failed not met: no upstream failed"


def test_one_failed_runs_as_soon_as_one_upstream_fails() -> None:
    pipe = pipeline(("a", [], {}), ("b", [], {}), ("alert", ["a", "b"], {"trigger": T.ONE_FAILED}))
    d = Driver(pipe, keep_going=True).begin()
    d.fail("a")
    assert d.status("alert") is S.RUNNING  # b still runs
    d.ok("b")
    d.ok("alert")
    assert d.sched.inputs_of(d.i("alert")) == {"b": None}  # only succeeded upstreams


def test_a_blocked_chain_is_flat_not_recursive() -> None:
    n = 5_000
    pipe = pipeline(*[(f"s{k}", [f"s{k - 1}"] if k else [], {}) for k in range(n)])
    d = Driver(pipe, keep_going=True).begin()
    d.fail("s0")
    assert d.status(f"s{n - 1}") is S.BLOCKED
    assert d.finished(f"s{n - 1}").blocked_by == "s0"
    assert d.sched.finished


def test_the_trigger_table_lists_every_trigger_and_ends_with_else() -> None:
    assert set(TRIGGER_RULES) == set(tp.Trigger)
    for rows in TRIGGER_RULES.values():
        assert rows[-1][0] == "else"
        # a failure is stronger than a skip: no rule looks at skips before failures
        conditions = [c for c, _ in rows]
        if "skipped" in conditions and "failed" in conditions:
            assert conditions.index("failed") < conditions.index("skipped")
    assert set(STOP_RULES) == set(Stop)
    assert all(T.ALWAYS in rule.still_start for rule in STOP_RULES.values())


# -- stops -------------------------------------------------------------------------------------


def stop_pipeline() -> tp.Pipeline:
    return pipeline(
        ("bad", [], {}),
        ("slow", [], {}),
        ("child", ["bad"], {}),
        ("after_slow", ["slow"], {}),
        ("none_failed", ["slow"], {"trigger": T.NONE_FAILED}),
        ("join", ["slow", "bad"], {"trigger": T.ALL_DONE}),
        ("alert", ["slow", "child"], {"trigger": T.ONE_FAILED}),
        ("teardown", ["slow", "bad"], {"trigger": T.ALWAYS}),
    )


def test_fail_fast_runs_only_stages_whose_rule_can_still_fire() -> None:
    d = Driver(stop_pipeline()).begin()
    d.fail("bad")
    assert d.sched.state is R.CLOSING
    assert d.cancel_running == 1  # slow is cancelled
    assert d.statuses() == {
        "bad": S.FAILED,
        "slow": S.RUNNING,
        "child": S.BLOCKED,
        "after_slow": S.CANCELLED,
        "none_failed": S.CANCELLED,
        "join": S.PENDING,
        "alert": S.RUNNING,  # child was blocked: one_failed fires, even after the stop
        "teardown": S.PENDING,
    }
    assert d.finished("after_slow").reason == "fail-fast stop"
    assert d.finished("child").reason == "upstream 'bad' failed"
    d.sched.attempt_cancelled(d.i("slow"), 1.0)
    d.drain()
    assert d.finished("slow").reason == "fail-fast stop"
    assert d.status("join") is S.RUNNING
    assert d.status("teardown") is S.RUNNING
    # Attempts started after the stop run shielded: the stages' scope is cancelled.
    assert {d.names[i] for i in d.sched.shielded} == {"alert", "join", "teardown"}
    for name in ("join", "alert", "teardown"):
        d.ok(name)
    assert d.sched.finished
    assert d.sched.machine.state.value == "draining"  # (mypy narrowed state above)
    run_finished = d.events[-1]
    assert isinstance(run_finished, tp.RunFinished)
    assert run_finished.state is R.CLOSED


def test_close_lets_running_stages_finish_and_runs_only_teardown() -> None:
    d = Driver(stop_pipeline()).begin()
    d.sched.request_close(0.5)
    d.drain()
    assert d.cancel_running == 0
    assert {n: s for n, s in d.statuses().items() if s is not S.CANCELLED} == {
        "bad": S.RUNNING,
        "slow": S.RUNNING,
        "teardown": S.PENDING,
    }
    assert {e.reason for e in d.events if isinstance(e, tp.StageFinished)} == {"close requested"}
    d.fail("bad")  # no fail-fast stop once closing, and no retry
    d.ok("slow")
    assert d.status("teardown") is S.RUNNING
    assert d.sched.shielded == {d.i("teardown")}
    d.ok("teardown")
    assert d.sched.finished


def test_cancel_gives_teardown_stages_until_the_deadline() -> None:
    pipe = pipeline(
        ("slow", [], {}),
        ("td_running", [], {"trigger": T.ALWAYS}),
        ("td_pending", ["slow"], {"trigger": T.ALWAYS}),
        ("td_late", ["td_running"], {"trigger": T.ALWAYS}),
    )
    d = Driver(pipe, teardown_timeout=30.0).begin()
    d.now = 2.0
    d.sched.cancel(2.0)
    d.drain()
    assert d.sched.state is R.CANCELLED
    assert d.sched.teardown_deadline == 32.0
    assert d.sched.out.deadline == []  # drained: td_running's scope got the deadline
    assert d.status("td_running") is S.RUNNING
    d.sched.attempt_cancelled(d.i("slow"), 3.0)  # cancelled as decided
    d.drain()
    assert d.finished("slow").reason == "run cancelled"
    assert d.status("td_pending") is S.RUNNING
    with pytest.raises(tp.TransitionError):
        d.sched.teardown_expired(31.0)  # too early
    d.sched.attempt_timed_out(d.i("td_running"), 32.0)  # its scope hit the deadline
    d.drain()
    assert d.finished("td_running").reason == TEARDOWN_EXPIRED
    assert d.status("td_late") is S.CANCELLED  # ready only after the deadline
    assert d.finished("td_late").reason == TEARDOWN_EXPIRED
    d.sched.teardown_expired(32.0)
    d.ok("td_pending")
    assert d.sched.finished


def test_an_unrequested_cancellation_cancels_the_run() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {}), ("c", ["a"], {}))).begin()
    d.sched.attempt_cancelled(d.i("a"), 1.0)
    d.drain()
    assert d.sched.state is R.CANCELLED
    assert d.cancel_running == 1
    assert d.status("c") is S.CANCELLED
    assert d.finished("a").reason == "run cancelled"


def test_a_crash_cancels_the_run_and_names_the_exception() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {}))).begin()
    d.sched.attempt_crashed(d.i("a"), KeyboardInterrupt(), 1.0)
    d.drain()
    assert d.finished("a").reason == "raised KeyboardInterrupt"
    assert d.sched.state is R.CANCELLED
    assert d.cancel_running == 1


# -- retries -------------------------------------------------------------------------------


def test_retry_decisions_follow_the_policy() -> None:
    pipe = pipeline(("a", [], {"retries": 3, "retry_delay": 1.0, "retry_backoff": 3.0}))
    d = Driver(pipe).begin()
    delays = []
    for attempt in range(1, 4):
        d.fail("a")
        delays.append(d.waits.pop("a"))
        retrying = d.events[-1]
        assert isinstance(retrying, tp.StageRetrying)
        assert retrying.attempt == attempt
        d.sched.retry_due(d.i("a"), 0.0)
        d.drain()
    assert delays == [1.0, 3.0, 9.0]
    d.fail("a")  # attempt 4: retries used up
    assert d.status("a") is S.FAILED
    assert d.sched.attempts[d.i("a")] == 4


def test_retry_on_other_errors_fail_at_once_and_zero_delay_retries_without_a_wait() -> None:
    pipe = pipeline(("a", [], {"retries": 2, "retry_on": OSError}), ("b", [], {"retries": 1}))
    d = Driver(pipe, keep_going=True).begin()
    d.fail("a", ValueError("not retried"))
    assert d.status("a") is S.FAILED
    d.fail("b")
    assert d.waits == {}
    assert d.started == ["a", "b", "b"]


def test_a_timeout_is_a_failure_unless_it_was_a_cancel() -> None:
    pipe = pipeline(("a", [], {"timeout": 2.0, "retries": 1}))
    d = Driver(pipe).begin()
    d.sched.attempt_timed_out(d.i("a"), 2.0)
    d.drain()
    retrying, restarted = d.events[-2:]
    assert isinstance(retrying, tp.StageRetrying)
    assert retrying.error == "StageTimeout: stage 'a' timed out after 2s (attempt 1)"
    assert isinstance(restarted, tp.StageStarted)
    # A shielded attempt cancelled by a decision ends CANCELLED through its own scope.
    pipe = pipeline(("bad", [], {}), ("slow", [], {}), ("join", ["bad"], {"trigger": T.ALL_DONE}))
    d = Driver(pipe).begin()
    d.fail("bad")
    assert d.status("join") is S.RUNNING  # shielded: started after the stop
    d.sched.cancel(1.0)
    d.drain()
    assert d.cancelled == ["join"]
    d.sched.attempt_timed_out(d.i("join"), 1.0)
    d.drain()
    assert d.finished("join").status is S.CANCELLED
    assert d.finished("join").reason == "fail-fast stop"


def test_a_stop_cancels_retry_waits_but_not_a_teardown_stage_s() -> None:
    pipe = pipeline(
        ("flaky", [], {"retries": 2, "retry_delay": 10}),
        ("td", [], {"trigger": T.ALWAYS, "retries": 2, "retry_delay": 10}),
        ("bad", [], {}),
    )
    d = Driver(pipe).begin()
    d.fail("flaky")
    d.fail("td")
    d.fail("bad")
    assert d.cancelled == ["flaky"]
    assert d.status("flaky") is S.CANCELLED
    assert d.status("td") is S.PENDING
    d.sched.retry_due(d.i("td"), 10.0)
    d.drain()
    assert d.status("td") is S.RUNNING  # a teardown stage still retries after the stop
    d.sched.retry_due(d.i("flaky"), 10.0)  # a wake-up racing the stop is harmless
    d.ok("td")
    assert d.sched.finished


# -- stream groups ---------------------------------------------------------------------------


async def _source(ctx: tp.StageContext) -> Any:
    yield 1


async def _per_item(ctx: tp.StageContext, item: Any) -> Any:
    return item


async def _consume(ctx: tp.StageContext, items: Any) -> None:
    pass


class _Counts:
    items_in = items_out = items_failed = items_cancelled = items_ok = 0


def stream_pipeline(*specs: tuple[str, str, dict[str, Any]], **kwargs: Any) -> tp.Pipeline:
    """Stages by kind: "task", "source", or "each:X" / "consumes:X" reading X."""
    pipe = tp.Pipeline("p", **kwargs)
    for name, kind, options in specs:
        if kind == "task":
            pipe.add_stage(name, noop, **options)
        elif kind == "source":
            pipe.add_stage(name, _source, **options)
        elif kind.startswith("each:"):
            pipe.add_stage(name, _per_item, each=kind[5:], **options)
        else:
            pipe.add_stage(name, _consume, consumes=kind.removeprefix("consumes:"), **options)
    return pipe


def end_member(d: Driver, name: str, status: tp.StageStatus = S.SUCCEEDED) -> None:
    d.sched.member_finished(
        d.i(name),
        status,
        d.now,
        value=None,
        error=Boom(name) if status is S.FAILED else None,
        blocked_by=None,
        reason=None,
        counts=_Counts(),
    )
    d.drain()


def test_a_stream_group_ranks_by_its_best_member_then_its_first_members_place() -> None:
    pipe = stream_pipeline(
        ("low", "task", {"priority": 1}),
        ("src", "source", {}),
        ("fetch", "each:src", {"priority": 5}),
        ("high", "task", {"priority": 5}),
        ("plain", "task", {}),
    )
    d = Driver(pipe, max_parallel=1).begin()
    assert d.started == ["src"]  # the group, led by src, ranks 5 (fetch's) and comes first
    end_member(d, "src")
    assert d.started == ["src"]  # one unit: its slot is held until its last member ends
    end_member(d, "fetch")
    d.ok("high")
    d.ok("low")
    assert d.started == ["src", "high", "low", "plain"]
    # A member without priority lifts a group led by a negative one to 0.
    pipe = stream_pipeline(
        ("src", "source", {"priority": -1}), ("plain", "task", {}), ("fetch", "each:src", {})
    )
    assert Driver(pipe, max_parallel=1).begin().started == ["src"]


def test_a_group_takes_its_members_whole_call_slots_at_once_and_each_gives_its_own_back() -> None:
    pipe = stream_pipeline(
        ("hog", "task", {"uses": "db", "priority": 2}),
        ("src", "source", {"uses": "db", "priority": 1}),
        ("save", "consumes:src", {"uses": "db"}),
        ("free", "task", {}),
        ("late", "task", {"uses": "db"}),
    )
    d = Driver(pipe, pools={"db": 2}).begin()
    # The group needs 2 db slots at once; hog holds 1, so it waits holding none, and the
    # stages behind it go ahead (late takes the other slot).
    assert d.started == ["hog", "free", "late"]
    d.ok("hog")
    assert d.started == ["hog", "free", "late"]  # still 1 free of the 2 it needs
    d.ok("late")
    assert d.started == ["hog", "free", "late", "src"]
    assert d.sched.started_members(d.i("src")) == (d.i("src"), d.i("save"))
    assert d.sched._free == {"db": 0}  # pyright: ignore[reportPrivateUsage]
    end_member(d, "src")  # a member's call is over: its slot comes back, the group's run on
    assert d.sched._free == {"db": 1}  # pyright: ignore[reportPrivateUsage]
    end_member(d, "save")
    assert d.sched._free == {"db": 2}  # pyright: ignore[reportPrivateUsage]


def test_a_group_starts_when_every_members_rule_decided_and_runs_the_members_it_allows() -> None:
    pipe = stream_pipeline(
        ("gate", "task", {}),
        ("slow", "task", {}),
        ("src", "source", {"after": ["gate"]}),
        ("strict", "each:src", {}),
        ("lenient", "each:src", {"trigger": "all_done", "after": ["slow"]}),
    )
    d = Driver(pipe, keep_going=True).begin()
    assert d.started == ["gate", "slow"]
    d.fail("gate")
    # src is BLOCKED now and strict with it; lenient's rule still waits for slow.
    assert d.status("src") is S.BLOCKED
    assert d.finished("strict").blocked_by == "gate"
    assert d.status("lenient") is S.PENDING
    d.ok("slow")
    assert d.started == ["gate", "slow", "src"]  # the group, led by its first member ...
    assert d.sched.started_members(d.i("src")) == (d.i("lenient"),)  # ... runs lenient alone
    assert d.status("lenient") is S.RUNNING  # (reading an empty stream)
    end_member(d, "lenient")
    assert d.sched.finished


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [("all_success", S.BLOCKED), ("none_failed", S.BLOCKED), ("all_done", S.RUNNING)],
)
def test_a_reader_of_a_producer_blocked_as_the_group_is_decided(
    trigger: str, expected: tp.StageStatus
) -> None:
    pipe = stream_pipeline(
        ("gate", "task", {}),
        ("src", "source", {"after": ["gate"]}),
        ("reader", "each:src", {"trigger": trigger}),
    )
    d = Driver(pipe, keep_going=True).begin()
    d.fail("gate")  # every rule of the group is decided by this one fact
    assert d.status("src") is S.BLOCKED
    assert d.status("reader") is expected
    if expected is S.BLOCKED:
        assert d.finished("reader").blocked_by == "gate"
        assert d.sched.finished


def test_a_stop_that_ends_the_waiting_members_of_a_group_starts_the_rest() -> None:
    # Regression (found by the item property): fail-fast cancelled `strict`, whose rule
    # was the only one still waiting, but nothing decided the group again until `slow`
    # ended, so `src` (one_failed: it may run at once) was held back.
    pipe = stream_pipeline(
        ("bad", "task", {}),
        ("slow", "task", {}),
        ("src", "source", {"after": ["bad", "slow"], "trigger": "one_failed"}),
        ("strict", "each:src", {"after": ["slow"]}),
    )
    d = Driver(pipe).begin()
    d.fail("bad")
    assert d.status("strict") is S.CANCELLED
    assert d.started == ["bad", "slow", "src"]
    assert d.sched.started_members(d.i("src")) == (d.i("src"),)


def test_start_order_starts_a_group_as_one_and_lists_the_members_it_runs() -> None:
    # Regression: start_order ended a group by its first member as if it were a task
    # (and raised once that member had ended SKIPPED without running).
    pipe = stream_pipeline(
        ("alarm", "task", {"trigger": "one_failed"}),  # nothing failed: SKIPPED
        ("src", "source", {"after": ["alarm"]}),  # SKIPPED with it
        ("tidy", "each:src", {"trigger": "all_done"}),  # runs on an empty stream
        ("after", "task", {"after": ["tidy"]}),
    )
    assert pipe.start_order() == ["tidy", "after"]
    pipe = stream_pipeline(("src", "source", {}), ("fetch", "each:src", {}), ("t", "task", {}))
    assert pipe.start_order() == ["src", "fetch", "t"]


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        ("all_success", S.SKIPPED),
        ("none_failed", S.RUNNING),  # a skipped producer is an empty stream
        ("all_done", S.RUNNING),
    ],
)
def test_a_readers_rule_reads_its_producer_that_does_not_run(
    trigger: str, expected: tp.StageStatus
) -> None:
    pipe = stream_pipeline(
        ("ok", "task", {}),
        ("alarm", "task", {"after": ["ok"], "trigger": "one_failed"}),  # skipped
        ("src", "source", {"after": ["alarm"]}),
        ("reader", "consumes:src", {"trigger": trigger}),
    )
    d = Driver(pipe).begin()
    d.ok("ok")
    assert d.status("src") is S.SKIPPED
    assert d.status("reader") is expected
    if expected is S.SKIPPED:
        assert d.finished("reader").reason == "trigger all_success not met: upstream 'src' skipped"


# -- facts ---------------------------------------------------------------------------------


def _snapshot(sched: Scheduler) -> dict[str, Any]:
    state = {k: copy.copy(v) for k, v in vars(sched).items() if k not in ("plan", "out", "machine")}
    state["machine"] = sched.machine.state
    state["marks"] = {
        j: (m.failed, m.skipped, m.cancelled, m.decided) for j, m in sched._marks.items()
    }
    return state


@pytest.mark.parametrize(
    "fact",
    [
        lambda s: s.attempt_succeeded(1, None, 0.0),  # b is pending
        lambda s: s.attempt_failed(1, Boom(), 0.0),
        lambda s: s.attempt_timed_out(0, 0.0),  # a has no timeout
        lambda s: s.attempt_cancelled(1, 0.0),
        lambda s: s.retry_due(0, 0.0),  # a is not waiting
        lambda s: s.teardown_expired(0.0),  # nobody cancelled
    ],
)
def test_an_illegal_fact_raises_and_changes_nothing(fact: Any) -> None:
    d = Driver(pipeline(("a", [], {}), ("b", ["a"], {}))).begin()
    before = _snapshot(d.sched)
    with pytest.raises(tp.TransitionError):
        fact(d.sched)
    assert _snapshot(d.sched) == before
    assert not d.sched.out.events
    assert not d.sched.out.start


def test_pause_starts_nothing_until_resumed() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", ["a"], {}))).begin()
    d.sched.pause_starts()
    d.ok("a")
    assert d.status("b") is S.PENDING
    d.sched.resume_starts(1.0)
    d.drain()
    assert d.started == ["a", "b"]


def test_begin_starts_only_as_many_stages_as_max_backlog_allows() -> None:
    d = Driver(pipeline(*[(f"s{j}", [], {}) for j in range(5)]), max_backlog=2).begin()
    assert d.started == ["s0", "s1"]
    assert d.held == 1  # the engine asks the dispatcher for room
    assert d.sched.paused
    d.ok("s0")  # held: a success starts nothing either
    assert d.started == ["s0", "s1"]
    d.sched.resume_starts(0.0, room=2)
    d.drain()
    assert d.started == ["s0", "s1", "s2", "s3"]
    assert d.held == 2
    d.sched.resume_starts(0.0, room=5)
    d.drain()
    assert d.started == [f"s{j}" for j in range(5)]
    assert d.held == 2  # nothing left to start: no need for room
    assert not d.sched.paused


def test_no_room_at_all_starts_nothing_until_room_is_given() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {})), max_backlog=0).begin()
    assert (d.started, d.held) == ([], 1)
    d.sched.resume_starts(0.0, room=1)
    d.drain()
    assert (d.started, d.held) == (["a"], 2)


def test_a_cached_stage_counts_as_succeeded_downstream() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", ["a"], {})), lookups=frozenset({0})).begin()
    assert d.lookups == ["a"]
    assert d.started == []  # looked up first: no attempt, no StageStarted
    d.sched.cache_hit(d.i("a"), "from cache", "cache hit: stored 1s ago by run x", 0.0)
    d.drain()
    assert d.status("a") is S.CACHED
    assert d.finished("a").reason == "cache hit: stored 1s ago by run x"
    assert d.finished("a").attempt == 0
    assert d.status("b") is S.RUNNING
    assert d.sched.inputs_of(d.i("b")) == {"a": "from cache"}


def test_a_lookup_takes_no_slot_and_a_miss_queues_the_stage() -> None:
    d = Driver(
        pipeline(("busy", [], {}), ("c", [], {}), ("d", [], {})),
        max_parallel=1,
        lookups=frozenset({1}),
    ).begin()
    assert d.started == ["busy"]  # the only slot
    assert d.lookups == ["c"]  # looked up at once all the same
    d.sched.cache_miss(d.i("c"), 0.0, "cache miss: no entry")
    d.drain()
    assert d.started == ["busy"]
    d.ok("busy")
    assert d.started == ["busy", "c"]  # before d: definition order once it is ready
    d.ok("c")
    assert d.finished("c").reason == "cache miss: no entry"


def test_a_stop_ends_a_stage_whose_lookup_is_out_and_the_late_answer_is_ignored() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {})), lookups=frozenset({1})).begin()
    d.fail("a")  # fail-fast stop
    assert d.status("b") is S.CANCELLED
    d.sched.cache_hit(d.i("b"), 1, "cache hit", 0.0)  # the lookup was already sent
    d.drain()
    assert d.status("b") is S.CANCELLED
    with pytest.raises(tp.TransitionError):
        d.sched.cache_miss(d.i("b"), 0.0)  # no second answer
    with pytest.raises(tp.TransitionError):
        d.sched.cache_hit(d.i("a"), 1, "cache hit", 0.0)  # never looked up


def test_misses_told_together_start_in_order_as_the_limits_allow() -> None:
    d = Driver(
        pipeline(("a", [], {}), ("b", [], {}), ("c", [], {}), ("d", [], {})),
        max_parallel=2,
        lookups=frozenset({0, 1, 2, 3}),
    ).begin()
    assert d.lookups == ["a", "b", "c", "d"]
    d.sched.cache_misses([d.i("c"), d.i("a"), d.i("d")], 0.0, ["r-c", "r-a", "r-d"])
    d.drain()
    assert d.started == ["a", "c"]  # definition order, two slots
    d.ok("a")
    assert d.started == ["a", "c", "d"]
    assert d.finished("a").reason == "r-a"
    d.sched.cache_misses([d.i("b")], 0.0)
    d.ok("c")
    assert d.started == ["a", "c", "d", "b"]
    assert d.finished("c").reason == "r-c"


def test_misses_told_together_with_one_not_looked_up_change_nothing() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {})), lookups=frozenset({0})).begin()
    assert d.lookups == ["a"]
    with pytest.raises(tp.TransitionError):
        d.sched.cache_misses([d.i("a"), d.i("b")], 0.0)  # b was never looked up
    with pytest.raises(tp.TransitionError):
        d.sched.cache_misses([d.i("a"), d.i("a")], 0.0)  # twice
    d.drain()
    assert d.started == ["b"]  # b runs (not cached); a still waits for its answer
    d.sched.cache_misses([d.i("a")], 0.0)
    d.drain()
    assert d.started == ["b", "a"]


def test_a_queued_log_line_keeps_its_place_behind_the_events_before_it() -> None:
    d = Driver(pipeline(("a", [], {}), ("b", [], {}))).begin()
    d.sched.attempt_succeeded(d.i("a"), 1, 0.0)  # its events wait in the outbox
    d.sched.queue_log("b", "late line", 0.0)
    d.sched.attempt_succeeded(d.i("b"), 2, 0.0)
    d.drain()
    assert [e.seq for e in d.events] == list(range(len(d.events)))
    kinds = [(type(e).__name__, getattr(e, "stage", None)) for e in d.events]
    assert kinds[-4:-1] == [("StageFinished", "a"), ("StageLog", "b"), ("StageFinished", "b")]
    with pytest.raises(RuntimeError, match="has finished"):
        d.sched.queue_log("a", "too late", 0.0)


def test_log_refuses_a_finished_stage() -> None:
    d = Driver(pipeline(("a", [], {}))).begin()
    assert d.sched.log("a", "hi", 0.0).seq == 2
    d.ok("a")
    with pytest.raises(RuntimeError, match="stage 'a' has finished"):
        d.sched.log("a", "late", 0.0)


def assert_columns_are_the_outcomes(sched: Scheduler) -> None:
    columns = sched.outcome_columns()
    assert len(columns.names) == len(sched.plan.stages)
    for i, stage in enumerate(sched.plan.stages):
        out = sched.outcome_of(i)
        assert (
            columns.names[i],
            columns.statuses[i],
            columns.attempts[i],
            columns.durations[i],
            columns.errors.get(i),
            columns.blocked_by.get(i),
        ) == (stage.name, out.status, out.attempts, out.duration, out.error, out.blocked_by)


def test_outcome_columns_are_the_outcomes_field_by_field() -> None:
    d = Driver(
        pipeline(("b", [], {"retries": 1}), ("a", ["b"], {}), ("c", [], {})), keep_going=True
    )
    d.now = 5.0
    d.begin()
    d.now = 7.0
    d.fail("b")  # retried at once: running again, the first error kept for the retry
    assert d.statuses() == {"b": S.RUNNING, "a": S.PENDING, "c": S.RUNNING}
    assert_columns_are_the_outcomes(d.sched)
    columns = d.sched.outcome_columns()
    assert (columns.errors, list(columns.durations)) == ({}, [0.0, 0.0, 0.0])
    d.now = 9.0
    d.fail("b")
    d.ok("c")
    assert_columns_are_the_outcomes(d.sched)
    columns = d.sched.outcome_columns()
    assert list(columns.statuses) == [S.FAILED, S.BLOCKED, S.SUCCEEDED]
    assert list(columns.attempts) == [2, 0, 1]
    assert list(columns.durations) == [4.0, 0.0, 4.0]
    assert isinstance(columns.errors[0], Boom)
    assert list(columns.errors) == [0]
    assert columns.blocked_by == {1: "b"}
    outcomes = d.sched.outcomes()
    assert isinstance(outcomes, Outcomes)
    assert outcomes.columns() == columns


# -- the state machine ------------------------------------------------------------------------

TRIGGERS = list(tp.Trigger)


class SchedulerMachine(RuleBasedStateMachine):
    """Random plans and random facts; the invariants hold after every step."""

    @initialize(data=st.data())
    def build(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, 7), label="stages")
        pools = data.draw(st.sampled_from([{}, {"gpu": 1}, {"gpu": 2, "io": 1}]), label="pools")
        pipe = tp.Pipeline("m", pools=pools)
        for j in range(n):
            after = (
                data.draw(st.lists(st.sampled_from(range(j)), unique=True), label="after")
                if j
                else []
            )
            uses: Mapping[str, int] = {}
            if pools:
                uses = data.draw(
                    st.dictionaries(st.sampled_from(sorted(pools)), st.integers(1, 1), max_size=2)
                )
            pipe.add_stage(
                f"s{j}",
                noop,
                after=[f"s{k}" for k in after],
                trigger=data.draw(st.sampled_from(TRIGGERS)),
                priority=data.draw(st.integers(-1, 1)),
                exclusive=data.draw(st.booleans()) if j % 3 == 2 else False,
                uses=uses,
                retries=data.draw(st.integers(0, 2)),
                retry_delay=data.draw(st.sampled_from([0.0, 1.0])),
                timeout=data.draw(st.sampled_from([None, 5.0])),
            )
        self.pools = dict(pools)
        self.max_parallel = data.draw(st.sampled_from([None, 1, 2]), label="max_parallel")
        self.keep_going = data.draw(st.booleans(), label="keep_going")
        max_backlog = data.draw(st.sampled_from([None, None, 0, 1, 3]), label="max_backlog")
        lookups = data.draw(st.frozensets(st.sampled_from(range(n))), label="cached stages")
        self.d = Driver(
            pipe,
            max_parallel=self.max_parallel,
            keep_going=self.keep_going,
            pools=self.pools,
            teardown_timeout=data.draw(st.sampled_from([0.0, 10.0])),
            max_backlog=max_backlog,
            lookups=lookups,
        )
        # StageStarted events the scheduler may still emit: max_backlog, then each resume's room.
        self.room = math.inf if max_backlog is None else max_backlog
        self._held = 0
        self.seen_status: dict[str, tp.StageStatus] = {}
        self._checked = 0
        self.d.begin()

    @property
    def s(self) -> Scheduler:
        return self.d.sched

    def _running(self) -> list[int]:
        return [i for i, st_ in enumerate(self.s.status) if st_ is S.RUNNING]

    def _waiting(self) -> list[int]:
        return sorted(self.s._waiting)

    @rule(data=st.data(), how=st.sampled_from(["ok", "fail", "timeout", "cancelled", "crash"]))
    def end_an_attempt(self, data: st.DataObject, how: str) -> None:
        running = self._running()
        if not running:
            return
        i = data.draw(st.sampled_from(running))
        now = self.d.now
        if how == "ok":
            self.s.attempt_succeeded(i, f"v{i}", now)
        elif how == "fail":
            self.s.attempt_failed(i, Boom(), now)
        elif how == "timeout":
            legal = (
                self.s.plan.stages[i].options.timeout is not None
                or i in self.s._cancel_sent
                or (i in self.s.teardown and now >= self.s.teardown_deadline)
            )
            if legal:
                self.s.attempt_timed_out(i, now)
            else:
                before = _snapshot(self.s)
                with pytest.raises(tp.TransitionError):
                    self.s.attempt_timed_out(i, now)
                assert _snapshot(self.s) == before
        elif how == "cancelled":
            self.s.attempt_cancelled(i, now)
        else:
            self.s.attempt_crashed(i, KeyboardInterrupt(), now)
        self.d.drain()

    @rule(data=st.data())
    def retry_wait_ends(self, data: st.DataObject) -> None:
        waiting = self._waiting()
        if waiting:
            i = data.draw(st.sampled_from(waiting))
            if data.draw(st.booleans()):
                self.s.retry_due(i, self.d.now)
            else:
                self.s.retry_wait_cancelled(i, self.d.now)
            self.d.drain()

    @rule(dt=st.sampled_from([0.5, 5.0, 20.0]))
    def time_passes(self, dt: float) -> None:
        self.d.now += dt
        if self.d.now >= self.s.teardown_deadline:
            self.s.teardown_expired(self.d.now)
            self.d.drain()

    @rule()
    def close(self) -> None:
        self.s.request_close(self.d.now)
        self.d.drain()

    @rule()
    def cancel(self) -> None:
        self.s.cancel(self.d.now)
        self.d.drain()

    @precondition(lambda self: not self.s.paused)
    @rule()
    def pause(self) -> None:
        self.s.pause_starts()

    @precondition(lambda self: self.s.paused)
    @rule(room=st.sampled_from([None, 1, 2]))
    def resume(self, room: int | None) -> None:
        if room is None:
            self.room = math.inf
            self.s.resume_starts(self.d.now)
        else:
            self.room = room
            self.s.resume_starts(self.d.now, room)
        self.d.drain()

    @rule(data=st.data(), how=st.sampled_from(["hit", "miss", "misses"]))
    def answer_lookups(self, data: st.DataObject, how: str) -> None:
        looking = sorted(self.s._looking)
        if not looking:
            return
        now = self.d.now
        if how == "hit":
            i = data.draw(st.sampled_from(looking))
            self.s.cache_hit(i, f"cached{i}", "cache hit", now)
        elif how == "miss":
            self.s.cache_miss(data.draw(st.sampled_from(looking)), now, "cache miss")
        else:
            told = data.draw(st.lists(st.sampled_from(looking), min_size=1, unique=True))
            if data.draw(st.booleans(), label="one not looked up"):
                others = [i for i in range(len(self.d.names)) if i not in self.s._looking]
                if others:
                    bad = [*told, data.draw(st.sampled_from(others))]
                    before = _snapshot(self.s)
                    with pytest.raises(tp.TransitionError):
                        self.s.cache_misses(bad, now)
                    assert _snapshot(self.s) == before
            self.s.cache_misses(told, now, [f"miss{i}" for i in told])
        self.d.drain()

    @rule(data=st.data())
    def illegal_fact(self, data: st.DataObject) -> None:
        candidates = [i for i, st_ in enumerate(self.s.status) if st_ is not S.RUNNING]
        if not candidates:
            return
        i = data.draw(st.sampled_from(candidates))
        before = _snapshot(self.s)
        with pytest.raises(tp.TransitionError):
            self.s.attempt_succeeded(i, None, self.d.now)
        assert _snapshot(self.s) == before

    @invariant()
    def limits_hold(self) -> None:
        running = self._running()
        if self.max_parallel is not None:
            assert len(running) <= self.max_parallel
        exclusive = [i for i in running if self.s.plan.stages[i].options.exclusive]
        if exclusive:
            assert running == exclusive
        for pool, size in self.pools.items():
            used = sum(self.s.plan.stages[i].options.uses.get(pool, 0) for i in running)
            assert used <= size

    @invariant()
    def columns_are_the_outcomes(self) -> None:
        assert_columns_are_the_outcomes(self.s)

    @invariant()
    def events_are_consistent(self) -> None:
        events = self.d.events
        assert [e.seq for e in events] == list(range(len(events)))
        finished = [e.stage for e in events if isinstance(e, tp.StageFinished)]
        assert len(finished) == len(set(finished))
        terminal = {self.d.names[i] for i, st_ in enumerate(self.s.status) if st_.is_terminal}
        assert set(finished) == terminal
        if self.s.finished:
            assert len(terminal) == len(self.d.names)
            assert isinstance(events[-1], tp.RunFinished)

    @invariant()
    def starts_follow_the_rules(self) -> None:
        # Checked after each step: within a step, starts come after any stop.
        still_start = self.s._still_start
        for event in self.d.events[self._checked :]:
            if isinstance(event, tp.StageStarted):
                stage = self.s.plan.stages[self.d.i(event.stage)]
                ups = [self.seen_status.get(u) for u in stage.after]
                assert all(u is not None and u.is_terminal for u in ups) or (
                    stage.options.trigger is T.ONE_FAILED
                    and any(u in (S.FAILED, S.BLOCKED) for u in ups)
                ), (event, ups)
                if stage.options.trigger is T.ALL_SUCCESS:
                    assert all(u in (S.SUCCEEDED, S.CACHED) for u in ups)
                assert self.d.i(event.stage) not in self.s._looking, "started mid-lookup"
                if still_start is not None:
                    assert stage.options.trigger in still_start, event
                    if event.attempt > 1:
                        assert stage.options.trigger is T.ALWAYS, event
                assert not self.s.paused or self.d.held > self._held
                self.room -= 1
                assert self.room >= 0, "a start without room for its StageStarted"
            elif isinstance(event, tp.StageFinished):
                self.seen_status[event.stage] = event.status
        self._checked = len(self.d.events)
        if self.d.held > self._held:
            # It held starts only for want of room, and then waits for resume_starts.
            assert self.room == 0
            assert self.s.paused
        self._held = self.d.held

    def teardown(self) -> None:
        # Drive the run to its end: every stage becomes terminal.
        for _ in range(1_000):
            if self.s.finished:
                break
            if self.s.paused:
                self.s.resume_starts(self.d.now)
            elif self.s._looking:
                self.s.cache_misses(sorted(self.s._looking), self.d.now)
            elif self._running():
                self.s.attempt_succeeded(self._running()[0], None, self.d.now)
            elif self._waiting():
                self.s.retry_due(self._waiting()[0], self.d.now)
            else:
                raise AssertionError(f"stuck: {self.d.statuses()}")
            self.d.drain()
        assert self.s.finished
        assert math.isfinite(self.d.now)


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_outcomes_are_a_read_only_ordered_mapping_built_on_access() -> None:
    import pickle

    d = Driver(pipeline(("b", [], {}), ("a", ["b"], {"retries": 1}))).begin()
    d.ok("b", 7)
    d.fail("a")  # retried at once
    d.fail("a")
    outcomes = d.sched.outcomes()
    assert list(outcomes) == ["b", "a"]
    assert len(outcomes) == 2
    assert "a" in outcomes
    assert "c" not in outcomes
    assert outcomes["a"] is outcomes["a"]
    assert (outcomes["b"].status, outcomes["b"].value) == (S.SUCCEEDED, 7)
    assert (outcomes["a"].status, outcomes["a"].attempts) == (S.FAILED, 2)
    assert isinstance(outcomes["a"].error, Boom)
    with pytest.raises(KeyError):
        outcomes["c"]
    with pytest.raises(TypeError):
        outcomes["a"] = outcomes["b"]  # type: ignore[index]
    assert dict(outcomes.items()) == outcomes
    copied = pickle.loads(pickle.dumps(outcomes))  # a plain dict of plain outcomes
    assert type(copied) is dict
    assert {k: (o.status, o.attempts) for k, o in copied.items()} == {
        "b": (S.SUCCEEDED, 1),
        "a": (S.FAILED, 2),
    }
