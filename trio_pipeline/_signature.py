"""Definition-time checks of a stage's callable and executor. Pure: no trio import.

Mistakes such as ``async def f():`` (no context parameter) or ``executor=tp.ThreadExecutor``
(the class, not an instance) would otherwise surface as a bare TypeError when the stage
first runs, after other stages have done their work. `check_stage_callable` finds them
when the stage is defined and names the stage.
"""

from __future__ import annotations

import inspect

from ._errors import StageDefinitionTypeError


class StageSignatureError(StageDefinitionTypeError):
    """A stage's function cannot be called with its arguments, or the executor is a class.

    A `StageDefinitionTypeError`: both a `StageDefinitionError` and a `TypeError`.
    """


def check_stage_callable(name: str, fn: object, executor: object, *, arity: int = 1) -> None:
    """Check that `fn` can be called with `arity` positional arguments, and `executor`.

    A stage function gets one argument (its `StageContext`, or a `StageSnapshot` with an
    executor); a per-item stage gets two. Callables whose signature cannot be read
    (some builtins) pass.

    Raises:
        StageSignatureError: the executor is a class, or `fn` cannot take `arity`
            positional arguments (the message shows its signature and names the stage).
    """
    if isinstance(executor, type):
        raise StageSignatureError(
            f"executor={executor.__name__} is a class;"
            f" pass an instance, e.g. executor={executor.__name__}()",
            stage=name,
        )
    if isinstance(fn, type) or not callable(fn):
        return  # the caller's own "not a function" check explains it better
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(arity))
    except TypeError:
        what = "snapshot" if executor is not None else "ctx"
        wanted = "one positional argument" if arity == 1 else f"{arity} positional arguments"
        label = getattr(fn, "__qualname__", None) or repr(fn)
        example = "(ctx, item)" if arity == 2 else f"({what})"
        bare = signature.replace(  # without annotations: short, and no quoted strings
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise StageSignatureError(
            f"{label}{bare} must accept {wanted}, e.g. {label}{example}", stage=name
        ) from None
