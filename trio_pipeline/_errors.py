"""Exceptions. Pure: no trio import.

Pipeline definition errors derive from `PipelineError` and are raised directly, never
inside an ExceptionGroup, before any stage runs or any event is emitted.
"""

from __future__ import annotations

from collections.abc import Sequence


class PipelineError(Exception):
    """Base class for errors in how a pipeline is defined or run."""


class DuplicateStageError(PipelineError):
    """Two stages of one pipeline share a name."""

    def __init__(self, stage: str, pipeline: str) -> None:
        super().__init__(f"stage {stage!r} is already defined in pipeline {pipeline!r}")
        self.stage = stage
        self.pipeline = pipeline


class StageDefinitionError(PipelineError):
    """A stage's function or options are invalid (checked when the stage is defined)."""


class UnknownStageError(PipelineError, LookupError):
    """A stage depends on a name that is not a stage of the pipeline."""

    def __init__(self, stage: str, referenced_by: str, suggestions: Sequence[str] = ()) -> None:
        message = f"stage {referenced_by!r} depends on unknown stage {stage!r}"
        if suggestions:
            message += " (did you mean " + " or ".join(repr(s) for s in suggestions) + "?)"
        super().__init__(message)
        self.stage = stage
        self.referenced_by = referenced_by


class CycleError(PipelineError):
    """The dependencies form a cycle; `cycle` lists it with the first stage repeated last."""

    def __init__(self, cycle: Sequence[str]) -> None:
        super().__init__("dependency cycle: " + " -> ".join(cycle))
        self.cycle = tuple(cycle)


class TransitionError(RuntimeError):
    """An illegal state transition was attempted; the state machine is unchanged."""

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
