"""Helpers for testing pipelines and sinks in your own test suite."""

from __future__ import annotations

from ._events import Event

__all__ = ["RecordingSink"]


class RecordingSink:
    """Keeps every event it receives in `events`; `closed` turns true on `aclose`."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    async def handle(self, event: Event, /) -> None:
        self.events.append(event)

    async def aclose(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<RecordingSink {len(self.events)} events>"
