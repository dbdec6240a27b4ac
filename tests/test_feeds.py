"""One feed per sink: a slow or hung sink delays only itself; supervision and statistics."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline.testing import (
    HungSink,
    RaisingSink,
    RecordingSink,
    SinkFault,
    SlowSink,
)

S = tp.StageStatus


def sleeps(seconds: float) -> tp.StageFunction:
    async def fn(ctx: tp.StageContext) -> None:
        await trio.sleep(seconds)

    return fn


def two_stages() -> tp.Pipeline:
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(1))
    pipe.add_stage("b", sleeps(2), after="a")
    return pipe


TOTAL = 6  # RunStarted, 2x StageStarted, 2x StageFinished, RunFinished


class TimedSink(RecordingSink):
    """Records when it received RunFinished."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.finished_at: float | None = None

    async def handle(self, event: tp.Event, /) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        await super().handle(event)
        if isinstance(event, tp.RunFinished):
            self.finished_at = trio.current_time()


async def test_a_slow_sink_does_not_delay_a_fast_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fast, slow = TimedSink(), TimedSink(delay=10)
    result = await tp.run(two_stages(), sinks=[slow, fast], drain_timeout=1000)
    # The fast sink has RunFinished when the stages are done (3 s), the slow one
    # after its own 6 x 10 s; the run waits for both, and both are complete.
    assert fast.finished_at == pytest.approx(3)
    assert slow.finished_at == pytest.approx(60)
    assert trio.current_time() == pytest.approx(60)
    assert fast.events == slow.events
    assert len(fast.events) == TOTAL
    assert result.state is tp.RunState.CLOSED
    assert result.deliveries[slow] == tp.SinkDelivery(TOTAL, TOTAL, tp.SinkState.CLOSED)
    assert result.deliveries[fast].state is tp.SinkState.CLOSED
    assert result.deliveries[fast].delivered == TOTAL
    assert result.deliveries[fast].peak_backlog <= 2


async def test_a_hung_sink_is_the_only_one_cut_off(autojump_clock: trio.testing.MockClock) -> None:
    hung, before, after = HungSink(2), RecordingSink(), TimedSink(delay=0.5)
    result = await tp.run(two_stages(), sinks=[before, hung, after], drain_timeout=5)
    assert trio.current_time() == pytest.approx(3 + 5)  # stages done, then the deadline
    assert result.state is tp.RunState.CANCELLED  # a healthy sink was cut off
    assert result.undelivered == {hung: TOTAL - 2}
    for sink in (before, after):
        assert len(sink.events) == TOTAL
        assert sink.closed
        assert result.deliveries[sink].state is tp.SinkState.CLOSED
    record = result.deliveries[hung]
    assert record == tp.SinkDelivery(2, TOTAL - 2, tp.SinkState.CUT_OFF, None, TOTAL - 2)
    assert hung.aclose_calls == 1
    assert result.sink_errors == {}


async def test_the_run_is_closed_when_every_healthy_sink_got_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A raising sink is disabled, not cut off: the run still ends CLOSED.
    bad, good = RaisingSink(1), TimedSink(delay=1)
    result = await tp.run(two_stages(), sinks=[bad, good], drain_timeout=100)
    assert result.state is tp.RunState.CLOSED
    assert result.deliveries[bad].state is tp.SinkState.DISABLED
    assert result.deliveries[bad].error is bad.raised
    assert result.deliveries[bad].delivered == 1
    assert result.sink_errors == {bad: bad.raised}


async def test_handle_timeout_disables_only_the_slow_sink(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    slow, other = SlowSink(3), RecordingSink()
    result = await tp.run(
        two_stages(), sinks=[tp.supervised(slow, handle_timeout=2), other], drain_timeout=100
    )
    # Keyed by the wrapped sink, as passed inside the wrapper.
    error = result.sink_errors[slow]
    assert isinstance(error, tp.SinkTimeout)
    assert isinstance(error, TimeoutError)
    assert "took longer than 2s to handle event seq=0" in str(error)
    assert result.deliveries[slow].state is tp.SinkState.DISABLED
    assert slow.events == []
    assert slow.closed
    assert len(other.events) == TOTAL
    assert result.state is tp.RunState.CLOSED
    assert result.ok
    assert trio.current_time() == pytest.approx(3)  # the timed-out sink holds nothing up
    assert "SlowSink" in caplog.text


async def test_a_sink_within_its_handle_timeout_is_not_disabled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = SlowSink(1)
    result = await tp.run(two_stages(), sinks=[tp.supervised(slow, handle_timeout=1.5)])
    assert result.sink_errors == {}
    assert len(slow.events) == TOTAL


async def test_handle_timeout_bounds_aclose_too(autojump_clock: trio.testing.MockClock) -> None:
    sink = HungSink(None)  # hangs in aclose
    result = await tp.run(two_stages(), sinks=[tp.supervised(sink, handle_timeout=1)])
    assert isinstance(result.sink_errors[sink], tp.SinkTimeout)
    assert "to close" in str(result.sink_errors[sink])
    assert len(sink.events) == TOTAL
    assert result.state is tp.RunState.CLOSED
    assert trio.current_time() == pytest.approx(4)


async def test_a_critical_sink_failing_cancels_the_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    audit, other = RaisingSink(2), RecordingSink()
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", sleeps(1))
    pipe.add_stage("b", sleeps(5))
    pipe.add_stage("c", sleeps(1), after="a")
    result = await tp.run(pipe, sinks=[tp.critical(audit), other], keep_going=True)
    # It raised at the third event (seq=2, at time 0): running stages were cancelled,
    # "c" never started.
    assert result.state is tp.RunState.CANCELLED
    assert result.sink_errors == {audit: audit.raised}
    assert isinstance(audit.raised, SinkFault)
    assert {name: o.status for name, o in result.stages.items()} == {
        "a": S.CANCELLED,
        "b": S.CANCELLED,
        "c": S.CANCELLED,
    }
    assert trio.current_time() == pytest.approx(0)
    # The other sink still got every event, through RunFinished.
    assert isinstance(other.events[-1], tp.RunFinished)
    assert [e.seq for e in other.events] == list(range(len(other.events)))
    assert other.events[-1].state is tp.RunState.CANCELLED


async def test_a_critical_sink_failing_while_draining_still_cancels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    audit = RaisingSink(TOTAL - 1)  # raises on RunFinished
    result = await tp.run(two_stages(), sinks=[tp.critical(audit)])
    assert result.ok  # every stage had succeeded
    assert result.state is tp.RunState.CANCELLED
    assert result.sink_errors[audit] is audit.raised


async def test_a_non_critical_sink_failing_does_not_cancel(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = RaisingSink(2)
    result = await tp.run(two_stages(), sinks=[sink])
    assert result.state is tp.RunState.CLOSED
    assert result.ok
