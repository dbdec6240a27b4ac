"""Exceptions. Pure: no trio import.

Pipeline definition errors derive from `PipelineError` and are raised directly, never
inside an ExceptionGroup, before any stage runs or any event is emitted. Each also
subclasses the builtin it resembles (as attrs' ``FrozenError`` is an
``AttributeError``), so ``except ValueError`` keeps working for bad options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self


class PipelineError(Exception):
    """Base class for errors in how a pipeline is defined or run."""


class StageDefinitionError(PipelineError, ValueError):
    """A pipeline, stage, executor, command or run option is invalid.

    Raised where the mistake is made (defining the stage, building the executor,
    calling `run`), before anything runs. Also a `ValueError`.

    Attributes:
        stage: The stage concerned, or None (the message then names the option).
        detail: The message without the stage's name.
    """

    def __init__(self, detail: str, *, stage: str | None = None) -> None:
        super().__init__(detail if stage is None else f"stage {stage!r}: {detail}")
        self.detail = detail
        self.stage = stage

    def for_stage(self, stage: str) -> Self:
        """The same error, naming `stage` (for options checked before the name is known)."""
        return type(self)(self.detail, stage=stage)


class StageDefinitionTypeError(StageDefinitionError, TypeError):
    """A `StageDefinitionError` for a value of the wrong type; also a `TypeError`."""


class DuplicateStageError(StageDefinitionError):
    """Two stages of one pipeline share a name."""

    def __init__(self, stage: str, pipeline: str) -> None:
        super().__init__(f"stage {stage!r} is already defined in pipeline {pipeline!r}")
        self.stage = stage
        self.pipeline = pipeline

    def __reduce__(self) -> tuple[Callable[..., Self], tuple[object, ...]]:
        return (type(self), (self.stage, self.pipeline))


class UnknownStageError(PipelineError, LookupError):
    """A stage depends on a name that is not a stage of the pipeline. Also a `LookupError`."""

    def __init__(self, stage: str, referenced_by: str, suggestions: Sequence[str] = ()) -> None:
        message = f"stage {referenced_by!r} depends on unknown stage {stage!r}"
        if suggestions:
            message += " (did you mean " + " or ".join(repr(s) for s in suggestions) + "?)"
        super().__init__(message)
        self.stage = stage
        self.referenced_by = referenced_by
        self.suggestions = tuple(suggestions)

    def __reduce__(self) -> tuple[Callable[..., Self], tuple[object, ...]]:
        return (type(self), (self.stage, self.referenced_by, self.suggestions))


class CycleError(PipelineError, ValueError):
    """The dependencies form a cycle; `cycle` lists it with the first stage repeated last."""

    def __init__(self, cycle: Sequence[str]) -> None:
        super().__init__("dependency cycle: " + " -> ".join(cycle))
        self.cycle = tuple(cycle)

    def __reduce__(self) -> tuple[Callable[..., Self], tuple[object, ...]]:
        return (type(self), (self.cycle,))


class PipelineInternalError(Exception):
    """trio_pipeline broke one of its own invariants: a bug, please report it.

    Deliberately not a `PipelineError` (as trio's `TrioInternalError` is not a
    `TrioError`): code catching pipeline errors must not swallow it. The run's state
    is undefined after it.
    """


class TransitionError(PipelineInternalError, RuntimeError):
    """An illegal state transition was attempted; the state machine is unchanged.

    The engine only makes legal moves, so this is an internal error (also a
    `RuntimeError`).
    """

    def __init__(self, machine: str, current: object, target: object) -> None:
        super().__init__(f"{machine}: illegal transition {current!s} -> {target!s}")
        self.machine = machine
        self.current = current
        self.target = target


class StageTimeout(TimeoutError):
    """A stage attempt ran longer than its ``timeout``. Retried like any other failure."""

    def __init__(self, stage: str, timeout: float, attempt: int) -> None:
        super().__init__(f"stage {stage!r} timed out after {timeout:g}s (attempt {attempt})")
        self.stage = stage
        self.timeout = timeout
        self.attempt = attempt

    def __reduce__(self) -> tuple[type[StageTimeout], tuple[str, float, int]]:
        # The default reduce replays `self.args` (the message), which our __init__ rejects.
        return (type(self), (self.stage, self.timeout, self.attempt))
