"""The hand-written Trio DAG with the engine's two tricks: the cheapest trio floor here.

Same work as `baseline_trio`, but the finishing stage schedules its own downstream
(no completion channel, no coordinator wake-up per stage) and the consumer drains
buffered events with `receive_nowait`, blocking only when the channel is empty.
"""

from __future__ import annotations

import graphlib
import math

import trio

from .graphs import Graph


async def _noop() -> None:
    return None


async def run(parents: Graph) -> int:
    """Run the DAG; return the number of events the consumer counted."""
    sorter = graphlib.TopologicalSorter({i: ps for i, ps in enumerate(parents)})
    sorter.prepare()
    event_send, event_receive = trio.open_memory_channel[tuple[str, int]](math.inf)
    counted = 0

    async def consume() -> None:
        nonlocal counted
        while True:
            try:
                event_receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    await event_receive.receive()
                except trio.EndOfChannel:
                    return
            except trio.EndOfChannel:
                return
            counted += 1

    def start_ready(nursery: trio.Nursery) -> None:
        for i in sorter.get_ready():
            event_send.send_nowait(("started", i))
            nursery.start_soon(stage, i, nursery)
        if not sorter.is_active():
            event_send.send_nowait(("run-finished", -1))
            event_send.close()

    async def stage(i: int, nursery: trio.Nursery) -> None:
        await _noop()
        event_send.send_nowait(("finished", i))
        sorter.done(i)
        start_ready(nursery)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        event_send.send_nowait(("run-started", -1))
        start_ready(nursery)
    return counted
