"""The hand-written minimal Trio DAG: the cost floor the engine is measured against.

graphlib decides what is ready; one nursery owns one task per stage; each finished
stage reports on one completion channel to the scheduling loop; every start and
finish is also an event on one channel read by one consumer task that counts them.
That is the same work the engine does (two events per stage plus run start/finish),
without its state machines, options or guarantees.
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
    done_send, done_receive = trio.open_memory_channel[int](math.inf)
    event_send, event_receive = trio.open_memory_channel[tuple[str, int]](math.inf)
    counted = 0

    async def consume() -> None:
        nonlocal counted
        async for _ in event_receive:
            counted += 1

    async def stage(i: int) -> None:
        await _noop()
        event_send.send_nowait(("finished", i))
        done_send.send_nowait(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        event_send.send_nowait(("run-started", -1))
        while sorter.is_active():
            for i in sorter.get_ready():
                event_send.send_nowait(("started", i))
                nursery.start_soon(stage, i)
            sorter.done(await done_receive.receive())
        event_send.send_nowait(("run-finished", -1))
        event_send.close()
    return counted
