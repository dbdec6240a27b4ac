"""The same hand-written DAG on asyncio (a peer, not a target)."""

from __future__ import annotations

import asyncio
import graphlib

from .graphs import Graph


async def _noop() -> None:
    return None


async def run(parents: Graph) -> int:
    """Run the DAG; return the number of events the consumer counted."""
    sorter = graphlib.TopologicalSorter({i: ps for i, ps in enumerate(parents)})
    sorter.prepare()
    done: asyncio.Queue[int] = asyncio.Queue()
    events: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
    counted = 0

    async def consume() -> None:
        nonlocal counted
        while await events.get() is not None:
            counted += 1

    async def stage(i: int) -> None:
        await _noop()
        events.put_nowait(("finished", i))
        done.put_nowait(i)

    async with asyncio.TaskGroup() as group:
        group.create_task(consume())
        events.put_nowait(("run-started", -1))
        while sorter.is_active():
            for i in sorter.get_ready():
                events.put_nowait(("started", i))
                group.create_task(stage(i))
            sorter.done(await done.get())
        events.put_nowait(("run-finished", -1))
        events.put_nowait(None)
    return counted
