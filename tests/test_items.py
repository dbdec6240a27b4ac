"""Item stages as definitions: options, stream groups, and the deadlock-free rule (`_items`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from trio_pipeline._items import stream_plan
from trio_pipeline.testing import RecordingSink, check_run


async def _src(ctx: tp.StageContext) -> AsyncIterator[int]:
    yield 1


async def _each(ctx: tp.StageContext, item: int) -> int:
    return item


async def _task(ctx: tp.StageContext) -> int:
    return 1


def _sync_each(snapshot: tp.StageSnapshot, item: int) -> int:
    return item


# -- definitions --------------------------------------------------------------------------


def test_kinds_and_defaults() -> None:
    pipe = tp.Pipeline("p")
    src = pipe.stage(_src, name="src")
    fetch = pipe.stage(_each, name="fetch", each=src, workers=8)
    pipe.stage(_each, name="rendezvous", each="src", buffer=0)
    task = pipe.stage(_task, name="task")
    assert src.items is not None
    assert (src.items.kind, src.items.emits) == ("source", True)
    assert fetch.items is not None
    assert (fetch.items.kind, fetch.items.reads, fetch.items.workers, fetch.items.buffer) == (
        "each",
        "src",
        8,
        8,
    )
    assert fetch.after == ("src",)
    assert pipe.stages["rendezvous"].items is not None
    assert pipe.stages["rendezvous"].items.buffer == 0
    assert task.items is None


def test_after_naming_the_stream_input_is_the_same_edge() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")
    b = pipe.stage(_each, name="b", each="src", after=["src"])
    assert b.after == ("src",)
    pipe.validate()


@pytest.mark.parametrize(
    ("kwargs", "fn", "match"),
    [
        ({"each": "src", "consumes": "src"}, _each, "exclude each other"),
        ({"workers": 2}, _task, "only apply to each=/consumes="),
        ({"each": "src", "workers": 0}, _each, "workers must be an int >= 1"),
        ({"each": "src", "workers": True}, _each, "workers must be an int"),
        ({"each": "src", "buffer": -1}, _each, "buffer must be an int >= 0"),
        ({"each": "src", "ordered": 1}, _each, "ordered must be a bool"),
        ({"each": "src", "on_item_error": "ignore"}, _each, "on_item_error must be"),
        ({"each": "src"}, _task, "must accept 2 positional arguments"),
        ({"each": "src"}, _sync_each, "each= needs an async function"),
        ({"consumes": "src", "workers": 2}, _each, "apply to each= stages"),
        ({"consumes": "src", "retries": 1}, _each, "runs once"),
        ({"retries": 2}, _src, "runs once"),
        ({"each": "src", "executor": tp.ThreadExecutor()}, _each, "plain def f"),
        ({"executor": tp.ThreadExecutor()}, _src, "source"),
        ({"each": 3}, _each, "each= takes one stage"),
        ({"consumes": "src", "trigger": "always"}, _each, "trigger='always'"),
        ({"trigger": "always"}, _src, "teardown stage"),
    ],
)
def test_bad_item_options_are_refused_naming_the_stage(
    kwargs: dict[str, Any], fn: Any, match: str
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")
    with pytest.raises(tp.StageDefinitionError, match=match) as info:
        pipe.add_stage("bad", fn, **kwargs)
    assert "'bad'" in str(info.value)


def test_a_per_item_sync_function_with_an_executor() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")
    stage = pipe.add_stage("sync", _sync_each, each="src", executor=tp.ThreadExecutor())
    assert stage.items is not None
    assert stage.items.kind == "each"


# -- stream groups and the rule -------------------------------------------------------------


def test_the_issue_example_is_refused_naming_the_group_and_the_wait() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")
    pipe.stage(_task, name="c", after=["src"])
    pipe.stage(_each, name="b", each="src", after=["c"])
    with pytest.raises(tp.StageDefinitionError) as info:
        pipe.validate()
    message = str(info.value)
    assert "stream group ['src', 'b']" in message
    assert "'c' waits for 'src'" in message
    assert "'b' waits for 'c'" in message


def test_waiting_for_a_member_of_ones_own_group_is_refused() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")
    pipe.stage(_each, name="a", each="src")
    pipe.stage(_each, name="b", each="src", after=["a"])
    with pytest.raises(tp.StageDefinitionError, match="'b' waits for 'a' to finish"):
        pipe.validate()


def test_groups_readers_collectors_and_dynamic_maps() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")  # 0
    pipe.stage(_each, name="a", each="src")  # 1
    pipe.stage(_each, name="b", each="src")  # 2

    async def gather(ctx: tp.StageContext, items: Any) -> int:
        return 0

    pipe.stage(gather, name="g", consumes="a")  # 3
    pipe.stage(_task, name="t", after=["b"])  # 4: collects b
    pipe.stage(_each, name="m", each="t", after=["g"])  # 5: a dynamic map of t
    plan = stream_plan(pipe.compile())
    assert [group.members for group in plan.groups] == [(0, 1, 2, 3), (5,)]
    assert plan.groups[1].external == (4, 3)
    assert dict(plan.readers) == {0: (1, 2), 1: (3,)}
    assert plan.collects == {2}
    assert 5 not in plan.stream_input


def test_one_failed_on_a_stream_reader_is_refused_pointing_to_after() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_src, name="src")
    pipe.stage(_each, name="alert", each="src", trigger="one_failed")
    with pytest.raises(tp.StageDefinitionError) as info:
        pipe.validate()
    assert info.value.stage == "alert"
    assert "reads the stream of 'src'" in str(info.value)
    assert "after=['src']" in str(info.value)


def test_one_failed_on_a_dynamic_map_or_a_source_is_accepted() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_task, name="t")
    pipe.stage(_src, name="src", after=["t"], trigger="one_failed")
    pipe.stage(_each, name="m", each="t", trigger="one_failed")
    pipe.validate()


def test_a_pool_held_for_whole_calls_and_taken_per_item_is_refused() -> None:
    pipe = tp.Pipeline("p", pools={"db": 4})
    pipe.stage(_src, name="src", uses="db")
    pipe.stage(_each, name="fetch", each="src", uses="db")
    with pytest.raises(tp.StageDefinitionError, match="pool 'db' could deadlock") as info:
        pipe.validate()
    assert "'src' holds it for its whole call" in str(info.value)
    assert "'fetch' takes it per item call" in str(info.value)


async def test_a_group_needing_more_slots_than_its_pool_has_is_refused_at_the_start() -> None:
    pipe = tp.Pipeline("p", pools={"db": 1})
    pipe.stage(_src, name="src", uses="db")

    async def save(ctx: tp.StageContext, items: Any) -> None:
        pass

    pipe.stage(save, name="save", consumes="src", uses="db")
    pipe.validate()  # the run's pools may differ: checked when it starts
    message = "stream group \\['src', 'save'\\] takes 2 slots of pool 'db' at once"
    with pytest.raises(tp.StageDefinitionError, match=message):
        await tp.run(pipe)
    with pytest.raises(tp.StageDefinitionError, match=message):
        pipe.start_order()
    result = await tp.run(pipe, pools={"db": 2})
    assert result.ok


def test_a_group_whose_outside_dependency_is_independent_is_accepted() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_task, name="config")
    pipe.stage(_src, name="src", after=["config"])
    pipe.stage(_each, name="b", each="src", after=["config"])
    pipe.stage(_task, name="after_b", after=["b"])
    pipe.validate()


# -- the rule holds: a Hypothesis search over random definitions ----------------------------

Kind = Literal["task", "source", "map", "flat", "consume", "consume_gen"]
_KINDS: tuple[Kind, ...] = ("task", "source", "map", "flat", "consume", "consume_gen")


@dataclass(frozen=True)
class Spec:
    kind: Kind
    reads: int  # index of an earlier stage (each= / consumes=), if any
    after: tuple[int, ...]
    workers: int
    buffer: int
    ordered: bool
    items: int
    delay: float
    exclusive: bool = False
    pooled: bool = False  # takes the one slot of pool "p" (per item call for each=)
    holds: int = 0  # slots of pool "q" (2 slots) held for the whole call / attempt
    priority: int = 0
    trigger: str = "all_success"


@st.composite
def definitions(draw: st.DrawFn) -> tuple[list[Spec], int | None, int]:
    n = draw(st.integers(1, 7))
    specs: list[Spec] = []
    for i in range(n):
        kind = draw(st.sampled_from(_KINDS[:2] if i == 0 else _KINDS))
        specs.append(
            Spec(
                kind=kind,
                reads=draw(st.integers(0, i - 1)) if i else 0,
                after=tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=2)))) if i else (),
                workers=draw(st.integers(1, 3)),
                buffer=draw(st.integers(0, 2)),
                ordered=draw(st.booleans()),
                items=draw(st.integers(0, 6)),
                delay=draw(st.sampled_from([0.0, 0.0, 0.5, 1.0])),
                exclusive=draw(st.sampled_from([False, False, False, True])),
                pooled=kind in ("task", "map", "flat") and draw(st.booleans()),
                holds=draw(st.sampled_from([0, 0, 1, 2])) if kind != "map" else 0,
                priority=draw(st.sampled_from([0, 0, -1, 1])),
                # Rules that a failure-free run fires (one_failed would skip).
                trigger=draw(
                    st.sampled_from(["all_success", "all_success", "all_done", "none_failed"])
                ),
            )
        )
    return specs, draw(st.sampled_from([None, 1, 2])), draw(st.integers(1, 3))


def build(specs: list[Spec], q_size: int = 2) -> tp.Pipeline:
    pipe = tp.Pipeline("random", pools={"p": 1, "q": q_size})
    for i, spec in enumerate(specs):
        name = f"s{i}"
        after = [f"s{j}" for j in spec.after]
        delay, count = spec.delay, spec.items
        make_stage(pipe, name, after, spec, delay, count)
    return pipe


def make_stage(
    pipe: tp.Pipeline, name: str, after: list[str], spec: Spec, delay: float, count: int
) -> None:

    async def task(ctx: tp.StageContext) -> list[int]:
        await trio.sleep(delay)
        return list(range(count))

    async def source(ctx: tp.StageContext) -> AsyncIterator[int]:
        for k in range(count):
            await trio.sleep(delay)
            yield k

    async def one(ctx: tp.StageContext, item: Any) -> Any:
        await trio.sleep(delay)
        return item

    async def flat(ctx: tp.StageContext, item: Any) -> AsyncIterator[Any]:
        for k in range(2):
            await trio.sleep(delay)
            yield (item, k)

    async def consume(ctx: tp.StageContext, items: AsyncIterator[Any]) -> list[Any]:
        seen = []
        async for item in items:
            seen.append(item)
            await trio.sleep(delay)
        return seen  # iterable, so a later each= may map over it

    async def consume_gen(ctx: tp.StageContext, items: AsyncIterator[Any]) -> Any:
        async for item in items:
            await trio.sleep(delay)
            yield item

    reads = f"s{spec.reads}"
    exclusive = spec.exclusive
    options: dict[str, Any] = {"priority": spec.priority, "trigger": spec.trigger}
    holds = {"q": spec.holds} if spec.holds else {}
    if spec.kind == "task":
        uses = {"p": 1, **holds} if spec.pooled else holds
        pipe.add_stage(name, task, after=after, exclusive=exclusive, uses=uses, **options)
    elif spec.kind == "source":
        pipe.add_stage(name, source, after=after, exclusive=exclusive, uses=holds, **options)
    elif spec.kind in ("map", "flat"):
        pipe.add_stage(
            name,
            one if spec.kind == "map" else flat,
            each=reads,
            after=after,
            workers=spec.workers,
            buffer=spec.buffer,
            ordered=spec.ordered,
            exclusive=exclusive,
            uses={"p": 1, **holds} if spec.pooled else holds,  # per item call
            **options,
        )
    else:
        fn = consume if spec.kind == "consume" else consume_gen
        pipe.add_stage(
            name,
            fn,
            consumes=reads,
            after=after,
            buffer=spec.buffer,
            exclusive=exclusive,
            uses=holds,
            **options,
        )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definitions(), st.random_module())
def test_every_accepted_definition_runs_to_the_end_under_any_limits(
    drawn: tuple[list[Spec], int | None, int], seed: Any
) -> None:
    specs, max_parallel, q_size = drawn
    pipe = build(specs, q_size)
    try:
        pipe.validate()
        pipe.start_order()  # the run's pools: does each group's whole-call need fit?
    except tp.StageDefinitionError as exc:
        refusal = str(exc)
    else:
        refusal = ""
    if refusal:
        assert any(why in refusal for why in ("could deadlock", "at once", "which has")), refusal
        event("refused")
        return
    sink = RecordingSink()
    results: list[tp.RunResult] = []

    async def main() -> None:
        with trio.fail_after(100_000):
            results.append(await tp.run(pipe, sinks=[sink], max_parallel=max_parallel))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    result = results[0]
    statuses = {name: outcome.status for name, outcome in result.stages.items()}
    assert result.ok, statuses
    items = sum(o.items_out or 0 for o in result.stages.values())
    event(f"accepted, {len(stream_plan(pipe.compile()).groups)} groups, items: {items > 0}")
    check_run([sink], pipe, result, max_parallel=max_parallel, keep_going=False)
