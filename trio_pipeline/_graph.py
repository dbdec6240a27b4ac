"""Pipeline definition and validation. Pure: no trio import.

A `Pipeline` is a set of named stages with dependencies. Option errors and duplicate
names are reported when a stage is defined; dependencies may name stages defined
later, so unknown names and cycles are reported by `Pipeline.validate` (which
`run`/`open_run` call before anything starts).
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, Unpack, overload

from ._cache._policy import (
    CacheOptions,
    CachePolicy,
    cache_options,
    check_cache_option,
)
from ._context import StageContext
from ._errors import (
    CycleError,
    DuplicateStageError,
    PipelineInternalError,
    StageDefinitionError,
    StageDefinitionTypeError,
    UnknownStageError,
)
from ._items import (
    ItemOptions,
    ItemStageFunction,
    OnItemError,
    check_group_pools,
    check_item_scheduling,
    check_streams,
    item_options,
)
from ._options import DEFAULT_OPTIONS, StageKeywords, StageOptions, build_options, check_pool_map
from ._signature import check_stage_callable

if TYPE_CHECKING:
    # Types only: the edge modules import trio, so the core never imports them.
    from ._executors import Executor, SyncStageFunction
    from ._scheduler import FailureFreeRun

StageFunction: TypeAlias = Callable[[StageContext], Awaitable[Any]]
"""An ``async def f(ctx: StageContext) -> value``."""


@dataclass(frozen=True, slots=True, eq=False)
class Stage:
    """A defined stage: what `Pipeline.stage` and `Pipeline.add_stage` return.

    Pass it in another stage's ``after=`` instead of its name. Calling it calls the
    stage function, so stages stay easy to unit-test. `options` holds every
    scheduling option (`StageOptions`). `executor` is where a sync function runs
    (`fn` is then the async wrapper); None for an async stage, which runs in its
    Trio task.
    """

    name: str
    fn: StageFunction
    after: tuple[str, ...]
    options: StageOptions = DEFAULT_OPTIONS
    executor: Executor | None = None
    items: ItemOptions | None = None  # None for a task stage; see `_items`
    cache: CacheOptions | None = None  # cache=, deps=, outs=, version= (issue 14)

    @property
    def retries(self) -> int:
        """``options.retry.retries``."""
        return self.options.retry.retries

    @property
    def retry_delay(self) -> float | tuple[float, ...]:
        """``options.retry.delay``."""
        return self.options.retry.delay

    @property
    def timeout(self) -> float | None:
        """``options.timeout``."""
        return self.options.timeout

    def __call__(self, ctx: StageContext, *item: Any) -> Any:
        # An each= stage's function also takes the item (a consumes= one, the items).
        return self.fn(ctx, *item)

    def __repr__(self) -> str:
        where = "" if self.executor is None else f" executor={self.executor!r}"
        return f"<Stage {self.name!r} after={list(self.after)!r}{where}>"


StageRef: TypeAlias = "str | Stage | StageFunction | SyncStageFunction | ItemStageFunction"
"""A reference to a stage in ``after=``: its name, its `Stage`, or its function."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated pipeline as index arrays, for the engine. Indices follow definition order."""

    name: str
    stages: tuple[Stage, ...]
    upstream: tuple[tuple[int, ...], ...]
    downstream: tuple[tuple[int, ...], ...]


class _SyncWrapper(Protocol):
    def __call__(self, fn: object, executor: object, /) -> StageFunction: ...


class _CommandBuilder(Protocol):
    def __call__(
        self,
        argv: Sequence[str],
        /,
        *,
        cwd: str | os.PathLike[str] | None,
        env: Mapping[str, str] | None,
        grace_period: float,
    ) -> StageFunction: ...


@dataclass(slots=True)
class EdgeBuilders:
    """How the edge turns a sync function or a command line into a stage function.

    `_executors` and `_command` (which import trio) fill these in when imported, and
    the package imports them, so the core calls them without importing them. A
    builder raises `StageDefinitionError` without a stage name; `Pipeline` adds it.
    """

    sync: _SyncWrapper | None = None
    command: _CommandBuilder | None = None


edge = EdgeBuilders()


class Pipeline:
    """A named DAG of stages.

    Stages start in definition order among those that are ready. Defining a stage
    checks its options at once; `validate` checks the graph as a whole.

    Args:
        name: Shown in events and reports.
        pools: Resource pools, ``{pool name: slots}``, that stages take with
            ``uses=``; a run's ``pools=`` option overrides them.
    """

    def __init__(
        self,
        name: str,
        *,
        pools: Mapping[str, int] | None = None,
        cache: bool | CachePolicy | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            error = StageDefinitionError if isinstance(name, str) else StageDefinitionTypeError
            raise error(f"pipeline name must be a non-empty string, got {name!r}")
        self.name = name
        self.cache = check_cache_option(f"pipeline {name!r}", cache)
        """The stages' default ``cache=`` (a stage's own setting wins)."""
        self.pools: Mapping[str, int] = check_pool_map({} if pools is None else pools)
        """Read-only ``{pool name: slots}``."""
        self._stages: dict[str, Stage] = {}
        self._names_by_fn: dict[int, list[str]] = {}

    @overload
    def stage(
        self,
        fn: StageFunction | SyncStageFunction | ItemStageFunction,
        *,
        name: str | None = None,
        after: Iterable[StageRef] | StageRef = (),
        executor: Executor | None = None,
        each: StageRef | None = None,
        consumes: StageRef | None = None,
        workers: int | None = None,
        buffer: int | None = None,
        ordered: bool | None = None,
        on_item_error: OnItemError | None = None,
        **options: Unpack[StageKeywords],
    ) -> Stage: ...

    @overload
    def stage(
        self,
        fn: None = None,
        *,
        name: str | None = None,
        after: Iterable[StageRef] | StageRef = (),
        executor: Executor | None = None,
        each: StageRef | None = None,
        consumes: StageRef | None = None,
        workers: int | None = None,
        buffer: int | None = None,
        ordered: bool | None = None,
        on_item_error: OnItemError | None = None,
        **options: Unpack[StageKeywords],
    ) -> Callable[[StageFunction | SyncStageFunction | ItemStageFunction], Stage]: ...

    def stage(
        self,
        fn: StageFunction | SyncStageFunction | ItemStageFunction | None = None,
        *,
        name: str | None = None,
        after: Iterable[StageRef] | StageRef = (),
        executor: Executor | None = None,
        each: StageRef | None = None,
        consumes: StageRef | None = None,
        workers: int | None = None,
        buffer: int | None = None,
        ordered: bool | None = None,
        on_item_error: OnItemError | None = None,
        **options: Unpack[StageKeywords],
    ) -> Stage | Callable[[StageFunction | SyncStageFunction | ItemStageFunction], Stage]:
        """Decorator defining a stage named after the function (or `name`).

        Use bare (``@pipe.stage``), with options (``@pipe.stage(after=[first])``), or
        call it with the function (``pipe.stage(fn, retries=2)``). Options are those of
        `add_stage`.
        """

        def decorate(function: StageFunction | SyncStageFunction | ItemStageFunction) -> Stage:
            stage_name = name if name is not None else getattr(function, "__name__", None)
            if stage_name is None:
                raise StageDefinitionError(
                    f"cannot infer a stage name for {function!r}: pass name="
                )
            return self.add_stage(
                stage_name,
                function,
                after=after,
                executor=executor,
                each=each,
                consumes=consumes,
                workers=workers,
                buffer=buffer,
                ordered=ordered,
                on_item_error=on_item_error,
                **options,
            )

        if fn is not None:
            return decorate(fn)
        return decorate

    def add_stage(
        self,
        name: str,
        fn: StageFunction | SyncStageFunction | ItemStageFunction,
        *,
        after: Iterable[StageRef] | StageRef = (),
        executor: Executor | None = None,
        each: StageRef | None = None,
        consumes: StageRef | None = None,
        workers: int | None = None,
        buffer: int | None = None,
        ordered: bool | None = None,
        on_item_error: OnItemError | None = None,
        **options: Unpack[StageKeywords],
    ) -> Stage:
        """Define a stage.

        Args:
            name: Unique within the pipeline.
            fn: ``async def fn(ctx: StageContext) -> value``; with `executor`, a
                plain ``def fn(snapshot: StageSnapshot) -> value``.
            after: Stages this one depends on (names, `Stage` objects or their
                functions). Names may refer to stages defined later.
            executor: Where a sync `fn` runs (`ThreadExecutor`, `ProcessExecutor`,
                `DaskExecutor`); None runs an async `fn` in its own Trio task.
            **options: Keyword-only, checked at once into `Stage.options`:

                - ``retries``: extra attempts after a failed or timed-out one (never
                  after cancellation). Default 0.
                - ``retry_delay``: seconds before retry 1, growing by
                  ``retry_backoff`` per retry; or a sequence, the delay before retry
                  1, 2, ... (the last repeats). Default 0.
                - ``retry_backoff``: multiplier for a scalar delay, >= 1 (1.0: fixed).
                  Default 2.0.
                - ``retry_max_delay``: cap on a delay (before jitter), or None.
                - ``retry_jitter``: fraction in [0, 1); each delay is scaled by a
                  factor in [1 - j, 1 + j] drawn from `random`. Default 0.
                - ``retry_on``: an exception class, a tuple of them, or a predicate
                  ``(exc) -> bool``; other errors fail at once. Default: every error,
                  `StageTimeout` included.
                - ``timeout``: seconds allowed per attempt, or None for no limit.
                - ``trigger``: a `Trigger` (or its value); default ALL_SUCCESS.
                - ``uses``: ``{pool: slots}`` held while running (a str: one slot).
                - ``exclusive``: run alone. Default False.
                - ``priority``: among ready stages, higher starts first. Default 0.
                - ``cache``: True or a `CachePolicy`: skip the stage when its key
                  (code, inputs, params, deps, version) has a stored result; False
                  opts out of the pipeline's ``cache=``; None (default) follows it.
                - ``deps``: files or directories whose content enters the key.
                - ``outs``: files or directories the stage writes; a hit needs them
                  unchanged (or restores them: ``CachePolicy(restore_outs=True)``).
                - ``version``: a string you bump by hand to invalidate stored results.

                For an `each` stage, ``retries``, ``retry_*``, ``timeout`` and ``uses``
                apply per item call; a source or `consumes` stage holds its ``uses``
                for its whole call. On a stream reader, ``trigger`` also reads the
                stream's producer: ``all_done`` reads what arrived even if it failed;
                ``one_failed`` is refused there and ``always`` on any item stage.
            each: Make this an item stage calling ``fn(ctx, item)`` once per item
                of that stage (see the README's streaming section).
            consumes: Make this a stage called once as ``fn(ctx, items)`` with an
                async iterator over that stage's items.
            workers: Item calls of an `each` stage running at once (default 1).
            buffer: Items the stream into this stage may hold (default `workers`).
            ordered: Emit an `each` stage's results in input order.
            on_item_error: ``"fail"`` (default) or ``"skip"`` a failing item.

        Raises:
            DuplicateStageError: `name` is taken.
            StageDefinitionError: `fn` is not an async function (a sync callable
                with `executor`), or an option is invalid; a
                `StageDefinitionTypeError` (also a TypeError) for a wrong type.
        """
        if not isinstance(name, str) or not name:
            error = StageDefinitionError if isinstance(name, str) else StageDefinitionTypeError
            raise error(f"stage name must be a non-empty string, got {name!r}")
        if name in self._stages:
            raise DuplicateStageError(name, self.name)
        per_item = each is not None or consumes is not None  # f(ctx, item) / f(ctx, items)
        check_stage_callable(name, fn, executor, arity=2 if per_item else 1)
        run_fn: StageFunction
        try:
            cache = cache_options(
                name,
                cache=options.pop("cache", None),
                deps=options.pop("deps", ()),
                outs=options.pop("outs", ()),
                version=options.pop("version", None),
            )
            stage_options = build_options(options)
        except StageDefinitionError as exc:
            raise exc.for_stage(name) from None
        items = item_options(
            name,
            fn,
            each=None if each is None else self._resolve_one(name, "each", each),
            consumes=None if consumes is None else self._resolve_one(name, "consumes", consumes),
            workers=workers,
            buffer=buffer,
            ordered=ordered,
            on_item_error=on_item_error,
            has_executor=executor is not None,
            retries=stage_options.retry.retries,
        )
        check_item_scheduling(name, items, stage_options)
        if items is not None and cache is not None:
            raise StageDefinitionError(
                f"stage {name!r}: cache=, deps=, outs= and version= do not apply to item"
                " stages (their items flow while they run); a pipeline's cache= skips them"
            )
        try:
            if items is not None:
                run_fn = fn  # type: ignore[assignment]  # `_streams` calls it per item or once
            elif executor is None:
                if not is_async_callable(fn):
                    raise StageDefinitionTypeError(
                        "function must be an async function (async def f(ctx))"
                        f" or a sync function with executor=, got {fn!r}"
                    )
                run_fn = fn  # type: ignore[assignment]
            else:
                run_fn = _edge(edge.sync)(fn, executor)
        except StageDefinitionError as exc:
            raise exc.for_stage(name) from None
        stage = Stage(
            name=name,
            fn=run_fn,
            after=self._resolve_after(name, after, items),
            options=stage_options,
            executor=executor,
            items=items,
            cache=cache,
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
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        grace_period: float = 5.0,
        **options: Unpack[StageKeywords],
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
            after, options: As for `add_stage`.

        Raises:
            StageDefinitionError: `argv`, `env` or an option is invalid.
        """
        try:
            command = _edge(edge.command)(argv, cwd=cwd, env=env, grace_period=grace_period)
        except StageDefinitionError as exc:
            raise exc.for_stage(name) from None
        return self.add_stage(name, command, after=after, **options)

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
        find = index.__getitem__
        upstream: list[tuple[int, ...]] = []
        # Each stage's downstream grows as a tuple, a new one per edge, up to
        # _SMALL_FAN_OUT (then the rest goes to a list in `wide`). A list per stage
        # stayed GC-tracked, and at 300,000 stages those lists triggered full
        # collections over every Stage during compile; a tuple of ints is untracked by
        # the first collection it meets. Measured: layered compile 1.8 -> 1.25 us/stage
        # at 300,000 (chain 1.3 -> 0.8, wide 0.6 -> 0.25), unchanged at 1,000.
        downstream: list[tuple[int, ...]] = [()] * len(stages)
        wide: dict[int, list[int]] = {}  # downstream past the first _SMALL_FAN_OUT
        backward = True  # every stage waits only for stages defined before it
        for i, stage in enumerate(stages):
            after = stage.after
            if not after:
                upstream.append(())
                continue
            try:
                ups = tuple(map(find, after))
            except KeyError:
                ups = None
            if ups is None:  # raised outside the handler: no KeyError as its context
                dep = next(dep for dep in after if dep not in index)
                # Never the referencing stage itself: "did you mean" must be another.
                others = [other for other in index if other != stage.name]
                close = difflib.get_close_matches(dep, others, n=2)
                raise UnknownStageError(dep, stage.name, close)
            upstream.append(ups)
            for j in ups:
                if j >= i:
                    backward = False
                down = downstream[j]
                if len(down) < _SMALL_FAN_OUT:
                    downstream[j] = (*down, i)
                elif j in wide:
                    wide[j].append(i)
                else:
                    wide[j] = [i]
        for j, rest in wide.items():
            downstream[j] += tuple(rest)
        # Definition order is then a topological order: no cycle to look for (the
        # search costs about 1% of a run of no-op stages).
        cycle = None if backward else _find_cycle(upstream)
        if cycle is not None:
            raise CycleError([stages[i].name for i in cycle])
        plan = Plan(self.name, stages, tuple(upstream), tuple(downstream))
        check_streams(plan)
        return plan

    def start_order(self) -> list[str]:
        """Stage names in the order an unlimited, failure-free run would start them.

        The run's own scheduler decides it (priorities, pools and exclusive stages
        included; each attempt succeeds in the order it started). A stage such a
        run skips (a ``one_failed`` stage) is not listed: see `skipped_stages`.
        Raises the same errors as `validate`.
        """
        return failure_free_run_of(self).started

    def skipped_stages(self) -> dict[str, str]:
        """The stages an unlimited, failure-free run skips, each with its reason.

        The reason is the `StageFinished.reason` such a run gives (``"trigger
        one_failed not met: no upstream failed"``), in the order it decides them;
        with `start_order` they are every stage. Raises the same errors as `validate`.
        """
        return failure_free_run_of(self).skipped

    def _resolve_one(self, name: str, keyword: str, ref: StageRef) -> str:
        if not (isinstance(ref, str | Stage) or callable(ref)):
            raise StageDefinitionError(
                f"stage {name!r}: {keyword}= takes one stage (a name, Stage or function),"
                f" got {ref!r}"
            )
        return self._resolve_after(name, ref)[0]

    def _resolve_after(
        self, name: str, after: Iterable[StageRef] | StageRef, items: ItemOptions | None = None
    ) -> tuple[str, ...]:
        if isinstance(after, str | Stage) or callable(after):
            refs: Iterable[StageRef] = (after,)
        elif isinstance(after, Iterable):
            refs = after
        else:
            raise StageDefinitionTypeError(
                f"after= must be a stage, a name, or an iterable of them, got {after!r}",
                stage=name,
            )
        # A stage depends on its stream input first (each=/consumes=), then on after=.
        names: list[str] = [] if items is None or items.reads is None else [items.reads]
        for ref in refs:
            if isinstance(ref, str):
                dep = ref
            elif isinstance(ref, Stage):
                dep = ref.name
                if self._stages.get(dep) is not ref:
                    raise StageDefinitionError(
                        f"after= entry {ref!r} is a Stage of another pipeline,"
                        f" not of {self.name!r}",
                        stage=name,
                    )
            elif callable(ref):
                registered = self._names_by_fn.get(id(ref), [])
                if len(registered) != 1:
                    how = "is not a stage of" if not registered else "is several stages of"
                    raise StageDefinitionError(
                        f"after= entry {ref!r} {how} pipeline {self.name!r};"
                        " pass the stage's name or the Stage returned by stage()/add_stage()",
                        stage=name,
                    )
                dep = registered[0]
            else:
                raise StageDefinitionTypeError(
                    f"after= entries must be stage names or Stage objects, got {ref!r}",
                    stage=name,
                )
            if dep not in names:
                names.append(dep)
        return tuple(names)


def is_async_callable(fn: object) -> bool:
    """Whether `fn` is an async function or an instance with an async ``__call__``."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


# Appending to a tuple copies it: past this many downstream stages, a list takes the rest.
_SMALL_FAN_OUT = 16

_B = TypeVar("_B")


def _edge(builder: _B | None) -> _B:
    if builder is None:  # the package's __init__ imports the edge modules that set them
        raise PipelineInternalError("trio_pipeline's edge modules were not imported")
    return builder


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


def failure_free_run_of(pipeline: Pipeline) -> FailureFreeRun:
    """`Pipeline.start_order` and `Pipeline.skipped_stages` at once: one scheduler run."""
    from ._options import check_pools
    from ._scheduler import failure_free_run  # pure, like this module

    plan = pipeline.compile()
    pools = check_pools(plan, pipeline.pools)
    check_group_pools(plan, pools)
    return failure_free_run(plan, pools)
