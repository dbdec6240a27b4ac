"""Pipeline definition and validation: each error, its message, and when it is raised."""

from __future__ import annotations

import functools
import math
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink

VALUE = tp.StageDefinitionError
TYPE = tp.StageDefinitionTypeError


async def noop(ctx: tp.StageContext) -> None:
    pass


def test_decorator_bare_and_with_options() -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def first(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(after=[first], retries=2, retry_delay=0.5, timeout=10.0)
    async def second(ctx: tp.StageContext) -> int:
        return 2

    @pipe.stage(name="third", after=["second", first])
    async def whatever(ctx: tp.StageContext) -> int:
        return 3

    assert isinstance(first, tp.Stage)
    assert list(pipe.stages) == ["first", "second", "third"]
    assert second.after == ("first",)
    assert (second.retries, second.retry_delay, second.timeout) == (2, 0.5, 10.0)
    assert pipe.stages["third"].after == ("second", "first")
    assert "first" in pipe
    assert len(pipe) == 3


def test_add_stage_accepts_names_stages_and_registered_functions() -> None:
    pipe = tp.Pipeline("p")
    a = pipe.add_stage("a", noop)

    async def other(ctx: tp.StageContext) -> None:
        pass

    pipe.add_stage("b", other, after=a)
    pipe.add_stage("c", noop, after=["later"])  # forward reference
    pipe.add_stage("d", noop, after=[other, "b", a])
    assert pipe.stages["b"].after == ("a",)
    assert pipe.stages["d"].after == ("b", "a")  # duplicates collapse, order kept


async def test_stage_objects_call_their_function() -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def double(ctx: tp.StageContext) -> int:
        return 2 * int(ctx.inputs["x"])

    ctx = tp.StageContext(name="double", inputs={"x": 4}, attempt=1, run_id="r", emit_log=print)
    assert await double(ctx) == 8


def test_duplicate_stage_is_rejected_at_definition() -> None:
    pipe = tp.Pipeline("demo")
    pipe.add_stage("a", noop)
    with pytest.raises(
        tp.DuplicateStageError, match="stage 'a' is already defined in pipeline 'demo'"
    ):
        pipe.add_stage("a", noop)
    assert list(pipe.stages) == ["a"]


def sync_fn(ctx: tp.StageContext) -> None:
    pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fn": sync_fn}, "stage 's': function must be an async function"),
        ({"fn": 42}, "stage 's': function must be an async function"),
        ({"retries": -1}, "stage 's': retries must be a non-negative int, got -1"),
        ({"retries": True}, "retries must be a non-negative int, got True"),
        ({"retries": 1.5}, "retries must be a non-negative int, got 1.5"),
        ({"retry_delay": -0.1}, "retry_delay must be a finite number >= 0, got -0.1"),
        ({"retry_delay": math.inf}, "retry_delay must be a finite number >= 0, got inf"),
        ({"timeout": 0}, "stage 's': timeout must be a number > 0 or None, got 0"),
        ({"timeout": -1.0}, "timeout must be a number > 0 or None, got -1.0"),
        ({"timeout": math.nan}, "timeout must be a number > 0 or None, got nan"),
        ({"timeout": "5"}, "timeout must be a number > 0 or None, got '5'"),
        ({"after": [3]}, "after= entries must be stage names or Stage objects, got 3"),
    ],
)
def test_bad_stage_definitions(kwargs: dict[str, Any], message: str) -> None:
    pipe = tp.Pipeline("p")
    fn = kwargs.pop("fn", noop)
    with pytest.raises(tp.StageDefinitionError, match=message.replace("(", r"\(")):
        pipe.add_stage("s", fn, **kwargs)
    assert "s" not in pipe


def test_bad_names() -> None:
    with pytest.raises(tp.StageDefinitionError, match="pipeline name must be a non-empty string"):
        tp.Pipeline("")
    with pytest.raises(tp.StageDefinitionError, match="stage name must be a non-empty string"):
        tp.Pipeline("p").add_stage("", noop)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: tp.Pipeline(3), TYPE, "pipeline name must be a non-empty string, got 3"),  # type: ignore[arg-type]
        (lambda: tp.Pipeline(""), VALUE, "pipeline name must be a non-empty string, got ''"),
        (lambda: tp.Pipeline("p").add_stage(None, noop), TYPE, "stage name must be a non-empty"),  # type: ignore[arg-type]
        (lambda: tp.Pipeline("p").add_stage("", noop), VALUE, "stage name must be a non-empty"),
        (
            lambda: tp.Pipeline("p").add_stage("s", noop, after=3),  # type: ignore[arg-type]
            TYPE,
            "stage 's': after= must be a stage, a name, or an iterable of them, got 3",
        ),
        (
            lambda: tp.Pipeline("p").add_stage("s", noop, after=[None]),  # type: ignore[list-item]
            TYPE,
            "stage 's': after= entries must be stage names or Stage objects, got None",
        ),
        (
            lambda: tp.Pipeline("p").add_stage("s", noop, after=[sync_fn]),  # type: ignore[list-item]
            VALUE,
            "stage 's': after= entry <function sync_fn at .*> is not a stage of pipeline 'p'",
        ),
    ],
)
def test_name_and_after_errors_are_value_or_type_errors_as_fits(
    call: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="^" + message) as info:
        call()
    assert type(info.value) is error


def test_after_with_an_unregistered_or_ambiguous_function() -> None:
    pipe = tp.Pipeline("p")
    with pytest.raises(tp.StageDefinitionError, match="is not a stage of pipeline 'p'"):
        pipe.add_stage("a", noop, after=[sync_fn])  # type: ignore[list-item]
    pipe.add_stage("x", noop)
    pipe.add_stage("y", noop)
    with pytest.raises(tp.StageDefinitionError, match="is several stages of pipeline 'p'"):
        pipe.add_stage("z", noop, after=[noop])


def test_async_callable_instances_are_stage_functions() -> None:
    class Fetch:
        async def __call__(self, ctx: tp.StageContext) -> str:
            return "ok"

    tp.Pipeline("p").add_stage("fetch", Fetch())


def test_unknown_stage_names_the_stage_and_who_referenced_it() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("first", noop)
    pipe.add_stage("second", noop, after=["frist"])
    with pytest.raises(tp.UnknownStageError) as info:
        pipe.validate()
    assert str(info.value) == (
        "stage 'second' depends on unknown stage 'frist' (did you mean 'first'?)"
    )
    assert (info.value.stage, info.value.referenced_by) == ("frist", "second")
    assert isinstance(info.value, tp.PipelineError)
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        ({"a": ["c"], "b": ["a"], "c": ["b"]}, "dependency cycle: a -> b -> c -> a"),
        ({"a": ["a"]}, "dependency cycle: a -> a"),
        ({"a": [], "b": ["a", "d"], "c": ["b"], "d": ["c"]}, "dependency cycle: b -> c -> d -> b"),
    ],
)
def test_cycle_message_shows_the_cycle(edges: dict[str, list[str]], message: str) -> None:
    pipe = tp.Pipeline("p")
    for name, after in edges.items():
        pipe.add_stage(name, noop, after=after)
    with pytest.raises(tp.CycleError) as info:
        pipe.validate()
    assert str(info.value) == message
    assert info.value.cycle[0] == info.value.cycle[-1]


def test_deep_chain_validates_without_recursion() -> None:
    pipe = tp.Pipeline("chain")
    previous: list[str] = []
    for i in range(20_000):
        pipe.add_stage(f"s{i}", noop, after=previous)
        previous = [f"s{i}"]
    pipe.validate()
    assert pipe.start_order()[:3] == ["s0", "s1", "s2"]
    pipe.add_stage("s0x", noop, after=["s19999"])
    pipe.add_stage("loop", noop, after=["loop2"])
    pipe.add_stage("loop2", noop, after=["loop"])
    with pytest.raises(tp.CycleError, match="loop -> loop2 -> loop"):
        pipe.validate()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=4 * n),
            st.integers(0, n - 1),
            st.booleans(),
        )
    )
)
def test_the_plan_lists_every_edge_both_ways_in_order(
    graph: tuple[int, list[tuple[int, int]], int, bool],
) -> None:
    n, edges, hub, forward = graph
    after: list[list[int]] = [[] for _ in range(n)]
    # Every stage is linked to `hub` (a wide fan-out or fan-in), plus random edges;
    # all point the same way (acyclic): to later stages (forward references) or earlier.
    for a, b in [*edges, *((i, hub) for i in range(n))]:
        if a != b:
            waits, dep = (min(a, b), max(a, b)) if forward else (max(a, b), min(a, b))
            if dep not in after[waits]:
                after[waits].append(dep)
    pipe = tp.Pipeline("edges")
    for i in range(n):
        pipe.add_stage(f"s{i}", noop, after=[f"s{j}" for j in after[i]])
    plan = pipe.compile()
    assert plan.upstream == tuple(map(tuple, after))
    assert plan.downstream == tuple(tuple(i for i in range(n) if j in after[i]) for j in range(n))
    assert all(type(down) is tuple for down in plan.downstream)


def test_start_order_is_definition_order_among_ready_stages() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("late", noop, after=["root"])
    pipe.add_stage("root", noop)
    pipe.add_stage("solo", noop)
    pipe.add_stage("leaf", noop, after=["late", "solo"])
    # root and solo are ready at once; late only once root has succeeded.
    assert pipe.start_order() == ["root", "solo", "late", "leaf"]


async def test_start_order_is_the_order_a_run_starts_stages() -> None:
    # Regression: start_order() had a ready-heap of its own and said [a, c, b]
    # where a run starts [a, b, c] (b is ready from the start, c only after a).
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", noop)
    pipe.add_stage("c", noop, after=["a"])
    pipe.add_stage("b", noop)
    sink = RecordingSink()
    await tp.run(pipe, sinks=[sink])
    started = [e.stage for e in sink.events if isinstance(e, tp.StageStarted)]
    assert started == ["a", "b", "c"]
    assert pipe.start_order() == started


@settings(max_examples=50)
@given(st.data())
def test_start_order_and_skipped_stages_are_what_a_failure_free_run_does(
    data: st.DataObject,
) -> None:
    # What --dry-run and `list` show: every stage, started in this order or skipped.
    pipe = tp.Pipeline("p")
    for i in range(data.draw(st.integers(1, 7), label="stages")):
        earlier = [f"s{j}" for j in range(i)]
        after = data.draw(st.lists(st.sampled_from(earlier), unique=True)) if i else []
        trigger = data.draw(st.sampled_from(list(tp.Trigger))) if after else tp.Trigger.ALL_SUCCESS
        pipe.add_stage(f"s{i}", noop, after=after, trigger=trigger)
    sink = RecordingSink()
    result = trio.run(functools.partial(tp.run, pipe, sinks=[sink]))
    assert result.ok
    started = [e.stage for e in sink.events if isinstance(e, tp.StageStarted)]
    skipped = {
        e.stage: e.reason
        for e in sink.events
        if isinstance(e, tp.StageFinished) and e.status is tp.StageStatus.SKIPPED
    }
    # Trio may finish concurrent stages in either order, and a run starts (and names a
    # skipped upstream) in the order they finish; the failure-free run assumes start
    # order. So the same stages, the same verdicts, the same trigger in each reason.
    order, skips = pipe.start_order(), pipe.skipped_stages()
    assert sorted(order) == sorted(started)
    assert {n: r.split(":")[0] for n, r in skips.items()} == {
        n: (r or "").split(":")[0] for n, r in skipped.items()
    }
    assert sorted([*order, *skips]) == sorted(pipe.stages)


@pytest.mark.parametrize("error", ["cycle", "unknown"])
async def test_run_raises_directly_before_any_stage_or_event(error: str) -> None:
    ran: list[str] = []

    async def record(ctx: tp.StageContext) -> None:
        ran.append(ctx.name)

    pipe = tp.Pipeline("p")
    pipe.add_stage("ok", record)
    if error == "cycle":
        pipe.add_stage("a", record, after=["b"])
        pipe.add_stage("b", record, after=["a"])
        expected: type[tp.PipelineError] = tp.CycleError
    else:
        pipe.add_stage("a", record, after=["nope"])
        expected = tp.UnknownStageError
    sink = RecordingSink()
    with pytest.raises(expected):  # not an ExceptionGroup
        await tp.run(pipe, sinks=[sink])
    with pytest.raises(expected):
        async with tp.open_run(pipe, sinks=[sink]):
            pass  # pragma: no cover
    assert ran == []
    assert sink.events == []
    assert not sink.closed


_SINK = RecordingSink()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_parallel": 0}, VALUE, "max_parallel must be a positive int or None, got 0"),
        ({"max_parallel": 2.0}, TYPE, "max_parallel must be a positive int or None, got 2.0"),
        ({"max_parallel": True}, TYPE, "max_parallel must be a positive int or None, got True"),
        ({"drain_timeout": -1}, VALUE, "drain_timeout must be a number >= 0, got -1"),
        ({"drain_timeout": math.nan}, VALUE, "drain_timeout must be a number >= 0, got nan"),
        ({"drain_timeout": "1"}, TYPE, "drain_timeout must be a number >= 0, got '1'"),
        ({"sinks": [object()]}, TYPE, "is not a Sink"),
        ({"sinks": [_SINK, _SINK]}, VALUE, "the same sink was passed twice"),
        ({"sinks": _SINK}, TYPE, "sinks must be a sequence of sinks, got <RecordingSink"),
        ({"sinks": None}, TYPE, "sinks must be a sequence of sinks, got None"),
        ({"keep_going": "no"}, TYPE, "keep_going must be a bool, got 'no'"),
    ],
)
async def test_bad_run_options(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    # The same classes as a stage option's mistakes, so one except clause serves both.
    pipe = tp.Pipeline("p")
    pipe.add_stage("a", noop)
    with pytest.raises(error, match=message) as info:
        await tp.run(pipe, **options)
    assert type(info.value) is error
    with pytest.raises(error, match=message):
        async with tp.open_run(pipe, **options):
            pass  # pragma: no cover


def test_stage_can_be_called_with_the_function_by_keyword() -> None:
    pipe = tp.Pipeline("p")
    stage = pipe.stage(fn=noop, name="kw", retries=1)
    assert stage.name == "kw"
    assert stage.retries == 1
    assert pipe.stage(noop, name="positional").name == "positional"


def test_did_you_mean_never_suggests_the_referencing_stage() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("usesforeign", noop, after=["foreign"])
    with pytest.raises(tp.UnknownStageError) as info:
        pipe.validate()
    assert str(info.value) == "stage 'usesforeign' depends on unknown stage 'foreign'"


def test_a_stage_of_another_pipeline_in_after_says_so() -> None:
    other = tp.Pipeline("other")
    foreign = other.add_stage("foreign", noop)
    pipe = tp.Pipeline("p")
    with pytest.raises(tp.StageDefinitionError) as info:
        pipe.add_stage("usesforeign", noop, after=[foreign])
    assert str(info.value) == (
        "stage 'usesforeign': after= entry <Stage 'foreign' after=[]> is a Stage of another"
        " pipeline, not of 'p'"
    )
    # Same name, other pipeline's object: still foreign.
    pipe.add_stage("foreign", noop)
    with pytest.raises(tp.StageDefinitionError, match="another pipeline"):
        pipe.add_stage("x", noop, after=foreign)
    assert list(pipe.stages) == ["foreign"]
