"""The event records."""

from __future__ import annotations

import pytest

import trio_pipeline as tp


def test_events_are_frozen_and_slotted() -> None:
    event = tp.StageStarted("r", 0, 0.0, "a", 1)
    with pytest.raises(AttributeError):
        event.seq = 3  # type: ignore[misc]
    assert not hasattr(event, "__dict__")


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_describe_error_survives_an_exception_whose_str_raises() -> None:
    from trio_pipeline._events import describe_error

    assert describe_error(_Unprintable()) == "_Unprintable: <exception str() failed>"
    assert describe_error(ValueError()) == "ValueError"
    assert describe_error(ValueError("x")) == "ValueError: x"
