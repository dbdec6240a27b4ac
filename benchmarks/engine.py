"""The engine under test: `trio_pipeline.run` with a sink that counts every event."""

from __future__ import annotations

from typing import Any

import trio_pipeline as tp

from .graphs import Graph


class CountingSink:
    """Counts the events it receives (the cheapest sink that sees every event)."""

    def __init__(self) -> None:
        self.count = 0

    async def handle(self, event: tp.Event, /) -> None:
        self.count += 1

    async def aclose(self) -> None:
        pass


async def _noop(ctx: tp.StageContext) -> Any:
    return None


def build(parents: Graph) -> tp.Pipeline:
    """One `add_stage` per stage, from the shared edge list."""
    names = [f"s{i}" for i in range(len(parents))]
    pipeline = tp.Pipeline("bench")
    for i, ups in enumerate(parents):
        pipeline.add_stage(names[i], _noop, after=[names[j] for j in ups])
    return pipeline


async def run(pipeline: tp.Pipeline, **options: Any) -> int:
    """Run to the end (`options` go to `tp.run`); return the number of events the sink received.

    Raises:
        AssertionError: a stage did not succeed or an event was not delivered.
    """
    sink = CountingSink()
    result = await tp.run(pipeline, sinks=[sink], **options)
    n = len(pipeline)
    expected = 2 * n + 2  # RunStarted, StageStarted + StageFinished per stage, RunFinished
    assert result.ok, result.counts
    assert not result.undelivered, result.undelivered
    assert sink.count == expected, (sink.count, expected)
    return sink.count
