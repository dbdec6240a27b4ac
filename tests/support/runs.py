"""Helpers shared by the test modules: stage functions, small pipelines, quick checks."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import trio

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink

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


def check_complete(sink: RecordingSink, result: tp.RunResult) -> None:
    """Every event delivered: RunStarted first, RunFinished last, no seq gap, one finish each."""
    events = sink.events
    assert isinstance(events[0], tp.RunStarted)
    assert isinstance(events[-1], tp.RunFinished)
    assert events[-1].state is result.state
    assert [e.seq for e in events] == list(range(len(events)))
    finished = [e.stage for e in events if isinstance(e, tp.StageFinished)]
    assert sorted(finished) == sorted(result.stages)
    assert sink.closed
    assert not result.undelivered


def logs_of(sink: RecordingSink, stage: str) -> list[str]:
    return [e.message for e in sink.events if isinstance(e, tp.StageLog) and e.stage == stage]


class LineWatcher(RecordingSink):
    """Records events and sets `seen` once StageLogs with all of `messages` were dispatched."""

    def __init__(self, *messages: str) -> None:
        super().__init__()
        self.waiting = set(messages)
        self.seen = trio.Event()

    async def handle(self, event: tp.Event, /) -> None:
        await super().handle(event)
        if isinstance(event, tp.StageLog):
            self.waiting.discard(event.message)
            if not self.waiting:
                self.seen.set()
