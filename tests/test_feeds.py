"""One feed per sink: a slow or hung sink delays only itself; supervision and statistics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from trio_pipeline._dispatch import Emitter
from trio_pipeline.testing import (
    HungSink,
    RaisingSink,
    RecordingSink,
    SinkFault,
    SlowSink,
    check_run,
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


def test_supervised_options_are_checked_and_merge() -> None:
    sink = RecordingSink()
    with pytest.raises(ValueError, match="handle_timeout must be a number > 0"):
        tp.supervised(sink, handle_timeout=0)
    with pytest.raises(ValueError, match="handle_timeout"):
        tp.supervised(sink, handle_timeout=True)
    with pytest.raises(TypeError, match="is not a Sink"):
        tp.critical(object())  # type: ignore[arg-type]
    both = tp.supervised(tp.critical(sink), handle_timeout=2)
    assert (both.sink, both.handle_timeout, both.critical) == (sink, 2, True)
    assert repr(both) == "critical(<RecordingSink 0 events>, handle_timeout=2)"
    assert repr(tp.supervised(sink)) == "supervised(<RecordingSink 0 events>)"


async def test_the_same_sink_twice_is_refused_even_when_wrapped() -> None:
    sink = RecordingSink()
    with pytest.raises(ValueError, match="the same sink was passed twice"):
        await tp.run(two_stages(), sinks=[sink, tp.critical(sink)])
    assert sink.events == []


# -- max_backlog --------------------------------------------------------------------


def wide(n: int, *, logs: int = 0) -> tp.Pipeline:
    pipe = tp.Pipeline("wide")

    async def fn(ctx: tp.StageContext) -> None:
        for _ in range(logs):
            ctx.log("x")

    for i in range(n):
        pipe.add_stage(f"s{i}", fn)
    return pipe


class StartProbe:
    """Records, for each StageStarted emitted, the slowest open sink's backlog just before it."""

    def __init__(self, sinks: list[RecordingSink]) -> None:
        self.sinks = sinks
        self.backlogs: list[int] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original = Emitter.send_nowait
        probe = self

        def send_nowait(self: Emitter, event: tp.Event) -> None:
            if isinstance(event, tp.StageStarted):
                # Which sinks are still fed is the dispatcher's word; what each received
                # is the sink's own.
                fed = {id(f.sink) for f in self._dispatcher.feeds if f.state is None}
                open_ = [len(s.events) for s in probe.sinks if id(s) in fed]
                probe.backlogs.append(event.seq - min(open_, default=event.seq))
            original(self, event)

        with mock.patch.object(Emitter, "send_nowait", send_nowait):
            yield


async def test_max_backlog_holds_back_new_stages(autojump_clock: trio.testing.MockClock) -> None:
    n, limit = 1000, 50
    slow = SlowSink(0.01)
    probe = StartProbe([slow])
    with probe.installed():
        result = await tp.run(wide(n), sinks=[slow], max_backlog=limit, drain_timeout=1000)
    assert result.ok
    assert len(slow.events) == 2 * n + 2
    assert len(probe.backlogs) == n
    assert max(probe.backlogs) <= limit
    # Over the limit only by what the stages already running emit (one StageFinished each).
    assert limit < result.deliveries[slow].peak_backlog <= 2 * limit + 2
    # Without the limit, every stage starts at once and the backlog is the whole run.
    slow = SlowSink(0.01)
    result = await tp.run(wide(n), sinks=[slow], max_backlog=None, drain_timeout=1000)
    assert result.deliveries[slow].peak_backlog == 2 * n + 2


async def test_running_stages_emit_freely_over_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slow = SlowSink(1)
    result = await tp.run(wide(3, logs=20), sinks=[slow], max_backlog=0, drain_timeout=1000)
    assert result.ok
    assert len(slow.events) == 3 * 22 + 2
    assert result.deliveries[slow].peak_backlog >= 21  # a whole stage's logs at once


async def test_a_disabled_sink_releases_the_backlog(autojump_clock: trio.testing.MockClock) -> None:
    # The hung sink would hold the run back forever; its handle_timeout disables it,
    # and then only the fast sink's backlog counts.
    hung, fast = HungSink(3), RecordingSink()
    result = await tp.run(
        wide(50),
        sinks=[tp.supervised(hung, handle_timeout=10), fast],
        max_backlog=5,
        drain_timeout=1000,
    )
    assert result.ok
    assert len(fast.events) == 102
    assert isinstance(result.sink_errors[hung], tp.SinkTimeout)
    assert trio.current_time() == pytest.approx(10)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
async def test_max_backlog_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="max_backlog must be a non-negative int or None"):
        await tp.run(wide(1), max_backlog=bad)  # type: ignore[arg-type]


@st.composite
def backlog_scenarios(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    edges = [(i, j) for j in range(n) for i in range(j) if draw(st.integers(0, 3)) == 0]
    return {
        "n": n,
        "edges": edges,
        "logs": draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
        "durations": draw(st.lists(st.sampled_from([0, 0, 0.5, 1]), min_size=n, max_size=n)),
        "max_parallel": draw(st.sampled_from([None, None, 1, 3])),
        "max_backlog": draw(st.sampled_from([None, 0, 1, 2, 5, 20])),
        "sinks": draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["record", "slow", "raise", "hung"]),
                    st.sampled_from([0.1, 0.5, 2.0]),
                ),
                min_size=1,
                max_size=3,
            )
        ),
    }


def _build(sc: dict[str, Any]) -> tp.Pipeline:
    pipe = tp.Pipeline("bp")
    for j in range(sc["n"]):

        async def fn(ctx: tp.StageContext, logs: int = sc["logs"][j], d: float = 0) -> None:
            for _ in range(logs):
                ctx.log("m")
            await trio.sleep(d)

        fn.__defaults__ = (sc["logs"][j], sc["durations"][j])
        pipe.add_stage(f"s{j}", fn, after=[f"s{i}" for i, k in sc["edges"] if k == j])
    return pipe


@settings(max_examples=60)
@given(sc=backlog_scenarios(), seed=st.random_module())
def test_no_stage_starts_while_the_backlog_is_over_max_backlog(
    sc: dict[str, Any], seed: Any
) -> None:
    sinks: list[RecordingSink] = []
    passed: list[tp.Sink] = []
    for kind, param in sc["sinks"]:
        if kind == "slow":
            sink: RecordingSink = SlowSink(param)
            passed.append(sink)
        elif kind == "raise":
            sink = RaisingSink(int(param * 10))
            passed.append(sink)
        elif kind == "hung":
            # A hung sink holds back a bounded run forever unless it is supervised.
            sink = HungSink(int(param * 10))
            passed.append(tp.supervised(sink, handle_timeout=param * 3))
        else:
            sink = RecordingSink()
            passed.append(sink)
        sinks.append(sink)
    pipeline = _build(sc)
    probe = StartProbe(sinks)
    results: list[tp.RunResult] = []

    async def main() -> None:
        with trio.fail_after(100_000):
            results.append(
                await tp.run(
                    pipeline,
                    sinks=passed,
                    max_parallel=sc["max_parallel"],
                    max_backlog=sc["max_backlog"],
                    drain_timeout=10_000,
                )
            )

    with probe.installed():
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    result = results[0]
    check_run(sinks, pipeline, result, max_parallel=sc["max_parallel"])
    assert result.ok
    limit = sc["max_backlog"]
    if limit is not None:
        assert max(probe.backlogs) <= limit, probe.backlogs
    total = 2 + sum(2 + logs for logs in sc["logs"])
    for sink in sinks:
        record = result.deliveries[sink]
        assert record.delivered == len(sink.events)
        assert record.peak_backlog <= total
        if sink in result.sink_errors:
            assert record.state is tp.SinkState.DISABLED
        else:
            assert record == tp.SinkDelivery(total, record.peak_backlog, tp.SinkState.CLOSED)
