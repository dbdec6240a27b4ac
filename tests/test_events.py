"""The event records."""

from __future__ import annotations

import pytest

import trio_pipeline as tp


def test_events_are_frozen_and_slotted() -> None:
    event = tp.StageStarted("r", 0, 0.0, "a", 1)
    with pytest.raises(AttributeError):
        event.seq = 3  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
