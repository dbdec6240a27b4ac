"""Exceptions: the builtins they resemble, their attributes, and pickling."""

from __future__ import annotations

import pickle

import pytest

import trio_pipeline as tp


@pytest.mark.parametrize(
    ("error", "builtins"),
    [
        (tp.StageDefinitionError("bad"), (tp.PipelineError, ValueError)),
        (tp.StageDefinitionTypeError("bad"), (tp.StageDefinitionError, ValueError, TypeError)),
        (tp.DuplicateStageError("a", "p"), (tp.StageDefinitionError, ValueError)),
        (tp.UnknownStageError("x", "a"), (tp.PipelineError, LookupError)),
        (tp.CycleError(["a", "b", "a"]), (tp.PipelineError, ValueError)),
        (tp.StageTimeout("s", 1.0, 1), (TimeoutError,)),
        (tp.TransitionError("m", "A", "B"), (tp.PipelineInternalError, RuntimeError)),
    ],
)
def test_errors_subclass_the_builtin_they_resemble(
    error: Exception, builtins: tuple[type[Exception], ...]
) -> None:
    for cls in builtins:
        assert isinstance(error, cls), cls


def test_an_internal_error_is_not_a_pipeline_error() -> None:
    # Like trio's TrioInternalError: `except PipelineError` must not swallow a bug.
    assert issubclass(tp.PipelineInternalError, Exception)
    assert not issubclass(tp.PipelineInternalError, tp.PipelineError)
    assert not issubclass(tp.PipelineInternalError, ValueError)
    assert not issubclass(tp.TransitionError, tp.PipelineError)  # an engine bug, not a user's


def test_a_definition_error_names_its_stage() -> None:
    error = tp.StageDefinitionTypeError("retries must be an int, got '2'")
    assert (str(error), error.stage) == ("retries must be an int, got '2'", None)
    named = error.for_stage("fetch")
    assert type(named) is tp.StageDefinitionTypeError
    assert str(named) == "stage 'fetch': retries must be an int, got '2'"
    assert (named.stage, named.detail) == ("fetch", "retries must be an int, got '2'")


@pytest.mark.parametrize(
    "error",
    [
        tp.StageDefinitionError("bad", stage="s"),
        tp.StageDefinitionTypeError("bad"),
        tp.DuplicateStageError("a", "p"),
        tp.UnknownStageError("frist", "second", ["first"]),
        tp.CycleError(["a", "b", "a"]),
        tp.StageTimeout("s", 1.5, 2),
    ],
)
def test_errors_pickle_with_their_message_and_attributes(error: Exception) -> None:
    # They cross process boundaries (a ProcessExecutor stage may build a pipeline).
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert vars(copy) == vars(error)
