"""Targets: run only some stages of a pipeline (and, unless `only`, what they depend on). Pure.

`select_stages` picks the names; `subpipeline` makes the pipeline the engine then
compiles, so stages that are not selected are not part of the run at all (absent
from `RunStarted.stages` and from the result).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Iterable, Sequence

from ._errors import StageDefinitionError, StageDefinitionTypeError, UnknownStageError
from ._graph import Pipeline, Stage
from ._options import Trigger


class UnknownTargetError(UnknownStageError):
    """A target names no stage of the pipeline. Also an `UnknownStageError` (a LookupError)."""

    def __init__(self, stage: str, pipeline: str, suggestions: Sequence[str] = ()) -> None:
        super().__init__(stage, "", suggestions)
        message = f"pipeline {pipeline!r} has no stage {stage!r} to run"
        if suggestions:
            message += " (did you mean " + " or ".join(repr(s) for s in suggestions) + "?)"
        self.args = (message,)
        self.pipeline = pipeline


def select_stages(pipeline: Pipeline, targets: Iterable[str | Stage], *, only: bool) -> list[str]:
    """The stages a run of `targets` includes, in definition order.

    Args:
        targets: Stage names (or `Stage` objects of `pipeline`).
        only: Just the targets; otherwise the targets, every stage they depend on
            (transitively), and the teardown stages (trigger ``always``) of those:
            each one whose upstream stages are all selected.

    Raises:
        StageDefinitionTypeError: `targets` is a single str, or holds something else
            than names (a TypeError).
        StageDefinitionError: `targets` is empty (a ValueError).
        UnknownTargetError: a target is not a stage (with a did-you-mean).
    """
    if isinstance(targets, str | bytes):
        raise StageDefinitionTypeError(
            f"targets must be a list of stage names, not a single str: {targets!r}"
        )
    names: list[str] = []
    for target in targets:
        if isinstance(target, Stage):
            target = target.name
        if not isinstance(target, str):
            raise StageDefinitionTypeError(
                f"targets must be stage names or Stage objects, got {target!r}"
            )
        if target not in pipeline.stages:
            close = difflib.get_close_matches(target, list(pipeline.stages), n=2)
            raise UnknownTargetError(target, pipeline.name, close)
        names.append(target)
    if not names:
        raise StageDefinitionError("targets is empty: pass None to run every stage")
    selected = set(names)
    if not only:
        stack = list(names)
        while stack:
            for dep in pipeline.stages[stack.pop()].after:
                if dep not in selected:
                    selected.add(dep)
                    stack.append(dep)
        _add_teardowns(pipeline, selected)
    return [name for name in pipeline.stages if name in selected]


def _add_teardowns(pipeline: Pipeline, selected: set[str]) -> None:
    """Add each teardown stage (trigger ALWAYS) whose upstream stages are all selected.

    What sets something up in a run gets its teardown in that run; teardowns of
    teardowns too (hence the loop until nothing changes).
    """
    changed = True
    while changed:
        changed = False
        for stage in pipeline:
            if (
                stage.name not in selected
                and stage.options.trigger is Trigger.ALWAYS
                and stage.after
                and all(dep in selected for dep in stage.after)
            ):
                selected.add(stage.name)
                changed = True


def subpipeline(pipeline: Pipeline, names: Iterable[str]) -> Pipeline:
    """A copy of `pipeline` with only the stages `names`; dependencies on others are dropped.

    Dropped dependencies matter only with ``only``: such a stage starts at once, and its
    `StageContext.inputs` lacks the stages that were not selected.
    """
    keep = set(names)
    sub = copy.copy(pipeline)
    sub._stages = {  # pyright: ignore[reportPrivateUsage]
        name: dataclasses.replace(stage, after=tuple(d for d in stage.after if d in keep))
        if any(d not in keep for d in stage.after)
        else stage
        for name, stage in pipeline.stages.items()
        if name in keep
    }
    return sub
