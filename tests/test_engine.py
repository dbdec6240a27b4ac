"""Engine semantics: policies, retries, timeouts, limits, cancellation and shutdown."""

from __future__ import annotations

import io
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink

S = tp.StageStatus

StageFn = Callable[[tp.StageContext], Coroutine[Any, Any, Any]]


def returns(value: object) -> StageFn:
    async def stage(ctx: tp.StageContext) -> object:
        return value

    return stage


def sleeps(seconds: float, value: object = None) -> StageFn:
    async def stage(ctx: tp.StageContext) -> object:
        await trio.sleep(seconds)
        return value

    return stage


def raises(exc: Exception, after: float = 0.0) -> StageFn:
    async def stage(ctx: tp.StageContext) -> None:
        if after:
            await trio.sleep(after)
        raise exc

    return stage


def finished(sink: RecordingSink) -> dict[str, tp.StageFinished]:
    return {e.stage: e for e in sink.events if isinstance(e, tp.StageFinished)}


def statuses(result: tp.RunResult) -> dict[str, tp.StageStatus]:
    return {name: outcome.status for name, outcome in result.stages.items()}


def assert_well_formed(sink: RecordingSink, pipe: tp.Pipeline) -> None:
    """The invariants every run keeps, whatever happened."""
    events = sink.events
    assert [e.seq for e in events] == list(range(len(events)))
    assert isinstance(events[0], tp.RunStarted)
    assert isinstance(events[-1], tp.RunFinished)
    assert sum(isinstance(e, tp.RunFinished | tp.RunStarted) for e in events) == 2
    done = [e.stage for e in events if isinstance(e, tp.StageFinished)]
    assert sorted(done) == sorted(pipe.stages)
    times = [e.time for e in events]
    assert times == sorted(times)
    assert len({e.run_id for e in events}) == 1
    assert sink.closed


def seed_pipeline() -> tp.Pipeline:
    """The scenario this project exists for: first fails, second depends on it."""
    pipe = tp.Pipeline("demo")

    @pipe.stage
    async def first(ctx: tp.StageContext) -> int:
        return 1 // 0

    @pipe.stage(after=[first])
    async def second(ctx: tp.StageContext) -> int:
        return int(ctx.inputs["first"]) + 1

    pipe.add_stage("independent", sleeps(0.01, "done"), after=())
    return pipe


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


async def test_raise_for_failures_groups_stage_errors() -> None:
    result = await tp.run(seed_pipeline(), keep_going=True)
    with pytest.raises(ExceptionGroup) as info:
        result.raise_for_failures()
    assert info.group_contains(ZeroDivisionError)
    (error,) = info.value.exceptions
    assert error.__notes__ == ["in stage 'first'"]
    with pytest.raises(ExceptionGroup):
        result.raise_for_failures()
    assert error.__notes__ == ["in stage 'first'"]  # not noted twice


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
    assert out.getvalue().splitlines()[0] == "always: failed (ValueError: attempt 3; 3 attempts)"


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


# -- logging ---------------------------------------------------------------------------


async def test_ctx_log_emits_stage_log_events() -> None:
    pipe = tp.Pipeline("p")
    kept: list[tp.StageContext] = []

    @pipe.stage
    async def talk(ctx: tp.StageContext) -> None:
        ctx.log("hello")
        ctx.log("world")
        kept.append(ctx)

    sink = RecordingSink()
    out = io.StringIO()
    await tp.run(pipe, sinks=[sink, tp.ConsoleSink(out, logs=True)])
    logs = [(e.stage, e.message) for e in sink.events if isinstance(e, tp.StageLog)]
    assert logs == [("talk", "hello"), ("talk", "world")]
    assert out.getvalue().splitlines()[:2] == ["talk | hello", "talk | world"]
    with pytest.raises(RuntimeError, match="stage 'talk' has finished"):
        kept[0].log("too late")


# -- sinks -----------------------------------------------------------------------------


class RaisingSink(RecordingSink):
    def __init__(self, on_seq: int) -> None:
        super().__init__()
        self.on_seq = on_seq

    async def handle(self, event: tp.Event, /) -> None:
        if event.seq == self.on_seq:
            raise OSError("disk full")
        await super().handle(event)


async def test_a_raising_sink_is_disabled_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    pipe = seed_pipeline()
    bad, good = RaisingSink(on_seq=2), RecordingSink()
    result = await tp.run(pipe, keep_going=True, sinks=[bad, good])
    assert [e.seq for e in bad.events] == [0, 1]
    assert_well_formed(good, pipe)
    assert list(result.sink_errors) == [bad]
    assert isinstance(result.sink_errors[bad], OSError)
    assert result.undelivered == {}  # a failed sink is not counted as undelivered
    assert result.state is tp.RunState.CLOSED
    assert bad.closed  # still closed, so it can release its resources
    assert "was disabled" in caplog.text


async def test_a_sink_failing_in_aclose_is_reported() -> None:
    class BadClose(RecordingSink):
        async def aclose(self) -> None:
            raise RuntimeError("cannot close")

    sink = BadClose()
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink])
    assert isinstance(result.sink_errors[sink], RuntimeError)
    assert len(sink.events) > 0


class SlowSink(RecordingSink):
    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle(self, event: tp.Event, /) -> None:
        await trio.sleep(self.delay)
        await super().handle(event)


async def test_a_slow_sink_applies_backpressure_and_loses_nothing(autojump_clock: Any) -> None:
    pipe = seed_pipeline()
    slow, fast = SlowSink(1.0), RecordingSink()
    result = await tp.run(pipe, keep_going=True, sinks=[slow, fast], drain_timeout=60)
    assert result.state is tp.RunState.CLOSED
    assert slow.events == fast.events
    assert_well_formed(slow, pipe)


class HungSink(RecordingSink):
    async def handle(self, event: tp.Event, /) -> None:
        await super().handle(event)
        if isinstance(event, tp.StageFinished):
            await trio.sleep_forever()


async def test_a_hung_sink_cannot_hang_the_run(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(1))
    pipe.add_stage("b", sleeps(2))
    hung, behind = HungSink(), RecordingSink()
    result = await tp.run(pipe, sinks=[hung, behind], drain_timeout=3)
    assert trio.current_time() == pytest.approx(2 + 3)  # stages done, then the deadline
    assert result.state is tp.RunState.CANCELLED
    total = 6  # RunStarted, 2x StageStarted, 2x StageFinished, RunFinished
    # One feed per sink: only the hung sink is cut off; the other got everything.
    assert result.undelivered == {hung: total - 3}
    assert len(behind.events) == total
    assert result.deliveries[behind].state is tp.SinkState.CLOSED
    assert result.deliveries[hung].state is tp.SinkState.CUT_OFF
    assert [type(e) for e in hung.events][-1] is tp.StageFinished
    assert hung.closed
    assert behind.closed
    assert result.stages["a"].status is S.SUCCEEDED
    assert "did not receive 3 of 6 events" in caplog.text


async def test_a_sink_hanging_in_aclose_overruns_without_losing_events(
    autojump_clock: Any,
) -> None:
    class HangsOnClose(RecordingSink):
        async def aclose(self) -> None:
            await trio.sleep_forever()

    sink = HangsOnClose()
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink], drain_timeout=2)
    assert result.state is tp.RunState.CANCELLED
    assert result.undelivered == {}
    assert isinstance(sink.events[-1], tp.RunFinished)


async def test_cancellation_in_a_sink_propagates(autojump_clock: Any) -> None:
    # A sink is never allowed to eat Cancelled: the outer deadline still wins.
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(10))
    sink = SlowSink(100)
    with trio.move_on_after(1) as scope:
        await tp.run(pipe, sinks=[sink], drain_timeout=1)
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(2)


async def test_jsonl_sink_writes_every_event(tmp_path: Any) -> None:
    import json

    path = tmp_path / "events.jsonl"
    sink = tp.JsonlSink(path)
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["seq"] for row in rows] == list(range(len(rows)))
    assert rows[0]["type"] == "RunStarted"
    assert rows[0]["stages"] == ["first", "second", "independent"]
    last = rows[-1]
    assert last["type"] == "RunFinished"
    assert last["state"] == "closed"
    assert last["counts"] == {
        "succeeded": 1,
        "failed": 1,
        "blocked": 1,
        "skipped": 0,
        "cancelled": 0,
    }
    failed = next(r for r in rows if r["type"] == "StageFinished" and r["stage"] == "first")
    assert failed["status"] == "failed"
    assert failed["error"] == "ZeroDivisionError: integer division or modulo by zero"
    blocked = next(r for r in rows if r["type"] == "StageFinished" and r["stage"] == "second")
    assert blocked["blocked_by"] == "first"
    assert all(r["run_id"] == result.run_id for r in rows)


async def test_jsonl_sink_flushes_each_event(tmp_path: Any) -> None:
    path = tmp_path / "events.jsonl"
    sink = tp.JsonlSink(path)
    pipe = tp.Pipeline("p")
    lines_seen: list[int] = []

    @pipe.stage
    async def look(ctx: tp.StageContext) -> None:
        await trio.testing.wait_all_tasks_blocked()
        lines_seen.append(len(path.read_text().splitlines()))

    await tp.run(pipe, sinks=[sink])
    assert lines_seen == [2]  # RunStarted and StageStarted are on disk already


def test_events_are_frozen_and_slotted() -> None:
    event = tp.StageStarted("r", 0, 0.0, "a", 1)
    with pytest.raises(AttributeError):
        event.seq = 3  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


async def test_a_sink_that_never_awaits_still_meets_the_drain_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: the dispatcher drained its buffer without a single checkpoint, so
    # a sink that blocks synchronously (never awaits) ran past the drain deadline
    # unnoticed and starved the stages; the run ended CLOSED after the whole backlog.
    class BlockingSink(RecordingSink):
        async def handle(self, event: tp.Event, /) -> None:
            autojump_clock.jump(0.005)  # like time.sleep: time passes, nothing yields
            await super().handle(event)

    pipe = tp.Pipeline("p")
    for i in range(200):
        pipe.add_stage(f"s{i}", returns(i))
    sink = BlockingSink()
    result = await tp.run(pipe, sinks=[sink], drain_timeout=0.1)
    assert result.state is tp.RunState.CANCELLED
    assert 0 < result.undelivered[sink] < 402 - 64
    assert trio.current_time() < 402 * 0.005 / 2
