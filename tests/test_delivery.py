"""Sink supervision options, delivery records and the readable names the CLI prints."""

from __future__ import annotations

import pytest

import trio_pipeline as tp
from trio_pipeline._delivery import cut_off_warnings, sink_name
from trio_pipeline.testing import RecordingSink


def test_supervised_options_are_checked_and_merge() -> None:
    sink = RecordingSink()
    with pytest.raises(ValueError, match="handle_timeout must be a number > 0"):
        tp.supervised(sink, handle_timeout=0)
    with pytest.raises(ValueError, match="handle_timeout"):
        tp.supervised(sink, handle_timeout=True)
    with pytest.raises(TypeError, match="is not a Sink"):
        tp.critical(object())  # type: ignore[arg-type]
    both = tp.supervised(tp.critical(sink), handle_timeout=2)
    assert (both.sink, both.handle_timeout, both.critical) == (sink, 2, True)
    assert repr(both) == "critical(<RecordingSink 0 events>, handle_timeout=2)"
    assert repr(tp.supervised(sink)) == "supervised(<RecordingSink 0 events>)"


def test_sink_names_are_readable() -> None:
    class Plain:
        async def handle(self, event: tp.Event, /) -> None:
            pass

        async def aclose(self) -> None:
            pass

    assert sink_name(Plain()) == "test_sink_names_are_readable.<locals>.Plain"
    assert sink_name(tp.critical(tp.JsonlSink("x.jsonl"))) == "JsonlSink('x.jsonl')"
    assert sink_name(RecordingSink()) == "<RecordingSink 0 events>"


def test_cut_off_warnings_name_each_cut_off_sink() -> None:
    a, b, c = tp.JsonlSink("a.jsonl"), tp.JsonlSink("b.jsonl"), tp.JsonlSink("c.jsonl")
    deliveries: dict[tp.Sink, tp.SinkDelivery] = {
        a: tp.SinkDelivery(10, 90, tp.SinkState.CUT_OFF, None, 90),
        b: tp.SinkDelivery(100, 3, tp.SinkState.CLOSED),
        c: tp.SinkDelivery(100, 3, tp.SinkState.CUT_OFF),
    }
    assert cut_off_warnings(deliveries) == [
        "event sink JsonlSink('a.jsonl') was cut off at the drain deadline:"
        " did not receive 90 of 100 events",
        "event sink JsonlSink('c.jsonl') was cut off at the drain deadline:"
        " received every event but did not finish closing",
    ]
