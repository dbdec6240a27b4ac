"""Engine semantics: policies, retries, timeouts, limits, cancellation and shutdown."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from tests.support.runs import (
    assert_well_formed,
    finished,
    raises,
    returns,
    seed_pipeline,
    sleeps,
    statuses,
)
from trio_pipeline.testing import ChaosTape, RecordingSink, SlowSink, check_run

S = tp.StageStatus


# -- results -----------------------------------------------------------------------


async def test_results_pass_to_direct_downstream() -> None:
    pipe = tp.Pipeline("p")
    seen: dict[str, Any] = {}

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage
    async def b(ctx: tp.StageContext) -> str:
        return "x"

    @pipe.stage(after=[a, b])
    async def c(ctx: tp.StageContext) -> int:
        seen["inputs"] = ctx.inputs
        seen["ctx"] = (ctx.name, ctx.attempt, ctx.run_id)
        return int(ctx.inputs["a"]) + len(ctx.inputs["b"])

    @pipe.stage(after=[c])
    async def d(ctx: tp.StageContext) -> list[str]:
        return sorted(ctx.inputs)

    result = await tp.run(pipe)
    assert result.ok
    assert result.state is tp.RunState.CLOSED
    assert result.stages["c"].value == 2
    assert result.stages["d"].value == ["c"]  # direct upstream only
    assert dict(seen["inputs"]) == {"a": 1, "b": "x"}
    with pytest.raises(TypeError):
        seen["inputs"]["a"] = 5
    assert seen["ctx"] == ("c", 1, result.run_id)
    assert result.counts[S.SUCCEEDED] == 4
    assert sum(result.counts.values()) == 4
    assert result.sink_errors == {}
    assert result.undelivered == {}
    result.raise_for_failures()  # nothing failed: returns


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


async def test_a_stage_error_whose_str_raises_fails_only_that_stage() -> None:
    # Regression: describing the error raised inside the scheduler, so the whole run
    # ended as PipelineInternalError instead of one FAILED stage.
    pipe = tp.Pipeline("p")
    sink = RecordingSink()

    @pipe.stage
    async def bad(ctx: tp.StageContext) -> None:
        raise _Unprintable

    @pipe.stage
    async def good(ctx: tp.StageContext) -> int:
        return 1

    result = await tp.run(pipe, sinks=[sink], keep_going=True)
    assert result.stages["bad"].status is S.FAILED
    assert isinstance(result.stages["bad"].error, _Unprintable)
    assert result.stages["good"].status is S.SUCCEEDED
    check_run([sink], pipe, result)


async def test_empty_pipeline_still_reports() -> None:
    sink = RecordingSink()
    result = await tp.run(tp.Pipeline("empty"), sinks=[sink])
    assert [type(e) for e in sink.events] == [tp.RunStarted, tp.RunFinished]
    assert result.ok
    assert result.state is tp.RunState.CLOSED


# -- the seed scenario ---------------------------------------------------------------


@pytest.mark.parametrize("repeat", range(20))
async def test_keep_going_console_always_shows_the_blocked_stage(repeat: int) -> None:
    out = io.StringIO()
    pipe = seed_pipeline()
    result = await tp.run(pipe, keep_going=True, max_parallel=4, sinks=[tp.ConsoleSink(out)])
    lines = out.getvalue().splitlines()
    assert lines[:3] == [
        "first: failed (ZeroDivisionError: integer division or modulo by zero)",
        "second: blocked (upstream 'first' failed)",
        lines[2],
    ]
    assert lines[2].startswith("independent: succeeded (")
    assert lines[3].startswith("Summary: 1 succeeded, 1 failed, 1 blocked in ")
    assert len(lines) == 4
    assert statuses(result) == {"first": S.FAILED, "second": S.BLOCKED, "independent": S.SUCCEEDED}
    assert result.stages["second"].blocked_by == "first"
    assert result.counts[S.BLOCKED] == 1
    assert not result.ok
    assert result.state is tp.RunState.CLOSED


async def test_keep_going_blocks_the_whole_downstream_only(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("root", returns(1))
    pipe.add_stage("bad", raises(ValueError("boom"), after=1), after=["root"])
    pipe.add_stage("child", returns(2), after=["bad"])
    pipe.add_stage("grandchild", returns(3), after=["child", "root"])
    pipe.add_stage("side", sleeps(5, "side"), after=["root"])
    pipe.add_stage("after_side", returns(4), after=["side"])
    sink = RecordingSink()
    result = await tp.run(pipe, keep_going=True, sinks=[sink])
    assert statuses(result) == {
        "root": S.SUCCEEDED,
        "bad": S.FAILED,
        "child": S.BLOCKED,
        "grandchild": S.BLOCKED,
        "side": S.SUCCEEDED,
        "after_side": S.SUCCEEDED,
    }
    assert result.stages["grandchild"].blocked_by == "bad"
    assert finished(sink)["grandchild"].blocked_by == "bad"
    assert finished(sink)["bad"].error == "ValueError: boom"
    assert isinstance(result.stages["bad"].error, ValueError)
    assert_well_formed(sink, pipe)


async def test_fail_fast_cancels_running_blocks_downstream_cancels_the_rest(
    autojump_clock: Any,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("slow", sleeps(10))
    pipe.add_stage("bad", raises(RuntimeError("x"), after=1))
    pipe.add_stage("child", returns(1), after=["bad"])
    pipe.add_stage("after_slow", returns(1), after=["slow"])
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert statuses(result) == {
        "slow": S.CANCELLED,
        "bad": S.FAILED,
        "child": S.BLOCKED,
        "after_slow": S.CANCELLED,
    }
    assert result.state is tp.RunState.CLOSED
    assert trio.current_time() == pytest.approx(1)  # slow was cancelled, not awaited
    assert result.stages["slow"].attempts == 1
    assert result.stages["after_slow"].attempts == 0
    assert_well_formed(sink, pipe)
    run_finished = sink.events[-1]
    assert isinstance(run_finished, tp.RunFinished)
    assert run_finished.state is tp.RunState.CLOSED
    assert dict(run_finished.counts) == dict(result.counts)


# -- retries and timeouts ------------------------------------------------------------


async def test_retries_back_off_exponentially(autojump_clock: Any) -> None:
    attempts: list[tuple[int, float]] = []

    async def flaky(ctx: tp.StageContext) -> str:
        attempts.append((ctx.attempt, trio.current_time()))
        if ctx.attempt < 3:
            raise ConnectionError(f"try {ctx.attempt}")
        return "ok"

    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", flaky, retries=3, retry_delay=0.5)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert attempts == [(1, 0.0), (2, 0.5), (3, 1.5)]
    outcome = result.stages["flaky"]
    assert (outcome.status, outcome.value, outcome.attempts) == (S.SUCCEEDED, "ok", 3)
    assert outcome.error is None
    assert outcome.duration == pytest.approx(1.5)
    assert [e.attempt for e in sink.events if isinstance(e, tp.StageStarted)] == [1, 2, 3]
    retrying = [e for e in sink.events if isinstance(e, tp.StageRetrying)]
    assert [(e.attempt, e.delay, e.error) for e in retrying] == [
        (1, 0.5, "ConnectionError: try 1"),
        (2, 1.0, "ConnectionError: try 2"),
    ]


async def test_retry_delays_keep_doubling_past_the_second_retry(autojump_clock: Any) -> None:
    # Two retries cannot tell d * 2**(n-1) from d * n (both give d, 2d): four can.
    async def always(ctx: tp.StageContext) -> None:
        raise ConnectionError(f"try {ctx.attempt}")

    pipe = tp.Pipeline("p")
    pipe.add_stage("always", always, retries=4, retry_delay=0.5)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    delays = [e.delay for e in sink.events if isinstance(e, tp.StageRetrying)]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    starts = [e.time for e in sink.events if isinstance(e, tp.StageStarted)]
    assert starts == [0.0, 0.5, 1.5, 3.5, 7.5]
    assert result.stages["always"].attempts == 5
    check_run([sink], pipe, result)


async def test_retries_exhausted_fail_with_the_last_error(autojump_clock: Any) -> None:
    async def always(ctx: tp.StageContext) -> None:
        raise ValueError(f"attempt {ctx.attempt}")

    pipe = tp.Pipeline("p")
    pipe.add_stage("always", always, retries=2)
    out = io.StringIO()
    result = await tp.run(pipe, sinks=[tp.ConsoleSink(out)])
    outcome = result.stages["always"]
    assert (outcome.status, outcome.attempts) == (S.FAILED, 3)
    assert str(outcome.error) == "attempt 3"
    assert out.getvalue().splitlines()[:3] == [
        "always: attempt 1 failed (ValueError: attempt 1); retrying in 0s",
        "always: attempt 2 failed (ValueError: attempt 2); retrying in 0s",
        "always: failed (ValueError: attempt 3; 3 attempts)",
    ]


async def test_timeout_fails_the_attempt_and_is_retried(autojump_clock: Any) -> None:
    async def slow_then_fast(ctx: tp.StageContext) -> int:
        await trio.sleep(100 if ctx.attempt == 1 else 1)
        return ctx.attempt

    pipe = tp.Pipeline("p")
    pipe.add_stage("s", slow_then_fast, timeout=5, retries=1, retry_delay=2)
    pipe.add_stage("never", sleeps(100), timeout=3)
    sink = RecordingSink()
    result = await tp.run(pipe, keep_going=True, sinks=[sink])
    assert result.stages["s"].value == 2
    assert result.stages["s"].duration == pytest.approx(5 + 2 + 1)
    never = result.stages["never"]
    assert never.status is S.FAILED
    assert isinstance(never.error, tp.StageTimeout)
    assert isinstance(never.error, TimeoutError)
    assert str(never.error) == "stage 'never' timed out after 3s (attempt 1)"
    assert (
        finished(sink)["never"].error
        == "StageTimeout: stage 'never' timed out after 3s (attempt 1)"
    )


async def test_timeout_counts_from_stage_started_not_from_when_the_task_runs(
    autojump_clock: Any,
) -> None:
    # The chaos tape holds the attempt's task for 1 s before the function runs: a
    # deadline taken in the task would be 2.5 and the 1 s stage would succeed at 2.0.
    pipe = tp.Pipeline("p")
    pipe.add_stage("s", sleeps(1.0), timeout=1.5)
    sink = RecordingSink()
    tape = ChaosTape([4], sleep_unit=1.0, points={"stage.start"})
    with tape.installed():
        result = await tp.run(pipe, sinks=[sink])
    assert tape.visits["stage.start"] == 1
    outcome = result.stages["s"]
    assert outcome.status is S.FAILED
    assert isinstance(outcome.error, tp.StageTimeout)
    started = [e for e in sink.events if isinstance(e, tp.StageStarted)]
    assert [e.time for e in started] == [0.0]
    assert finished(sink)["s"].time == pytest.approx(1.5)
    check_run([sink], pipe, result)


async def test_cancellation_is_never_retried(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("s", sleeps(100), retries=5)
    async with tp.open_run(pipe) as handle:
        await trio.sleep(1)
        handle.cancel()
    assert handle.result.stages["s"].status is S.CANCELLED
    assert handle.result.stages["s"].attempts == 1
    assert handle.result.state is tp.RunState.CANCELLED


async def test_retry_delay_does_not_hold_a_slot(autojump_clock: Any) -> None:
    async def flaky(ctx: tp.StageContext) -> None:
        if ctx.attempt == 1:
            raise OSError("once")

    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", flaky, retries=1, retry_delay=10)
    pipe.add_stage("other", sleeps(1))
    sink = RecordingSink()
    await tp.run(pipe, max_parallel=1, sinks=[sink])
    starts = [(e.stage, e.time) for e in sink.events if isinstance(e, tp.StageStarted)]
    assert starts == [("flaky", 0.0), ("other", 0.0), ("flaky", 10.0)]


# -- concurrency limit and order -----------------------------------------------------


def max_running(events: list[tp.Event]) -> int:
    running = peak = 0
    for event in events:
        if isinstance(event, tp.StageStarted):
            running += 1
            peak = max(peak, running)
        elif isinstance(event, tp.StageRetrying) or (
            isinstance(event, tp.StageFinished) and event.attempt > 0
        ):
            running -= 1
    return peak


@pytest.mark.parametrize("limit", [1, 2, 3, None])
async def test_max_parallel_is_never_exceeded(autojump_clock: Any, limit: int | None) -> None:
    pipe = tp.Pipeline("p")
    for i in range(12):
        after = [f"s{i - 5}"] if i >= 5 else []
        pipe.add_stage(f"s{i}", sleeps(1 + i % 3), after=after)
    sink = RecordingSink()
    result = await tp.run(pipe, max_parallel=limit, sinks=[sink])
    assert result.ok
    peak = max_running(sink.events)
    assert peak == (limit if limit is not None else 5)


async def test_ready_stages_start_in_definition_order(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("gate", sleeps(1))
    for name in ["d", "b", "c", "a"]:
        pipe.add_stage(name, sleeps(1), after=["gate"])
    sink = RecordingSink()
    await tp.run(pipe, max_parallel=2, sinks=[sink])
    order = [e.stage for e in sink.events if isinstance(e, tp.StageStarted)]
    assert order == ["gate", "d", "b", "c", "a"]


# -- cancellation and closing ----------------------------------------------------------


def cancellable_pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("p")
    pipe.add_stage("long", sleeps(10))
    pipe.add_stage("after_long", returns(1), after=["long"])
    pipe.add_stage("short", sleeps(1, "short"))
    pipe.add_stage("waiting", sleeps(1), retries=1)
    return pipe


async def test_outer_cancellation_delivers_everything_then_propagates(
    autojump_clock: Any,
) -> None:
    pipe = cancellable_pipeline()
    sink = RecordingSink()
    with trio.move_on_after(5) as scope:
        await tp.run(pipe, sinks=[sink])
        pytest.fail("Cancelled should propagate out of run")  # pragma: no cover
    assert scope.cancelled_caught
    assert_well_formed(sink, pipe)
    done = finished(sink)
    assert {name: e.status for name, e in done.items()} == {
        "long": S.CANCELLED,
        "after_long": S.CANCELLED,
        "short": S.SUCCEEDED,
        "waiting": S.SUCCEEDED,
    }
    last = sink.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CANCELLED
    assert last.counts[S.CANCELLED] == 2


async def test_outer_cancellation_while_waiting_for_a_retry(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", raises(OSError("x")), retries=3, retry_delay=100)
    sink = RecordingSink()
    with trio.move_on_after(5):
        await tp.run(pipe, sinks=[sink])
    assert finished(sink)["flaky"].status is S.CANCELLED
    assert_well_formed(sink, pipe)


async def test_request_close_lets_running_stages_finish(autojump_clock: Any) -> None:
    pipe = cancellable_pipeline()
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        states = [handle.state]
        await trio.sleep(0.5)
        handle.request_close()
        states.append(handle.state)
        handle.request_close()  # idempotent
        assert states == [tp.RunState.RUNNING, tp.RunState.CLOSING]
    result = handle.result
    assert statuses(result) == {
        "long": S.SUCCEEDED,
        "after_long": S.CANCELLED,
        "short": S.SUCCEEDED,
        "waiting": S.SUCCEEDED,
    }
    assert result.state is tp.RunState.CLOSED
    assert trio.current_time() == pytest.approx(10)
    assert_well_formed(sink, pipe)


async def test_request_close_cancels_a_pending_retry(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", raises(OSError("x")), retries=3, retry_delay=100)
    async with tp.open_run(pipe) as handle:
        await trio.sleep(1)
        handle.request_close()
    assert handle.result.stages["flaky"].status is S.CANCELLED
    assert trio.current_time() == pytest.approx(1)  # the retry wait was cut short


async def test_cancel_ends_the_run_cancelled(autojump_clock: Any) -> None:
    pipe = cancellable_pipeline()
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        await trio.sleep(2)
        handle.cancel()
        assert handle.state is tp.RunState.CANCELLED
        handle.cancel()
        handle.request_close()  # harmless
        result = await handle.wait_finished()
    assert statuses(result)["long"] is S.CANCELLED
    assert statuses(result)["short"] is S.SUCCEEDED
    assert result.state is tp.RunState.CANCELLED
    last = sink.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CANCELLED
    handle.cancel()  # after the end: harmless
    handle.request_close()
    assert handle.state is tp.RunState.CANCELLED
    assert_well_formed(sink, pipe)


@pytest.mark.parametrize("how", ["cancel", "outer"])
async def test_cancelling_while_draining_leaves_the_run_closed(
    autojump_clock: Any, how: str
) -> None:
    # The stages are done at t=1; the slow sink keeps the run DRAINING until t=4.
    # Cancelling now cuts nothing short: every event still arrives and the run,
    # whose RunFinished already said CLOSED, ends CLOSED.
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(1))
    slow = SlowSink(1.0)
    seen: list[tp.RunState] = []
    with trio.move_on_after(2 if how == "outer" else math.inf):
        async with tp.open_run(pipe, sinks=[slow], drain_timeout=100) as handle:
            if how == "cancel":
                await trio.sleep(2)
                seen.append(handle.state)
                handle.cancel()
            else:
                await trio.sleep_forever()  # until the deadline cancels the block
    if how == "cancel":
        assert seen == [tp.RunState.DRAINING]
    assert trio.current_time() == pytest.approx(4)
    result = handle.result
    assert result.state is tp.RunState.CLOSED
    assert handle.state is tp.RunState.CLOSED
    last = slow.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CLOSED
    check_run([slow], pipe, result)


async def test_handle_result_before_the_end_raises() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(1))
    async with tp.open_run(pipe) as handle:
        with pytest.raises(RuntimeError, match="has not finished"):
            _ = handle.result
    assert handle.result.ok
    assert handle.state is tp.RunState.CLOSED


async def test_an_error_in_the_block_cancels_the_run_and_delivers(autojump_clock: Any) -> None:
    pipe = cancellable_pipeline()
    sink = RecordingSink()
    with pytest.RaisesGroup(KeyError):
        async with tp.open_run(pipe, sinks=[sink]):
            await trio.sleep(2)
            raise KeyError("boom")
    assert_well_formed(sink, pipe)
    assert finished(sink)["long"].status is S.CANCELLED


async def test_states_through_a_normal_run() -> None:
    pipe = tp.Pipeline("p")
    gate = trio.Event()
    seen: list[tp.RunState] = []

    async def wait(ctx: tp.StageContext) -> None:
        await gate.wait()

    pipe.add_stage("w", wait)
    async with tp.open_run(pipe) as handle:
        seen.append(handle.state)
        gate.set()
        await handle.wait_finished()
        seen.append(handle.state)
    assert seen == [tp.RunState.RUNNING, tp.RunState.CLOSED]


async def test_a_stage_that_swallows_cancellation_finishes_as_it_chose(
    autojump_clock: Any,
) -> None:
    async def stubborn(ctx: tp.StageContext) -> str:
        with trio.CancelScope(shield=True):
            await trio.sleep(3)
        return "finished anyway"

    pipe = tp.Pipeline("p")
    pipe.add_stage("stubborn", stubborn)
    pipe.add_stage("bad", raises(ValueError("x"), after=1))
    result = await tp.run(pipe)
    assert result.stages["stubborn"].status is S.SUCCEEDED
    assert result.stages["stubborn"].value == "finished anyway"


# -- cancel paths ------------------------------------------------------------------------
# The engine stops running stages by cancelling the stages' nursery as a whole. These
# pin the paths that share that one cancel scope: a stage with its own timeout scope,
# and a stage waiting out a retry delay, must end CANCELLED by the engine without
# turning a fail-fast close into a cancelled run.


async def _sleep_long(ctx: tp.StageContext) -> None:
    await trio.sleep(50)


async def _flaky(ctx: tp.StageContext) -> None:
    raise OSError("flaky")


async def _bad_after_2s(ctx: tp.StageContext) -> None:
    await trio.sleep(2)
    raise ValueError("bad")


async def _stubborn(ctx: tp.StageContext) -> str:
    # Keeps the run open after the failure, so a wrong abort() would be visible.
    with trio.CancelScope(shield=True):
        await trio.sleep(5)
    return "done"


async def test_fail_fast_cancels_timed_and_retrying_stages_and_closes(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", _flaky, retries=3, retry_delay=1)
    pipe.add_stage("timed", _sleep_long, timeout=100)
    pipe.add_stage("stubborn", _stubborn)
    pipe.add_stage("bad", _bad_after_2s)
    pipe.add_stage("after", _sleep_long, after=["timed"])
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert {name: o.status for name, o in result.stages.items()} == {
        "flaky": S.CANCELLED,  # was waiting out its second retry delay
        "timed": S.CANCELLED,
        "stubborn": S.SUCCEEDED,
        "bad": S.FAILED,
        "after": S.CANCELLED,
    }
    assert result.state is tp.RunState.CLOSED
    assert trio.current_time() == 5
    last = sink.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CLOSED
    assert [e.seq for e in sink.events] == list(range(len(sink.events)))


async def test_cancel_reaches_a_stage_spawned_but_not_yet_run(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", _sleep_long)
    pipe.add_stage("b", _sleep_long)
    async with tp.open_run(pipe) as handle:
        handle.cancel()  # before either stage task has taken a step
        result = await handle.wait_finished()
    assert {o.status for o in result.stages.values()} == {S.CANCELLED}
    assert result.state is tp.RunState.CANCELLED
    assert trio.current_time() == 0


async def _with_own_nursery(ctx: tp.StageContext) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 50)
        await trio.sleep(50)


async def test_fail_fast_cancelling_a_stage_with_its_own_nursery_closes(
    autojump_clock: Any,
) -> None:
    # Regression: such a stage is cancelled with a group of Cancelled, not a bare
    # Cancelled, and was taken for an outer cancellation: the run ended CANCELLED.
    pipe = tp.Pipeline("p")
    pipe.add_stage("nursery", _with_own_nursery)
    pipe.add_stage("bad", _bad_after_2s)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.state is tp.RunState.CLOSED
    assert {name: o.status for name, o in result.stages.items()} == {
        "nursery": S.CANCELLED,
        "bad": S.FAILED,
    }
    last = sink.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CLOSED


# -- trigger rules and teardown stages ---------------------------------------------------

T = tp.Trigger


def times_of(
    sink: RecordingSink, kind: type[tp.StageStarted] | type[tp.StageFinished]
) -> dict[str, float]:
    return {e.stage: e.time for e in sink.events if isinstance(e, kind)}


def teardown_pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("p")
    pipe.add_stage("long", sleeps(10))
    pipe.add_stage("running_td", sleeps(5), trigger=T.ALWAYS)  # running when the stop comes
    pipe.add_stage("td", sleeps(1), after=["long"], trigger=T.ALWAYS)
    pipe.add_stage("after_long", returns(1), after=["long"])
    return pipe


async def test_teardown_runs_after_a_fail_fast_stop_and_is_never_cancelled_by_it(
    autojump_clock: Any,
) -> None:
    pipe = teardown_pipeline()
    pipe.add_stage("bad", raises(ValueError("x"), after=1))
    pipe.add_stage("join", returns("joined"), after=["bad", "long"], trigger=T.ALL_DONE)
    pipe.add_stage("alert", returns("alerted"), after=["bad"], trigger=T.ONE_FAILED)
    pipe.add_stage("none_failed", returns(1), after=["long"], trigger=T.NONE_FAILED)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert statuses(result) == {
        "long": S.CANCELLED,
        "running_td": S.SUCCEEDED,
        "td": S.SUCCEEDED,
        "after_long": S.CANCELLED,
        "bad": S.FAILED,
        "join": S.SUCCEEDED,
        "alert": S.SUCCEEDED,
        "none_failed": S.CANCELLED,
    }
    assert result.state is tp.RunState.CLOSED
    assert times_of(sink, tp.StageStarted)["td"] == 1.0  # once long was cancelled
    assert times_of(sink, tp.StageFinished)["running_td"] == 5.0  # ran to its end
    assert finished(sink)["after_long"].reason == "fail-fast stop"
    assert finished(sink)["long"].reason == "fail-fast stop"
    assert result.stages["after_long"].reason == "fail-fast stop"
    assert_well_formed(sink, pipe)


async def test_teardown_runs_after_request_close(autojump_clock: Any) -> None:
    pipe = teardown_pipeline()
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        await trio.sleep(2)
        handle.request_close()
    result = handle.result
    assert statuses(result) == {
        "long": S.SUCCEEDED,
        "running_td": S.SUCCEEDED,
        "td": S.SUCCEEDED,
        "after_long": S.CANCELLED,
    }
    assert finished(sink)["after_long"].reason == "close requested"
    assert times_of(sink, tp.StageStarted)["td"] == 10.0
    assert result.state is tp.RunState.CLOSED


async def test_teardown_runs_shielded_after_cancel_until_the_teardown_timeout(
    autojump_clock: Any,
) -> None:
    pipe = teardown_pipeline()
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink], teardown_timeout=3.0) as handle:
        await trio.sleep(1)
        handle.cancel()
    result = handle.result
    assert statuses(result) == {
        "long": S.CANCELLED,
        "running_td": S.CANCELLED,  # needed until t=5; the deadline is 1 + 3
        "td": S.SUCCEEDED,  # started at 1 (long cancelled), done at 2
        "after_long": S.CANCELLED,
    }
    assert finished(sink)["running_td"].time == 4.0
    assert finished(sink)["running_td"].reason == "teardown_timeout passed"
    assert finished(sink)["long"].reason == "run cancelled"
    assert result.state is tp.RunState.CANCELLED
    assert_well_formed(sink, pipe)


@pytest.mark.parametrize("how", ["outer", "second_ctrl_c"])
async def test_teardown_runs_after_an_outer_cancellation(autojump_clock: Any, how: str) -> None:
    pipe = teardown_pipeline()
    sink = RecordingSink()
    with trio.move_on_after(1) as scope:
        async with tp.open_run(pipe, sinks=[sink]) as handle:
            if how == "second_ctrl_c":  # what the CLI does: close, then cancel
                handle.request_close()
                handle.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert statuses(handle.result)["td"] is S.SUCCEEDED
    assert statuses(handle.result)["running_td"] is S.SUCCEEDED  # 5 < 1 + 30
    assert trio.current_time() == 5.0  # the teardown stages were awaited
    assert_well_formed(sink, pipe)


async def test_a_teardown_stage_that_cannot_start_by_the_deadline_is_cancelled(
    autojump_clock: Any,
) -> None:
    async def stubborn(ctx: tp.StageContext) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(10)

    pipe = tp.Pipeline("p")
    pipe.add_stage("stubborn", stubborn)
    pipe.add_stage("td", returns(1), after=["stubborn"], trigger=T.ALWAYS)
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink], teardown_timeout=2) as handle:
        await trio.sleep(1)
        handle.cancel()
    assert finished(sink)["td"].time == 3.0  # at the deadline, not when stubborn ends
    assert finished(sink)["td"].reason == "teardown_timeout passed"
    assert handle.result.stages["stubborn"].status is S.SUCCEEDED


async def test_skipped_is_not_a_failure_and_spreads_by_trigger(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", returns(1))
    pipe.add_stage("alert", returns(1), after=["a"], trigger=T.ONE_FAILED)
    pipe.add_stage("after_alert", returns(1), after=["alert"])
    pipe.add_stage("tolerant", returns(1), after=["alert"], trigger=T.NONE_FAILED)
    seen: dict[str, Any] = {}

    async def join(ctx: tp.StageContext) -> None:
        seen.update(ctx.inputs)

    pipe.add_stage("join", join, after=["a", "alert"], trigger=T.ALL_DONE)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert statuses(result) == {
        "a": S.SUCCEEDED,
        "alert": S.SKIPPED,
        "after_alert": S.SKIPPED,
        "tolerant": S.SUCCEEDED,
        "join": S.SUCCEEDED,
    }
    assert result.ok
    assert finished(sink)["alert"].reason == "trigger one_failed not met: no upstream failed"
    assert (
        finished(sink)["after_alert"].reason
        == "trigger all_success not met: upstream 'alert' skipped"
    )
    assert seen == {"a": 1}  # inputs hold the upstream stages that succeeded
    assert_well_formed(sink, pipe)


# -- pools, exclusive stages, priorities -----------------------------------------------


def intervals(sink: RecordingSink) -> dict[str, tuple[float, float]]:
    starts = times_of(sink, tp.StageStarted)
    return {name: (starts[name], end) for name, end in times_of(sink, tp.StageFinished).items()}


async def test_pools_limit_what_runs_at_once(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p", pools={"gpu": 2, "db": 1})
    pipe.add_stage("big", sleeps(1), uses={"gpu": 2})
    pipe.add_stage("small", sleeps(1), uses="gpu")
    pipe.add_stage("both", sleeps(1), uses={"gpu": 1, "db": 1})
    pipe.add_stage("free", sleeps(1))
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink], max_parallel=2)
    assert result.ok
    # big takes both gpus; small and both wait without holding a parallel slot.
    assert intervals(sink) == {
        "big": (0.0, 1.0),
        "free": (0.0, 1.0),
        "small": (1.0, 2.0),
        "both": (1.0, 2.0),
    }


async def test_run_pools_override_the_pipeline_s_and_are_checked_first() -> None:
    pipe = tp.Pipeline("p", pools={"gpu": 1})
    pipe.add_stage("a", sleeps(0), uses={"gpu": 2})
    sink = RecordingSink()
    with pytest.raises(tp.StageDefinitionError, match=r"'a'.*'gpu'"):
        await tp.run(pipe, sinks=[sink])
    assert sink.events == []
    assert (await tp.run(pipe, pools={"gpu": 2})).ok
    pipe.add_stage("b", sleeps(0), uses="tpu")
    with pytest.raises(tp.StageDefinitionError, match=r"'b'.*'tpu'"):
        await tp.run(pipe, pools={"gpu": 2})


async def test_an_exclusive_stage_runs_alone_and_priorities_order_starts(
    autojump_clock: Any,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("first", sleeps(2))
    pipe.add_stage("alone", sleeps(1), exclusive=True, after=[])
    pipe.add_stage("low", sleeps(1), priority=-5)
    pipe.add_stage("urgent", sleeps(1), priority=10)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink], max_parallel=2)
    assert result.ok
    started = [e.stage for e in sink.events if isinstance(e, tp.StageStarted)]
    assert started == ["urgent", "first", "alone", "low"]
    assert intervals(sink) == {
        "urgent": (0.0, 1.0),
        "first": (0.0, 2.0),
        "alone": (2.0, 3.0),  # waits for first; low waits behind it
        "low": (3.0, 4.0),
    }


async def test_slots_come_back_on_every_exit_path(autojump_clock: Any) -> None:
    async def flaky(ctx: tp.StageContext) -> None:
        if ctx.attempt == 1:
            raise OSError("once")

    pipe = tp.Pipeline("p", pools={"one": 1})
    pipe.add_stage("fails", raises(ValueError("x")), uses="one")
    pipe.add_stage("times_out", sleeps(10), uses="one", timeout=1)
    pipe.add_stage("flaky", flaky, uses="one", retries=1, retry_delay=5)
    pipe.add_stage("last", sleeps(1), uses="one")
    sink = RecordingSink()
    with trio.fail_after(100):  # a leaked slot deadlocks the run
        result = await tp.run(pipe, sinks=[sink], keep_going=True)
    assert statuses(result) == {
        "fails": S.FAILED,
        "times_out": S.FAILED,
        "flaky": S.SUCCEEDED,
        "last": S.SUCCEEDED,
    }
    assert [e.stage for e in sink.events if isinstance(e, tp.StageStarted)] == [
        "fails",
        "times_out",
        "flaky",
        "last",  # while flaky waits out its retry delay, without the slot
        "flaky",
    ]


# -- fatal exceptions ----------------------------------------------------------------------


class _Dies(RecordingSink):
    async def handle(self, event: tp.Event, /) -> None:
        if isinstance(event, tp.StageStarted):
            raise KeyboardInterrupt
        await super().handle(event)


def assert_delivered_and_closed_once(sink: RecordingSink, pipe: tp.Pipeline) -> None:
    assert_well_formed(sink, pipe)
    last = sink.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CANCELLED
    assert sink.aclose_calls == 1


class _Fatal(BaseException):
    pass


@pytest.mark.parametrize("fatal", [KeyboardInterrupt, SystemExit, _Fatal])
async def test_a_stage_raising_a_fatal_exception_ends_the_run_then_it_propagates(
    autojump_clock: Any, fatal: type[BaseException]
) -> None:
    async def dies(ctx: tp.StageContext) -> None:
        await trio.sleep(1)
        raise fatal

    pipe = tp.Pipeline("p")
    pipe.add_stage("dies", dies)
    pipe.add_stage("long", sleeps(100))
    pipe.add_stage("after", returns(1), after=["long"])
    pipe.add_stage("td", sleeps(1), after=["long"], trigger=T.ALWAYS)
    sink = RecordingSink()
    with pytest.raises(fatal) as info:
        await tp.run(pipe, sinks=[sink])
    assert type(info.value) is fatal  # itself, not in a group
    assert_delivered_and_closed_once(sink, pipe)
    done = finished(sink)
    assert done["dies"].reason == f"raised {fatal.__name__}"
    assert (done["long"].status, done["long"].reason) == (S.CANCELLED, "run cancelled")
    assert done["td"].status is S.SUCCEEDED  # teardown still ran
    assert trio.current_time() == 2.0


async def test_a_fatal_exception_from_a_stage_s_own_nursery_comes_out_as_itself() -> None:
    async def dies(ctx: tp.StageContext) -> None:
        async def boom() -> None:
            raise KeyboardInterrupt

        async with trio.open_nursery() as nursery:
            nursery.start_soon(boom)
            await trio.sleep_forever()

    pipe = tp.Pipeline("p")
    pipe.add_stage("dies", dies)
    with pytest.raises(KeyboardInterrupt):
        await tp.run(pipe)


async def test_a_fatal_exception_cancels_the_open_run_body(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("bad", raises(ValueError("an ordinary failure does not cancel the body")))

    async def interrupt(ctx: tp.StageContext) -> None:
        await trio.sleep(1)
        raise KeyboardInterrupt

    pipe.add_stage("interrupt", interrupt)
    with trio.fail_after(100), pytest.raises(KeyboardInterrupt):
        async with tp.open_run(pipe, keep_going=True) as handle:
            await trio.sleep_forever()
    assert handle.result.state is tp.RunState.CANCELLED
    assert trio.current_time() == 1.0


async def test_a_sink_raising_a_fatal_exception_still_lets_the_others_get_everything(
    autojump_clock: Any,
) -> None:
    # The repro: tp.run raised ExceptionGroup([KeyError(RUNNING), ...]).
    pipe = tp.Pipeline("p")
    pipe.add_stage("long", sleeps(100))
    rec, dies = RecordingSink(), _Dies()
    with pytest.raises(KeyboardInterrupt) as info:
        await tp.run(pipe, sinks=[rec, dies])
    assert type(info.value) is KeyboardInterrupt
    assert_delivered_and_closed_once(rec, pipe)
    assert dies.aclose_calls == 1
    assert finished(rec)["long"].status is S.CANCELLED
    assert trio.current_time() == 0.0


# -- an engine bug ends the run instead of hanging it ----------------------------------


@pytest.mark.parametrize("fact", ["attempt_succeeded", "retry_due"])
async def test_an_engine_bug_is_raised_as_an_internal_error_and_closes_the_sinks(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, fact: str
) -> None:
    # Regression: an exception from engine code in a stage task (here: the scheduler)
    # left the stages' nursery waiting, shielded, for a finish that never came: the
    # run hung forever, even under an outer cancellation.
    from trio_pipeline import _scheduler

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("scheduler bug")

    monkeypatch.setattr(_scheduler.Scheduler, fact, broken)
    pipe = tp.Pipeline("p")
    failed_once: list[int] = []

    @pipe.stage(retries=1, retry_delay=1.0)
    async def first(ctx: tp.StageContext) -> int:
        if not failed_once:
            failed_once.append(1)
            raise ValueError("once")
        return 1

    pipe.add_stage("second", returns(2), after=[first])
    sink = RecordingSink()
    with trio.fail_after(100), pytest.raises(tp.PipelineInternalError) as caught:
        await tp.run(pipe, sinks=[sink])
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "bug in trio_pipeline" in str(caught.value)
    assert sink.closed
    assert isinstance(sink.events[0], tp.RunStarted)
