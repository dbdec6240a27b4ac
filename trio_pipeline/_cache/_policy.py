"""`CachePolicy`: how one stage is cached. Pure: no trio import."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from .._errors import StageDefinitionError, StageDefinitionTypeError


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How a stage is cached: ``cache=CachePolicy(...)`` (``cache=True`` is the default one).

    Attributes:
        expire: Seconds an entry stays valid after it was stored; None: forever.
        restore_outs: Keep a copy of the stage's declared ``outs`` in the content-addressed
            object cache and restore them after a hit, instead of re-running the stage
            when they are missing or were changed.
        params: The names of the run parameters that enter the key (None: all of them).
            A stage that reads only some parameters re-runs only when those change.
        code: Whether the code fingerprint enters the key. False keeps results across
            code edits (bump ``version=`` by hand instead).
    """

    expire: float | None = None
    restore_outs: bool = False
    params: tuple[str, ...] | None = None
    code: bool = True

    def __init__(
        self,
        *,
        expire: float | None = None,
        restore_outs: bool = False,
        params: Iterable[str] | None = None,
        code: bool = True,
    ) -> None:
        if expire is not None and (
            isinstance(expire, bool)
            or not isinstance(expire, int | float)
            or math.isnan(expire)
            or expire <= 0
        ):
            raise StageDefinitionError(
                f"CachePolicy: expire must be a number of seconds > 0 or None, got {expire!r}"
            )
        if not isinstance(restore_outs, bool):
            raise StageDefinitionError(
                f"CachePolicy: restore_outs must be a bool, got {restore_outs!r}"
            )
        if not isinstance(code, bool):
            raise StageDefinitionError(f"CachePolicy: code must be a bool, got {code!r}")
        names: tuple[str, ...] | None = None
        if params is not None:
            if isinstance(params, str | bytes) or not isinstance(params, Iterable):
                raise StageDefinitionError(
                    f"CachePolicy: params must be an iterable of parameter names, got {params!r}"
                )
            names = tuple(params)
            if not all(isinstance(n, str) for n in names):
                raise StageDefinitionError(
                    f"CachePolicy: params must be parameter names (str), got {params!r}"
                )
        object.__setattr__(self, "expire", None if expire is None else float(expire))
        object.__setattr__(self, "restore_outs", restore_outs)
        object.__setattr__(self, "params", names)
        object.__setattr__(self, "code", code)


DEFAULT_POLICY = CachePolicy()


def resolve_policy(
    stage_cache: bool | CachePolicy | None, pipeline_cache: bool | CachePolicy | None
) -> CachePolicy | None:
    """The policy a stage runs with, or None if it is not cached.

    A stage's own setting wins (``cache=False`` opts out of a pipeline-wide default);
    None defers to the pipeline's.
    """
    setting = pipeline_cache if stage_cache is None else stage_cache
    if setting is None or setting is False:
        return None
    if setting is True:
        return DEFAULT_POLICY
    return setting


def check_cache_option(owner: str, value: object) -> bool | CachePolicy | None:
    """Validate a ``cache=`` option (of a stage or a pipeline).

    Raises:
        StageDefinitionError: not a bool, a `CachePolicy` or None (it is also a TypeError).
    """
    if value is None or isinstance(value, bool | CachePolicy):
        return value
    raise StageDefinitionTypeError(
        f"{owner}: cache must be True, False, a tp.CachePolicy or None, got {value!r}"
    )


@dataclass(frozen=True, slots=True)
class CacheOptions:
    """A stage's cache options (``cache=``, ``deps=``, ``outs=``, ``version=``), checked.

    `cache` None defers to the pipeline's ``cache=``; declaring `deps` or `outs` on a
    stage of a pipeline without a default turns the cache on for it.
    """

    cache: bool | CachePolicy | None = None
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    version: str | None = None


def cache_options(
    stage: str,
    *,
    cache: object = None,
    deps: object = (),
    outs: object = (),
    version: object = None,
) -> CacheOptions | None:
    """Check a stage's cache keywords; None when none was given (the common case).

    Raises:
        StageDefinitionError: a bad value, naming the stage and the option (a
            TypeError too when it is of the wrong type).
    """
    if cache is None and deps == () and outs == () and version is None:
        return None
    if cache is not None and not isinstance(cache, bool | CachePolicy):
        raise StageDefinitionTypeError(
            f"cache must be True, False, a tp.CachePolicy or None, got {cache!r}", stage=stage
        )
    if version is not None and not isinstance(version, str):
        raise StageDefinitionTypeError(
            f"version must be a str or None, got {version!r}", stage=stage
        )
    return CacheOptions(cache, _paths(stage, "deps", deps), _paths(stage, "outs", outs), version)


def _paths(stage: str, option: str, value: object) -> tuple[str, ...]:
    import os

    items: object = (value,) if isinstance(value, str | os.PathLike) else value  # pyright: ignore[reportUnknownVariableType]
    if isinstance(items, bytes) or not isinstance(items, Iterable):
        raise StageDefinitionTypeError(
            f"{option} must be a list of paths (str or os.PathLike), got {value!r}", stage=stage
        )
    paths: list[str] = []
    for item in cast(Iterable[object], items):  # pyright: ignore[reportUnknownVariableType]
        if not isinstance(item, str | os.PathLike) or not os.fspath(item):  # pyright: ignore[reportUnknownArgumentType]
            raise StageDefinitionTypeError(
                f"{option} entries must be non-empty paths, got {item!r}", stage=stage
            )
        paths.append(os.fspath(item))  # pyright: ignore[reportUnknownArgumentType]
    return tuple(paths)
