"""ChaosTape: what each tape value does at a chaos point, and installing it for a block."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_pipeline import _chaos
from trio_pipeline.testing import ChaosTape


async def test_chaos_tape(autojump_clock: trio.testing.MockClock) -> None:
    tape = ChaosTape([0, 2, 5], sleep_unit=0.5)
    assert _chaos.hook is None
    with tape.installed():
        assert _chaos.hook == tape.point
        start = trio.current_time()
        await tape.point("x")  # 0: nothing
        await tape.point("x")  # 2: two checkpoints, no time
        assert trio.current_time() == start
        await tape.point("y")  # 5: sleep (5 - 3) * 0.5
        assert trio.current_time() == start + 1.0
        await tape.point("y")  # tape used up: nothing
    assert _chaos.hook is None
    assert tape.visits == {"x": 2, "y": 2}


async def test_chaos_tape_restores_on_error() -> None:
    tape = ChaosTape([])
    with pytest.raises(KeyError), tape.installed():
        raise KeyError
    assert _chaos.hook is None
