"""The engine stops running stages by cancelling the stages' nursery as a whole.

These pin the paths that share that one cancel scope: a stage with its own timeout
scope, and a stage waiting out a retry delay, must end CANCELLED by the engine
without turning a fail-fast close into a cancelled run.
"""

from __future__ import annotations

from typing import Any

import trio

import trio_pipeline as tp

S = tp.StageStatus


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


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tp.Event] = []

    async def handle(self, event: tp.Event, /) -> None:
        self.events.append(event)

    async def aclose(self) -> None:
        pass


async def test_fail_fast_cancels_timed_and_retrying_stages_and_closes(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", _flaky, retries=3, retry_delay=1)
    pipe.add_stage("timed", _sleep_long, timeout=100)
    pipe.add_stage("stubborn", _stubborn)
    pipe.add_stage("bad", _bad_after_2s)
    pipe.add_stage("after", _sleep_long, after=["timed"])
    sink = _Recorder()
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
    sink = _Recorder()
    result = await tp.run(pipe, sinks=[sink])
    assert result.state is tp.RunState.CLOSED
    assert {name: o.status for name, o in result.stages.items()} == {
        "nursery": S.CANCELLED,
        "bad": S.FAILED,
    }
    last = sink.events[-1]
    assert isinstance(last, tp.RunFinished)
    assert last.state is tp.RunState.CLOSED
