"""The dispatcher: every sink gets every event in order; a faulty sink is disabled or cut off."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from tests.support.runs import assert_well_formed, seed_pipeline, sleeps
from trio_pipeline._dispatch import Dispatcher, Emitter
from trio_pipeline.testing import (
    HungSink,
    RaisingSink,
    RecordingSink,
    SinkFault,
    SlowSink,
    check_run,
)

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


# -- max_backlog: the dispatcher holds new stages back --------------------------


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
    n, limit, slots = 1000, 50, 10
    slow = SlowSink(0.01)
    probe = StartProbe([slow])
    with probe.installed(), trio.fail_after(100_000):  # a pause never lifted: a failure
        result = await tp.run(
            wide(n), sinks=[slow], max_backlog=limit, max_parallel=slots, drain_timeout=1000
        )
    assert result.ok
    assert len(slow.events) == 2 * n + 2
    assert len(probe.backlogs) == n
    # The pause takes effect from the scheduler's next decision: one decision starts at
    # most `slots` stages, after the one event that woke it.
    assert max(probe.backlogs) <= limit + slots + 1
    # Over the limit only by what the stages already running emit (one StageFinished each).
    assert limit < result.deliveries[slow].peak_backlog <= limit + 2 * slots + 2
    # Without the limit, every stage starts as soon as a slot is free and the backlog
    # is nearly the whole run.
    slow = SlowSink(0.01)
    result = await tp.run(
        wide(n), sinks=[slow], max_backlog=None, max_parallel=slots, drain_timeout=1000
    )
    assert result.deliveries[slow].peak_backlog > 2 * n - 2 * slots


async def test_a_wide_graph_starts_only_what_the_backlog_allows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No max_parallel: every stage is ready at `begin`. One decision must not start them
    # all (it used to: the pause could only act from the next decision on).
    n, limit = 300, 20
    slow = SlowSink(0.01)
    probe = StartProbe([slow])
    with probe.installed(), trio.fail_after(100_000):
        result = await tp.run(wide(n), sinks=[slow], max_backlog=limit, drain_timeout=1000)
    assert result.ok
    assert len(probe.backlogs) == n
    # Each start is decided with room for its StageStarted; the stages already running
    # may each add their StageFinished before the next pause is seen.
    assert probe.backlogs[:limit] == list(range(1, limit + 1))  # begin: RunStarted, then each
    assert max(probe.backlogs) <= 2 * limit + 1
    assert result.deliveries[slow].peak_backlog <= 2 * limit + 2


async def test_a_run_without_sinks_is_not_held_back() -> None:
    with trio.fail_after(10):  # held for room nobody gives: a hang
        result = await tp.run(wide(50), max_backlog=3)
    assert result.ok
    assert len(result.stages) == 50


def test_room_is_what_keeps_the_slowest_feed_within_max_backlog() -> None:
    fast, slow = RecordingSink(), RecordingSink()
    send, receive = trio.open_memory_channel[tp.Event](math.inf)
    dispatcher = Dispatcher(receive, [fast, slow], lambda _: None, max_backlog=10)
    emitter = dispatcher.emitter(send)
    for seq in range(4):
        emitter.send_nowait(tp.StageStarted("r", seq, 0.0, "s", 1))
    fast_feed, slow_feed = dispatcher.feeds
    fast_feed.delivered = 4
    slow_feed.delivered = 1
    assert dispatcher.room() == 10 + 1 - 3  # the slowest feed lags 3 events
    dispatcher.paused = True
    assert dispatcher.room() == 0  # on_backlog(False) gives it once it is back under half
    unbounded = Dispatcher(receive, [fast], lambda _: None, max_backlog=None)
    assert unbounded.room() > 10**9
    no_sinks = Dispatcher(receive, [], lambda _: None, max_backlog=0)
    assert no_sinks.room() > 10**9


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
        # No start is decided while paused; a decision that began unpaused starts at
        # most `slots` stages after the event that woke the scheduler.
        slots = sc["max_parallel"] or sc["n"]
        assert max(probe.backlogs) <= limit + slots + 1, probe.backlogs
    total = 2 + sum(2 + logs for logs in sc["logs"])
    for sink in sinks:
        record = result.deliveries[sink]
        assert record.delivered == len(sink.events)
        assert record.peak_backlog <= total
        if sink in result.sink_errors:
            assert record.state is tp.SinkState.DISABLED
        else:
            assert record == tp.SinkDelivery(total, record.peak_backlog, tp.SinkState.CLOSED)


async def test_the_same_sink_twice_is_refused_even_when_wrapped() -> None:
    sink = RecordingSink()
    with pytest.raises(ValueError, match="the same sink was passed twice"):
        await tp.run(seed_pipeline(), sinks=[sink, tp.critical(sink)])
    assert sink.events == []


async def test_a_feed_cut_off_takes_no_more_events(autojump_clock: trio.testing.MockClock) -> None:
    # Events sent straight into the channel (as a replay does) after one feed was cut
    # off go to the others; putting into the closed feed would crash the dispatcher.
    send, receive = trio.open_memory_channel[tp.Event](math.inf)
    hung, other = HungSink(0), RecordingSink()
    done = trio.Event()
    dispatcher = Dispatcher(receive, [hung, other], lambda _: done.set())
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        send.send_nowait(tp.RunStarted("r", 0, 0.0, "p", ()))
        dispatcher.feeds[0].scope.deadline = trio.current_time() + 1  # the hung one only
        await trio.sleep(2)  # the hung feed is cut off; the other is still open
        for seq in range(1, 4):
            send.send_nowait(tp.StageLog("r", seq, 2.0, "a", "m"))
        send.close()
        await done.wait()
    assert [e.seq for e in other.events] == [0, 1, 2, 3]
    records = dispatcher.deliveries(4)
    assert records[hung] == tp.SinkDelivery(0, 1, tp.SinkState.CUT_OFF, None, 4)
    assert records[other].state is tp.SinkState.CLOSED
