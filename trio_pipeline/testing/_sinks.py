"""Sinks for tests: `RecordingSink` keeps what it gets; the fault sinks misbehave on purpose."""

from __future__ import annotations

import trio

from .._events import Event


class RecordingSink:
    """Keeps every event it receives in `events`; `closed` turns true on `aclose`.

    Attributes:
        events: Events whose `handle` completed, in order.
        closed: True once `aclose` was called.
        aclose_calls: How many times `aclose` was called (the engine promises one).
        raised: The exception this sink raised, if it raised one (fault sinks).
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False
        self.aclose_calls = 0
        self.raised: BaseException | None = None

    async def handle(self, event: Event, /) -> None:
        self.events.append(event)

    async def aclose(self) -> None:
        self.closed = True
        self.aclose_calls += 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.events)} events>"


class SinkFault(Exception):
    """What the fault sinks raise."""


class SlowSink(RecordingSink):
    """Sleeps `delay` seconds (use a MockClock) before recording each event."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def handle(self, event: Event, /) -> None:
        await trio.sleep(self.delay)
        self.events.append(event)


class _FaultAtSink(RecordingSink):
    """Records events 0 .. k-1, then `_fault` on the event at index `k`.

    With ``k=None`` it records every event and faults in `aclose` instead.
    """

    def __init__(self, k: int | None) -> None:
        super().__init__()
        self.k = k

    async def aclose(self) -> None:
        await super().aclose()
        if self.k is None:
            await self._fault("while closing")

    async def handle(self, event: Event, /) -> None:
        if len(self.events) == self.k:
            await self._fault(f"at event #{self.k} (seq={event.seq})")
        self.events.append(event)

    async def _fault(self, where: str) -> None:
        raise NotImplementedError


class RaisingSink(_FaultAtSink):
    """Records events 0 .. k-1, then raises `SinkFault` on the event at index `k`.

    With ``k=None`` it records every event and raises from `aclose` instead.
    """

    async def _fault(self, where: str) -> None:
        self.raised = SinkFault(f"sink fault {where}")
        raise self.raised


class HungSink(_FaultAtSink):
    """Records events 0 .. k-1, then never returns from `handle` (until cancelled).

    With ``k=None`` it records every event and hangs in `aclose` instead.
    """

    async def _fault(self, where: str) -> None:
        await trio.sleep_forever()


class TornSink(SlowSink):
    """A slow sink whose cleanup fails when cancelled mid-event: it raises `SinkFault`.

    This breaks the Sink contract (Cancelled should be let through) the way real
    sinks do when a flush in a ``finally`` fails; the engine must still report it in
    `RunResult.sink_errors` rather than lose it.
    """

    async def handle(self, event: Event, /) -> None:
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled as exc:
            self.raised = SinkFault(f"torn write of event seq={event.seq}")
            raise self.raised from exc
        self.events.append(event)
