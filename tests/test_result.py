"""RunResult and StageOutcome: what a finished run reports."""

from __future__ import annotations

import pytest

import trio_pipeline as tp
from tests.support.runs import seed_pipeline


async def test_raise_for_failures_groups_stage_errors() -> None:
    result = await tp.run(seed_pipeline(), keep_going=True)
    with pytest.raises(ExceptionGroup) as info:
        result.raise_for_failures()
    assert info.group_contains(ZeroDivisionError)
    (error,) = info.value.exceptions
    assert error.__notes__ == ["in stage 'first'"]
    with pytest.raises(ExceptionGroup):
        result.raise_for_failures()
    assert error.__notes__ == ["in stage 'first'"]  # not noted twice
