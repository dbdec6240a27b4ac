"""Pipeline definition and validation. Pure: no trio import.

A `Pipeline` is a set of named stages with dependencies. Option errors and duplicate
names are reported when a stage is defined; dependencies may name stages defined
later, so unknown names and cycles are reported by `Pipeline.validate` (which
`run`/`open_run` call before anything starts).
"""

from __future__ import annotations

import difflib
import heapq
import inspect
import math
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from ._cache._policy import CacheOptions, CachePolicy, cache_options, check_cache_option
from ._context import StageContext
from ._errors import CycleError, DuplicateStageError, StageDefinitionError, UnknownStageError

if TYPE_CHECKING:
    from ._executors import Executor, SyncStageFunction

StageFunction: TypeAlias = Callable[[StageContext], Awaitable[Any]]
"""An ``async def f(ctx: StageContext) -> value``."""


@dataclass(frozen=True, slots=True, eq=False)
class Stage:
    """A defined stage: what `Pipeline.stage` and `Pipeline.add_stage` return.

    Pass it in another stage's ``after=`` instead of its name. Calling it calls the
    stage function, so stages stay easy to unit-test. `executor` is where a sync
    function runs (`fn` is then the async wrapper); None for an async stage, which
    runs in its Trio task.
    """

    name: str
    fn: StageFunction
    after: tuple[str, ...]
    retries: int
    retry_delay: float
    timeout: float | None
    executor: Executor | None = None
    cache: CacheOptions | None = None  # cache=, deps=, outs=, version= (issue 14)

    def __call__(self, ctx: StageContext) -> Awaitable[Any]:
        return self.fn(ctx)

    def __repr__(self) -> str:
        where = "" if self.executor is None else f" executor={self.executor!r}"
        return f"<Stage {self.name!r} after={list(self.after)!r}{where}>"


StageRef: TypeAlias = "str | Stage | StageFunction | SyncStageFunction"
"""A reference to a stage in ``after=``: its name, its `Stage`, or its function."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated pipeline as index arrays, for the engine. Indices follow definition order."""

    name: str
    stages: tuple[Stage, ...]
    upstream: tuple[tuple[int, ...], ...]
    downstream: tuple[tuple[int, ...], ...]


class Pipeline:
    """A named DAG of stages.

    Stages start in definition order among those that are ready. Defining a stage
    checks its options at once; `validate` checks the graph as a whole.
    """

    def __init__(self, name: str, *, cache: bool | CachePolicy | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise StageDefinitionError(f"pipeline name must be a non-empty string, got {name!r}")
        self.name = name
        self.cache = check_cache_option(f"pipeline {name!r}", cache)
        self._stages: dict[str, Stage] = {}
        self._names_by_fn: dict[int, list[str]] = {}

    @overload
    def stage(
        self,
        fn: StageFunction | SyncStageFunction,
        *,
        name: str | None = None,
        after: Iterable[StageRef] | StageRef = (),
        retries: int = 0,
        retry_delay: float = 0.0,
        timeout: float | None = None,
        executor: Executor | None = None,
        cache: bool | CachePolicy | None = None,
        deps: Iterable[str | os.PathLike[str]] = (),
        outs: Iterable[str | os.PathLike[str]] = (),
        version: str | None = None,
    ) -> Stage: ...

    @overload
    def stage(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        after: Iterable[StageRef] | StageRef = (),
        retries: int = 0,
        retry_delay: float = 0.0,
        timeout: float | None = None,
        executor: Executor | None = None,
        cache: bool | CachePolicy | None = None,
        deps: Iterable[str | os.PathLike[str]] = (),
        outs: Iterable[str | os.PathLike[str]] = (),
        version: str | None = None,
    ) -> Callable[[StageFunction | SyncStageFunction], Stage]: ...

    def stage(
        self,
        fn: StageFunction | SyncStageFunction | None = None,
        *,
        name: str | None = None,
        after: Iterable[StageRef] | StageRef = (),
        retries: int = 0,
        retry_delay: float = 0.0,
        timeout: float | None = None,
        executor: Executor | None = None,
        cache: bool | CachePolicy | None = None,
        deps: Iterable[str | os.PathLike[str]] = (),
        outs: Iterable[str | os.PathLike[str]] = (),
        version: str | None = None,
    ) -> Stage | Callable[[StageFunction | SyncStageFunction], Stage]:
        """Decorator defining a stage named after the function (or `name`).

        Use bare (``@pipe.stage``), with options (``@pipe.stage(after=[first])``), or
        call it with the function (``pipe.stage(fn, retries=2)``). Options are those of
        `add_stage`.
        """

        def decorate(function: StageFunction | SyncStageFunction) -> Stage:
            stage_name = name if name is not None else getattr(function, "__name__", None)
            if stage_name is None:
                raise StageDefinitionError(
                    f"cannot infer a stage name for {function!r}: pass name="
                )
            return self.add_stage(
                stage_name,
                function,
                after=after,
                retries=retries,
                retry_delay=retry_delay,
                timeout=timeout,
                executor=executor,
                cache=cache,
                deps=deps,
                outs=outs,
                version=version,
            )

        if fn is not None:
            return decorate(fn)
        return decorate

    def add_stage(
        self,
        name: str,
        fn: StageFunction | SyncStageFunction,
        *,
        after: Iterable[StageRef] | StageRef = (),
        retries: int = 0,
        retry_delay: float = 0.0,
        timeout: float | None = None,
        executor: Executor | None = None,
        cache: bool | CachePolicy | None = None,
        deps: Iterable[str | os.PathLike[str]] = (),
        outs: Iterable[str | os.PathLike[str]] = (),
        version: str | None = None,
    ) -> Stage:
        """Define a stage.

        Args:
            name: Unique within the pipeline.
            fn: ``async def fn(ctx: StageContext) -> value``; with `executor`, a
                plain ``def fn(snapshot: StageSnapshot) -> value``.
            after: Stages this one depends on (names, `Stage` objects or their
                functions). Names may refer to stages defined later.
            retries: Extra attempts after a failed or timed-out one (never after
                cancellation).
            retry_delay: Seconds before retry n is ``retry_delay * 2**(n-1)``.
            timeout: Seconds allowed per attempt, or None for no limit.
            executor: Where a sync `fn` runs (`ThreadExecutor`, `ProcessExecutor`,
                `DaskExecutor`); None runs an async `fn` in its own Trio task.
            cache: True or a `CachePolicy`: skip the stage when its key (code, inputs,
                params, deps, version) has a stored result; False opts out of the
                pipeline's default; None follows it.
            deps: Files or directories whose content enters the key.
            outs: Files or directories the stage writes; a hit needs them unchanged
                (or restores them, with ``CachePolicy(restore_outs=True)``).
            version: A string you bump by hand to invalidate stored results.

        Raises:
            DuplicateStageError: `name` is taken.
            StageDefinitionError: `fn` is not an async function (a sync callable
                with `executor`), or an option is invalid.
        """
        if not isinstance(name, str) or not name:
            raise StageDefinitionError(f"stage name must be a non-empty string, got {name!r}")
        if name in self._stages:
            raise DuplicateStageError(name, self.name)
        run_fn: StageFunction
        if executor is None:
            if not _is_async_callable(fn):
                raise StageDefinitionError(
                    f"stage {name!r}: function must be an async function (async def f(ctx))"
                    f" or a sync function with executor=, got {fn!r}"
                )
            run_fn = fn  # type: ignore[assignment]
        else:
            run_fn = _wrap_sync(name, fn, executor)
        stage = Stage(
            name=name,
            fn=run_fn,
            after=self._resolve_after(name, after),
            retries=_check_retries(name, retries),
            retry_delay=_check_retry_delay(name, retry_delay),
            timeout=_check_timeout(name, timeout),
            executor=executor,
            cache=cache_options(name, cache=cache, deps=deps, outs=outs, version=version),
        )
        self._stages[name] = stage
        self._names_by_fn.setdefault(id(fn), []).append(name)
        return stage

    def add_command(
        self,
        name: str,
        argv: Sequence[str],
        *,
        after: Iterable[StageRef] | StageRef = (),
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        timeout: float | None = None,
        grace_period: float = 5.0,
        cache: bool | CachePolicy | None = None,
        deps: Iterable[str | os.PathLike[str]] = (),
        outs: Iterable[str | os.PathLike[str]] = (),
        version: str | None = None,
    ) -> Stage:
        """Define a stage that runs an external program (see `Command`).

        Its stdout and stderr lines are emitted as `StageLog` events as they arrive
        (stderr ones prefixed ``"stderr: "``); its value is the captured stdout
        (str). A non-zero exit fails the attempt with `CommandError`, which carries
        the exit code and the last lines of stderr.

        Args:
            argv: The program and its arguments (no shell).
            cwd: Working directory (default: the current one).
            env: Variables added to (or overriding) the inherited environment.
            grace_period: Seconds between SIGTERM and SIGKILL when the attempt is
                cancelled or times out.
            after, retries, retry_delay, timeout, cache, deps, outs, version: As for
                `add_stage`.

        Raises:
            StageDefinitionError: `argv`, `env` or an option is invalid.
        """
        from ._command import Command

        if isinstance(argv, str | bytes) or not isinstance(argv, Sequence) or not argv:
            raise StageDefinitionError(
                f"stage {name!r}: argv must be a non-empty sequence of strings"
                f" (no shell), got {argv!r}"
            )
        if not all(isinstance(arg, str) for arg in argv):
            raise StageDefinitionError(f"stage {name!r}: argv entries must be str, got {argv!r}")
        if env is not None and not (
            isinstance(env, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise StageDefinitionError(f"stage {name!r}: env must map str to str, got {env!r}")
        if cwd is not None and not isinstance(cwd, str):
            raise StageDefinitionError(f"stage {name!r}: cwd must be a str or None, got {cwd!r}")
        command = Command(
            argv,
            cwd=cwd,
            env=env,
            grace_period=_check_grace_period(name, grace_period),
        )
        return self.add_stage(
            name,
            command,
            after=after,
            retries=retries,
            retry_delay=retry_delay,
            timeout=timeout,
            cache=cache,
            deps=deps,
            outs=outs,
            version=version,
        )

    @property
    def stages(self) -> Mapping[str, Stage]:
        """Read-only view of the stages by name, in definition order."""
        return MappingProxyType(self._stages)

    def __len__(self) -> int:
        return len(self._stages)

    def __iter__(self) -> Iterator[Stage]:
        return iter(self._stages.values())

    def __contains__(self, name: object) -> bool:
        return name in self._stages

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r} with {len(self._stages)} stages>"

    def validate(self) -> None:
        """Check the graph as a whole.

        Raises:
            UnknownStageError: a stage depends on a name that is not defined.
            CycleError: the dependencies form a cycle (the message shows it).
        """
        self.compile()

    def compile(self) -> Plan:
        """Validate and return the `Plan` the engine runs."""
        stages = tuple(self._stages.values())
        index = {stage.name: i for i, stage in enumerate(stages)}
        upstream: list[tuple[int, ...]] = []
        downstream: list[list[int]] = [[] for _ in stages]
        for i, stage in enumerate(stages):
            ups: list[int] = []
            for dep in stage.after:
                j = index.get(dep)
                if j is None:
                    close = difflib.get_close_matches(dep, index, n=2)
                    raise UnknownStageError(dep, stage.name, close)
                ups.append(j)
                downstream[j].append(i)
            upstream.append(tuple(ups))
        cycle = _find_cycle(upstream)
        if cycle is not None:
            raise CycleError([stages[i].name for i in cycle])
        return Plan(self.name, stages, tuple(upstream), tuple(map(tuple, downstream)))

    def start_order(self) -> list[str]:
        """Stage names in the order an unlimited, failure-free run would start them.

        Raises the same errors as `validate`.
        """
        plan = self.compile()
        waiting = [len(ups) for ups in plan.upstream]
        ready = [i for i, n in enumerate(waiting) if n == 0]
        order: list[str] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(plan.stages[i].name)
            for j in plan.downstream[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
        return order

    def _resolve_after(self, name: str, after: Iterable[StageRef] | StageRef) -> tuple[str, ...]:
        refs: Iterable[StageRef] = (
            (after,) if isinstance(after, str | Stage) or callable(after) else after
        )
        names: list[str] = []
        for ref in refs:
            if isinstance(ref, str):
                dep = ref
            elif isinstance(ref, Stage):
                dep = ref.name
            elif callable(ref):
                registered = self._names_by_fn.get(id(ref), [])
                if len(registered) != 1:
                    how = "is not a stage of" if not registered else "is several stages of"
                    raise StageDefinitionError(
                        f"stage {name!r}: after= entry {ref!r} {how} pipeline {self.name!r};"
                        " pass the stage's name or the Stage returned by stage()/add_stage()"
                    )
                dep = registered[0]
            else:
                raise StageDefinitionError(
                    f"stage {name!r}: after= entries must be stage names or Stage objects,"
                    f" got {ref!r}"
                )
            if dep not in names:
                names.append(dep)
        return tuple(names)


def _is_async_callable(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


def _wrap_sync(name: str, fn: object, executor: object) -> StageFunction:
    from ._executors import Executor, ExecutorStage

    if not isinstance(executor, Executor):
        raise StageDefinitionError(
            f"stage {name!r}: executor must have a name and async run(fn, ctx), got {executor!r}"
        )
    if not callable(fn) or _is_async_callable(fn) or inspect.isasyncgenfunction(fn):
        raise StageDefinitionError(
            f"stage {name!r}: with executor={executor!r} the function must be a plain"
            f" (sync) callable taking a StageSnapshot, got {fn!r}"
        )
    return ExecutorStage(fn, executor)


def _check_grace_period(name: str, grace: object) -> float:
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not 0 <= grace < math.inf:
        raise StageDefinitionError(
            f"stage {name!r}: grace_period must be a finite number >= 0, got {grace!r}"
        )
    return float(grace)


def _check_retries(name: str, retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise StageDefinitionError(
            f"stage {name!r}: retries must be a non-negative int, got {retries!r}"
        )
    return retries


def _check_retry_delay(name: str, delay: object) -> float:
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not math.isfinite(delay)
        or delay < 0
    ):
        raise StageDefinitionError(
            f"stage {name!r}: retry_delay must be a finite number >= 0, got {delay!r}"
        )
    return float(delay)


def _check_timeout(name: str, timeout: object) -> float | None:
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout <= 0
    ):
        raise StageDefinitionError(
            f"stage {name!r}: timeout must be a number > 0 or None, got {timeout!r}"
        )
    return float(timeout)


def _find_cycle(upstream: list[tuple[int, ...]]) -> list[int] | None:
    """A cycle as indices in data-flow order (each feeds the next), first repeated last.

    The cycle starts at its earliest-defined stage, so the message is deterministic.
    Iterative, so a 100,000-stage chain does not hit the recursion limit.
    """
    unvisited, on_path, done = 0, 1, 2
    color = [unvisited] * len(upstream)
    for root in range(len(upstream)):
        if color[root] != unvisited:
            continue
        path = [root]
        iters = [iter(upstream[root])]
        color[root] = on_path
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = done
                iters.pop()
            elif color[nxt] == on_path:
                # path[k+1] is an upstream of path[k]: reverse for data-flow order.
                waits_for = path[path.index(nxt) :]
                flow = waits_for[::-1]
                first = flow.index(min(flow))
                flow = flow[first:] + flow[:first]
                return [*flow, flow[0]]
            elif color[nxt] == unvisited:
                color[nxt] = on_path
                path.append(nxt)
                iters.append(iter(upstream[nxt]))
    return None
