"""Definition-time checks of a stage's callable and executor. Pure: no trio import.

Mistakes such as ``async def f():`` (no context parameter) or ``executor=tp.ThreadExecutor``
(the class, not an instance) would otherwise surface as a bare TypeError when the stage
first runs, after other stages have done their work. `check_stage_callable` finds them
when the stage is defined and names the stage.
"""

from __future__ import annotations

import inspect
import types
import weakref

from ._errors import StageDefinitionTypeError

# Reading a signature is about 70% of defining a stage (6 of 9 us), and pipelines often
# use one function for many stages. So the verdict "binds `arity` positional arguments"
# is kept per function object, weakly (a dropped function drops its entry), per arity
# (the same function may be a plain and a per-item stage). Only plain functions are
# keys (a bound method via its `__func__`, one argument more): their equality is
# identity, so a hit is the same object. Other callables (partials, callable instances,
# builtins) are read every time. Only successes are kept: a failure raises a message
# that depends on the executor. A function's code, defaults and `__signature__` are
# assumed fixed once it defines a stage.
_BINDS: weakref.WeakKeyDictionary[types.FunctionType, set[int]] = weakref.WeakKeyDictionary()


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
    key, key_arity = fn, arity
    if type(key) is types.MethodType:
        key, key_arity = key.__func__, arity + 1  # the bound self is the first argument
    if type(key) is types.FunctionType:
        known = _BINDS.get(key)
        if known is not None and key_arity in known:
            return
    else:
        key = None
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
    if key is not None:
        _BINDS.setdefault(key, set()).add(key_arity)
