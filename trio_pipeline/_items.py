"""Item stages: their options, stream groups and the rule that keeps streams deadlock-free.

Pure: no trio import. The engine-side runtime is `_streams`.

Theory of operation
-------------------
A stage can produce *items* instead of (or as well as) one value:

- a **source** is an async generator function ``f(ctx)``; each ``yield`` is one item;
- an **each** stage (``each=X``) calls ``f(ctx, item)`` once per item of X, at most
  ``workers`` at a time; ``f`` returns one result (map) or is an async generator
  yielding any number (flat map). Its results are its items;
- a **consumes** stage (``consumes=X``) makes one call ``f(ctx, items)``; if ``f`` is
  an async generator its yields are items, otherwise its return value is its value.

X is the stage's *stream input*. When X produces items (a source, an each stage, a
consumes generator), X -> stage is a **stream edge**: items flow while both run.
When X is an ordinary stage, its value must be iterable and the stage maps over it
once X succeeded (a dynamic map); that is an ordinary dependency.

Stages joined by stream edges form a **stream group**. Each stage has at most one
stream input, so a group is a tree whose root is a source or a dynamic map. A group
is one scheduling unit: it takes one ``max_parallel`` slot and the members that run
start together. Members finish one by one; a member's ordinary downstream may start
as soon as that member ended.

Triggers (decided by `Scheduler`, in the pure scheduler): each member's trigger rule
reads its own dependencies, a reader's including the stream it reads. A producer
that will run counts as live (neither failed nor waiting); one whose rule ended it
counts as it ended. A member whose rule says BLOCKED, SKIPPED or CANCELLED ends at
once without running; the group is queued once no member's rule waits any more,
with the members whose rule said run (a reader whose producer does not run reads an
empty stream). While the stream flows, a producer that fails or is blocked blocks
its ``all_success`` and ``none_failed`` readers; an ``all_done`` reader reads what
arrived, ends normally, and its reason reports how many of the producer's items it
received. ``one_failed`` is refused on a stream reader (it is decided only once the
producer has ended, and a reader starts with it: use ``after=``); ``always`` is
refused on item stages (a teardown stage outlives a cancellation; streams do not).

Pools: an each= stage's ``uses=`` is taken per item call (`Scheduler.take_item_slots`);
a source's or consumes= stage's is held for its whole call: a group takes those of
the members it starts all at once when it starts, or waits holding nothing, and each
member gives its own back when it ends (`check_group_pools`: they must fit the run's
pools together).

The rule (checked by `check_streams` before anything runs)
-----------------------------------------------------------
1. Inside a group the only dependencies are the stream edges: a member may not
   wait (``after=``) for another member of its own group, which would need the
   whole stream to end before the stream can flow.
2. Contract every group to one node: the graph of groups and task stages must be
   acyclic (the issue's example: ``b`` with ``each=src`` and ``after=[c]``, ``c``
   after ``src``; ``c`` needs all of ``src``, ``src`` waits for ``b``'s buffer, ``b``
   waits for ``c``).
3. A pool held for whole calls by a source or consumes= stage is never taken per
   item call by an each= stage (else a group holding it could wait for its own
   items' slots, or two groups for each other's).

Why that is enough, under any ``max_parallel``, pools and ``exclusive``: the
scheduling units then form a DAG in which a unit never waits for anything once it
started (it holds its slot until its members end; its whole-call pool slots were
taken before it started; and nothing it waits on needs a slot a group holds:
per-item pool slots are taken for one call at a time, all at once, from pools no
group holds, and given back before the result is emitted, so an item call never
holds a slot while it waits). Inside a started group the streams form a tree of
bounded buffers whose readers always read to the end of their input (a reader that
fails stops reading and closes its input, so its producer drops it), so items
always move towards the leaves, and leaves always make progress.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from ._context import StageContext
from ._errors import StageDefinitionError
from ._events import describe_error
from ._options import Trigger

if TYPE_CHECKING:
    from ._graph import Plan, Stage
    from ._options import StageOptions

ItemStageFunction: TypeAlias = (
    Callable[[StageContext], AsyncIterator[Any]] | Callable[[Any, Any], Any]
)
"""A source ``async def f(ctx): ... yield item``; a per-item ``f(ctx, item)`` (async, an
async generator, or with ``executor=`` a sync ``def f(snapshot, item)``); or a consumes=
``f(ctx, items)``."""

ItemKind: TypeAlias = Literal["source", "each", "consumes"]
OnItemError: TypeAlias = Literal["fail", "skip"]
_ON_ITEM_ERROR: tuple[OnItemError, ...] = ("fail", "skip")


@dataclass(frozen=True, slots=True)
class ItemOptions:
    """How an item stage reads and writes items (`Stage.items`; None for a task stage).

    Attributes:
        kind: ``"source"``, ``"each"`` or ``"consumes"``.
        reads: The stage named by ``each=`` / ``consumes=`` (None for a source).
        workers: Item calls of an each stage running at once (1 for the others).
        buffer: Items the stream edge into this stage holds beyond those in the
            workers' hands (0: a rendezvous).
        ordered: An each stage emits results in input order (else completion order).
        on_item_error: ``"fail"``: an item failing after its retries fails the stage;
            ``"skip"``: it is counted, reported with `ItemFailed`, and left out.
        emits: The function is an async generator: its yields are the stage's items.
    """

    kind: ItemKind
    reads: str | None = None
    workers: int = 1
    buffer: int = 1
    ordered: bool = False
    on_item_error: OnItemError = "fail"
    emits: bool = False

    @property
    def produces(self) -> bool:
        """Whether the stage's output is a stream of items (sources and each stages always)."""
        return self.kind != "consumes" or self.emits


def is_async_generator_function(fn: object) -> bool:
    """True for ``async def`` with ``yield`` (or an instance whose ``__call__`` is one)."""
    if inspect.isasyncgenfunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - an instance with an async-gen __call__
    return not inspect.isroutine(fn) and inspect.isasyncgenfunction(call)


def _is_coroutine_function(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


def item_options(
    name: str,
    fn: object,
    *,
    each: str | None,
    consumes: str | None,
    workers: int | None,
    buffer: int | None,
    ordered: bool | None,
    on_item_error: str | None,
    has_executor: bool,
    retries: int,
) -> ItemOptions | None:
    """Check a stage's item keywords against its function; None for a task stage.

    `each` and `consumes` are already resolved to stage names. Keywords left None
    were not given.

    Raises:
        StageDefinitionError: a keyword does not fit the function or the other keywords.
    """
    if each is not None and consumes is not None:
        raise StageDefinitionError(
            f"stage {name!r}: each= and consumes= exclude each other (a stage has one stream input)"
        )
    generator = is_async_generator_function(fn)
    per_item = ("workers", workers), ("ordered", ordered), ("on_item_error", on_item_error)
    if each is None and consumes is None:
        given = [k for k, v in (*per_item, ("buffer", buffer)) if v is not None]
        if given:
            raise StageDefinitionError(
                f"stage {name!r}: {', '.join(given)} only apply to each=/consumes= stages"
            )
        if not generator:
            return None
        if has_executor:
            raise StageDefinitionError(
                f"stage {name!r}: a source (async generator) runs in its Trio task;"
                " executor= applies to per-item functions of each= stages"
            )
        _check_once(name, "a source", retries)
        return ItemOptions(kind="source", emits=True)
    if consumes is not None:
        given = [k for k, v in per_item if v is not None]
        if given:
            raise StageDefinitionError(
                f"stage {name!r}: {', '.join(given)} apply to each= stages;"
                " a consumes= stage makes one call that reads the whole stream"
            )
        if has_executor:
            raise StageDefinitionError(
                f"stage {name!r}: a consumes= stage runs in its Trio task; executor= is for each="
            )
        if not (generator or _is_coroutine_function(fn)):
            raise StageDefinitionError(
                f"stage {name!r}: consumes= needs an async function async def f(ctx, items),"
                f" got {fn!r}"
            )
        _check_once(name, "a consumes= stage", retries)
        return ItemOptions(
            kind="consumes",
            reads=consumes,
            buffer=_check_count(name, "buffer", 1 if buffer is None else buffer, minimum=0),
            emits=generator,
        )
    assert each is not None
    if has_executor:
        if generator or _is_coroutine_function(fn) or not callable(fn):
            raise StageDefinitionError(
                f"stage {name!r}: with executor= the per-item function must be a plain"
                f" def f(snapshot, item), got {fn!r}"
            )
    else:
        if not (generator or _is_coroutine_function(fn)):
            raise StageDefinitionError(
                f"stage {name!r}: each= needs an async function async def f(ctx, item)"
                f" (or an async generator, or a sync function with executor=), got {fn!r}"
            )
    n_workers = _check_count(name, "workers", 1 if workers is None else workers, minimum=1)
    if ordered is not None and not isinstance(ordered, bool):
        raise StageDefinitionError(f"stage {name!r}: ordered must be a bool, got {ordered!r}")
    if on_item_error is not None and on_item_error not in _ON_ITEM_ERROR:
        raise StageDefinitionError(
            f"stage {name!r}: on_item_error must be 'fail' or 'skip', got {on_item_error!r}"
        )
    return ItemOptions(
        kind="each",
        reads=each,
        workers=n_workers,
        buffer=_check_count(name, "buffer", n_workers if buffer is None else buffer, minimum=0),
        ordered=bool(ordered),
        on_item_error="skip" if on_item_error == "skip" else "fail",
        emits=generator,
    )


def check_item_scheduling(name: str, items: ItemOptions | None, options: StageOptions) -> None:
    """Refuse the stage options an item stage cannot honour (rather than ignore them).

    The rest of the trigger rule needs the plan (`stream_plan` refuses ``one_failed``
    on a stream reader).

    Raises:
        StageDefinitionError: ``trigger=always`` on an item stage.
    """
    if items is None:
        return
    if options.trigger is Trigger.ALWAYS:
        raise StageDefinitionError(
            f"stage {name!r}: trigger='always' (a teardown stage, shielded from"
            " cancellation) does not apply to item stages, whose streams a cancellation"
            " stops; use trigger='all_done' to run after a failure, or an ordinary"
            " teardown stage after=[...] it"
        )


def _check_count(name: str, what: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StageDefinitionError(
            f"stage {name!r}: {what} must be an int >= {minimum}, got {value!r}"
        )
    return value


def _check_once(name: str, what: str, retries: int) -> None:
    if retries:
        raise StageDefinitionError(
            f"stage {name!r}: {what} runs once (its items cannot be taken back), so retries="
            " does not apply; retries apply per item call of each= stages"
        )


class ItemError(Exception):
    """The error of an each= stage failed by one item (``on_item_error="fail"``).

    Attributes:
        stage: The stage's name.
        index: The item's 0-based index in the stage's input (as in `ItemFailed`).
        error: What the item's last call raised (also ``__cause__``).
    """

    def __init__(self, stage: str, index: int, error: BaseException) -> None:
        super().__init__(f"item {index} of stage {stage!r} failed: {describe_error(error)}")
        self.stage = stage
        self.index = index
        self.error = error
        self.__cause__ = error

    def __reduce__(self) -> tuple[type[ItemError], tuple[str, int, BaseException]]:
        return (type(self), (self.stage, self.index, self.error))


def format_item_counts(
    items_in: int, items_out: int, items_failed: int, items_cancelled: int, seconds: float
) -> str:
    """``"40 in, 120 out, 1 failed, 95/s"``: what the console and live view show.

    The rate is of items taken in (of items emitted, for a source); zero counts other
    than in/out are left out.
    """
    parts = [f"{items_in} in", f"{items_out} out"]
    if items_failed:
        parts.append(f"{items_failed} failed")
    if items_cancelled:
        parts.append(f"{items_cancelled} cancelled")
    moved = items_in or items_out
    if moved and seconds > 0:
        parts.append(f"{moved / seconds:,.0f}/s")
    return ", ".join(parts)


# -- stream groups ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamGroup:
    """Stages joined by stream edges: one scheduling unit.

    Attributes:
        members: Stage indices, in definition order (the first stands for the group
            in the ready queue).
        external: Indices of the stages outside the group that some member depends on.
    """

    members: tuple[int, ...]
    external: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """The item structure of a `Plan` (empty when no stage deals in items).

    Attributes:
        groups: Every stream group, ordered by root index.
        group_of: Stage index -> index into `groups`, for item stages only.
        readers: Producer index -> indices of the stages reading its stream.
        stream_input: Reader index -> the producer it reads (stream edges only).
        collects: Producers whose items are kept as their value, because an
            ordinary dependent receives them as a list.
    """

    groups: tuple[StreamGroup, ...]
    group_of: Mapping[int, int]
    readers: Mapping[int, tuple[int, ...]]
    stream_input: Mapping[int, int]
    collects: frozenset[int]


EMPTY_STREAM_PLAN = StreamPlan((), MappingProxyType({}), MappingProxyType({}), {}, frozenset())


def stream_plan(plan: Plan) -> StreamPlan:
    """Stream groups of `plan`, checked against the rule in this module's docstring.

    Raises:
        StageDefinitionError: a definition that could deadlock, naming its stages.
    """
    stages = plan.stages
    item_stages = [i for i, stage in enumerate(stages) if stage.items is not None]
    if not item_stages:
        return EMPTY_STREAM_PLAN
    index = {stage.name: i for i, stage in enumerate(stages)}
    stream_input: dict[int, int] = {}
    readers: dict[int, list[int]] = {}
    for i in item_stages:
        options = stages[i].items
        assert options is not None
        if options.reads is None:
            continue
        j = index.get(options.reads)
        if j is None:  # only possible in a run of selected targets (`only=True`)
            raise StageDefinitionError(
                f"stage {stages[i].name!r} reads the items of {options.reads!r}, which is not"
                " part of this run: select it too"
            )
        producer = stages[j].items
        if producer is not None and producer.produces:
            stream_input[i] = j
            readers.setdefault(j, []).append(i)
    # Each stage has at most one stream input, so following it reaches the group's root.
    root_of: dict[int, int] = {}
    for i in item_stages:
        chain = [i]
        while chain[-1] in stream_input and chain[-1] not in root_of:
            chain.append(stream_input[chain[-1]])
        root = root_of.get(chain[-1], chain[-1])
        for k in chain:
            root_of[k] = root
    members_by_root: dict[int, list[int]] = {}
    for i in item_stages:
        members_by_root.setdefault(root_of[i], []).append(i)
    groups: list[StreamGroup] = []
    group_of: dict[int, int] = {}
    collects: set[int] = set()
    for root in sorted(members_by_root):
        members = members_by_root[root]
        member_set = set(members)
        external: list[int] = []
        for m in members:
            for j in plan.upstream[m]:
                if j in member_set:
                    if stream_input.get(m) != j:
                        _refuse_inner_wait(stages, m, j, members)
                elif j not in external:
                    external.append(j)
        for m in members:
            group_of[m] = len(groups)
        groups.append(StreamGroup(tuple(members), tuple(external)))
    for i, ups in enumerate(plan.upstream):
        for j in ups:
            if stream_input.get(i) != j and j in group_of:
                producer = stages[j].items
                assert producer is not None
                if producer.produces:
                    collects.add(j)
    _check_units_acyclic(plan, groups, group_of)
    _check_stream_triggers(stages, stream_input)
    _check_pools_disjoint(stages, item_stages)
    return StreamPlan(
        groups=tuple(groups),
        group_of=MappingProxyType(group_of),
        readers=MappingProxyType({j: tuple(rs) for j, rs in readers.items()}),
        stream_input=MappingProxyType(stream_input),
        collects=frozenset(collects),
    )


def holds_for_call(stage: Stage) -> Mapping[str, int]:
    """The pool slots an item stage holds for its whole call: a source's or consumes=
    stage's ``uses=`` (an each= stage takes its own per item call; a task stage: {})."""
    items = stage.items
    if items is None or items.kind == "each":
        return _NO_USES
    return stage.options.uses


_NO_USES: Mapping[str, int] = MappingProxyType({})

# Rules that can only be decided once a stream input has ended cannot gate a reader
# that starts with it (see "Triggers" in the module docs).
_LIVE_TRIGGERS = frozenset({Trigger.ALL_SUCCESS, Trigger.NONE_FAILED, Trigger.ALL_DONE})


def _check_stream_triggers(stages: Sequence[Stage], stream_input: Mapping[int, int]) -> None:
    for reader, producer in stream_input.items():
        trigger = stages[reader].options.trigger
        if trigger not in _LIVE_TRIGGERS:
            name, up = stages[reader].name, stages[producer].name
            raise StageDefinitionError(
                f"trigger={trigger.value!r} is decided only once every upstream stage ended,"
                f" but it reads the stream of {up!r} while {up!r} runs; use an ordinary"
                f" stage with after=[{up!r}] instead (it receives {up!r}'s items as a list),"
                " or trigger='all_done' to read what arrives",
                stage=name,
            )


def _check_pools_disjoint(stages: Sequence[Stage], item_stages: Sequence[int]) -> None:
    """A pool held for a whole call by a stream stage is never taken per item call.

    Otherwise a group holding it could wait for its own item calls' slots (or for
    another group's, which waits for this one's): a deadlock under small pools.
    """
    held: dict[str, str] = {}
    per_item: dict[str, str] = {}
    for i in item_stages:
        stage = stages[i]
        if not stage.options.uses:
            continue
        whole = holds_for_call(stage)
        for pool in stage.options.uses:
            (held if whole else per_item).setdefault(pool, stage.name)
    for pool, holder in held.items():
        taker = per_item.get(pool)
        if taker is not None:
            raise StageDefinitionError(
                f"pool {pool!r} could deadlock: stage {holder!r} holds it for its whole call"
                f" while each= stage {taker!r} takes it per item call, so a stream group"
                " holding it could wait forever for its items' slots; give them separate pools"
            )


def check_group_pools(plan: Plan, pools: Mapping[str, int]) -> None:
    """A stream group takes its members' whole-call slots at once: they must fit together.

    Raises:
        StageDefinitionError: a group needs more slots of a pool than the run's pool
            has (it could never start), naming the group.
    """
    stages = plan.stages
    if not any(holds_for_call(stage) for stage in stages):
        return
    for group in stream_plan(plan).groups:
        need: dict[str, int] = {}
        for m in group.members:
            for pool, slots in holds_for_call(stages[m]).items():
                need[pool] = need.get(pool, 0) + slots
        for pool, slots in need.items():
            size = pools.get(pool, 0)
            if slots > size:
                raise StageDefinitionError(
                    f"stream group {_group_names(stages, group.members)} takes {slots} slots"
                    f" of pool {pool!r} at once (its stages start together), which has {size}"
                )


def check_streams(plan: Plan) -> None:
    """`stream_plan` for its checks only (what `Pipeline.compile` calls)."""
    stream_plan(plan)


def _group_names(stages: Sequence[Stage], members: Sequence[int]) -> str:
    return "[" + ", ".join(repr(stages[m].name) for m in members) + "]"


def _refuse_inner_wait(stages: Sequence[Stage], m: int, j: int, members: Sequence[int]) -> None:
    raise StageDefinitionError(
        f"stage {stages[m].name!r} waits for {stages[j].name!r} to finish, but both are in"
        f" stream group {_group_names(stages, members)}, whose stages start together and"
        f" stream into each other: {stages[j].name!r} cannot finish while"
        f" {stages[m].name!r} has not started (this could deadlock)"
    )


def _check_units_acyclic(
    plan: Plan, groups: Sequence[StreamGroup], group_of: Mapping[int, int]
) -> None:
    """Contract each group to one node and refuse a cycle, naming the stages on it."""
    # Pure; imported late because _graph imports this module.
    from ._graph import _find_cycle  # pyright: ignore[reportPrivateUsage]

    if not groups:
        return
    n_stages = len(plan.stages)
    # Unit ids: a task stage keeps its index; group g becomes n_stages + g.
    unit: Callable[[int], int] = lambda i: n_stages + group_of[i] if i in group_of else i  # noqa: E731
    upstream: list[list[int]] = [[] for _ in range(n_stages + len(groups))]
    # One witness stage edge (from, to) per unit edge, to explain a cycle in stage terms.
    witness: dict[tuple[int, int], tuple[int, int]] = {}
    for i, ups in enumerate(plan.upstream):
        u = unit(i)
        for j in ups:
            v = unit(j)
            if v != u and (v, u) not in witness:
                witness[(v, u)] = (j, i)
                upstream[u].append(v)
    cycle = _find_cycle([tuple(ups) for ups in upstream])
    if cycle is None:
        return
    stages = plan.stages
    steps: list[str] = []
    for v, u in itertools.pairwise(cycle):
        j, i = witness[(v, u)]
        steps.append(f"{stages[i].name!r} waits for {stages[j].name!r}")
    group = next(groups[c - n_stages] for c in cycle if c >= n_stages)
    raise StageDefinitionError(
        f"stream group {_group_names(stages, group.members)} could deadlock: its stages start"
        f" together and stream into each other, but {'; '.join(steps)}"
        " (a stage streaming into the group cannot also wait, directly or through other"
        " stages, for a stage of the group to finish)"
    )
