"""The dispatcher: every sink gets every event in order; a faulty sink is disabled or cut off."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from tests.support.runs import assert_well_formed, seed_pipeline, sleeps
from trio_pipeline.testing import HungSink, RaisingSink, RecordingSink, SinkFault, SlowSink

S = tp.StageStatus


async def test_a_raising_sink_is_disabled_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    pipe = seed_pipeline()
    bad, good = RaisingSink(2), RecordingSink()
    result = await tp.run(pipe, keep_going=True, sinks=[bad, good])
    assert [e.seq for e in bad.events] == [0, 1]
    assert_well_formed(good, pipe)
    assert list(result.sink_errors) == [bad]
    assert isinstance(bad.raised, SinkFault)
    assert result.sink_errors[bad] is bad.raised
    assert result.undelivered == {}  # a failed sink is not counted as undelivered
    assert result.state is tp.RunState.CLOSED
    assert bad.closed  # still closed, so it can release its resources
    assert "was disabled" in caplog.text


async def test_a_sink_failing_in_aclose_is_reported() -> None:
    sink = RaisingSink(None)
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink])
    assert result.sink_errors[sink] is sink.raised
    assert isinstance(sink.raised, SinkFault)
    assert isinstance(sink.events[-1], tp.RunFinished)


async def test_a_slow_sink_applies_backpressure_and_loses_nothing(autojump_clock: Any) -> None:
    pipe = seed_pipeline()
    slow, fast = SlowSink(1.0), RecordingSink()
    result = await tp.run(pipe, keep_going=True, sinks=[slow, fast], drain_timeout=60)
    assert result.state is tp.RunState.CLOSED
    assert slow.events == fast.events
    assert_well_formed(slow, pipe)


async def test_a_hung_sink_cannot_hang_the_run(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(1))
    pipe.add_stage("b", sleeps(2))
    hung, behind = HungSink(3), RecordingSink()  # hangs on a's StageFinished
    result = await tp.run(pipe, sinks=[hung, behind], drain_timeout=3)
    assert trio.current_time() == pytest.approx(2 + 3)  # stages done, then the deadline
    assert result.state is tp.RunState.CANCELLED
    total = 6  # RunStarted, 2x StageStarted, 2x StageFinished, RunFinished
    # One feed per sink: only the hung sink is cut off; the one behind it got everything.
    assert result.undelivered == {hung: total - 3}
    assert len(behind.events) == total
    assert result.deliveries[behind].state is tp.SinkState.CLOSED
    assert result.deliveries[hung].state is tp.SinkState.CUT_OFF
    assert hung.events == behind.events[:3]
    assert [type(e) for e in hung.events] == [tp.RunStarted, tp.StageStarted, tp.StageStarted]
    assert hung.closed
    assert behind.closed
    assert result.stages["a"].status is S.SUCCEEDED
    assert "did not receive 3 of 6 events" in caplog.text


async def test_a_sink_hanging_in_aclose_overruns_without_losing_events(
    autojump_clock: Any,
) -> None:
    sink = HungSink(None)
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


async def test_a_sink_that_never_awaits_still_meets_the_drain_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: the dispatcher drained its buffer without a single checkpoint, so
    # a sink that blocks synchronously (never awaits) ran past the drain deadline
    # unnoticed and starved the stages; the run ended CLOSED after the whole backlog.
    # The bounds hold under every schedule (`python -m tests.support.repeat` runs this
    # without Hypothesis, whose import makes trio's scheduler deterministic): trio may
    # run the stages before the dispatcher or after its first batch of events, which
    # moves the deadline, so the deadline is measured, not assumed.
    per_event = 0.005
    check_every = 64  # the dispatcher looks at the clock every 64 events

    class BlockingSink(RecordingSink):
        async def handle(self, event: tp.Event, /) -> None:
            autojump_clock.jump(per_event)  # like time.sleep: time passes, nothing yields
            await super().handle(event)

    done_at: list[float] = []

    async def stage(ctx: tp.StageContext) -> None:
        done_at.append(trio.current_time())  # the clock moves only in the sink

    pipe = tp.Pipeline("p")
    for i in range(200):
        pipe.add_stage(f"s{i}", stage)
    sink = BlockingSink()
    result = await tp.run(pipe, sinks=[sink], drain_timeout=0.1)
    total = 2 + 2 * 200
    # The stages were not starved: they ran within the dispatcher's first batch.
    assert max(done_at) <= check_every * per_event + 1e-9
    deadline = max(done_at) + 0.1  # RunFinished is emitted as the last stage ends
    # The deadline was met: the dispatcher stopped within one batch of passing it.
    assert deadline <= trio.current_time() <= deadline + (check_every + 1) * per_event
    assert result.state is tp.RunState.CANCELLED
    assert 0 < result.undelivered[sink] == total - len(sink.events)
