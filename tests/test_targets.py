"""Targets: run some stages (and what they depend on, unless `only`); the rest is not in the run."""

from __future__ import annotations

import pytest

import trio_pipeline as tp
from trio_pipeline._targets import UnknownTargetError, select_stages
from trio_pipeline.testing import RecordingSink


def diamond() -> tp.Pipeline:
    """a -> b, a -> c, (b, c) -> d; e stands alone."""
    pipe = tp.Pipeline("diamond")

    async def value(ctx: tp.StageContext) -> list[str]:
        return sorted(ctx.inputs)

    pipe.add_stage("d", value, after=["b", "c"])  # defined first: order is definition order
    pipe.add_stage("a", value)
    pipe.add_stage("b", value, after=["a"])
    pipe.add_stage("c", value, after=["a"])
    pipe.add_stage("e", value)
    return pipe


@pytest.mark.parametrize(
    ("targets", "only", "expected"),
    [
        (["d"], False, ["d", "a", "b", "c"]),
        (["b"], False, ["a", "b"]),
        (["b", "e"], False, ["a", "b", "e"]),
        (["d"], True, ["d"]),
        (["b", "a"], True, ["a", "b"]),
    ],
)
def test_select_stages(targets: list[str], only: bool, expected: list[str]) -> None:
    assert select_stages(diamond(), targets, only=only) == expected


def test_unknown_target_has_a_did_you_mean() -> None:
    with pytest.raises(tp.UnknownStageError) as info:
        select_stages(diamond(), ["dd"], only=False)
    assert str(info.value) == "pipeline 'diamond' has no stage 'dd' to run (did you mean 'd'?)"
    assert isinstance(info.value, UnknownTargetError)
    assert isinstance(info.value, LookupError)
    assert info.value.stage == "dd"


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        ("d", TypeError, "not a single str"),
        ([1], TypeError, "stage names or Stage objects"),
        ([], ValueError, "targets is empty"),
    ],
)
def test_bad_targets(targets: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        select_stages(diamond(), targets, only=False)  # type: ignore[arg-type]


async def test_unselected_stages_are_not_part_of_the_run() -> None:
    pipe = diamond()
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink], targets=["b", pipe.stages["e"]])
    assert list(result.stages) == ["a", "b", "e"]
    started = sink.events[0]
    assert isinstance(started, tp.RunStarted)
    assert started.stages == ("a", "b", "e")
    assert result.stages["b"].value == ["a"]
    assert sum(result.counts.values()) == 3
    assert len(pipe) == 5  # the pipeline itself is untouched


async def test_only_drops_the_upstream() -> None:
    pipe = diamond()
    result = await tp.run(pipe, targets=["d"], only=True)
    assert list(result.stages) == ["d"]
    assert result.stages["d"].value == []  # its upstream did not run: no inputs
    assert pipe.stages["d"].after == ("b", "c")


async def test_target_errors_raise_before_anything_runs() -> None:
    sink = RecordingSink()
    with pytest.raises(tp.UnknownStageError, match="did you mean 'd'"):
        await tp.run(diamond(), sinks=[sink], targets=["dd"])
    with pytest.raises(ValueError, match="only=True needs targets"):
        await tp.run(diamond(), sinks=[sink], only=True)
    assert sink.events == []


def test_the_teardowns_of_selected_stages_come_along() -> None:
    pipe = tp.Pipeline("p")

    async def step(ctx: tp.StageContext) -> None:
        pass

    pipe.add_stage("setup", step)
    pipe.add_stage("work", step, after=["setup"])
    pipe.add_stage("other", step, after=["setup"])
    pipe.add_stage("teardown", step, after=["setup", "work"], trigger=tp.Trigger.ALWAYS)
    pipe.add_stage("report", step, after=["teardown"], trigger=tp.Trigger.ALWAYS)
    pipe.add_stage("other_teardown", step, after=["other"], trigger=tp.Trigger.ALWAYS)
    assert select_stages(pipe, ["work"], only=False) == [
        "setup",
        "work",
        "teardown",
        "report",
    ]
    assert select_stages(pipe, ["work"], only=True) == ["work"]
    assert select_stages(pipe, ["setup"], only=False) == ["setup"]


async def test_a_targeted_run_runs_the_teardown_after_a_failure() -> None:
    pipe = tp.Pipeline("p")

    async def step(ctx: tp.StageContext) -> None:
        pass

    async def boom(ctx: tp.StageContext) -> None:
        raise RuntimeError("boom")

    pipe.add_stage("setup", step)
    pipe.add_stage("work", boom, after=["setup"])
    pipe.add_stage("other", step)
    pipe.add_stage("teardown", step, after=["setup", "work"], trigger=tp.Trigger.ALWAYS)
    result = await tp.run(pipe, targets=["work"])
    assert {name: o.status.value for name, o in result.stages.items()} == {
        "setup": "succeeded",
        "work": "failed",
        "teardown": "succeeded",
    }
