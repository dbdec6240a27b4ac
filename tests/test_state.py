"""The transition tables: every legal move works, every illegal one raises and changes nothing."""

from __future__ import annotations

import itertools

import pytest

from trio_pipeline import RunState, StageStatus, TransitionError
from trio_pipeline._state import (
    RUN_TRANSITIONS,
    STAGE_TRANSITIONS,
    TERMINAL_STATUSES,
    Machine,
    run_machine,
)

S = StageStatus
R = RunState

LEGAL_STAGE_MOVES = {
    (S.PENDING, S.RUNNING),
    (S.PENDING, S.BLOCKED),
    (S.PENDING, S.SKIPPED),
    (S.PENDING, S.CANCELLED),
    (S.PENDING, S.CACHED),  # answered from the cache without running
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.PENDING),  # waiting out a retry delay
}

LEGAL_RUN_MOVES = {
    (R.IDLE, R.RUNNING),
    (R.RUNNING, R.CLOSING),
    (R.RUNNING, R.CANCELLED),
    (R.CLOSING, R.DRAINING),
    (R.CLOSING, R.CANCELLED),
    (R.DRAINING, R.CLOSED),
    (R.DRAINING, R.CANCELLED),
}


def test_tables_are_exactly_the_documented_moves() -> None:
    assert {(a, b) for a, targets in STAGE_TRANSITIONS.items() for b in targets} == (
        LEGAL_STAGE_MOVES
    )
    assert {(a, b) for a, targets in RUN_TRANSITIONS.items() for b in targets} == LEGAL_RUN_MOVES
    assert set(STAGE_TRANSITIONS) == set(StageStatus)
    assert set(RUN_TRANSITIONS) == set(RunState)


@pytest.mark.parametrize(("current", "target"), list(itertools.product(StageStatus, repeat=2)))
def test_stage_transition(current: StageStatus, target: StageStatus) -> None:
    machine = Machine("stage 'x'", current, STAGE_TRANSITIONS)
    if (current, target) in LEGAL_STAGE_MOVES:
        machine.advance(target)
        assert machine.state is target
    else:
        with pytest.raises(TransitionError) as info:
            machine.advance(target)
        assert machine.state is current
        assert info.value.current is current
        assert info.value.target is target
        assert str(info.value) == f"stage 'x': illegal transition {current} -> {target}"


@pytest.mark.parametrize(("current", "target"), list(itertools.product(RunState, repeat=2)))
def test_run_transition(current: RunState, target: RunState) -> None:
    machine = Machine("run r1", current, RUN_TRANSITIONS)
    if (current, target) in LEGAL_RUN_MOVES:
        machine.advance(target)
        assert machine.state is target
    else:
        with pytest.raises(TransitionError, match=f"run r1: illegal transition {current}"):
            machine.advance(target)
        assert machine.state is current


def test_terminal_statuses_have_no_way_out() -> None:
    assert {s for s in StageStatus if s.is_terminal} == TERMINAL_STATUSES
    assert {S.SUCCEEDED, S.FAILED, S.BLOCKED, S.SKIPPED, S.CANCELLED, S.CACHED} == (
        TERMINAL_STATUSES
    )
    for status in TERMINAL_STATUSES:
        assert not STAGE_TRANSITIONS[status]
    assert not RUN_TRANSITIONS[R.CLOSED]
    assert not RUN_TRANSITIONS[R.CANCELLED]


def test_factories_start_where_the_life_starts() -> None:
    assert run_machine("r").state is R.IDLE
    assert "run r" in repr(run_machine("r"))


def test_enum_values_are_lowercase_strings() -> None:
    assert [s.value for s in StageStatus] == [
        "pending",
        "running",
        "succeeded",
        "failed",
        "blocked",
        "skipped",
        "cancelled",
        "cached",
    ]
    assert [s.value for s in RunState] == [
        "idle",
        "running",
        "closing",
        "draining",
        "closed",
        "cancelled",
    ]
    assert StageStatus("blocked") is S.BLOCKED
