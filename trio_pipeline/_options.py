"""Stage options and their validation, in one place. Pure: no trio import.

`StageOptions` and `RetryPolicy` are frozen and check themselves when built, so an
options object that exists is valid. The same checkers validate executor, command
and run options, so one mistake raises one error class wherever it is made:
`StageDefinitionError` (also a `ValueError`), or `StageDefinitionTypeError` (also a
`TypeError`) when the value has the wrong type.
"""

from __future__ import annotations

import difflib
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypedDict, cast

from ._errors import StageDefinitionError, StageDefinitionTypeError

if TYPE_CHECKING:
    from ._cache._policy import CachePolicy

RetryOn: TypeAlias = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""What `retry_on=` accepts: an exception class, a tuple of them, or a predicate."""


class Trigger(StrEnum):
    """When a stage runs, given its upstream stages' terminal statuses."""

    ALL_SUCCESS = "all_success"
    """Every upstream succeeded (the default); a failed or blocked one blocks this stage."""
    ALL_DONE = "all_done"
    """Every upstream is terminal, whatever its status."""
    ONE_FAILED = "one_failed"
    """One upstream failed or was blocked; SKIPPED if all end without either."""
    NONE_FAILED = "none_failed"
    """No upstream failed or was blocked (skipped ones are fine)."""
    ALWAYS = "always"
    """A teardown stage: runs once every upstream is terminal, even after a cancellation."""


# -- checkers shared by every option ------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(value: object, option: str, *, minimum: int | None = None) -> int:
    """`value` as an int, else the error naming `option` (a bool is not an int here)."""
    checked = _int(value, option, minimum=minimum, none=False)
    assert checked is not None
    return checked


def check_optional_int(value: object, option: str, *, minimum: int | None = None) -> int | None:
    """Like `check_int`, and None stays None."""
    return _int(value, option, minimum=minimum, none=True)


def _int(value: object, option: str, *, minimum: int | None, none: bool) -> int | None:
    if value is None and none:
        return None
    if minimum is None:
        what = "an int"
    elif minimum == 0:
        what = "a non-negative int"
    elif minimum == 1:
        what = "a positive int"
    else:
        what = f"an int >= {minimum}"
    if none:
        what += " or None"
    if isinstance(value, bool) or not isinstance(value, int):
        raise StageDefinitionTypeError(f"{option} must be {what}, got {value!r}")
    if minimum is not None and value < minimum:
        raise StageDefinitionError(f"{option} must be {what}, got {value!r}")
    return value


def check_seconds(
    value: object, option: str, *, zero: bool = True, infinite: bool = False
) -> float:
    """`value` as a float number of seconds, else the error naming `option`.

    Args:
        zero: Whether 0 is allowed (else the value must be > 0).
        infinite: Whether ``math.inf`` is allowed. NaN never is.
    """
    seconds = _seconds(value, option, zero=zero, infinite=infinite, none=False)
    assert seconds is not None
    return seconds


def check_optional_seconds(
    value: object, option: str, *, zero: bool = True, infinite: bool = False
) -> float | None:
    """Like `check_seconds`, and None stays None."""
    return _seconds(value, option, zero=zero, infinite=infinite, none=True)


def _seconds(value: object, option: str, *, zero: bool, infinite: bool, none: bool) -> float | None:
    if value is None and none:
        return None
    kind = "a number" if infinite else "a finite number"
    what = f"{kind} {'>= 0' if zero else '> 0'}{' or None' if none else ''}"
    if not _is_number(value):
        raise StageDefinitionTypeError(f"{option} must be {what}, got {value!r}")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if (
        math.isnan(seconds)
        or (not infinite and math.isinf(seconds))
        or seconds < 0
        or (seconds == 0 and not zero)
    ):
        raise StageDefinitionError(f"{option} must be {what}, got {value!r}")
    return seconds


def check_pool_map(pools: object, option: str = "pools") -> Mapping[str, int]:
    """A read-only copy of a ``{pool name: slots}`` mapping, each slot count >= 1."""
    if not isinstance(pools, Mapping):
        raise StageDefinitionTypeError(
            f"{option} must be a mapping of pool name to slots, got {pools!r}"
        )
    checked: dict[str, int] = {}
    for name, slots in cast("Mapping[object, object]", pools).items():
        if not isinstance(name, str) or not name:
            raise StageDefinitionTypeError(
                f"{option}: pool names must be non-empty strings, got {name!r}"
            )
        checked[name] = check_int(slots, f"{option}[{name!r}]", minimum=1)
    return MappingProxyType(checked)


# -- retry policy ---------------------------------------------------------------------------


def _check_delay(delay: object) -> float | tuple[float, ...]:
    if isinstance(delay, list | tuple):
        delays = cast("Sequence[object]", delay)
        if not delays:
            raise StageDefinitionError("retry_delay must not be an empty sequence")
        return tuple(check_seconds(d, f"retry_delay[{i}]") for i, d in enumerate(delays))
    if not _is_number(delay):
        raise StageDefinitionTypeError(
            f"retry_delay must be a finite number >= 0 or a sequence of them, got {delay!r}"
        )
    return check_seconds(delay, "retry_delay")


def _check_retry_on(retry_on: object) -> RetryOn | None:
    if retry_on is None:
        return None
    classes: tuple[object, ...]
    if isinstance(retry_on, tuple):
        classes = cast("tuple[object, ...]", retry_on)
        if not classes:
            raise StageDefinitionError("retry_on must not be an empty tuple")
    elif isinstance(retry_on, type):
        classes = (retry_on,)
    elif callable(retry_on):
        return cast("Callable[[BaseException], bool]", retry_on)
    else:
        raise StageDefinitionTypeError(
            "retry_on must be an exception class, a tuple of them, or a predicate"
            f" (exc) -> bool, got {retry_on!r}"
        )
    for cls in classes:
        if not isinstance(cls, type) or not issubclass(cls, BaseException):
            raise StageDefinitionTypeError(f"retry_on must name exception classes, got {cls!r}")
        if not issubclass(cls, Exception):
            raise StageDefinitionError(
                f"retry_on: {cls.__name__} is never retried (only Exception subclasses are;"
                " cancellation and KeyboardInterrupt end the stage)"
            )
    return cast("type[BaseException] | tuple[type[BaseException], ...]", retry_on)


def _repr(obj: object, default: object) -> str:
    """``Cls(field=value, ...)`` with only the fields that differ from `default`'s."""
    shown: list[str] = []
    for f in fields(cast("Any", obj)):
        value: object = getattr(obj, f.name)
        if value != getattr(default, f.name):
            if isinstance(value, Mapping):
                value = dict(cast("Mapping[str, int]", value))
            shown.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(shown)})"


@dataclass(frozen=True, slots=True, repr=False)
class RetryPolicy:
    """When a failed attempt is retried, and after how long.

    Built from a stage's ``retries=``, ``retry_delay=``, ``retry_backoff=``,
    ``retry_max_delay=``, ``retry_jitter=`` and ``retry_on=`` options (error messages
    use those names); checks itself when built.

    Attributes:
        retries: Extra attempts after the first one fails.
        delay: Seconds before retry 1; a scalar grows by `backoff` per retry. A
            sequence gives the delay before retry 1, 2, ... (the last one repeats;
            `backoff` does not apply).
        backoff: Multiplier per retry for a scalar delay (>= 1; 1.0 is a fixed delay).
        max_delay: Cap on the delay before jitter, or None.
        jitter: Fraction in [0, 1): each delay is scaled by a factor drawn uniformly
            from [1 - jitter, 1 + jitter] with the `random` module, so a seeded
            `random` reproduces it.
        retry_on: Which errors are retried: an exception class, a tuple of them, or a
            predicate ``(exc) -> bool``. None retries every Exception, timeouts
            (`StageTimeout`) included. Cancellation is never retried.
    """

    retries: int = 0
    delay: float | tuple[float, ...] = 0.0
    backoff: float = 2.0
    max_delay: float | None = None
    jitter: float = 0.0
    retry_on: RetryOn | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "retries", check_int(self.retries, "retries", minimum=0))
        set_field(self, "delay", _check_delay(self.delay))
        backoff = check_seconds(self.backoff, "retry_backoff")
        if backoff < 1:
            raise StageDefinitionError(
                f"retry_backoff must be a finite number >= 1 (1.0: a fixed delay),"
                f" got {self.backoff!r}"
            )
        set_field(self, "backoff", backoff)
        set_field(
            self, "max_delay", check_optional_seconds(self.max_delay, "retry_max_delay", zero=False)
        )
        jitter = check_seconds(self.jitter, "retry_jitter")
        if jitter >= 1:
            raise StageDefinitionError(
                f"retry_jitter must be a fraction in [0, 1), got {self.jitter!r}"
            )
        set_field(self, "jitter", jitter)
        set_field(self, "retry_on", _check_retry_on(self.retry_on))

    def __repr__(self) -> str:
        return _repr(self, _DEFAULT_RETRY)

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry).

        ``d * backoff**(retry - 1)`` for a scalar delay ``d``, ``delay[retry - 1]`` for
        a sequence (its last entry repeating), then capped at `max_delay`, then
        scaled by the jitter factor. Draws from `random` only when `jitter` > 0.
        """
        if retry < 1:
            raise ValueError(f"retry counts from 1, got {retry!r}")
        delay = self.delay
        if isinstance(delay, tuple):
            seconds = delay[min(retry, len(delay)) - 1]
        elif delay == 0:
            return 0.0
        else:
            try:
                seconds = delay * self.backoff ** (retry - 1)
            except OverflowError:
                seconds = math.inf
        if self.max_delay is not None and seconds > self.max_delay:
            seconds = self.max_delay
        if self.jitter:
            seconds *= 1 + random.uniform(-self.jitter, self.jitter)
        return seconds

    def should_retry(self, error: BaseException, failed_attempt: int) -> bool:
        """Whether attempt `failed_attempt` (from 1), which raised `error`, gets a retry.

        False once the retries are used up, or when `retry_on` is given and does not
        match. A predicate that raises means no retry; its error is added to
        `error` as a note. The engine never asks about a cancellation.
        """
        if failed_attempt > self.retries:
            return False
        retry_on = self.retry_on
        if retry_on is None:
            return isinstance(error, Exception)
        if isinstance(retry_on, type | tuple):
            return isinstance(error, retry_on)
        try:
            return bool(retry_on(error))
        except Exception as exc:  # the user's predicate: its bug must not break the run
            error.add_note(f"not retried: retry_on predicate {retry_on!r} raised {exc!r}")
            return False


# -- stage options --------------------------------------------------------------------------


def _no_uses() -> Mapping[str, int]:
    return MappingProxyType({})


def _check_uses(uses: object) -> Mapping[str, int]:
    if isinstance(uses, str):
        uses = {uses: 1}
    return check_pool_map(uses, "uses")


def _check_trigger(trigger: object) -> Trigger:
    if isinstance(trigger, Trigger):
        return trigger
    if isinstance(trigger, str):
        try:
            return Trigger(trigger)
        except ValueError:
            pass
        choices = ", ".join(repr(t.value) for t in Trigger)
        raise StageDefinitionError(f"trigger must be one of {choices}, got {trigger!r}")
    raise StageDefinitionTypeError(f"trigger must be a tp.Trigger, got {trigger!r}")


@dataclass(frozen=True, slots=True, repr=False)
class StageOptions:
    """A stage's scheduling options, checked when built (read them as `Stage.options`).

    Attributes:
        retry: The `RetryPolicy`.
        timeout: Seconds allowed per attempt, or None for no limit.
        trigger: When the stage runs given its upstreams' outcomes (`Trigger`).
        uses: Read-only ``{pool name: slots}`` the stage holds while it runs; a string
            ``"gpu"`` means ``{"gpu": 1}``.
        exclusive: The stage runs alone: it starts when nothing else runs, and
            nothing else starts while it runs.
        priority: Among ready stages, higher starts first (ties: definition order).
    """

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    trigger: Trigger = Trigger.ALL_SUCCESS
    uses: Mapping[str, int] = field(default_factory=_no_uses)
    exclusive: bool = False
    priority: int = 0

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        if not isinstance(self.retry, RetryPolicy):
            raise StageDefinitionTypeError(f"retry must be a RetryPolicy, got {self.retry!r}")
        set_field(
            self,
            "timeout",
            check_optional_seconds(self.timeout, "timeout", zero=False, infinite=True),
        )
        set_field(self, "trigger", _check_trigger(self.trigger))
        set_field(self, "uses", _check_uses(self.uses))
        if not isinstance(self.exclusive, bool):
            raise StageDefinitionTypeError(f"exclusive must be a bool, got {self.exclusive!r}")
        set_field(self, "priority", check_int(self.priority, "priority"))

    def __repr__(self) -> str:
        return _repr(self, DEFAULT_OPTIONS)


DEFAULT_OPTIONS = StageOptions()
"""The options of a stage defined without any: shared, since options are immutable."""
_DEFAULT_RETRY = DEFAULT_OPTIONS.retry


# -- pools ----------------------------------------------------------------------------------


class _HasOptions(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def options(self) -> StageOptions: ...


class _HasStages(Protocol):
    @property
    def stages(self) -> Iterable[_HasOptions]: ...


def check_pools(plan: _HasStages, pools: Mapping[str, int] | None) -> Mapping[str, int]:
    """Check `pools` and every stage's ``uses=`` against them; return the checked pools.

    Raises:
        StageDefinitionError: a stage uses an unknown pool or more slots than its pool
            has (the message names both), or `pools` itself is invalid.
    """
    checked = check_pool_map({} if pools is None else pools)
    for stage in plan.stages:
        for pool, slots in stage.options.uses.items():
            size = checked.get(pool)
            if size is None:
                known = ", ".join(map(repr, checked)) or "none"
                raise StageDefinitionError(
                    f"uses unknown pool {pool!r} (pools: {known})", stage=stage.name
                )
            if slots > size:
                raise StageDefinitionError(
                    f"uses {slots} slots of pool {pool!r}, which has {size}", stage=stage.name
                )
    return checked


# -- the stage keywords ---------------------------------------------------------------------


class StageKeywords(TypedDict, total=False):
    """The option keywords of `Pipeline.stage`, `add_stage` and `add_command`."""

    retries: int
    retry_delay: float | Sequence[float]
    retry_backoff: float
    retry_max_delay: float | None
    retry_jitter: float
    retry_on: RetryOn | None
    timeout: float | None
    trigger: Trigger | str
    uses: Mapping[str, int] | str
    exclusive: bool
    priority: int
    # Issue 14 (the cache): checked by `_cache._policy.cache_options` into `Stage.cache`.
    cache: bool | CachePolicy | None
    deps: Iterable[str | os.PathLike[str]]
    outs: Iterable[str | os.PathLike[str]]
    version: str | None


_RETRY_FIELDS = {
    "retries": "retries",
    "retry_delay": "delay",
    "retry_backoff": "backoff",
    "retry_max_delay": "max_delay",
    "retry_jitter": "jitter",
    "retry_on": "retry_on",
}
_STAGE_FIELDS = frozenset({"timeout", "trigger", "uses", "exclusive", "priority"})


_built: dict[tuple[tuple[str, type, object], ...], StageOptions] = {}
_BUILT_MAX = 512


def build_options(keywords: Mapping[str, object]) -> StageOptions:
    """The `StageOptions` for a stage's option keywords (see `StageKeywords`).

    Stages defined with the same keywords share one (immutable) options object:
    building and checking one costs about 6 us, which a 100,000-stage pipeline
    defined in a loop would otherwise pay per stage.

    Raises:
        StageDefinitionTypeError: an unknown keyword (with the closest known one).
        StageDefinitionError: an invalid value.
    """
    if not keywords:
        return DEFAULT_OPTIONS
    # The type is part of the key: True == 1 and 1 == 1.0, yet they check differently.
    key = tuple((k, type(v), v) for k, v in keywords.items())
    try:
        return _built[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable value (a list of delays, a uses dict): no sharing
        return _build(keywords)
    options = _build(keywords)
    if len(_built) >= _BUILT_MAX:
        _built.clear()
    _built[key] = options
    return options


def _build(keywords: Mapping[str, object]) -> StageOptions:
    retry: dict[str, object] = {}
    stage: dict[str, object] = {}
    for key, value in keywords.items():
        if key in _RETRY_FIELDS:
            retry[_RETRY_FIELDS[key]] = value
        elif key in _STAGE_FIELDS:
            stage[key] = value
        else:
            known = sorted([*_RETRY_FIELDS, *_STAGE_FIELDS])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}=?)" if close else f"; options: {', '.join(known)}"
            raise StageDefinitionTypeError(f"unknown option {key}={value!r}{hint}")
    policy = RetryPolicy(**retry) if retry else _DEFAULT_RETRY  # type: ignore[arg-type]
    return StageOptions(retry=policy, **stage)  # type: ignore[arg-type]
