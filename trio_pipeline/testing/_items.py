"""Item accounting checked from a run's events, by its own logic (not the runtime's).

`check_run` calls `check_items` for a pipeline with item stages; `stream_units` tells
it which stages start together as one stream group.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio_pipeline as tp
from trio_pipeline._items import StreamPlan, stream_plan

_STOPPED = (tp.StageStatus.CANCELLED, tp.StageStatus.BLOCKED, tp.StageStatus.FAILED)


def stream_units(pipeline: tp.Pipeline) -> tuple[dict[str, str], dict[str, str]]:
    """(unit, stream input) by stage name, for the item stages of `pipeline`.

    A stream group's unit is the name of its first member; a stage reading a stream
    maps to the producer it reads. Task stages and dynamic maps' inputs are absent.
    """
    plan = pipeline.compile()
    streams = stream_plan(plan)
    names = [stage.name for stage in plan.stages]
    units = {
        names[m]: names[group.members[0]] for group in streams.groups for m in group.members
    }
    inputs = {names[r]: names[p] for r, p in streams.stream_input.items()}
    return units, inputs


def check_items(
    events: Sequence[tp.Event],
    pipeline: tp.Pipeline,
    *,
    max_parallel: int | None = None,
    progress_interval: float = 0.1,
) -> None:
    """Raise AssertionError naming the first broken item rule in `events`.

    Rules: task stages carry no item counts; for an item stage ``items_in ==
    items_ok + items_failed + items_cancelled`` with ``items_ok >= 0``, a map emits one
    result per finished item, a SUCCEEDED each= stage cancelled nothing (and failed
    nothing unless it skips); one `ItemFailed` per failed item of a skipping stage and
    none otherwise; on every stream edge the reader received exactly what the producer
    emitted unless it ended CANCELLED, BLOCKED or FAILED (then at most that); ordinary
    dependencies succeeded before a stage started; `StageProgress` only while the stage
    runs, never going back, at least `progress_interval` apart and only when items
    moved; at most `max_parallel` scheduling units (a stream group is one) running.
    """
    plan = pipeline.compile()
    streams = stream_plan(plan)
    names = [stage.name for stage in plan.stages]
    finished = {e.stage: e for e in events if isinstance(e, tp.StageFinished)}
    started = {e.stage: e for e in events if isinstance(e, tp.StageStarted)}
    skipped: dict[str, list[int]] = {}
    for e in events:
        if isinstance(e, tp.ItemFailed):
            skipped.setdefault(e.stage, []).append(e.index)
    for i, stage in enumerate(plan.stages):
        end = finished.get(stage.name)
        if end is None:
            continue
        counts = (end.items_in, end.items_out, end.items_failed, end.items_cancelled)
        options = stage.items
        if options is None:
            assert counts == (None,) * 4, f"task stage {stage.name!r} has item counts {counts}"
            continue
        if stage.name not in started:
            continue  # never started: BLOCKED or CANCELLED before any item
        n_in, n_out, n_failed, n_cancelled = counts
        assert None not in counts, f"item stage {stage.name!r} lacks counts: {end}"
        assert n_in is not None and n_out is not None
        assert n_failed is not None and n_cancelled is not None
        n_ok = n_in - n_failed - n_cancelled
        assert n_ok >= 0, f"{stage.name!r}: items_in {n_in} < failed + cancelled ({end})"
        if options.kind == "source":
            assert n_in == 0 and n_failed == 0 and n_cancelled == 0, end
        if options.kind == "each" and not options.emits:
            assert n_out <= n_ok, f"{stage.name!r}: more results than items done ({end})"
            if end.status is tp.StageStatus.SUCCEEDED:
                assert n_out == n_ok, f"{stage.name!r}: a map emits one result per item ({end})"
        if end.status is tp.StageStatus.SUCCEEDED and options.kind == "each":
            assert n_cancelled == 0, f"{stage.name!r} SUCCEEDED with cancelled items ({end})"
            if options.on_item_error == "fail":
                assert n_failed == 0, f"{stage.name!r} SUCCEEDED with failed items ({end})"
        if options.on_item_error == "skip":
            indices = skipped.get(stage.name, [])
            assert len(indices) == n_failed, f"{stage.name!r}: {indices} ItemFailed, {end}"
            assert len(set(indices)) == len(indices) and all(0 <= k < n_in for k in indices)
        else:
            assert stage.name not in skipped, f"{stage.name!r} fails on item errors, got ItemFailed"
        producer = streams.stream_input.get(i)
        if producer is not None:
            up = finished.get(names[producer])
            assert up is not None and up.items_out is not None
            if end.status in _STOPPED:
                assert n_in <= up.items_out, f"edge {names[producer]} -> {stage.name}: {n_in}"
            else:
                assert n_in == up.items_out, (
                    f"edge {names[producer]!r} -> {stage.name!r}: {up.items_out} produced,"
                    f" {n_in} received by a stage that ended {end.status}"
                )
    _check_dependencies(events, plan, streams)
    _check_progress(events, progress_interval)
    if max_parallel is not None:
        _check_units_parallel(events, plan, streams, max_parallel)


def _check_dependencies(events: Sequence[tp.Event], plan: object, streams: object) -> None:
    """Every dependency but a stream input SUCCEEDED before the stage started."""
    assert isinstance(streams, StreamPlan)
    stages = plan.stages  # type: ignore[attr-defined]
    upstream = plan.upstream  # type: ignore[attr-defined]
    index = {stage.name: i for i, stage in enumerate(stages)}
    succeeded: set[int] = set()
    for e in events:
        if isinstance(e, tp.StageFinished) and e.status is tp.StageStatus.SUCCEEDED:
            succeeded.add(index[e.stage])
        elif isinstance(e, tp.StageStarted) and e.attempt == 1:
            i = index[e.stage]
            for j in upstream[i]:
                if streams.stream_input.get(i) != j:
                    assert j in succeeded, f"{e.stage!r} started before {stages[j].name!r} succeeded"


def _check_progress(events: Sequence[tp.Event], interval: float) -> None:
    last: dict[str, tp.StageProgress] = {}
    running: set[str] = set()
    for e in events:
        if isinstance(e, tp.StageStarted):
            running.add(e.stage)
        elif isinstance(e, tp.StageFinished):
            running.discard(e.stage)
            before = last.get(e.stage)
            if before is not None:
                assert e.items_in is not None and e.items_out is not None
                assert e.items_failed is not None
                assert (before.items_in, before.items_out, before.items_failed) <= (
                    e.items_in,
                    e.items_out,
                    e.items_failed,
                ) or (
                    before.items_in <= e.items_in
                    and before.items_out <= e.items_out
                    and before.items_failed <= e.items_failed
                ), f"progress went back: {before} then {e}"
        elif isinstance(e, tp.StageProgress):
            assert e.stage in running, f"StageProgress outside the stage's run: {e}"
            before = last.get(e.stage)
            if before is not None:
                assert e.time - before.time >= interval - 1e-9, f"too close: {before}, {e}"
                assert before.items_in <= e.items_in and before.items_out <= e.items_out
                assert before.items_failed <= e.items_failed
                moved = (before.items_in, before.items_out, before.items_failed) != (
                    e.items_in,
                    e.items_out,
                    e.items_failed,
                )
                assert moved, f"StageProgress without items moving: {e}"
            last[e.stage] = e


def _check_units_parallel(
    events: Sequence[tp.Event], plan: object, streams: object, max_parallel: int
) -> None:
    assert isinstance(streams, StreamPlan)
    unit_of: dict[str, str] = {}
    for group in streams.groups:
        first = group.members[0]
        for m in group.members:
            unit_of[m] = first  # type: ignore[index, assignment]
    stages = [s.name for s in plan.stages]  # type: ignore[attr-defined]
    unit_name = {stages[i]: f"group {stages[u]}" for i, u in unit_of.items()}  # type: ignore[call-overload]
    live: dict[str, int] = {}
    for e in events:
        if isinstance(e, tp.StageStarted):
            unit = unit_name.get(e.stage, e.stage)
            live[unit] = live.get(unit, 0) + 1
            assert len(live) <= max_parallel, f"{len(live)} units running: {sorted(live)}"
        elif isinstance(e, tp.StageRetrying | tp.StageFinished) and e.stage in {
            s for s in stages
        }:
            unit = unit_name.get(e.stage, e.stage)
            if unit in live:
                live[unit] -= 1
                if not live[unit]:
                    del live[unit]
