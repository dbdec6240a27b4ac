"""Item accounting checked from a run's events, by its own logic (not the runtime's).

`check_run` calls `check_items` for a pipeline with item stages; `stream_units` tells
it which stages start together as one stream group.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._events import (
    Event,
    ItemFailed,
    StageFinished,
    StageProgress,
    StageRetrying,
    StageStarted,
)
from .._graph import Pipeline, Plan
from .._items import StreamPlan, stream_plan
from .._options import Trigger
from .._state import StageStatus

_STOPPED = (StageStatus.CANCELLED, StageStatus.BLOCKED, StageStatus.FAILED)


def _fail(invariant: str, detail: str) -> AssertionError:
    return AssertionError(f"invariant broken: {invariant}: {detail}")


def stream_units(pipeline: Pipeline) -> tuple[dict[str, str], dict[str, str]]:
    """(unit, stream input) by stage name, for the item stages of `pipeline`.

    A stream group's unit is the name of its first member; a stage reading a stream
    maps to the producer it reads. Task stages and dynamic maps' inputs are absent.
    """
    plan = pipeline.compile()
    streams = stream_plan(plan)
    names = [stage.name for stage in plan.stages]
    units = {names[m]: names[group.members[0]] for group in streams.groups for m in group.members}
    inputs = {names[r]: names[p] for r, p in streams.stream_input.items()}
    return units, inputs


def check_items(
    events: Sequence[Event],
    pipeline: Pipeline,
    *,
    max_parallel: int | None = None,
    progress_interval: float = 0.1,
) -> None:
    """Raise AssertionError naming the first broken item rule in `events`.

    Rules: task stages carry no item counts; for an item stage ``items_in ==
    items_ok + items_failed + items_cancelled`` with ``items_ok >= 0``; a map emits
    one result per finished item; a SUCCEEDED each= stage cancelled nothing (and
    failed nothing unless it skips); one `ItemFailed` per failed item of a skipping
    stage, none otherwise; on every stream edge the reader received exactly what the
    producer emitted unless it ended CANCELLED, BLOCKED or FAILED (then at most
    that), or it is a ``trigger="all_done"`` reader of a producer that FAILED or was
    BLOCKED (then at most that, and its reason says how many of how many); nothing
    from a producer that never ran; ordinary dependencies of an ALL_SUCCESS stage
    succeeded before it started; `StageProgress`
    only while its stage runs, never going back, at least `progress_interval` apart
    and only when items moved; at most `max_parallel` scheduling units running (a
    stream group is one).
    """
    plan = pipeline.compile()
    streams = stream_plan(plan)
    finished = {e.stage: e for e in events if isinstance(e, StageFinished)}
    started = {e.stage for e in events if isinstance(e, StageStarted)}
    skipped: dict[str, list[int]] = {}
    for e in events:
        if isinstance(e, ItemFailed):
            skipped.setdefault(e.stage, []).append(e.index)
    for i, stage in enumerate(plan.stages):
        end = finished.get(stage.name)
        if end is not None:
            _check_stage(plan, streams, i, end, finished, stage.name in started, skipped)
    _check_dependencies(events, plan, streams)
    _check_progress(events, progress_interval)
    if max_parallel is not None:
        _check_units_parallel(events, plan, streams, max_parallel)


def _counts(end: StageFinished) -> tuple[int, int, int, int, int]:
    counts = (end.items_in, end.items_out, end.items_failed, end.items_cancelled, end.items_ok)
    n_in, n_out, n_failed, n_cancelled, n_ok = counts
    if n_in is None or n_out is None or n_failed is None or n_cancelled is None or n_ok is None:
        raise _fail("an item stage's StageFinished carries its counts", repr(end))
    return n_in, n_out, n_failed, n_cancelled, n_ok


def _check_stage(
    plan: Plan,
    streams: StreamPlan,
    i: int,
    end: StageFinished,
    finished: dict[str, StageFinished],
    started: bool,
    skipped: dict[str, list[int]],
) -> None:
    stage = plan.stages[i]
    name = stage.name
    options = stage.items
    if options is None:
        counts = (end.items_in, end.items_out, end.items_failed, end.items_cancelled, end.items_ok)
        if counts != (None,) * 5:
            raise _fail("task stages carry no item counts", repr(end))
        return
    if not started:
        return  # BLOCKED or CANCELLED before any item
    n_in, n_out, n_failed, n_cancelled, n_ok = _counts(end)
    if n_in != n_ok + n_failed + n_cancelled or min(n_ok, n_failed, n_cancelled) < 0:
        raise _fail("items_in == items_ok + items_failed + items_cancelled", repr(end))
    if options.kind == "source" and (n_in, n_failed, n_cancelled) != (0, 0, 0):
        raise _fail("a source only emits", repr(end))
    succeeded = end.status is StageStatus.SUCCEEDED
    map_stage = options.kind == "each" and not options.emits
    if map_stage and (n_out > n_ok or (succeeded and n_out != n_ok)):
        raise _fail("a map emits one result per finished item", repr(end))
    # Each worker holds one item: in its call (not yet ok) or at a blocked send (ok).
    if map_stage and n_ok - n_out > options.workers:
        raise _fail("a map's finished items are emitted, but one per worker at a send", repr(end))
    in_hands = options.workers if options.kind == "each" else 1
    if end.status is StageStatus.CANCELLED and options.kind == "each" and n_cancelled > in_hands:
        raise _fail("only items in the workers' hands are cancelled", repr(end))
    if succeeded and options.kind == "each":
        if n_cancelled:
            raise _fail("a SUCCEEDED each= stage cancelled no item", repr(end))
        if n_failed and options.on_item_error == "fail":
            raise _fail("a SUCCEEDED each= stage that fails on item errors failed none", repr(end))
    indices = skipped.get(name, [])
    if options.on_item_error == "skip":
        if len(indices) != n_failed or len(set(indices)) != len(indices):
            raise _fail("one ItemFailed per failed item", f"{indices} for {end!r}")
        if any(not 0 <= k < n_in for k in indices):
            raise _fail("ItemFailed.index is an index of the stage's input", f"{indices}, {end!r}")
    elif indices:
        raise _fail("ItemFailed only from on_item_error='skip' stages", f"{name!r}: {indices}")
    producer = streams.stream_input.get(i)
    if producer is None:
        return
    up = finished.get(plan.stages[producer].name)
    if up is None:
        raise _fail("a reader finishes after its producer", f"{name!r} before its producer")
    if up.items_out is None:  # it ended without running: the reader read an empty stream
        if not up.attempt and n_in == 0:
            return
        raise _fail("a reader of a producer that never ran receives nothing", repr(end))
    short = up.status in (StageStatus.FAILED, StageStatus.BLOCKED)
    short = short and stage.options.trigger is Trigger.ALL_DONE
    if short and succeeded:
        # trigger='all_done': it read what arrived and says how much of what was produced.
        expected = f"received {n_in} of its {up.items_out} items"
        if n_in > up.items_out or expected not in (end.reason or ""):
            raise _fail(
                "a reader ending normally short of its producer's items says so",
                f"{name!r} reason {end.reason!r}, expected {expected!r}",
            )
        return
    if n_in > up.items_out or (end.status not in _STOPPED and n_in != up.items_out):
        raise _fail(
            "a reader receives every item its producer emitted (unless it stopped itself)",
            f"{up.stage!r} emitted {up.items_out}, {name!r} ({end.status}) received {n_in}",
        )


def _check_dependencies(events: Sequence[Event], plan: Plan, streams: StreamPlan) -> None:
    """Every dependency but a stream input SUCCEEDED before an item stage with the
    default trigger started (the replay checks the other rules)."""
    index = {stage.name: i for i, stage in enumerate(plan.stages)}
    succeeded: set[int] = set()
    for e in events:
        if isinstance(e, StageFinished) and e.status is StageStatus.SUCCEEDED:
            succeeded.add(index[e.stage])
        elif isinstance(e, StageStarted) and e.attempt == 1:
            i = index[e.stage]
            if plan.stages[i].options.trigger is not Trigger.ALL_SUCCESS:
                continue
            for j in plan.upstream[i]:
                if streams.stream_input.get(i) != j and j not in succeeded:
                    raise _fail(
                        "a stage starts after its ordinary dependencies succeeded",
                        f"{e.stage!r} started before {plan.stages[j].name!r} succeeded",
                    )


def _check_progress(events: Sequence[Event], interval: float) -> None:
    last: dict[str, tuple[float, int, int, int]] = {}
    running: set[str] = set()
    for e in events:
        if isinstance(e, StageStarted):
            running.add(e.stage)
        elif isinstance(e, StageFinished):
            running.discard(e.stage)
            before = last.get(e.stage)
            if before is not None and e.items_in is not None:
                final = (e.items_in, e.items_out or 0, e.items_failed or 0)
                if any(b > f for b, f in zip(before[1:], final, strict=True)):
                    raise _fail("item counts never go back", f"{before} then {e!r}")
        elif isinstance(e, StageProgress):
            if e.stage not in running:
                raise _fail("StageProgress only while its stage runs", repr(e))
            now = (e.time, e.items_in, e.items_out, e.items_failed)
            before = last.get(e.stage)
            if before is not None:
                if e.time - before[0] < interval - 1e-9:
                    raise _fail("StageProgress at least progress_interval apart", repr(e))
                if any(b > n for b, n in zip(before[1:], now[1:], strict=True)):
                    raise _fail("item counts never go back", f"{before} then {e!r}")
                if before[1:] == now[1:]:
                    raise _fail("StageProgress only while items flow", repr(e))
            last[e.stage] = now


def _check_units_parallel(
    events: Sequence[Event], plan: Plan, streams: StreamPlan, max_parallel: int
) -> None:
    names = [stage.name for stage in plan.stages]
    unit_of = {
        names[m]: f"group {names[group.members[0]]}"
        for group in streams.groups
        for m in group.members
    }
    live: dict[str, int] = {}
    for e in events:
        if isinstance(e, StageStarted):
            unit = unit_of.get(e.stage, e.stage)
            live[unit] = live.get(unit, 0) + 1
            if len(live) > max_parallel:
                raise _fail(
                    "running units never exceed max_parallel (a stream group is one)",
                    f"{sorted(live)} at seq={e.seq}",
                )
        elif isinstance(e, StageRetrying | StageFinished):
            unit = unit_of.get(e.stage, e.stage)
            if unit in live:
                live[unit] -= 1
                if not live[unit]:
                    del live[unit]
