"""The cache side of one run, as the engine uses it.

Ownership: `open_run_cache` opens the store (off the event loop) and builds each
cached stage's `StageSpec` before the run starts; the engine then starts
`RunCache.serve` in its stages' nursery, which owns the worker thread until
`RunCache.close`. The engine never touches the store itself:

- a ready stage in `lookups` is looked up with `lookup` (no slot is taken, nothing
  is awaited): answered at once from memory when it can be, else the answer comes
  back as a call of `answer(i, result)` in Trio; the engine turns either into the
  scheduler's fact (hit or miss);
- after a looked-up stage's function returned, the attempt hands the value to
  `commit_soon` and ends; its callback reports the success once the entry is
  durable, so the entry is committed before `StageFinished` (an attempt with a
  timeout or a chaos hook awaits `commit` instead);
- at the end, `finish` writes the run to the history (and closes a store it opened).
"""

from __future__ import annotations

import contextvars
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import outcome
import trio

from .._errors import UnknownStageError
from .._events import describe_error
from .._options import Trigger
from .._scheduler import Outcomes
from ._explain import Decision, DecisionKind
from ._files import ObjectCache
from ._keys import CodeFingerprinter
from ._lookup import CommitResult, LookupResult, RunJobs, StageSpec, simulate
from ._policy import CacheOptions, CachePolicy, resolve_policy
from ._store import (
    OBJECTS_DIRNAME,
    CacheStore,
    RunRecord,
    SQLiteStore,
    StageColumns,
    StageRecord,
    default_cache_dir,
)
from ._worker import CacheWorker

if TYPE_CHECKING:
    from .._graph import Plan, Stage
    from .._result import RunResult

Answer = Callable[[int, LookupResult], None]

SNAPSHOT_BYTES = 64 << 20
"""Stored values up to this total are read in one query when a run starts."""

pipeline_file: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "pipeline_file", default=None
)
"""The pipeline file a run comes from, for the history (the CLI sets it)."""


MISSED = LookupResult(Decision("", DecisionKind.NO_ENTRY, "cache miss"))
"""`RunCache.lookup`'s answer for a plain miss from memory (one object for every stage)."""


def stage_cache_options(stage: Stage) -> CacheOptions | None:
    return getattr(stage, "cache", None)


class UnknownForcedStageError(UnknownStageError):
    """``force=`` names a stage that is not in the pipeline."""

    def __init__(self, stage: str, pipeline: str, known: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(stage, known, n=2)
        super().__init__(stage, "force=", close)
        hint = " (did you mean " + " or ".join(repr(s) for s in close) + "?)" if close else ""
        self.args = (f"force= names {stage!r}, not a stage of pipeline {pipeline!r}{hint}",)


def forced_stages(plan: Plan, force: bool | Iterable[str]) -> set[int]:
    """Indices of the stages `force` re-runs: all, or the named ones and their downstream.

    Raises:
        UnknownStageError: a name is not a stage of the plan.
    """
    n = len(plan.stages)
    if force is True:
        return set(range(n))
    if force is False:
        return set()
    names = [force] if isinstance(force, str) else list(force)
    index = {stage.name: i for i, stage in enumerate(plan.stages)}
    stack: list[int] = []
    for name in names:
        if name not in index:
            raise UnknownForcedStageError(name, plan.name, list(index))
        stack.append(index[name])
    seen: set[int] = set()
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(plan.downstream[i])
    return seen


def build_specs(
    plan: Plan, pipeline_cache: bool | CachePolicy | None, force: bool | Iterable[str]
) -> list[StageSpec | None]:
    """Each stage's `StageSpec`, or None for a stage that is not cached. Pure CPU work."""
    forced = forced_stages(plan, force)
    printer = CodeFingerprinter()
    fingerprint = printer.fingerprint
    specs: list[StageSpec | None] = []
    append = specs.append
    names = [stage.name for stage in plan.stages]
    upstream = plan.upstream
    for i, stage in enumerate(plan.stages):
        options = stage.cache
        setting = None if options is None else options.cache
        if setting is None and options is not None and (options.deps or options.outs):
            setting = True if pipeline_cache is None else None  # declaring files asks for it
        policy = resolve_policy(setting, pipeline_cache)
        if policy is None or never_cached(stage) is not None:
            append(None)
            continue
        fn = getattr(stage.fn, "__wrapped__", None) or stage.fn
        # `Pipeline.compile` lists `after`'s stages in order: the same names, no new tuple
        # (10,000 fewer objects for the garbage collector in a 10,000-stage run).
        ups = upstream[i]
        after = stage.after
        names_up = after if len(after) == len(ups) else tuple([names[j] for j in ups])
        append(
            StageSpec(
                stage.name,
                policy,
                fingerprint(fn),
                None if options is None else options.version,
                () if options is None else options.deps,
                () if options is None else options.outs,
                i in forced,
                names_up,
            )
        )
    return specs


_UNSTORED_REASON = "cache miss"  # what a lookup says of a stage `unstored_stages` names


def _ignore_commit(i: int, value: Any, message: str | None, now: float) -> None:
    pass


def _ignore_settle(now: float) -> None:
    pass


class RunCache:
    """One run's cache: its specs, the worker thread, the decisions made."""

    def __init__(
        self,
        store: CacheStore,
        specs: Sequence[StageSpec | None],
        jobs: RunJobs,
        *,
        owns_store: bool,
        enabled: bool,
        unstored: frozenset[int] = frozenset(),
    ) -> None:
        self.store = store
        self.specs = specs
        self.jobs = jobs
        self.enabled = enabled
        self._owns_store = owns_store
        self.worker = CacheWorker(store)
        cached = frozenset(i for i, spec in enumerate(specs) if spec is not None and enabled)
        # Stages no lookup can answer (see `unstored_stages`): they run at once, and
        # their commits make their keys.
        self._unstored = unstored & cached
        self.lookups: frozenset[int] = cached - self._unstored
        # Key parts until the commit (None: `RunJobs.memory_parts`, made by the commit).
        self._parts: dict[int, dict[str, Any] | None] = {}
        self._keys: dict[int, str | None] = {}  # the key of those parts
        self.reasons: dict[str, str] = {}  # each looked-up stage's `Decision.reason`
        self.logs: dict[int, str] = {}  # why a stage was not cached, for its StageLog
        self._group: list[tuple[StageSpec, dict[str, Any] | None, str | None, Any, int]] = []
        self._token: trio.lowlevel.TrioToken | None = None
        # The engine's: `committed(i, value, message, now)` once stage i's commit is
        # durable (`message`: why it was not stored, or None), then `settled(now)` after
        # each group of them (the engine carries out their decisions once per group);
        # `now` is the run's clock, read once per group.
        self.committed: Callable[[int, Any, str | None, float], None] = _ignore_commit
        self.settled: Callable[[float], None] = _ignore_settle
        self.wall_started = time.time()

    # -- the run ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the worker thread until `close` (see `CacheWorker.serve`)."""
        await self.worker.serve(task_status=task_status)

    def close(self) -> None:
        self.worker.close()

    def lookup(
        self, i: int, inputs_of: Callable[[int], Mapping[str, Any]], answer: Answer
    ) -> LookupResult | None:
        """Look stage `i` up; never blocks.

        Answered at once (returned) when memory suffices (`RunJobs.lookup_in_memory`:
        no worker round trip, the common case); otherwise None is returned, the lookup
        runs off the loop and `answer(i, result)` is called in Trio. A store failure
        (a corrupt file found mid-run) is answered as a miss that says so: the stage runs.
        """
        spec = self.specs[i]
        assert spec is not None
        found = self.jobs.probe_memory(spec)
        if found is not None:
            if isinstance(found, tuple):  # a plain miss, the common case of a cold run
                self._keys[i], self._parts[i] = found
                self.reasons[spec.name] = "cache miss"
                return MISSED
            self._found(i, spec, found)
            return found
        # `inputs_of(i)`: stage i's inputs (read only here: memory needs just their hashes).
        work = functools.partial(self.jobs.lookup, spec, dict(inputs_of(i)))

        def deliver(result: outcome.Outcome[LookupResult]) -> None:
            if isinstance(result, outcome.Error):
                reason = f"not cached: the store failed ({result.error})"
                answer(i, LookupResult(Decision(spec.name, DecisionKind.UNREADABLE, reason)))
                return
            found = result.unwrap()
            self._found(i, spec, found)
            answer(i, found)

        self.worker.submit(work, deliver)
        return None

    def _found(self, i: int, spec: StageSpec, found: LookupResult) -> None:
        # Plain dicts of plain values: objects kept per stage make the garbage collector
        # run (a full collection of a 10,000-stage run cost ~3 us a stage).
        decision = found.decision
        if found.parts is not None:
            self._parts[i] = found.parts
            self._keys[i] = decision.key
        if found.log is not None:
            self.logs[i] = found.log
        self.reasons[spec.name] = decision.reason

    def wants_commit(self, i: int) -> bool:
        return i in self._parts or i in self._unstored

    async def commit(self, i: int, value: Any) -> str | None:
        """Store stage `i`'s value; returns when durable. A message if it was not stored."""
        spec = self.specs[i]
        parts, key = self._parts.pop(i, None), self._keys.pop(i, None)
        assert spec is not None
        try:
            result: CommitResult = await self.worker.call(
                functools.partial(self.jobs.commit, spec, parts, value, key=key)
            )
        except Exception as exc:
            return f"not cached: the store failed ({exc})"
        return result.log

    def commit_soon(self, i: int, value: Any) -> None:
        """Store stage `i`'s value; `committed` is called in Trio once it is durable.

        `settled` is called after the callbacks of a group.

        Never blocks. Commits reported in the same scheduler tick go to the worker as
        one job (a list of commits, one transaction), delivered together: a layer of
        stages that finish together costs one round trip, not one per stage.
        """
        spec = self.specs[i]
        parts, key = self._parts.pop(i, None), self._keys.pop(i, None)
        assert spec is not None
        group = self._group
        group.append((spec, parts, key, value, i))
        if len(group) == 1:
            if self._token is None:
                self._token = trio.lowlevel.current_trio_token()
            self._token.run_sync_soon(self._send_group)

    def _send_group(self) -> None:
        # The group goes to the worker as it is (`commit_many` skips the indices): few
        # objects per stage in flight keep the garbage collector from running often.
        group, self._group = self._group, []

        def deliver(result: outcome.Outcome[list[str | None]]) -> None:
            committed, now = self.committed, trio.current_time()
            if isinstance(result, outcome.Error):
                failed = f"not cached: the store failed ({result.error})"
                for entry in group:
                    committed(entry[4], entry[3], failed, now)
            else:
                for entry, message in zip(group, result.unwrap(), strict=True):
                    committed(entry[4], entry[3], message, now)
            self.settled(now)

        try:
            self.worker.submit(functools.partial(self.jobs.commit_many, group), deliver)
        except RuntimeError as exc:  # closed: the run is ending abnormally; never raise here
            deliver(outcome.Error(exc))

    # -- history ----------------------------------------------------------------------

    def run_record(
        self,
        result: RunResult,
        pipeline: str,
        file: str | None,
        params: Mapping[str, Any],
        stages: tuple[StageRecord, ...] | None = None,
    ) -> RunRecord:
        """The run's `RunRecord`, with `stages` if given, else those of `stage_columns`."""
        if stages is None:
            stages = self.stage_columns(result).records()
        return RunRecord(
            run_id=result.run_id,
            pipeline=pipeline,
            file=file,
            started=self.wall_started,
            duration=result.duration,
            state=result.state.value,
            ok=result.ok,
            counts={status.value: n for status, n in result.counts.items()},
            params=params,
            stages=stages,
        )

    def reason(self, i: int, name: str, attempts: int) -> str | None:
        """Stage `i`'s cache decision in words, for the history (None: none was made)."""
        found = self.reasons.get(name)
        if found is None and attempts and i in self._unstored:
            return _UNSTORED_REASON
        return found

    def stage_columns(self, result: RunResult) -> StageColumns:
        """How each stage of `result` ended, for the history: a column per field.

        A stage's reason is the cache's decision (None if it was not looked up), or
        which failed upstream stage blocked it.
        """
        outcomes = result.stages
        if isinstance(outcomes, Outcomes):
            # The scheduler's tables as they are: building a `StageOutcome` per stage
            # cost ~1 us a stage, and a `StageRecord` ~1 us more.
            names, statuses, attempts, durations, failures, blocked = outcomes.columns()
        else:  # a `RunResult` made some other way
            names = list(outcomes)
            outs = list(outcomes.values())
            statuses = [out.status for out in outs]
            attempts = [out.attempts for out in outs]
            durations = [out.duration for out in outs]
            failures = {i: out.error for i, out in enumerate(outs) if out.error is not None}
            blocked = {
                i: out.blocked_by for i, out in enumerate(outs) if out.blocked_by is not None
            }
        reasons = list(map(self.reasons.get, names))
        for i in self._unstored:  # (the others' reason is `self.reasons`' alone)
            reasons[i] = self.reason(i, names[i], attempts[i])
        for i, culprit in blocked.items():
            reasons[i] = f"upstream {culprit!r} failed"
        errors = {i: describe_error(error) for i, error in failures.items()}
        return StageColumns(names, statuses, attempts, durations, reasons, errors)

    async def finish(
        self,
        result: RunResult | None,
        *,
        pipeline: str,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """Add the run to the history (if it ran) and close the store if the run opened it.

        Shielded, and a store failure is logged, never raised: the run has happened.
        The pipeline file recorded is `pipeline_file`'s value (set by the CLI).
        """
        # The record is built on the thread that writes it, where the event loop does
        # not wait for it (the result and `reasons` no longer change).
        file = pipeline_file.get()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._finish_sync, result, pipeline, file, params or {})

    def _finish_sync(
        self, result: RunResult | None, pipeline: str, file: str | None, params: Mapping[str, Any]
    ) -> None:
        import logging

        try:
            if result is not None:
                try:
                    store = self.store
                    if isinstance(store, SQLiteStore):
                        # Columns from the scheduler's tables to the stored text, no
                        # object per stage: 0.17 us a stage for a cold run of 10,000,
                        # against 4.1 through a `StageRecord` each (benchmarks.history).
                        record = self.run_record(result, pipeline, file, params, ())
                        store.record_run_columns(record, self.stage_columns(result))
                    else:
                        store.record_run(self.run_record(result, pipeline, file, params))
                except Exception:
                    logging.getLogger("trio_pipeline").exception(
                        "run %s: could not record the run in the history", result.run_id
                    )
        finally:
            if self._owns_store:
                self.store.close()


async def open_run_cache(
    plan: Plan,
    *,
    run_id: str,
    pipeline_cache: bool | CachePolicy | None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    store: CacheStore | None = None,
    force: bool | Iterable[str] = False,
    params: Mapping[str, Any] | None = None,
    explain: bool = False,
) -> RunCache | None:
    """Open the store and prepare the run's cache; None when the run uses no store.

    A store is used when one is given (`store`, `cache_dir`) or a stage is cached.

    Raises:
        CacheStoreError: the store is corrupt or foreign (before anything runs).
        UnknownStageError: `force` names a stage that does not exist.
    """
    forced_stages(plan, force)  # the names are checked even when nothing is cached
    specs = build_specs(plan, pipeline_cache, force)
    if store is None and cache_dir is None and all(s is None for s in specs):
        return None
    folder = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    owns = store is None
    if store is None:
        store = await trio.to_thread.run_sync(SQLiteStore, folder)
    objects = ObjectCache(os.path.join(folder, OBJECTS_DIRNAME)) if owns else None
    if not owns and isinstance(store, SQLiteStore):
        objects = ObjectCache(store.objects_dir)
    jobs = RunJobs(store, plan.name, run_id, dict(params or {}), objects, explain=explain)
    unstored: frozenset[int] = frozenset()
    if cache and any(spec is not None for spec in specs):
        # One query now instead of one per miss during the run.
        jobs.known = await trio.to_thread.run_sync(store.snapshot, plan.name, SNAPSHOT_BYTES)
        if not jobs.known and not explain:
            unstored = unstored_stages(plan, specs)
    return RunCache(store, specs, jobs, owns_store=owns, enabled=cache, unstored=unstored)


def unstored_stages(plan: Plan, specs: Sequence[StageSpec | None]) -> frozenset[int]:
    """The stages a run may commit without a lookup, when the store holds nothing of
    the pipeline: every lookup would miss, so none is made (no scheduler round, no
    key on the event loop). Not a stage with deps (their files are hashed before it
    runs, as a lookup does), a forced one (it says so) or one with an uncached
    upstream (its key needs the upstream's value, which only a lookup hashes)."""
    uncached = {i for i, spec in enumerate(specs) if spec is None}
    upstream = plan.upstream
    found: list[int] = []
    for i, spec in enumerate(specs):
        if spec is None or spec.deps or spec.forced:
            continue
        if uncached and not uncached.isdisjoint(upstream[i]):
            continue
        found.append(i)
    return frozenset(found)


def dry_run_decisions(
    plan: Plan,
    *,
    pipeline_cache: bool | CachePolicy | None,
    order: Sequence[str],
    cache_dir: str | os.PathLike[str] | None = None,
    force: bool | Iterable[str] = False,
    params: Mapping[str, Any] | None = None,
) -> list[Decision]:
    """``--dry-run --explain``: every stage's decision in `order`, running nothing (blocking)."""
    specs = build_specs(plan, pipeline_cache, force)
    index = {stage.name: i for i, stage in enumerate(plan.stages)}
    with SQLiteStore(default_cache_dir() if cache_dir is None else cache_dir) as store:
        jobs = RunJobs(store, plan.name, "dry-run", dict(params or {}), None, explain=True)
        decisions = simulate(jobs, [specs[index[name]] for name in order], list(order))
    return [
        Decision(d.stage, d.kind, uncached_reason(plan.stages[index[d.stage]]))
        if d.kind is DecisionKind.DISABLED
        else d
        for d in decisions
    ]


def never_cached(stage: Any) -> str | None:
    """Why `stage` is not cached whatever its policy, or None if a policy applies."""
    if stage.items is not None:
        return "an item stage (its items flow while it runs)"  # no one value to store
    if stage.options.trigger is Trigger.ALWAYS:
        return "a teardown stage (trigger always) always runs"  # it is there for its effect
    return None


def uncached_reason(stage: Any) -> str:
    """Why `build_specs` gave `stage` no spec, as ``--dry-run --explain`` prints it."""
    why = never_cached(stage) or "no cache policy (cache= on the stage or the pipeline)"
    return f"not cached: {why}"
