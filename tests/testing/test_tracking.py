"""TaskTracker: it sees a task that outlives the block, and passes a real run."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline.testing import SlowSink, TaskTracker


def _pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("p")

    async def wait(ctx: tp.StageContext) -> None:
        await trio.sleep(1)

    for name, after in [("a", []), ("b", []), ("c", ["a", "b"]), ("d", ["c"])]:
        pipe.add_stage(name, wait, after=after)
    return pipe


async def test_task_tracker_sees_a_leak() -> None:
    tracker = TaskTracker()
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        with tracker.installed():
            nursery.start_soon(release.wait, name="leaky")
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(AssertionError, match=r"no task outlives the run.*leaky"):
            tracker.check_all_exited()
        release.set()
    assert tracker.spawned == 1
    # Exited after the tracker was removed: still counted as alive by it.
    assert len(tracker.alive) == 1


async def test_task_tracker_passes_a_run(autojump_clock: trio.testing.MockClock) -> None:
    tracker = TaskTracker()
    with tracker.installed():
        await tp.run(_pipeline(), sinks=[SlowSink(0.5)])
    assert tracker.spawned >= 5
    tracker.check_all_exited()
