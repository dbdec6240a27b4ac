"""ChaosTape: what each tape value does at a chaos point, and installing it for a block."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline import _chaos
from trio_pipeline.testing import ChaosTape, RecordingSink


async def test_chaos_tape(autojump_clock: trio.testing.MockClock) -> None:
    tape = ChaosTape([0, 2, 5], sleep_unit=0.5)
    assert _chaos.current() is None
    with tape.installed():
        assert _chaos.current() == tape.point
        start = trio.current_time()
        await tape.point("x")  # 0: nothing
        await tape.point("x")  # 2: two checkpoints, no time
        assert trio.current_time() == start
        await tape.point("y")  # 5: sleep (5 - 3) * 0.5
        assert trio.current_time() == start + 1.0
        await tape.point("y")  # tape used up: nothing
    assert _chaos.current() is None
    assert tape.visits == {"x": 2, "y": 2}


async def test_chaos_tape_restores_on_error() -> None:
    tape = ChaosTape([])
    with pytest.raises(KeyError), tape.installed():
        raise KeyError
    assert _chaos.current() is None


def _two_stages() -> tp.Pipeline:
    pipe = tp.Pipeline("p")

    async def wait(ctx: tp.StageContext) -> None:
        await trio.sleep(1)

    pipe.add_stage("a", wait)
    pipe.add_stage("b", wait, after=["a"])
    return pipe


# Per run of _two_stages with one sink: a point per attempt start and success, one
# per event delivered (RunStarted, 2 x StageStarted, 2 x StageFinished, RunFinished),
# one per sink closed.
_POINTS_OF_ONE_RUN = {"stage.start": 2, "stage.end": 2, "dispatch": 6, "sink.aclose": 1}


async def test_a_tape_perturbs_only_the_runs_started_where_it_is_installed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A process-global hook would count the other run's points too.
    tape = ChaosTape([4] * 100, sleep_unit=0.25)
    results: dict[str, tp.RunResult] = {}

    async def taped() -> None:
        with tape.installed():
            results["taped"] = await tp.run(_two_stages(), sinks=[RecordingSink()])

    async def plain() -> None:
        results["plain"] = await tp.run(_two_stages(), sinks=[RecordingSink()])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(taped)
        nursery.start_soon(plain)
    assert tape.visits == _POINTS_OF_ONE_RUN
    assert results["plain"].duration == pytest.approx(2.0)
    assert results["taped"].duration > 2.0  # the tape's sleeps slowed this run only


def test_a_tape_installed_around_trio_run_reaches_the_run() -> None:
    # How the property harness uses it: one trio.run per example, inside the block.
    tape = ChaosTape([])
    with tape.installed():
        clock = trio.testing.MockClock(autojump_threshold=0)
        result = trio.run(tp.run, _two_stages(), clock=clock)
    assert result.ok
    # No sink: nothing to dispatch to (a visit per event and sink) or to close.
    assert tape.visits == {"stage.start": 2, "stage.end": 2}
    assert _chaos.current() is None


async def test_a_tape_limited_to_some_points_leaves_the_others_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tape = ChaosTape([4, 5], sleep_unit=1.0, points={"stage.start"})
    start = trio.current_time()
    await tape.point("dispatch")  # counted, consumes nothing
    assert trio.current_time() == start
    await tape.point("stage.start")  # 4: one unit
    assert trio.current_time() == start + 1.0
    await tape.point("dispatch")
    await tape.point("stage.start")  # 5: two units
    assert trio.current_time() == start + 3.0
    assert tape.visits == {"dispatch": 2, "stage.start": 2}
