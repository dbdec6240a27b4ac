"""CI-safe scaling guard: the engine's work per stage must not grow with the run's size.

No wall-clock time is measured. Each run is counted instead: lines executed in
`trio_pipeline` (catches a loop over all stages hidden in a per-stage step, which
makes no extra calls), Python function calls anywhere (trio included), and trio
task steps and spawns (an Instrument). Per stage, each count at N = 10,000 must
match N = 1,000 within a few percent; per-stage O(N) work would multiply it by ten.
`benchmarks/` measures the time itself.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import trio

import trio_pipeline as tp

PACKAGE_DIR = str(Path(tp.__file__).parent)
SMALL, LARGE = 1_000, 10_000
TOLERANCE = 0.05


def _parents(shape: str, n: int) -> list[tuple[int, ...]]:
    if shape == "wide":
        return [() for _ in range(n)]
    if shape == "chain":
        return [()] + [(i - 1,) for i in range(1, n)]
    rng = random.Random(6)  # layered: sqrt(n) layers, 1-3 parents in the previous layer
    width = math.isqrt(n)
    out: list[tuple[int, ...]] = []
    for i in range(n):
        lo = (i // width - 1) * width
        out.append(() if lo < 0 else tuple(rng.sample(range(lo, lo + width), rng.randint(1, 3))))
    return out


async def _noop(ctx: tp.StageContext) -> None:
    return None


def _pipeline(shape: str, n: int) -> tp.Pipeline:
    pipe = tp.Pipeline(shape)
    for i, ups in enumerate(_parents(shape, n)):
        pipe.add_stage(f"s{i}", _noop, after=[f"s{j}" for j in ups])
    return pipe


class _Counter:
    """A trace function counting engine lines and all calls, and a sink counting events."""

    def __init__(self) -> None:
        self.engine_lines = 0
        self.calls = 0
        self.events = 0

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        self.calls += 1
        if frame.f_code.co_filename.startswith(PACKAGE_DIR):
            return self.local
        return None

    def local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.engine_lines += 1
        return self.local

    async def handle(self, event: tp.Event, /) -> None:
        self.events += 1

    async def aclose(self) -> None:
        pass


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps = 0
        self.spawned = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1


@dataclass(frozen=True)
class PerStage:
    engine_lines: float
    calls: float
    task_steps: float
    tasks_spawned: float


def _count(shape: str, n: int) -> PerStage:
    pipe = _pipeline(shape, n)
    counter, steps = _Counter(), _Steps()

    async def main() -> tp.RunResult:
        previous = sys.gettrace()
        sys.settrace(counter.trace)
        try:
            # Unbounded: at 10,000 wide stages the default max_backlog pauses the run, a
            # threshold a 1,000-stage run never reaches (tests/test_dispatch.py covers it).
            return await tp.run(pipe, sinks=[counter], max_backlog=None)
        finally:
            sys.settrace(previous)

    result = trio.run(main, instruments=[steps])
    assert result.ok
    assert counter.events == 2 * n + 2  # every event reached the sink
    return PerStage(
        engine_lines=counter.engine_lines / n,
        calls=counter.calls / n,
        task_steps=steps.steps / n,
        tasks_spawned=steps.spawned / n,
    )


@pytest.mark.parametrize("shape", ["wide", "chain", "layered"])
def test_engine_work_per_stage_does_not_grow_with_n(shape: str) -> None:
    small, large = _count(shape, SMALL), _count(shape, LARGE)
    for name in ("engine_lines", "calls", "task_steps", "tasks_spawned"):
        at_small, at_large = getattr(small, name), getattr(large, name)
        # One-sided: a fixed cost per run (a task step per scheduler batch for each
        # sink's feed) makes the small run's per-stage figure a little higher.
        assert at_large <= at_small * (1 + TOLERANCE), (
            f"{shape}: {name} per stage {at_small:.2f} at N={SMALL:,}"
            f" but {at_large:.2f} at N={LARGE:,}"
        )
    # One task per stage attempt: no helper task per stage.
    assert large.tasks_spawned == pytest.approx(1, abs=0.01)


async def test_the_dispatcher_keeps_pace_with_a_wide_layered_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression: forcing a checkpoint every 64 events put the dispatcher behind
    # every ready stage once per scheduler batch, so layers of a few hundred stages
    # out-produced it and nearly every event of a 100,000-stage run sat in the
    # buffer as a live object for the GC to walk. Now it yields only after 1 ms
    # (of the run's clock) of delivering, so it drains what a batch produced.
    layers, width = 20, 200
    pipe = tp.Pipeline("layers")
    emitted = 0

    async def stage(ctx: tp.StageContext) -> None:
        nonlocal emitted
        emitted += 1

    for layer in range(layers):
        for i in range(width):
            after = [f"s{layer - 1}-{j}" for j in (i, (i + 1) % width)] if layer else []
            pipe.add_stage(f"s{layer}-{i}", stage, after=after)

    class LagSink:
        def __init__(self) -> None:
            self.finished = 0
            self.max_lag = 0

        async def handle(self, event: tp.Event, /) -> None:
            if isinstance(event, tp.StageFinished):
                self.finished += 1
                self.max_lag = max(self.max_lag, emitted - self.finished)

        async def aclose(self) -> None:
            pass

    sink = LagSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.ok
    assert sink.finished == layers * width
    # About one layer may be ahead of the sink (measured 319-370), not most of the
    # run (3,460 of 4,000 with a checkpoint every 64 events).
    assert sink.max_lag <= 3 * width, sink.max_lag
