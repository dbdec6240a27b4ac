"""The kit's sinks do what their docstrings say, event by event (no engine involved)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline.testing import (
    HungSink,
    RaisingSink,
    RecordingSink,
    SinkFault,
    SlowSink,
    TornSink,
)


def _events(n: int) -> list[tp.Event]:
    return [tp.StageLog("r", seq, 0.0, "s", f"m{seq}") for seq in range(n)]


async def test_recording_sink_keeps_events_and_counts_closes() -> None:
    sink = RecordingSink()
    for event in _events(3):
        await sink.handle(event)
    await sink.aclose()
    assert sink.events == _events(3)
    assert (sink.closed, sink.aclose_calls, sink.raised) == (True, 1, None)
    assert repr(sink) == "<RecordingSink 3 events>"


async def test_raising_sink_raises_at_event_k_and_records_the_rest() -> None:
    sink = RaisingSink(2)
    events = _events(3)
    await sink.handle(events[0])
    await sink.handle(events[1])
    with pytest.raises(SinkFault, match="at event #2") as info:
        await sink.handle(events[2])
    assert sink.raised is info.value
    assert sink.events == events[:2]
    await sink.aclose()  # k given: closing is fine


async def test_raising_sink_without_k_raises_in_aclose() -> None:
    sink = RaisingSink(None)
    for event in _events(2):
        await sink.handle(event)
    with pytest.raises(SinkFault, match="while closing") as info:
        await sink.aclose()
    assert sink.raised is info.value
    assert (len(sink.events), sink.closed) == (2, True)


async def test_hung_sink_hangs_at_event_k_until_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = HungSink(1)
    events = _events(2)
    await sink.handle(events[0])
    with trio.move_on_after(100) as scope:
        await sink.handle(events[1])
    assert scope.cancelled_caught
    assert sink.events == events[:1]
    with trio.move_on_after(100) as scope:
        await HungSink(None).aclose()
    assert scope.cancelled_caught


async def test_slow_sink_takes_its_delay_per_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = SlowSink(0.5)
    start = trio.current_time()
    for event in _events(3):
        await sink.handle(event)
    assert trio.current_time() - start == pytest.approx(1.5)
    assert len(sink.events) == 3


async def test_torn_sink_raises_its_own_error_when_cancelled_mid_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sink = TornSink(1.0)
    events = _events(2)
    await sink.handle(events[0])
    with (
        pytest.raises(SinkFault, match="torn write of event seq=1") as info,
        trio.move_on_after(0.5),
    ):
        await sink.handle(events[1])
    assert sink.raised is info.value
    assert isinstance(info.value.__cause__, trio.Cancelled)
    assert sink.events == events[:1]
