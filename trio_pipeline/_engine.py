"""The engine: carries out the scheduler's decisions in Trio and reports facts back.

Ownership: `open_run` owns one nursery. In it run the dispatcher (started first,
in a shielded scope, see `_dispatch`) and the stage host, which owns the stages'
nursery: one task per running stage attempt and one per stage waiting out a retry
delay. No task outlives the `async with` block.

Rules: none here. Every scheduling rule is the scheduler's (`_scheduler`, pure).
Each task reports what happened to it as a fact (an attempt returned, raised, was
cancelled; a retry delay elapsed; close or cancel requested; the run's scope was
cancelled from outside) and then carries out the decisions the fact produced, in
the outbox's order: emit events, cancel, start attempts, wait out retry delays,
close the event channel. So scheduling happens synchronously inside whichever task
changed something: there is no coordinator task and no context switch per stage.
Events are emitted with `send_nowait` into an unbounded channel, so emitting never
blocks a stage; the dispatcher drains it.

Cancel scopes: stopping running stages cancels the stages' nursery as a whole (one
cancel scope for all of them). An attempt gets a scope of its own only for its
timeout or when it is shielded: a teardown stage (`Trigger.ALWAYS`, which a stop
never cancels; after a cancellation its scope takes the teardown deadline), or an
attempt started after the nursery was cancelled (a stage whose trigger still fires
after a fail-fast stop). Entering a scope costs about as much as the rest of a
no-op stage, so plain stages have none.

Fatal exceptions: an attempt or a sink raising a BaseException that is not a
cancellation (KeyboardInterrupt, SystemExit, ...) cancels the run and the
``async with`` body; once every event was delivered and every sink closed,
`open_run` raises that exception itself.

Shutdown: when the last stage reaches a terminal status the scheduler emits
`RunFinished`; the engine closes the send side and gives the dispatcher
`drain_timeout` seconds. The run is over when the dispatcher reports back, drained
or not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, cast

import trio

from . import _chaos
from ._cache._lookup import LookupResult
from ._cache._run import RunCache, open_run_cache
from ._cache._store import CacheStore
from ._context import StageContext
from ._delivery import SinkState
from ._dispatch import DEFAULT_MAX_BACKLOG, Dispatcher
from ._errors import PipelineInternalError, StageDefinitionError, StageDefinitionTypeError
from ._events import Event, ItemFailed, StageProgress
from ._graph import Pipeline, Plan, Stage
from ._items import check_group_pools
from ._options import DEFAULT_OPTIONS, check_optional_int, check_pools, check_seconds
from ._params import NO_PARAMS, Params, check_params
from ._result import RunResult
from ._scheduler import Outbox, Scheduler
from ._sinks import Sink
from ._state import Machine, RunState, StageStatus
from ._streams import GroupRun, ItemCounts
from ._targets import select_stages, subpipeline

logger = logging.getLogger("trio_pipeline")


class _Run:
    """One execution of a `Plan`: the scheduler plus the tasks that carry it out."""

    # A seam for tests that swap in deliberately broken dispatchers (tests/test_teeth.py).
    dispatcher_type: type[Dispatcher] = Dispatcher

    def __init__(
        self,
        plan: Plan,
        *,
        sinks: Sequence[Sink],
        keep_going: bool,
        max_parallel: int | None,
        drain_timeout: float,
        teardown_timeout: float = 30.0,
        pools: Mapping[str, int] | None = None,
        params: Params = NO_PARAMS,
        progress_interval: float = 0.1,
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
        cache: RunCache | None = None,
        run_id: str | None = None,
    ) -> None:
        self.plan = plan
        self.progress_interval = progress_interval
        self._group_runs: dict[int, GroupRun] = {}  # running stream groups by first member
        self._slots_freed = trio.Event()  # set (and replaced) when pool slots come back
        self.params = params
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.cache = cache  # the result cache's side of the run (issue 14), if any
        if cache is not None:
            cache.committed, cache.settled = self._committed, self._settle
        self.sched = Scheduler(
            plan,
            run_id=self.run_id,
            keep_going=keep_going,
            max_parallel=max_parallel,
            pools=pools,
            teardown_timeout=teardown_timeout,
            params=params,
            lookups=frozenset() if cache is None else cache.lookups,
            max_backlog=max_backlog,
        )
        self.drain_timeout = drain_timeout
        send, receive = trio.open_memory_channel[Event](math.inf)
        self._nursery: trio.Nursery | None = None  # the stages' nursery
        self._start_soon: Callable[..., None] = _not_begun
        self._scopes: dict[int, trio.CancelScope] = {}  # attempts and retry waits with one
        self._stages_done = trio.Event()
        # The run's clock, read directly on the per-stage path: trio.current_time()
        # goes through two more calls to reach the same method. Set in `begin`.
        self._now: Callable[[], float] = trio.current_time
        self._emit_log = self._log  # one bound method for every StageContext
        self.dispatcher = self.dispatcher_type(
            receive,
            sinks,
            self._on_dispatcher_done,
            max_backlog=max_backlog,
            on_backlog=self._on_backlog,
            on_critical=lambda feed: self.abort(),
        )
        self.dispatcher.on_fatal = self._sink_crashed
        self._send = self.dispatcher.emitter(send)  # feeds get each event as it is sent
        self._chaos = _chaos.current()  # read once: the hook is scoped to the run
        # Without chaos hooks, a stage with no scope of its own (see `_apply`) runs in
        # `_plain_attempt`, or `_cached_attempt` in a run with a cache.
        self._plain = self._chaos is None
        self._plain_attempt_fn = self._plain_attempt if cache is None else self._cached_attempt
        self.finished = trio.Event()
        self.result: RunResult | None = None
        self.fatal: BaseException | None = None  # re-raised by open_run
        self.broken: PipelineInternalError | None = None  # set by _engine_failed
        self.body_scope: trio.CancelScope | None = None  # cancelled by a fatal exception

    @property
    def machine(self) -> Machine[RunState]:
        return self.sched.machine

    # -- carrying out decisions --------------------------------------------------------

    def _apply(self, now: float) -> None:
        """Carry out the scheduler's outbox (see `Outbox` for the order)."""
        out = self.sched.out
        if out.lookup:
            # First: lookups answered at once add their decisions to this outbox.
            self._look_up(out.lookup, now)
        events = out.events
        if events:
            send = self._send.send_nowait
            try:
                for event in events:
                    send(event)
            except trio.BrokenResourceError:
                pass  # the dispatcher is gone; the result counts what it did not deliver
            events.clear()
        if out.rare:
            self._apply_cancels(out)
        starts = out.start
        if starts:
            sched = self.sched
            stages = self.plan.stages
            start_soon = self._start_soon
            plain, attempt = self._plain, self._plain_attempt_fn
            for i in starts:
                stage = stages[i]
                if stage.items is not None:
                    self._start_group(i)
                elif (
                    plain
                    and stage.options.timeout is None
                    and not (sched.shielded and i in sched.shielded)
                ):
                    start_soon(attempt, i)  # the common case, inlined
                else:
                    self._spawn(i, now)
            starts.clear()
        if out.rare:
            for i, delay in out.wait:
                self._spawn_wait(i, delay)
            if out.timer:
                self._start_soon(self._teardown_timer)
            if out.finished:
                self._send.close()
                if self.cache is not None:
                    self.cache.close()
                self._stages_done.set()
                self.dispatcher.set_deadline(now + self.drain_timeout)
            held = out.held
            out.clear()
            if held:
                self._find_room(now)

    def _find_room(self, now: float) -> None:
        """The scheduler has no room left to start a ready stage: give it more.

        At once if the sinks keep up; otherwise the dispatcher is paused and
        `_on_backlog` resumes the scheduler once they have caught up.
        """
        room = self.dispatcher.room()
        if room:
            self.sched.resume_starts(now, room)
            self._apply(now)

    def _look_up(self, lookups: list[int], now: float) -> None:
        """Look ready stages up in the cache; each answer is a fact (issue 14).

        Most are answered at once, from memory; their facts can make more stages
        ready to look up, hence the loop (not recursion: a chain of hits is long).
        The others go to the cache's worker and come back through `_looked_up`.
        """
        cache, inputs_of, answer = self.cache, self.sched.inputs_of, self._answer
        assert cache is not None
        explain = cache.jobs.explain
        while lookups:
            batch = lookups[:]
            lookups.clear()
            missed: list[int] = []
            reasons: list[str] | None = [] if explain else None
            for i in batch:
                found = cache.lookup(i, inputs_of, self._looked_up)
                if found is None:
                    continue
                if found.decision.hit:
                    answer(i, found, now)
                else:
                    missed.append(i)  # told together, below: one pass of the ready queue
                    if reasons is not None:
                        reasons.append(f"cache miss: {found.decision.reason}")
            if missed:
                self.sched.cache_misses(missed, now, reasons)

    def _answer(self, i: int, result: LookupResult, now: float) -> None:
        decision = result.decision
        if decision.hit:
            self.sched.cache_hit(i, result.value, decision.reason, now)
        else:
            cache = self.cache
            explain = cache is not None and cache.jobs.explain
            self.sched.cache_miss(i, now, f"cache miss: {decision.reason}" if explain else None)

    def _looked_up(self, i: int, result: LookupResult) -> None:
        now = self._now()
        self._answer(i, result, now)
        self._apply(now)

    def _apply_cancels(self, out: Outbox) -> None:
        if out.cancel_running:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
        if out.close_streams:
            for group_run in self._group_runs.values():
                group_run.request_close()
        if out.slots_freed:
            self._slots_freed.set()
            self._slots_freed = trio.Event()
        scopes = self._scopes
        for i in out.cancel:
            scope = scopes.get(i)
            if scope is not None:
                scope.cancel()
        deadline = self.sched.teardown_deadline
        for i in out.deadline:
            scope = scopes.get(i)
            if scope is not None:
                scope.deadline = min(scope.deadline, deadline)

    def _spawn(self, i: int, now: float) -> None:
        sched = self.sched
        timeout = self.plan.stages[i].options.timeout
        shielded = i in sched.shielded if sched.shielded else False
        scope: trio.CancelScope | None = None
        if timeout is not None or shielded:
            # Created here, not in the task, so the deadline counts from StageStarted.
            deadline = math.inf if timeout is None else now + timeout
            if shielded and i in sched.teardown:
                deadline = min(deadline, sched.teardown_deadline)
            scope = self._scopes[i] = trio.CancelScope(deadline=deadline, shield=shielded)
        self._start_soon(self._attempt, i, scope)

    def _spawn_wait(self, i: int, delay: float) -> None:
        sched = self.sched
        shielded = i in sched.shielded
        deadline = sched.teardown_deadline if shielded and i in sched.teardown else math.inf
        scope = self._scopes[i] = trio.CancelScope(deadline=deadline, shield=shielded)
        self._start_soon(self._retry_after, i, scope, delay)

    def _log(self, stage: str, message: str) -> None:
        event = self.sched.log(stage, message, self._now())
        with contextlib.suppress(trio.BrokenResourceError):  # the dispatcher is gone
            self._send.send_nowait(event)

    # -- lifecycle ------------------------------------------------------------------

    async def host_stages(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Own the stages' nursery (in a child task) and watch for outer cancellation."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._own_stages)
            task_status.started()
            try:
                await self._stages_done.wait()
            except BaseException:
                # The run's scope was cancelled from outside (or by a fatal exception):
                # cancel the stages; the stages' nursery sees the teardown stages through.
                self.abort()
                raise

    async def _own_stages(self, *, task_status: trio.TaskStatus[None]) -> None:
        # The stages' nursery, in a task of its own: a stop cancels this nursery's
        # scope, which must not reach the watcher above. The body waits shielded, so
        # the nursery stays open for teardown stages that start after a stop.
        async with trio.open_nursery() as nursery:
            if self.cache is not None:
                # Its own shielded task: answers still arrive while the stages'
                # scope is cancelled, and it ends once `out.finished` closed it.
                await nursery.start(self.cache.serve)
            try:
                self.begin(nursery)
                task_status.started()
                with trio.CancelScope(shield=True):
                    await self._stages_done.wait()
            finally:
                if self.cache is not None:
                    self.cache.close()

    async def _teardown_timer(self) -> None:
        # In the stages' nursery, shielded: that nursery's scope is cancelled by now.
        sched = self.sched
        with trio.CancelScope(shield=True, deadline=sched.teardown_deadline):
            await self._stages_done.wait()
            return
        now = self._now()
        sched.teardown_expired(now)
        self._apply(now)

    def begin(self, nursery: trio.Nursery) -> None:
        """Emit `RunStarted` and start the stages that are ready."""
        self._nursery = nursery
        self._start_soon = nursery.start_soon
        self._now = trio.lowlevel.current_clock().current_time
        now = self._now()
        self.sched.begin(now, wall_time=time.time())
        self._apply(now)

    def request_close(self) -> None:
        """Start no new stage but teardown stages; running ones finish. Idempotent."""
        if self.broken is not None:
            return
        now = self._now()
        self.sched.request_close(now)
        self._apply(now)

    def abort(self) -> None:
        """Cancel running stages; the run ends CANCELLED. A no-op once draining or done."""
        if self.broken is not None:
            return  # already ended by _engine_failed
        now = self._now()
        self.sched.cancel(now)
        self._apply(now)

    def _crashed(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc
        if self.body_scope is not None:
            self.body_scope.cancel()

    def _sink_crashed(self, exc: BaseException) -> None:
        """A sink raised a fatal exception (the dispatcher disabled it and goes on)."""
        self._crashed(exc)
        self.abort()

    def _engine_failed(self, exc: BaseException) -> None:
        """Engine code raised: a bug. End the run now; `open_run` raises it wrapped.

        The scheduler can no longer be trusted, so nothing asks it anything: the
        stages are cancelled, the dispatcher gets `drain_timeout` to deliver what
        was emitted and close the sinks, and the run's result stays unset.
        """
        if self.broken is not None:
            return
        error = PipelineInternalError(
            f"run {self.run_id}: the engine raised {exc!r}; this is a bug in trio_pipeline"
        )
        error.__cause__ = exc
        self.broken = self.fatal = error
        with contextlib.suppress(trio.ClosedResourceError):
            self._send.close()
        self.dispatcher.set_deadline(self._now() + self.drain_timeout)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._stages_done.set()
        if self.body_scope is not None:
            self.body_scope.cancel()

    def _on_backlog(self, over: bool) -> None:
        """The slowest sink went over max_backlog (pause starts) or back under half of it."""
        if over:
            self.sched.pause_starts()  # from inside _apply too: it only sets a flag
        else:
            now = self._now()
            self.sched.resume_starts(now, self.dispatcher.room())
            self._apply(now)

    def _on_dispatcher_done(self, dispatcher: Dispatcher) -> None:
        if self.broken is not None:
            self.finished.set()  # no result: open_run raises the internal error
            return
        sched = self.sched
        if not sched.finished:
            # The dispatcher died before the run finished: nothing can be delivered.
            self.abort()
        total = sched.emitted
        # CANCELLED only when a healthy sink was cut off (or a critical one failed).
        sched.drained(overran=not dispatcher.clean(total))
        deliveries = dispatcher.deliveries(total)
        undelivered: dict[Sink, int] = {}
        for sink, record in deliveries.items():
            if record.undelivered:
                undelivered[sink] = record.undelivered
                logger.error(
                    "run %s: sink %r did not receive %d of %d events before the drain deadline",
                    self.run_id,
                    sink,
                    record.undelivered,
                    total,
                )
            elif record.state is SinkState.CUT_OFF:
                logger.error(
                    "run %s: sink %r did not close within the drain deadline", self.run_id, sink
                )
        self.result = RunResult(
            state=sched.state,
            stages=sched.outcomes(),
            counts=MappingProxyType(sched.counts()),
            run_id=self.run_id,
            duration=self._now() - sched.started_at,
            sink_errors=MappingProxyType(
                {sink: d.error for sink, d in deliveries.items() if d.error is not None}
            ),
            undelivered=MappingProxyType(undelivered),
            deliveries=MappingProxyType(deliveries),
        )
        self.finished.set()

    # -- stream groups (`_streams.StreamHost`) -----------------------------------------

    def _start_group(self, first: int) -> None:
        streams = self.sched.streams
        group_run = GroupRun(
            self,
            self.plan.stages,
            streams,
            self.sched.started_members(first),
            progress_interval=self.progress_interval,
            chaos=self._chaos,
        )
        self._group_runs[first] = group_run
        self._start_soon(self._run_group, first, group_run)

    async def _run_group(self, first: int, group_run: GroupRun) -> None:
        try:
            await group_run.run()
        except BaseException as exc:
            if _is_cancellation(exc):
                raise
            # A member raised KeyboardInterrupt, SystemExit, ...: as for an attempt.
            self._crashed(_unwrap(exc))
            self.abort()
        finally:
            del self._group_runs[first]

    def now(self) -> float:
        return self._now()

    def next_seq(self) -> int:
        return self.sched.next_seq()

    def send_event(self, event: ItemFailed | StageProgress) -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the dispatcher is gone
            self._send.send_nowait(event)

    def log(self, stage: str, message: str) -> None:
        self._log(stage, message)

    def inputs_of(self, index: int) -> Mapping[str, Any]:
        return self.sched.inputs_of(index)

    async def take_item_slots(self, index: int) -> None:
        sched = self.sched
        while True:
            freed = self._slots_freed
            if sched.take_item_slots(index):
                return
            await freed.wait()

    def give_item_slots(self, index: int) -> None:
        now = self._now()
        self.sched.give_item_slots(index, now)
        self._apply(now)

    def member_finished(
        self,
        index: int,
        status: StageStatus,
        *,
        value: Any,
        error: BaseException | None,
        blocked_by: str | None,
        reason: str | None,
        counts: ItemCounts,
    ) -> None:
        now = self._now()
        self.sched.member_finished(
            index,
            status,
            now,
            value=value,
            error=error,
            blocked_by=blocked_by,
            reason=reason,
            counts=counts,
        )
        self._apply(now)

    # -- tasks ------------------------------------------------------------------------

    def _context(self, i: int) -> StageContext:
        sched = self.sched
        return StageContext(
            name=self.plan.stages[i].name,
            inputs=sched.inputs_of(i),
            attempt=sched.attempts[i],
            run_id=self.run_id,
            emit_log=self._emit_log,
            params=self.params,
        )

    async def _plain_attempt(self, i: int) -> None:
        """`_attempt` without the cache, the chaos hooks and a scope of its own.

        The common case: a run without cache or chaos hooks, a stage without a
        timeout and not shielded. Fewer checks, and a smaller coroutine for each
        task waiting to run (on a wide graph every ready stage has one).
        """
        # Two locals fewer than the obvious form: a smaller frame in every waiting task's
        # coroutine (wide, every stage alive: 1.31 -> 1.28 KiB a live stage, measured).
        try:
            try:
                value = await self.plan.stages[i].fn(self._context(i))
            except BaseException as exc:
                if self._attempt_raised(i, exc, None):
                    raise
            else:
                self._attempt_returned(i, value)
        except BaseException as exc:
            if not _is_cancellation(exc):
                self._engine_failed(exc)  # see _attempt
            raise

    async def _cached_attempt(self, i: int) -> None:
        """`_plain_attempt` in a run with a cache: a looked-up stage's value goes to the
        cache, whose callback (`_committed`) reports the success once it is durable."""
        try:
            cache = self.cache
            assert cache is not None
            try:
                ctx = self._context(i)
                if i in cache.logs and self.sched.attempts[i] == 1:
                    ctx.log(cache.logs[i])  # why this stage is not cached
                value = await self.plan.stages[i].fn(ctx)
            except BaseException as exc:
                if self._attempt_raised(i, exc, None):
                    raise
            else:
                if cache.wants_commit(i):
                    cache.commit_soon(i, value)
                else:
                    self._attempt_returned(i, value)
        except BaseException as exc:
            if not _is_cancellation(exc):
                self._engine_failed(exc)  # see _attempt
            raise

    async def _attempt(self, i: int, scope: trio.CancelScope | None) -> None:
        try:
            sched = self.sched
            stage = self.plan.stages[i]
            ctx = self._context(i)
            value: Any = None
            cache = self.cache
            try:
                if cache is not None and sched.attempts[i] == 1 and i in cache.logs:
                    ctx.log(cache.logs[i])  # why this stage is not cached
                if scope is None:
                    if self._chaos is not None:
                        await self._chaos("stage.start")
                    value = await stage.fn(ctx)
                else:
                    with scope:
                        if self._chaos is not None:
                            await self._chaos("stage.start")
                        value = await stage.fn(ctx)
                    del self._scopes[i]
                if (
                    cache is not None
                    and cache.wants_commit(i)
                    and not (scope is not None and scope.cancelled_caught)
                ):
                    # Durable before StageFinished; not cancellable (a bounded wait).
                    message = await cache.commit(i, value)
                    if message is not None:
                        ctx.log(message)
                if self._chaos is not None:
                    # Shielded: once the function has returned, the attempt has succeeded.
                    with trio.CancelScope(shield=True):
                        await self._chaos("stage.end")
            except BaseException as exc:
                if self._attempt_raised(i, exc, scope):
                    raise
            else:
                now = self._now()
                if scope is not None and scope.cancelled_caught:
                    sched.attempt_timed_out(i, now)
                else:
                    sched.attempt_succeeded(i, value, now)
                self._apply(now)
        except BaseException as exc:
            # What the body lets out is a bug in the engine, not in the stage (the
            # stage's own exceptions are facts above), or a cancellation re-raised.
            if not _is_cancellation(exc):
                self._engine_failed(exc)
            raise

    def _attempt_returned(self, i: int, value: Any) -> None:
        now = self._now()
        self.sched.attempt_succeeded(i, value, now)
        self._apply(now)

    def _attempt_raised(self, i: int, exc: BaseException, scope: trio.CancelScope | None) -> bool:
        """Report what an attempt raised as a fact; True if it must propagate (Cancelled)."""
        if scope is not None:
            self._scopes.pop(i, None)
        now = self._now()
        sched = self.sched
        cancelled = False
        if isinstance(exc, Exception):
            sched.attempt_failed(i, exc, now)
        elif _is_cancellation(exc):
            sched.attempt_cancelled(i, now)
            cancelled = True
        else:
            # KeyboardInterrupt, SystemExit, ...: kept for open_run to raise, so the
            # run can still cancel the rest and deliver every event.
            self._crashed(_unwrap(exc))
            sched.attempt_crashed(i, exc, now)
        self._apply(now)
        return cancelled

    def _committed(self, i: int, value: Any, message: str | None, now: float) -> None:
        # `RunCache.committed`: stage i's commit is durable; `_settle` follows each group.
        if message is not None:
            # Through the outbox: this group's earlier facts' events are not sent yet.
            self.sched.queue_log(self.plan.stages[i].name, message, now)
        self.sched.attempt_succeeded(i, value, now)

    def _settle(self, now: float) -> None:
        self._apply(now)

    async def _retry_after(self, i: int, scope: trio.CancelScope, delay: float) -> None:
        try:
            sched = self.sched
            try:
                with scope:
                    await trio.sleep(delay)
                    if self._chaos is not None:
                        await self._chaos("retry.wake")
            except BaseException:
                if self._scopes.get(i) is scope:
                    del self._scopes[i]
                now = self._now()
                sched.retry_wait_cancelled(i, now)
                self._apply(now)
                raise
            if self._scopes.get(i) is scope:
                del self._scopes[i]
            now = self._now()
            if scope.cancelled_caught:
                sched.retry_wait_cancelled(i, now)
            else:
                sched.retry_due(i, now)
            self._apply(now)

        except BaseException as exc:
            if not _is_cancellation(exc):
                self._engine_failed(exc)  # see _attempt
            raise


def _not_begun(*args: object) -> None:
    raise RuntimeError("the run has not begun: no stage nursery yet")


def _is_cancellation(exc: BaseException) -> bool:
    """True for `Cancelled`, or a group of nothing else (a stage's own nursery raises that)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = cast(BaseExceptionGroup[BaseException], exc).split(trio.Cancelled)[1]
        return rest is None
    return isinstance(exc, trio.Cancelled)


def _unwrap(exc: BaseException) -> BaseException:
    """The fatal exception itself: a group's Cancelled dropped, single-member groups opened."""
    while isinstance(exc, BaseExceptionGroup):
        group = cast(BaseExceptionGroup[BaseException], exc)
        rest: BaseExceptionGroup[BaseException] | None = group.split(trio.Cancelled)[1]
        if rest is None:
            return group
        if len(rest.exceptions) != 1:
            return rest
        exc = rest.exceptions[0]
    return exc


class RunHandle:
    """Control of a run in progress, yielded by `open_run`.

    The run's tasks belong to the `open_run` block; the handle only steers them.
    """

    __slots__ = ("_run",)

    def __init__(self, run: _Run) -> None:
        self._run = run

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def state(self) -> RunState:
        return self._run.machine.state

    def request_close(self) -> None:
        """Graceful stop: no new stage starts but teardown stages; running stages may finish.

        Unstarted stages end CANCELLED (reason ``"close requested"``), except teardown
        stages (``trigger=Trigger.ALWAYS``), which run once their upstream stages are
        done. Idempotent; harmless once the run has finished.
        """
        self._run.request_close()

    def cancel(self) -> None:
        """Cancel running stages; every unfinished stage ends CANCELLED, the run CANCELLED.

        Teardown stages still run, shielded, until ``teardown_timeout`` seconds from
        now. Events are still delivered (within ``drain_timeout``). Idempotent;
        harmless once all stages have finished (draining is not cut short).
        """
        self._run.abort()

    async def wait_finished(self) -> RunResult:
        """Wait until every event was delivered (or the drain deadline passed)."""
        await self._run.finished.wait()
        result = self._run.result
        assert result is not None
        return result

    @property
    def result(self) -> RunResult:
        """The `RunResult`. Raises RuntimeError before the run has finished."""
        if self._run.result is None:
            raise RuntimeError("the run has not finished yet; await wait_finished() first")
        return self._run.result

    def __repr__(self) -> str:
        return f"<RunHandle {self._run.plan.name!r} run={self.run_id} {self.state}>"


class _PoolUsers:
    """The stages of `plan` that use pools: all `check_pools` needs to look at."""

    __slots__ = ("stages",)

    def __init__(self, plan: Plan) -> None:
        # Most stages share DEFAULT_OPTIONS: skipping them is most of the saving
        # (check_pools over every stage cost about 1 us a stage).
        self.stages = [
            stage
            for stage in plan.stages
            if stage.options is not DEFAULT_OPTIONS and stage.options.uses
        ]


def _check_options(
    sinks: Sequence[Sink],
    keep_going: bool,
    max_parallel: int | None,
    drain_timeout: float,
    teardown_timeout: float,
    progress_interval: float = 0.1,
    max_backlog: int | None = None,
) -> tuple[Sink, ...]:
    # Run options raise what stage options raise (StageDefinitionError, ...TypeError).
    if isinstance(sinks, Sink) or not isinstance(sinks, Iterable):
        raise StageDefinitionTypeError(f"sinks must be a sequence of sinks, got {sinks!r}")
    sinks = tuple(sinks)
    if not isinstance(keep_going, bool):
        raise StageDefinitionTypeError(f"keep_going must be a bool, got {keep_going!r}")
    check_optional_int(max_parallel, "max_parallel", minimum=1)
    check_seconds(drain_timeout, "drain_timeout", infinite=True)
    check_seconds(teardown_timeout, "teardown_timeout", infinite=True)
    check_seconds(progress_interval, "progress_interval", zero=False, infinite=True)
    check_optional_int(max_backlog, "max_backlog", minimum=0)
    for sink in sinks:
        if not isinstance(sink, Sink):
            raise StageDefinitionTypeError(
                f"{sink!r} is not a Sink: it needs async handle(event) and aclose()"
            )
    if len({id(sink) for sink in sinks}) != len(sinks):
        raise StageDefinitionError(
            "the same sink was passed twice; each sink receives each event once"
        )
    return sinks


def _compile_selected(
    pipeline: Pipeline, targets: Iterable[str | Stage] | None, *, only: bool
) -> Plan:
    plan = pipeline.compile()  # the whole graph is validated, targets or not
    if targets is None:
        if only:
            raise StageDefinitionError("only=True needs targets: the stages to run")
        return plan
    return subpipeline(pipeline, select_stages(pipeline, targets, only=only)).compile()


@asynccontextmanager
async def open_run(
    pipeline: Pipeline,
    *,
    sinks: Sequence[Sink] = (),
    keep_going: bool = False,
    max_parallel: int | None = None,
    drain_timeout: float = 5.0,
    teardown_timeout: float = 30.0,
    pools: Mapping[str, int] | None = None,
    params: Mapping[str, Any] | None = None,
    targets: Iterable[str | Stage] | None = None,
    only: bool = False,
    progress_interval: float = 0.1,
    max_backlog: int | None = DEFAULT_MAX_BACKLOG,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    store: CacheStore | None = None,
    force: bool | Iterable[str] = False,
    explain: bool = False,
) -> AsyncGenerator[RunHandle]:
    """Start a run of `pipeline` in the background of the ``async with`` block.

    The block owns every task of the run. Leaving it waits for the run to finish;
    an exception or cancellation in the block cancels the run first (its events
    are still delivered, bounded by `drain_timeout`).

    Args:
        sinks: Receive every event, in order.
        keep_going: On a failure, block only its downstream; independent stages go on.
            Otherwise (fail-fast) the first failure cancels everything else but
            teardown stages, and only stages whose trigger still fires start.
        max_parallel: At most this many stage attempts run at once (None: no limit).
        drain_timeout: Seconds the sinks get, once all stages are done, to receive the
            remaining events; a sink not done by then is cut off, its undelivered
            count reported, and the run ends CANCELLED.
        teardown_timeout: Seconds teardown stages (``trigger=Trigger.ALWAYS``) get
            after the run is cancelled (from outside, by `RunHandle.cancel` or a fatal
            exception), counted from the cancellation; then they are cancelled too.
        pools: ``{pool name: slots}`` for the stages' ``uses=``, overriding the
            pipeline's pools of the same name.
        params: The run's parameters, read by every stage as `StageContext.params`
            (a read-only mapping with str keys) and carried by `RunStarted.params`.
        targets: Run only these stages (names or `Stage` objects) and, unless
            `only`, every stage they depend on and the teardown stages (trigger
            ``always``) whose upstream stages are all selected. Other stages are not
            part of the run: absent from `RunStarted.stages` and from the result.
            None: every stage.
        only: With `targets`, just the targets: dependencies on stages that are not
            targets are dropped (those stages' results are missing from ``inputs``).
        progress_interval: Seconds (trio clock) between two `StageProgress` events of
            one item stage (math.inf: none).
        max_backlog: While the slowest sink (of those not disabled) has more than this
            many events emitted and not yet handled, no new stage attempt starts
            (running ones go on, and emitting never blocks), until it is back under
            half of it; and no more start at once than keep it at most this (so a
            wide graph starts ``max_backlog`` stages, then more as the sinks keep
            up). None: unbounded.
        cache: False: read and write no cache entry (``--no-cache``); the run is still
            recorded in the history when a store is used.
        cache_dir: The cache and history folder (default ``$TRIO_PIPELINE_CACHE_DIR``
            or ``.trio-pipeline/`` in the working directory; used when a stage is
            cached or `cache_dir` is given).
        store: A `CacheStore` to use instead (the run does not close it).
        force: Re-run every cached stage (True), or the named stages and their
            downstream; their new results are stored.
        explain: Compare each miss with the stage's latest entry (what changed goes
            to `RunCache.reasons`; a hit's `StageFinished.reason` always says why).

    Raises:
        PipelineError: the pipeline or an option is invalid; raised before anything
            starts.
        CacheStoreError: the cache store is corrupt or not a trio_pipeline store.
        UnknownStageError: a target is not a stage (with a did-you-mean).
        StageDefinitionError: an invalid option (a `StageDefinitionTypeError`, also a
            TypeError, for a value of the wrong type).
        BaseException: a stage or a sink raised KeyboardInterrupt, SystemExit or
            another BaseException that is not a cancellation: the run was cancelled,
            every event delivered and every sink closed, then that exception itself
            is raised here.
    """
    plan = _compile_selected(pipeline, targets, only=only)
    run_params = check_params(params)
    sinks = _check_options(
        sinks,
        keep_going,
        max_parallel,
        drain_timeout,
        teardown_timeout,
        progress_interval=progress_interval,
        max_backlog=max_backlog,
    )
    merged = {**pipeline.pools, **(pools or {})} if pools is not None else pipeline.pools
    checked_pools = check_pools(_PoolUsers(plan), merged)
    check_group_pools(plan, checked_pools)
    run_id = uuid.uuid4().hex[:12]
    run_cache = await open_run_cache(
        plan,
        run_id=run_id,
        pipeline_cache=pipeline.cache,
        cache=cache,
        cache_dir=cache_dir,
        store=store,
        force=force,
        params=run_params,
        explain=explain,
    )
    run = _Run(
        plan,
        sinks=sinks,
        keep_going=keep_going,
        max_parallel=max_parallel,
        drain_timeout=drain_timeout,
        teardown_timeout=teardown_timeout,
        pools=checked_pools,
        params=run_params,
        progress_interval=progress_interval,
        max_backlog=max_backlog,
        cache=run_cache,
        run_id=run_id,
    )
    handle = RunHandle(run)
    try:
        async with trio.open_nursery() as nursery:
            run.body_scope = nursery.cancel_scope
            # Shielded: once entered, a run always reports in full. A cancellation
            # arriving now reaches the stages instead, which then end CANCELLED.
            with trio.CancelScope(shield=True):
                await nursery.start(run.dispatcher.run)
                await nursery.start(run.host_stages)
            try:
                yield handle
                await run.finished.wait()
            except BaseException:
                run.abort()
                raise
    finally:
        if run_cache is not None and run.broken is None:
            await run_cache.finish(run.result, pipeline=plan.name, params=run_params)
        fatal = run.fatal
        if fatal is not None:
            # As itself, as trio's own functions do with their internal nurseries
            # (an internal error keeps the engine's exception as its cause).
            raise fatal from fatal.__cause__


async def run(
    pipeline: Pipeline,
    *,
    sinks: Sequence[Sink] = (),
    keep_going: bool = False,
    max_parallel: int | None = None,
    drain_timeout: float = 5.0,
    teardown_timeout: float = 30.0,
    pools: Mapping[str, int] | None = None,
    params: Mapping[str, Any] | None = None,
    targets: Iterable[str | Stage] | None = None,
    only: bool = False,
    progress_interval: float = 0.1,
    max_backlog: int | None = DEFAULT_MAX_BACKLOG,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    store: CacheStore | None = None,
    force: bool | Iterable[str] = False,
    explain: bool = False,
) -> RunResult:
    """Run `pipeline` to the end and return its `RunResult`.

    Stage failures are reported in the result, not raised (see
    `RunResult.raise_for_failures`). Options are those of `open_run`. If the caller
    is cancelled, running stages are cancelled, the sinks still receive every event
    (within `drain_timeout`), and then `Cancelled` propagates. A stage's or sink's
    KeyboardInterrupt (SystemExit, ...) propagates the same way, as itself.
    """
    async with open_run(
        pipeline,
        sinks=sinks,
        keep_going=keep_going,
        max_parallel=max_parallel,
        drain_timeout=drain_timeout,
        teardown_timeout=teardown_timeout,
        pools=pools,
        params=params,
        targets=targets,
        only=only,
        progress_interval=progress_interval,
        max_backlog=max_backlog,
        cache=cache,
        cache_dir=cache_dir,
        store=store,
        force=force,
        explain=explain,
    ) as handle:
        pass
    return handle.result
