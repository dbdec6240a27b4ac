"""`PoolTracker`: pool limits checked from inside the calls that hold the slots."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline.testing import PoolTracker


def test_counts_holders_and_names_the_first_overrun() -> None:
    tracker = PoolTracker({"gpu": 2})
    with tracker.holding({"gpu": 1}, "a"), tracker.holding({"gpu": 1}, "b"):
        pass
    with tracker.holding({"gpu": 2}, "c"):
        pass
    tracker.check()  # at most 2 at once
    assert tracker.peak == {"gpu": 2}
    with tracker.holding({"gpu": 2}, "d"), tracker.holding({"gpu": 1}, "e"):
        pass
    with pytest.raises(AssertionError, match="e took 1 of pool 'gpu': 3 of 2 in use"):
        tracker.check()


def test_an_unknown_pool_is_reported_and_slots_come_back_on_errors() -> None:
    tracker = PoolTracker({"gpu": 1})
    with pytest.raises(KeyError), tracker.holding({"gpu": 1}, "a"):
        raise KeyError
    with tracker.holding({"gpu": 1}, "b"):  # a's slot came back
        pass
    tracker.check()
    with tracker.holding({"tpu": 1}, "c"):
        pass
    with pytest.raises(AssertionError, match="c uses 'tpu'"):
        tracker.check()


async def test_it_sees_per_item_slots_that_no_event_shows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p", pools={"gpu": 2})
    tracker = PoolTracker(pipe.pools)

    @pipe.stage
    async def src(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(8):
            yield i

    @pipe.stage(each=src, workers=4, uses="gpu")
    async def infer(ctx: tp.StageContext, item: int) -> int:
        with tracker.holding({"gpu": 1}, f"item {item}"):
            await trio.sleep(1.0)
        return item

    result = await tp.run(pipe)
    assert result.ok
    tracker.check()
    assert tracker.peak == {"gpu": 2}  # 4 workers, 2 slots
    # Telling it the pool is smaller catches the "overrun" (the check is not vacuous).
    strict = PoolTracker({"gpu": 1})
    tracker = strict
    await tp.run(pipe)
    with pytest.raises(AssertionError, match="2 of 1 in use"):
        strict.check()
