"""trio_pipeline.testing.check_run: each invariant can fail, with its name.

A recorded good run is mutated one way per test; check_run must name exactly the
invariant the mutation breaks (a checker that cannot fail proves nothing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline.testing import HungSink, RaisingSink, RecordingSink, SinkFault, check_run


def _pipeline(*, fail: bool = False) -> tp.Pipeline:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        ctx.log("a")
        await trio.sleep(1)
        return 1

    @pipe.stage
    async def b(ctx: tp.StageContext) -> int:
        await trio.sleep(1)
        if fail:
            raise ValueError("b failed")
        return 2

    @pipe.stage(after=[a, b])
    async def c(ctx: tp.StageContext) -> int:
        return 3

    @pipe.stage(after=[c])
    async def d(ctx: tp.StageContext) -> int:
        return 4

    return pipe


async def _record(
    pipe: tp.Pipeline, *sinks: RecordingSink, **options: object
) -> tuple[list[tp.Event], tp.RunResult]:
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink, *sinks], **options)  # type: ignore[arg-type]
    return sink.events, result


def _renumber(events: list[tp.Event]) -> list[tp.Event]:
    return [dataclasses.replace(e, seq=i) for i, e in enumerate(events)]


def _index(events: list[tp.Event], kind: type[tp.Event], stage: str | None = None) -> int:
    for i, event in enumerate(events):
        if isinstance(event, kind) and getattr(event, "stage", None) in (stage, None):
            return i
    raise LookupError(kind)


async def test_a_good_run_passes(autojump_clock: trio.testing.MockClock) -> None:
    for fail in (False, True):
        pipe = _pipeline(fail=fail)
        extra = RecordingSink()
        events, result = await _record(pipe, extra, keep_going=fail)
        check_run(events, pipe, result, max_parallel=2, keep_going=fail)
        check_run([extra], pipe, result, max_parallel=2)


Mutation = Callable[[list[tp.Event]], list[tp.Event]]


def _drop_middle(events: list[tp.Event]) -> list[tp.Event]:
    return events[:2] + events[3:]


def _drop_last(events: list[tp.Event]) -> list[tp.Event]:
    return events[:-1]


def _duplicate_finish(events: list[tp.Event]) -> list[tp.Event]:
    i = _index(events, tp.StageFinished, "a")
    return _renumber([*events[: i + 1], events[i], *events[i + 1 :]])


def _start_after_finish(events: list[tp.Event]) -> list[tp.Event]:
    i = _index(events, tp.StageStarted, "d")
    j = _index(events, tp.StageFinished, "c")
    moved = [e for k, e in enumerate(events) if k != i]
    return _renumber([*moved[:j], events[i], *moved[j:]])


def _wrong_counts(events: list[tp.Event]) -> list[tp.Event]:
    last = events[-1]
    assert isinstance(last, tp.RunFinished)
    counts = dict(last.counts)
    counts[tp.StageStatus.FAILED] += 1
    return [*events[:-1], dataclasses.replace(last, counts=counts)]


def _time_travel(events: list[tp.Event]) -> list[tp.Event]:
    i = len(events) - 2
    return [*events[:i], dataclasses.replace(events[i], time=-1.0), events[-1]]


def _log_after_finish(events: list[tp.Event]) -> list[tp.Event]:
    i = _index(events, tp.StageFinished, "a")
    log = tp.StageLog(events[0].run_id, 0, events[i].time, "a", "late")
    return _renumber([*events[: i + 1], log, *events[i + 1 :]])


@pytest.mark.parametrize(
    ("mutate", "invariant"),
    [
        (_drop_middle, "seq contiguous from 0"),
        (_drop_last, "RunFinished last"),
        (_duplicate_finish, "exactly one StageFinished per stage"),
        (_start_after_finish, "a stage starts only after every upstream SUCCEEDED"),
        (_wrong_counts, "RunFinished.counts matches the events"),
        (_time_travel, "time never goes backwards"),
        (_log_after_finish, "nothing happens to a stage after its StageFinished"),
        (lambda events: events[1:], "RunStarted first"),
    ],
)
async def test_each_mutation_is_named(
    autojump_clock: trio.testing.MockClock, mutate: Mutation, invariant: str
) -> None:
    pipe = _pipeline()
    events, result = await _record(pipe)
    with pytest.raises(AssertionError, match=f"invariant broken: {invariant}"):
        check_run(mutate(events), pipe, result)


async def test_max_parallel_is_checked(autojump_clock: trio.testing.MockClock) -> None:
    pipe = _pipeline()
    events, result = await _record(pipe)  # a and b ran together
    check_run(events, pipe, result, max_parallel=2)
    with pytest.raises(AssertionError, match="running stages never exceed max_parallel"):
        check_run(events, pipe, result, max_parallel=1)


async def test_blocked_by_must_name_a_failed_upstream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = _pipeline(fail=True)
    events, result = await _record(pipe, keep_going=True)
    check_run(events, pipe, result)
    i = _index(events, tp.StageFinished, "c")
    event = events[i]
    assert isinstance(event, tp.StageFinished)
    assert event.blocked_by == "b"
    wrong = [*events[:i], dataclasses.replace(event, blocked_by="a"), *events[i + 1 :]]
    with pytest.raises(AssertionError, match="BLOCKED names an already FAILED stage"):
        check_run(wrong, pipe, result)


async def test_fail_fast_is_checked(autojump_clock: trio.testing.MockClock) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def bad(ctx: tp.StageContext) -> None:
        raise ValueError("bad")

    @pipe.stage
    async def late(ctx: tp.StageContext) -> None:
        pass

    events, result = await _record(pipe, keep_going=True, max_parallel=1)
    check_run(events, pipe, result, keep_going=True)
    with pytest.raises(AssertionError, match="fail-fast: no stage starts after a failure"):
        check_run(events, pipe, result, keep_going=False)


async def test_sinks_are_compared(autojump_clock: trio.testing.MockClock) -> None:
    pipe = _pipeline()
    first, second = RecordingSink(), RecordingSink()
    result = await tp.run(pipe, sinks=[first, second])
    check_run([first, second], pipe, result)
    second.events.pop(3)
    with pytest.raises(AssertionError, match="every healthy sink received the identical"):
        check_run([first, second], pipe, result)
    second.events.clear()
    with pytest.raises(AssertionError, match="every healthy sink received the identical"):
        check_run([first, second], pipe, result)


async def test_a_raising_sink_is_reported(autojump_clock: trio.testing.MockClock) -> None:
    pipe = _pipeline()
    raising, healthy = RaisingSink(2), RecordingSink()
    result = await tp.run(pipe, sinks=[raising, healthy])
    assert isinstance(raising.raised, SinkFault)
    assert result.sink_errors[raising] is raising.raised
    check_run([raising, healthy], pipe, result)
    unreported = dataclasses.replace(result, sink_errors={})
    with pytest.raises(AssertionError, match="a sink that raised is reported"):
        check_run([raising, healthy], pipe, unreported)


async def test_lost_events_and_closed_runs(autojump_clock: trio.testing.MockClock) -> None:
    pipe = _pipeline()
    hung, healthy = HungSink(3), RecordingSink()
    result = await tp.run(pipe, sinks=[healthy, hung], drain_timeout=10)
    assert result.state is tp.RunState.CANCELLED
    assert result.undelivered[hung] > 0
    check_run([healthy, hung], pipe, result, lossless=False)
    with pytest.raises(AssertionError, match="no event is lost"):
        check_run([healthy, hung], pipe, result)
    lying = dataclasses.replace(result, state=tp.RunState.CLOSED)
    with pytest.raises(AssertionError, match="undelivered is empty when the run is CLOSED"):
        check_run([healthy, hung], pipe, lying, lossless=False)
    hidden = dataclasses.replace(result, undelivered={})
    with pytest.raises(AssertionError, match="lost events are reported in undelivered"):
        check_run([hung], pipe, hidden, lossless=False)
    miscounted = dataclasses.replace(result, undelivered={hung: result.undelivered[hung] + 1})
    with pytest.raises(AssertionError, match="received \\+ undelivered"):
        check_run([healthy, hung], pipe, miscounted, lossless=False)


async def test_unclosed_sink_is_caught(autojump_clock: trio.testing.MockClock) -> None:
    pipe = _pipeline()
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    sink.aclose_calls = 0
    with pytest.raises(AssertionError, match="every sink is closed exactly once"):
        check_run([sink], pipe, result)


async def test_result_must_match_events(autojump_clock: trio.testing.MockClock) -> None:
    pipe = _pipeline()
    events, result = await _record(pipe)
    stages = dict(result.stages)
    stages["a"] = dataclasses.replace(stages["a"], attempts=2)
    with pytest.raises(AssertionError, match=r"result\.stages matches the StageFinished"):
        check_run(events, pipe, dataclasses.replace(result, stages=stages))


async def test_result_state_must_agree_with_run_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = _pipeline()
    events, result = await _record(pipe)
    assert result.state is tp.RunState.CLOSED
    cancelled = dataclasses.replace(result, state=tp.RunState.CANCELLED)
    with pytest.raises(AssertionError, match="RunFinished ends CLOSED unless the drain overran"):
        check_run(events, pipe, cancelled)
    check_run(events, pipe, cancelled, lossless=False)  # a sink may have hung in aclose
    last = events[-1]
    assert isinstance(last, tp.RunFinished)
    said_cancelled = [*events[:-1], dataclasses.replace(last, state=tp.RunState.CANCELLED)]
    with pytest.raises(AssertionError, match="RunFinished ends CANCELLED"):
        check_run(said_cancelled, pipe, result)


async def test_deliveries_are_checked_against_the_sinks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipeline, sink = _pipeline(), RecordingSink()
    result = await tp.run(pipeline, sinks=[sink])
    check_run([sink], pipeline, result)
    record = result.deliveries[sink]
    wrong = {
        "deliveries counts the events each sink handled": dataclasses.replace(
            record, delivered=record.delivered - 1
        ),
        "DISABLED exactly for the sinks in sink_errors": dataclasses.replace(
            record, state=tp.SinkState.DISABLED
        ),
        "a run with a sink cut off ends CANCELLED": dataclasses.replace(
            record, state=tp.SinkState.CUT_OFF
        ),
    }
    for invariant, bad in wrong.items():
        tampered = dataclasses.replace(result, deliveries={sink: bad})
        with pytest.raises(AssertionError, match=f"invariant broken: {invariant}"):
            check_run([sink], pipeline, tampered)


@pytest.mark.parametrize("only", [False, True])
async def test_a_targeted_run_is_checked_against_the_stages_it_selected(
    autojump_clock: trio.testing.MockClock, only: bool
) -> None:
    # Regression: check_run compared a run of `targets=["b"]` with the whole pipeline
    # and failed "RunStarted lists the stages".
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(after=[a])
    async def b(ctx: tp.StageContext) -> int:
        return 2

    @pipe.stage(after=[b])
    async def c(ctx: tp.StageContext) -> int:
        return 3

    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink], targets=["b"], only=only)
    assert list(result.stages) == (["b"] if only else ["a", "b"])
    check_run([sink], pipe, result, targets=["b"], only=only)
    with pytest.raises(AssertionError, match="RunStarted lists the stages"):
        check_run([sink], pipe, result)  # not what ran
