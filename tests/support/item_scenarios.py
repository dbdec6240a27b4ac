"""Randomized item pipelines for the property tests and `tests.support.stress`.

An `ItemScenario` is plain data drawn by Hypothesis: a DAG mixing task stages, sources,
each= stages (one result or an async generator), consumes= stages (returning or
yielding), dynamic maps over task values, with random workers, buffers, ordering,
item failures (fail and skip), per-item retries and timeouts, hanging items,
``max_parallel``, keep-going, a control action (close, cancel, outer cancellation) at
a drawn time and a chaos tape. `run_item_scenario` runs it on a MockClock and checks
`check_run` (with its item accounting) plus what the scenario itself implies.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import trio
import trio.testing
from hypothesis import event, given
from hypothesis import strategies as st

import trio_pipeline as tp
from tests.support.scenarios import (
    FAIL_AFTER,
    LONG_HANG,
    TALLY,
    ScenarioFailure,
    apply_control,
)
from trio_pipeline.testing import ChaosTape, PoolTracker, RecordingSink, TaskTracker, check_run
from trio_pipeline.testing._items import stream_units

Kind = Literal["task", "source", "map", "flat", "consume", "consume_gen"]
Control = Literal["none", "close", "cancel", "outer"]
KINDS: tuple[Kind, ...] = ("task", "source", "map", "flat", "consume", "consume_gen")
PROGRESS = 0.25
POOLS = {"p": 2, "q": 2}
# one_failed on a stream reader is refused (it reads a live stream); drawn anyway, rarely.
TRIGGERS = ("all_success",) * 3 + ("all_done", "all_done", "none_failed", "one_failed")


class ItemBoom(Exception):
    """What a failing item call raises."""


@dataclass(frozen=True)
class ItemStageSpec:
    kind: Kind
    reads: int  # an earlier stage (each= / consumes=)
    after: tuple[int, ...]
    items: int  # items of a source, length of a task's list
    delay: float
    workers: int
    buffer: int
    ordered: bool
    skip: bool  # on_item_error="skip"
    fail_mod: int  # item % fail_mod == 0 fails (0: never)
    fail_calls: int  # ... its first fail_calls calls
    hang_mod: int  # item % hang_mod == 1 hangs (0: never)
    retries: int
    timeout: float | None
    pooled: bool = False  # takes a slot of pool "p" (2 slots): per item call for each=
    holds: int = 0  # slots of pool "q" (2 slots) held for the whole call (not each=)
    priority: int = 0
    trigger: str = "all_success"
    breaks: bool = False  # a task, source or consumes= stage raises after its work


@dataclass(frozen=True)
class ItemScenario:
    stages: tuple[ItemStageSpec, ...]
    max_parallel: int | None
    keep_going: bool
    control: Control
    control_at: float
    tape: tuple[int, ...] | None  # None: no chaos hook (the runtime's fast path)


@st.composite
def item_stage_specs(draw: st.DrawFn, i: int) -> ItemStageSpec:
    kind: Kind = draw(st.sampled_from(KINDS[:2] if i == 0 else KINDS))
    per_item = kind in ("map", "flat")
    return ItemStageSpec(
        kind=kind,
        reads=draw(st.integers(0, i - 1)) if i else 0,
        after=tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=2)))) if i else (),
        items=draw(st.integers(0, 6)),
        delay=draw(st.sampled_from([0.0, 0.0, 0.25, 1.0])),
        workers=draw(st.integers(1, 3)) if per_item else 1,
        buffer=draw(st.integers(0, 2)),
        ordered=draw(st.booleans()) if per_item else False,
        skip=draw(st.booleans()) if per_item else False,
        fail_mod=draw(st.sampled_from([0, 2, 3])) if per_item else 0,
        fail_calls=draw(st.sampled_from([1, 99])),
        hang_mod=draw(st.sampled_from([0, 0, 0, 3])) if per_item else 0,
        retries=draw(st.integers(0, 2)) if per_item else 0,
        timeout=draw(st.sampled_from([None, None, 1.5])) if per_item else None,
        pooled=(per_item or kind == "task") and draw(st.booleans()),
        holds=0 if per_item else draw(st.sampled_from([0, 0, 1, 2])),
        priority=draw(st.sampled_from([0, 0, 0, -1, 1])),
        trigger=draw(st.sampled_from(TRIGGERS)),
        breaks=not per_item and draw(st.sampled_from([False, False, False, True])),
    )


@st.composite
def item_scenarios(draw: st.DrawFn, *, max_stages: int = 6) -> ItemScenario:
    n = draw(st.integers(1, max_stages))
    return ItemScenario(
        stages=tuple(draw(item_stage_specs(i)) for i in range(n)),
        max_parallel=draw(st.sampled_from([None, None, 1, 2])),
        keep_going=draw(st.booleans()),
        control=draw(st.sampled_from(["none", "none", "close", "cancel", "outer"])),
        control_at=draw(st.sampled_from([0.0, 0.25, 1.0, 2.0, 4.0])),
        tape=draw(st.none() | st.lists(st.integers(0, 6), max_size=32).map(tuple)),
    )


def build_item_pipeline(sc: ItemScenario, tracker: PoolTracker | None = None) -> tp.Pipeline:
    """The pipeline of `sc`; its functions count the slots they hold in `tracker`."""
    pipe = tp.Pipeline("items", pools=POOLS)
    calls: dict[tuple[str, int], int] = {}
    for i, spec in enumerate(sc.stages):
        _add_stage(pipe, f"s{i}", spec, calls, tracker or PoolTracker(POOLS))
    return pipe


def _add_stage(
    pipe: tp.Pipeline,
    name: str,
    spec: ItemStageSpec,
    calls: dict[tuple[str, int], int],
    tracker: PoolTracker,
) -> None:
    after = [f"s{j}" for j in spec.after]
    reads = f"s{spec.reads}"
    uses = {"p": 1} if spec.pooled else {}
    holds = {"q": spec.holds} if spec.holds else {}
    task_uses = {**uses, **holds}
    options: dict[str, Any] = {"priority": spec.priority, "trigger": spec.trigger}

    async def item_call(item: int) -> None:
        with tracker.holding(uses, f"{name} item {item}"):
            await _item_call(item)

    async def _item_call(item: int) -> None:
        key = (name, item)
        calls[key] = calls.get(key, 0) + 1
        if spec.hang_mod and item % spec.hang_mod == 1:
            await trio.sleep(LONG_HANG)
        if spec.delay:
            await trio.sleep(spec.delay)
        if spec.fail_mod and item % spec.fail_mod == 0 and calls[key] <= spec.fail_calls:
            raise ItemBoom(f"{name} item {item} call {calls[key]}")

    async def task(ctx: tp.StageContext) -> list[int]:
        with tracker.holding(task_uses, name):
            await trio.sleep(spec.delay)
            if spec.breaks:
                raise ItemBoom(f"{name} broke")
            return list(range(spec.items))

    async def source(ctx: tp.StageContext) -> AsyncIterator[int]:
        with tracker.holding(holds, name):
            for k in range(spec.items):
                await trio.sleep(spec.delay)
                yield k
            if spec.breaks:
                raise ItemBoom(f"{name} broke")

    async def one(ctx: tp.StageContext, item: int) -> int:
        await item_call(item)
        return item

    async def flat(ctx: tp.StageContext, item: int) -> AsyncIterator[int]:
        await item_call(item)
        for k in range(2):
            yield item * 10 + k

    async def consume(ctx: tp.StageContext, items: AsyncIterator[int]) -> list[int]:
        with tracker.holding(holds, name):
            seen = []
            async for item in items:
                seen.append(item)
                if spec.delay:
                    await trio.sleep(spec.delay)
            if spec.breaks:
                raise ItemBoom(f"{name} broke")
            return seen

    async def consume_gen(ctx: tp.StageContext, items: AsyncIterator[int]) -> AsyncIterator[int]:
        with tracker.holding(holds, name):
            async for item in items:
                if spec.delay:
                    await trio.sleep(spec.delay)
                yield item
            if spec.breaks:
                raise ItemBoom(f"{name} broke")

    if spec.kind == "task":
        pipe.add_stage(name, task, after=after, uses=task_uses, **options)
    elif spec.kind == "source":
        pipe.add_stage(name, source, after=after, uses=holds, **options)
    elif spec.kind in ("map", "flat"):
        pipe.add_stage(
            name,
            one if spec.kind == "map" else flat,
            each=reads,
            after=after,
            workers=spec.workers,
            buffer=spec.buffer,
            ordered=spec.ordered,
            on_item_error="skip" if spec.skip else "fail",
            retries=spec.retries,
            retry_delay=0.5,
            timeout=spec.timeout,
            uses=uses,
            **options,
        )
    else:
        fn = consume if spec.kind == "consume" else consume_gen
        pipe.add_stage(
            name, fn, consumes=reads, after=after, buffer=spec.buffer, uses=holds, **options
        )


def run_item_scenario(sc: ItemScenario) -> None:
    """Run `sc` in its own `trio.run` on a MockClock and assert every invariant."""
    TALLY.examples += 1
    pools = PoolTracker(POOLS)
    pipeline = build_item_pipeline(sc, pools)
    try:
        pipeline.validate()
        pipeline.start_order()  # also checks that each group's slots fit its pools
    except tp.StageDefinitionError as exc:
        message = str(exc)
        if "reads the stream of" in message:
            event("refused (one_failed on a stream reader)")
            return
        if "at once" in message:
            event("refused (a group's slots do not fit its pool)")
            return
        if "could deadlock" not in message and "waits for" not in message:
            raise
        event("refused (could deadlock)")
        return
    sink = RecordingSink()
    tape = ChaosTape(sc.tape or ())
    tracker = TaskTracker()
    handles: list[tp.RunHandle] = []

    async def main() -> None:
        with trio.fail_after(FAIL_AFTER), tracker.installed():
            deadline = sc.control_at if sc.control == "outer" else math.inf
            with trio.move_on_after(deadline):
                async with tp.open_run(
                    pipeline,
                    sinks=[sink],
                    keep_going=sc.keep_going,
                    max_parallel=sc.max_parallel,
                    drain_timeout=10_000.0,
                    progress_interval=PROGRESS,
                ) as handle:
                    handles.append(handle)
                    await apply_control(handle, sc.control, sc.control_at)
        tracker.check_all_exited()

    try:
        if sc.tape is None:
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        else:
            with tape.installed():
                trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except trio.TooSlowError as exc:
        raise ScenarioFailure("invariant broken: every item run finishes: it deadlocked") from exc
    result = handles[0].result
    pools.check()  # item calls' slots, which no event shows
    check_run(
        [sink],
        pipeline,
        result,
        max_parallel=sc.max_parallel,
        keep_going=sc.keep_going,
        stopped=sc.control != "none",
        progress_interval=PROGRESS,
    )
    _check_outcome(sc, result)
    event(f"run {result.state}, control {sc.control}")
    for status, n in result.counts.items():
        if n:
            event(f"some stage {status}")
    if any(isinstance(e, tp.ItemFailed) for e in sink.events):
        event("an item skipped")
    ends = [e for e in sink.events if isinstance(e, tp.StageFinished)]
    if any("received" in (e.reason or "") for e in ends):
        event("an all_done reader ended normally after its producer failed")
    ran = {e.stage for e in sink.events if isinstance(e, tp.StageStarted)}
    inputs = stream_units(pipeline)[1]
    if any(r in ran and p not in ran for r, p in inputs.items()):
        event("a reader ran on the empty stream of a producer that never ran")
    if any(spec.holds for spec in sc.stages if spec.kind != "task"):
        event("a stream stage held pool slots for its call")
    if pools.peak.get("p", 0):
        event("per-item pool slots were held")
    if any(isinstance(e, tp.StageProgress) for e in sink.events):
        event("progress reported")


def _check_outcome(sc: ItemScenario, result: tp.RunResult) -> None:
    """What the scenario's own spec implies, beyond `check_run`."""
    if sc.control in ("none", "close") and result.state is not tp.RunState.CLOSED:
        raise ScenarioFailure(f"invariant broken: an uncancelled run ends CLOSED: {result.state}")
    for i, spec in enumerate(sc.stages):
        outcome = result.stages[f"s{i}"]
        if outcome.status is tp.StageStatus.FAILED and spec.kind in ("map", "flat"):
            error = outcome.error
            if spec.skip and isinstance(error, tp.ItemError):
                raise ScenarioFailure(f"invariant broken: skip never fails the stage: s{i}")
            if isinstance(error, tp.ItemError) and not isinstance(
                error.error, ItemBoom | tp.StageTimeout
            ):
                raise ScenarioFailure(
                    f"invariant broken: ItemError wraps the item's error: {error}"
                )
        if spec.kind == "map" and outcome.status is tp.StageStatus.SUCCEEDED:
            n_in, n_out = outcome.items_in or 0, outcome.items_out or 0
            if n_out + (outcome.items_failed or 0) != n_in:
                raise ScenarioFailure(f"invariant broken: a map emits one per item: s{i} {outcome}")


def make_item_property() -> Callable[[], None]:
    """The item property as a zero-argument Hypothesis test (profile settings apply)."""

    def check(sc: ItemScenario, _random: Any) -> None:
        run_item_scenario(sc)

    return cast(Callable[[], None], given(sc=item_scenarios(), _random=st.random_module())(check))
