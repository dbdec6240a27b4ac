"""The pipeline-free invariants: one checker behind both `check_log` and `check_run`.

Each violation planted in a recorded run must be named, with the same invariant, by both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline import _jsonl
from trio_pipeline._logcheck import LogInvariantError
from trio_pipeline._replay import check_log, cmd_check
from trio_pipeline.testing import RecordingSink, check_run

S = tp.StageStatus
Events = list[tp.Event]


def _pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("p")

    @pipe.stage(retries=1)
    async def a(ctx: tp.StageContext) -> None:
        ctx.log(f"attempt {ctx.attempt}")
        await trio.sleep(1)
        if ctx.attempt == 1:
            raise ValueError("first time")

    @pipe.stage
    async def b(ctx: tp.StageContext) -> None:
        await trio.sleep(2)
        raise ValueError("b failed")

    @pipe.stage(after=[b])
    async def c(ctx: tp.StageContext) -> None: ...

    @pipe.stage(after=[a])
    async def d(ctx: tp.StageContext) -> None:
        await trio.sleep(5)

    return pipe


def _at(events: Events, kind: type[tp.Event], stage: str) -> int:
    return next(
        i for i, e in enumerate(events) if isinstance(e, kind) and getattr(e, "stage", "") == stage
    )


def _renumber(events: Events) -> Events:
    return [dataclasses.replace(e, seq=i) for i, e in enumerate(events)]


def _change(kind: type[tp.Event], stage: str, /, **changes: Any) -> Callable[[Events], Events]:
    def change(events: Events) -> Events:
        i = _at(events, kind, stage)
        return [*events[:i], dataclasses.replace(events[i], **changes), *events[i + 1 :]]

    return change


def _insert(
    at: Callable[[Events], int], event: Callable[[Events], tp.Event]
) -> Callable[..., Events]:
    def insert(events: Events) -> Events:
        i = at(events)
        return _renumber([*events[:i], event(events), *events[i:]])

    return insert


def _drop(at: Callable[[Events], int]) -> Callable[[Events], Events]:
    def drop(events: Events) -> Events:
        i = at(events)
        return _renumber([*events[:i], *events[i + 1 :]])

    return drop


def _wrong_counts(events: Events) -> Events:
    last = events[-1]
    assert isinstance(last, tp.RunFinished)
    counts = dict(last.counts)
    counts[S.SUCCEEDED] += 1
    return [*events[:-1], dataclasses.replace(last, counts=counts)]


def _log(stage: str) -> Callable[[Events], tp.Event]:
    return lambda events: tp.StageLog(events[0].run_id, 0, events[-2].time, stage, "late")


PLANTED: dict[str, Callable[[Events], Events]] = {
    "RunStarted first": lambda events: _renumber(events[1:]),
    "seq contiguous from 0": lambda events: events[:3] + events[4:],
    "one run id": lambda events: [
        *events[:2],
        dataclasses.replace(events[2], run_id="x"),
        *events[3:],
    ],
    "time never goes backwards": _change(tp.StageFinished, "d", time=-1.0),
    "RunStarted exactly once": _insert(lambda e: 1, lambda e: e[0]),
    "RunFinished last": lambda events: events[:-1],
    "exactly one StageFinished per stage": _drop(lambda e: _at(e, tp.StageFinished, "d")),
    "RunFinished.counts matches the events": _wrong_counts,
    "events name only the run's stages": _change(tp.StageLog, "a", stage="ghost"),
    "nothing happens to a stage after its StageFinished": _insert(lambda e: len(e) - 1, _log("a")),
    "one attempt of a stage at a time": _insert(
        lambda e: _at(e, tp.StageStarted, "d") + 1, lambda e: e[_at(e, tp.StageStarted, "d")]
    ),
    "attempts numbered 1, 2, ...": _change(tp.StageStarted, "b", attempt=2),
    "StageRetrying ends the running attempt": _change(tp.StageRetrying, "a", attempt=2),
    "logs and item events come only from a running stage": _change(tp.StageLog, "a", stage="c"),
    "StageFinished carries a terminal status": _change(tp.StageFinished, "d", status=S.RUNNING),
    "StageFinished.attempt counts the StageStarted events": _change(
        tp.StageFinished, "a", attempt=1
    ),
    "StageStarted before its StageFinished": _change(
        tp.StageFinished, "c", status=S.SUCCEEDED, blocked_by=None
    ),
    "a skipped stage never started": _change(tp.StageFinished, "d", status=S.SKIPPED),
    "StageFinished.error is set exactly for FAILED": _change(tp.StageFinished, "b", error=None),
    "BLOCKED names an already FAILED stage in blocked_by": _change(
        tp.StageFinished, "c", blocked_by="a"
    ),
    "blocked_by is set only for BLOCKED": _change(tp.StageFinished, "d", blocked_by="b"),
}


async def _recorded() -> tuple[tp.Pipeline, Events, tp.RunResult]:
    pipe, sink = _pipeline(), RecordingSink()
    result = await tp.run(pipe, sinks=[sink], keep_going=True)
    assert [result.stages[n].status for n in "abcd"] == [
        S.SUCCEEDED,
        S.FAILED,
        S.BLOCKED,
        S.SUCCEEDED,
    ]
    return pipe, sink.events, result


async def test_a_real_run_passes_both(autojump_clock: trio.testing.MockClock) -> None:
    pipe, events, result = await _recorded()
    assert check_log(events) == events
    check_run(events, pipe, result, keep_going=True)


@pytest.mark.parametrize("invariant", list(PLANTED))
async def test_a_planted_violation_is_named_alike_by_both(
    autojump_clock: trio.testing.MockClock, invariant: str
) -> None:
    pipe, events, result = await _recorded()
    broken = PLANTED[invariant](events)
    assert broken != events
    with pytest.raises(LogInvariantError) as from_log:
        check_log(broken)
    assert from_log.value.invariant == invariant
    with pytest.raises(AssertionError, match=f"^invariant broken: {invariant}:") as from_run:
        check_run(broken, pipe, result, keep_going=True)
    assert str(from_run.value) == str(from_log.value)  # one checker, one message


async def test_only_check_run_knows_which_stages_may_start_and_end_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A stream reader may end BLOCKED after starting; a log does not say which stages
    # read streams, so only check_run, holding the pipeline, rejects it for others.
    pipe, events, result = await _recorded()
    broken = _change(tp.StageFinished, "d", status=S.BLOCKED, blocked_by="b")(events)
    with pytest.raises(AssertionError, match="invariant broken: a blocked stage never started"):
        check_run(broken, pipe, result, keep_going=True)
    with pytest.raises(LogInvariantError, match=r"RunFinished\.counts matches the events"):
        check_log(broken)


async def test_what_only_check_run_can_see(autojump_clock: trio.testing.MockClock) -> None:
    pipe, events, result = await _recorded()
    other = dataclasses.replace(result, run_id="another run")
    with pytest.raises(AssertionError, match="invariant broken: one run id"):
        check_run(events, pipe, other, keep_going=True)
    # The same stage names, but c after d: its blocked_by=b is no longer upstream of it.
    moved = tp.Pipeline("p")
    for name, stage in pipe.stages.items():
        after = ["d"] if name == "c" else list(stage.after)
        moved.add_stage(name, stage.fn, after=after, retries=stage.retries)
    with pytest.raises(AssertionError, match="BLOCKED only downstream of a FAILED stage"):
        check_run(events, moved, result, keep_going=True)


def _item_pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("items")

    @pipe.stage
    async def src(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(20):
            await trio.sleep(0.05)
            yield i

    @pipe.stage(each=src, on_item_error="skip")
    async def half(ctx: tp.StageContext, item: int) -> int:
        if item == 3:
            raise ValueError(item)
        return item // 2

    return pipe


async def test_a_log_with_item_events_passes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Regression: check_log (and `trio-pipeline check`) stopped at the first
    # StageProgress or ItemFailed with a bare AssertionError.
    pipe, sink = _item_pipeline(), RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    kinds = {type(e) for e in sink.events}
    assert {tp.StageProgress, tp.ItemFailed} <= kinds
    check_run(sink.events, pipe, result)
    assert check_log(sink.events) == sink.events
    path = tmp_path / "run.jsonl"
    encode = _jsonl.encoder()
    path.write_bytes(b"".join(encode(_jsonl.event_row(e)) + b"\n" for e in sink.events))
    assert cmd_check(str(path)) == 0, capsys.readouterr().out
