"""The engine: runs a pipeline's stages in a nursery of their own and drives the state machines.

Ownership: `open_run` owns one nursery. In it run the dispatcher (started first,
in a shielded scope, see `_dispatch`) and the stage host, which owns the stages'
nursery: one task per running stage attempt and one per stage waiting out a retry
delay. No task outlives the `async with` block.

Stopping running stages cancels the stages' nursery as a whole (one cancel scope
for all of them); a stage gets a cancel scope of its own only for its timeout,
because entering a scope costs about as much as the rest of a no-op stage.

Scheduling happens synchronously inside whichever task changed something: a
finishing stage marks its downstream ready and starts what the concurrency limit
allows, so there is no coordinator task and no context switch per stage. Events
are emitted with `send_nowait` into an unbounded channel, so emitting never blocks
a stage; the dispatcher drains it.

Shutdown: when the last stage reaches a terminal status the engine emits
`RunFinished`, closes the send side and gives the dispatcher `drain_timeout`
seconds. The run is over when the dispatcher reports back, drained or not.
"""

from __future__ import annotations

import heapq
import logging
import math
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any, cast

import trio

from . import _chaos
from ._context import StageContext
from ._delivery import SinkState
from ._dispatch import DEFAULT_MAX_BACKLOG, Dispatcher
from ._errors import StageDefinitionError, StageDefinitionTypeError, StageTimeout
from ._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageRetrying,
    StageStarted,
    describe_error,
)
from ._graph import Pipeline, Plan, Stage
from ._options import check_optional_int, check_seconds
from ._result import RunResult, StageOutcome, count_statuses
from ._sinks import Sink
from ._state import Machine, RunState, StageStatus, run_machine, stage_machine

logger = logging.getLogger("trio_pipeline")

_PENDING = StageStatus.PENDING
_NO_INPUTS: Mapping[str, Any] = MappingProxyType({})
_RUNNING = StageStatus.RUNNING


class _StageRecord:
    """The engine's mutable view of one stage during one run."""

    __slots__ = (
        "attempt",
        "blocked_by",
        "cancel_requested",
        "error",
        "finished_at",
        "index",
        "inputs",
        "machine",
        "scope",
        "stage",
        "started_at",
        "value",
        "waiting",
    )

    def __init__(self, index: int, stage: Stage, waiting: int) -> None:
        self.index = index
        self.stage = stage
        self.machine: Machine[StageStatus] = stage_machine(stage.name)
        self.waiting = waiting  # upstream stages not yet SUCCEEDED
        self.attempt = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.scope: trio.CancelScope | None = None  # the attempt's timeout or the retry wait
        self.cancel_requested = False
        self.inputs = _NO_INPUTS  # shared until the first attempt; dropped at the end
        self.value: Any = None
        self.error: BaseException | None = None
        self.blocked_by: str | None = None

    def outcome(self) -> StageOutcome:
        started, finished = self.started_at, self.finished_at
        return StageOutcome(
            status=self.machine.state,
            value=self.value,
            error=self.error if self.machine.state is StageStatus.FAILED else None,
            attempts=self.attempt,
            duration=0.0 if started is None or finished is None else finished - started,
            blocked_by=self.blocked_by,
        )


class _Run:
    """One execution of a `Plan`. All methods but the two task bodies are synchronous."""

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
        max_backlog: int | None = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self.plan = plan
        self.run_id = uuid.uuid4().hex[:12]
        self.machine: Machine[RunState] = run_machine(self.run_id)
        self.keep_going = keep_going
        self.drain_timeout = drain_timeout
        self.records = [
            _StageRecord(i, stage, len(plan.upstream[i])) for i, stage in enumerate(plan.stages)
        ]
        self._by_name = {rec.stage.name: rec for rec in self.records}
        self._unfinished = len(self.records)
        self._ready: list[int] = []  # heap of stage indices: definition order wins
        # Slots are taken and given back synchronously (never waited for), but through
        # a CapacityLimiter with the stage's record as borrower: it refuses a second
        # slot for one stage or a release without a slot, which a counter would not.
        self._limiter = trio.CapacityLimiter(math.inf if max_parallel is None else max_parallel)
        send, receive = trio.open_memory_channel[Event](math.inf)
        self._paused = False  # the slowest sink is more than max_backlog events behind
        self._seq = 0
        self._events_closed = False
        self._nursery: trio.Nursery | None = None  # the stages' nursery
        self._stages_done = trio.Event()
        # The run's clock, read directly on the per-stage path: trio.current_time()
        # goes through two more calls to reach the same method. Set in `begin`.
        self._now: Callable[[], float] = trio.current_time
        self.started_at = 0.0
        self.dispatcher = self.dispatcher_type(
            receive,
            sinks,
            self._on_dispatcher_done,
            max_backlog=max_backlog,
            on_backlog=self._on_backlog,
            on_critical=lambda feed: self.abort(),
        )
        self._send = self.dispatcher.emitter(send)
        self._chaos = _chaos.current()  # read once: the hook is scoped to the run
        self.finished = trio.Event()
        self.result: RunResult | None = None

    # -- events ---------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = seq + 1
        return seq

    def _log(self, stage: str, message: str) -> None:
        if self._by_name[stage].machine.state.is_terminal:
            raise RuntimeError(f"stage {stage!r} has finished; its context no longer logs")
        self._send.send_nowait(
            StageLog(self.run_id, self._next_seq(), trio.current_time(), stage, message)
        )

    # -- lifecycle ------------------------------------------------------------------

    async def host_stages(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Own the stages' nursery: begin the run in it, then keep it open until all are done."""
        async with trio.open_nursery() as nursery:
            self.begin(nursery)
            task_status.started()
            await self._stages_done.wait()

    def begin(self, nursery: trio.Nursery) -> None:
        """Emit `RunStarted` and start the stages that have no dependencies."""
        self.machine.advance(RunState.RUNNING)
        self._nursery = nursery
        self._now = trio.lowlevel.current_clock().current_time
        self.started_at = now = self._now()
        names = tuple(rec.stage.name for rec in self.records)
        self._send.send_nowait(
            RunStarted(self.run_id, self._next_seq(), now, self.plan.name, names)
        )
        # Ascending indices already form a valid heap.
        self._ready = [rec.index for rec in self.records if rec.waiting == 0]
        self._pump()
        self._check_done()

    def request_close(self) -> None:
        """Start no new stage; running ones finish. Idempotent; a no-op unless RUNNING."""
        if self.machine.state is RunState.RUNNING:
            self._stop(RunState.CLOSING, cancel_running=False)
            self._check_done()

    def abort(self) -> None:
        """Cancel running stages; the run ends CANCELLED. A no-op once draining or done."""
        if self.machine.state in (RunState.RUNNING, RunState.CLOSING):
            self._stop(RunState.CANCELLED, cancel_running=True)
            self._check_done()

    def _stop(self, target: RunState, *, cancel_running: bool) -> None:
        self.machine.advance(target)
        self._ready.clear()
        for rec in self.records:
            state = rec.machine.state
            if state is _RUNNING:
                if cancel_running:
                    rec.cancel_requested = True
            elif state is _PENDING:
                self._terminate(rec, StageStatus.CANCELLED)
                if rec.scope is not None:  # waiting out a retry delay
                    rec.scope.cancel()
        if cancel_running:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    def _check_done(self) -> None:
        if self._unfinished or self._events_closed:
            return
        self._events_closed = True
        if self.machine.state is RunState.RUNNING:
            self.machine.advance(RunState.CLOSING)
        final = RunState.CANCELLED if self.machine.state is RunState.CANCELLED else RunState.CLOSED
        now = trio.current_time()
        counts = count_statuses(rec.machine.state for rec in self.records)
        self._send.send_nowait(
            RunFinished(self.run_id, self._next_seq(), now, final, counts, now - self.started_at)
        )
        self._send.close()
        self._stages_done.set()
        if self.machine.state is RunState.CLOSING:
            self.machine.advance(RunState.DRAINING)
        self.dispatcher.set_deadline(now + self.drain_timeout)

    def _on_backlog(self, over: bool) -> None:
        self._paused = over
        if not over:
            self._pump()

    def _on_dispatcher_done(self, dispatcher: Dispatcher) -> None:
        total = self._seq
        state = self.machine.state
        if state is RunState.DRAINING:
            clean = dispatcher.clean(total)
            self.machine.advance(RunState.CLOSED if clean else RunState.CANCELLED)
        elif state in (RunState.RUNNING, RunState.CLOSING):
            # The dispatcher died before the run finished (a BaseException from a sink).
            self.machine.advance(RunState.CANCELLED)
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
                    "run %s: sink %r did not close within the drain deadline",
                    self.run_id,
                    sink,
                )
        self.result = RunResult(
            state=self.machine.state,
            stages=MappingProxyType({rec.stage.name: rec.outcome() for rec in self.records}),
            counts=MappingProxyType(count_statuses(rec.machine.state for rec in self.records)),
            run_id=self.run_id,
            duration=trio.current_time() - self.started_at,
            sink_errors=MappingProxyType(
                {sink: d.error for sink, d in deliveries.items() if d.error is not None}
            ),
            undelivered=MappingProxyType(undelivered),
            deliveries=MappingProxyType(deliveries),
        )
        self.finished.set()

    # -- stages ---------------------------------------------------------------------

    def _pump(self) -> None:
        """Start ready stages while slots are free, lowest definition index first."""
        if self.machine.state is not RunState.RUNNING:
            return
        ready, records, limiter = self._ready, self.records, self._limiter
        # `_paused` may turn true inside the loop: the StageStarted just emitted can
        # push the backlog over max_backlog.
        while ready and limiter.available_tokens >= 1 and not self._paused:
            rec = records[heapq.heappop(ready)]
            limiter.acquire_on_behalf_of_nowait(rec)
            self._start_attempt(rec)

    def _start_attempt(self, rec: _StageRecord) -> None:
        assert self._nursery is not None
        rec.machine.advance(_RUNNING)
        rec.attempt += 1
        now = self._now()
        if rec.attempt == 1:
            rec.started_at = now
            upstream = self.plan.upstream[rec.index]
            if upstream:
                records = self.records
                rec.inputs = MappingProxyType(
                    {records[j].stage.name: records[j].value for j in upstream}
                )
        timeout = rec.stage.timeout
        # Created here, not in the task, so the deadline counts from the start event.
        rec.scope = None if timeout is None else trio.CancelScope(deadline=now + timeout)
        self._send.send_nowait(
            StageStarted(self.run_id, self._next_seq(), now, rec.stage.name, rec.attempt)
        )
        self._nursery.start_soon(self._attempt, rec, rec.scope)

    async def _attempt(self, rec: _StageRecord, scope: trio.CancelScope | None) -> None:
        ctx = StageContext(
            name=rec.stage.name,
            inputs=rec.inputs,
            attempt=rec.attempt,
            run_id=self.run_id,
            emit_log=self._log,
        )
        value: Any = None
        try:
            if self._chaos is not None:
                await self._chaos("stage.start")
            if scope is None:
                value = await rec.stage.fn(ctx)
            else:
                with scope:
                    value = await rec.stage.fn(ctx)
            if self._chaos is not None:
                # Shielded: once the function has returned, the attempt has succeeded.
                with trio.CancelScope(shield=True):
                    await self._chaos("stage.end")
        except Exception as exc:
            self._release(rec)
            self._attempt_failed(rec, exc)
        except BaseException as exc:
            self._release(rec)
            self._terminate(rec, StageStatus.CANCELLED)
            if rec.cancel_requested and _is_cancellation(exc):
                # The engine cancelled the stages' nursery (fail-fast or RunHandle.cancel).
                self._pump()
            else:
                # Cancelled from outside the run (or interrupted): cancel the rest too.
                self.abort()
            self._check_done()
            raise
        else:
            self._release(rec)
            if scope is None or not scope.cancelled_caught:
                self._succeeded(rec, value)
            elif rec.cancel_requested:
                self._terminate(rec, StageStatus.CANCELLED)
                self._pump()
                self._check_done()
            else:
                timeout = rec.stage.timeout
                assert timeout is not None
                self._attempt_failed(rec, StageTimeout(rec.stage.name, timeout, rec.attempt))

    def _release(self, rec: _StageRecord) -> None:
        rec.scope = None
        self._limiter.release_on_behalf_of(rec)

    def _attempt_failed(self, rec: _StageRecord, exc: Exception) -> None:
        stage = rec.stage
        rec.error = exc
        policy = stage.options.retry
        if (
            rec.cancel_requested
            or self.machine.state is not RunState.RUNNING
            or not policy.should_retry(exc, rec.attempt)
        ):
            self._failed(rec, exc)
            return
        delay = policy.delay_before(rec.attempt)
        rec.machine.advance(_PENDING)
        self._send.send_nowait(
            StageRetrying(
                self.run_id,
                self._next_seq(),
                trio.current_time(),
                stage.name,
                rec.attempt,
                describe_error(exc),
                delay,
            )
        )
        if delay > 0:
            assert self._nursery is not None
            rec.scope = trio.CancelScope()
            self._nursery.start_soon(self._retry_after, rec, rec.scope, delay)
        else:
            heapq.heappush(self._ready, rec.index)
        self._pump()

    async def _retry_after(self, rec: _StageRecord, scope: trio.CancelScope, delay: float) -> None:
        try:
            with scope:
                await trio.sleep(delay)
            if self._chaos is not None:
                await self._chaos("retry.wake")
        except BaseException:
            # Not when the engine already cancelled this stage (fail-fast, RunHandle.cancel).
            if rec.machine.state is _PENDING:
                self.abort()
            raise
        # Closing may have raced the wake-up; then the stage is already CANCELLED.
        if rec.machine.state is _PENDING and self.machine.state is RunState.RUNNING:
            rec.scope = None
            heapq.heappush(self._ready, rec.index)
            self._pump()

    def _succeeded(self, rec: _StageRecord, value: Any) -> None:
        rec.value = value
        self._terminate(rec, StageStatus.SUCCEEDED)
        records, ready = self.records, self._ready
        for j in self.plan.downstream[rec.index]:
            down = records[j]
            down.waiting -= 1
            if down.waiting == 0 and down.machine.state is _PENDING:
                heapq.heappush(ready, j)
        self._pump()
        self._check_done()

    def _failed(self, rec: _StageRecord, exc: Exception) -> None:
        self._terminate(rec, StageStatus.FAILED, error=exc)
        self._block_downstream(rec)
        if not self.keep_going and self.machine.state is RunState.RUNNING:
            self._stop(RunState.CLOSING, cancel_running=True)
        self._pump()
        self._check_done()

    def _block_downstream(self, failed: _StageRecord) -> None:
        records, downstream = self.records, self.plan.downstream
        stack = list(downstream[failed.index])
        while stack:
            down = records[stack.pop()]
            # Only never-started stages can sit downstream of a failure; terminal
            # ones were blocked or cancelled together with their own downstream.
            if down.machine.state is _PENDING:
                down.blocked_by = failed.stage.name
                self._terminate(down, StageStatus.BLOCKED)
                stack.extend(downstream[down.index])

    def _terminate(
        self, rec: _StageRecord, status: StageStatus, *, error: BaseException | None = None
    ) -> None:
        """The one way into a terminal status: exactly one StageFinished per stage."""
        rec.machine.advance(status)
        # Keeps the heap small: finished stages' inputs are garbage the collector would walk.
        rec.inputs = _NO_INPUTS
        self._unfinished -= 1
        now = rec.finished_at = self._now()
        started = rec.started_at
        self._send.send_nowait(
            StageFinished(
                self.run_id,
                self._next_seq(),
                now,
                rec.stage.name,
                status,
                rec.attempt,
                0.0 if started is None else now - started,
                None if error is None else describe_error(error),
                rec.blocked_by,
            )
        )


def _is_cancellation(exc: BaseException) -> bool:
    """True for `Cancelled`, or a group of nothing else (a stage's own nursery raises that)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = cast(BaseExceptionGroup[BaseException], exc).split(trio.Cancelled)[1]
        return rest is None
    return isinstance(exc, trio.Cancelled)


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
        """Graceful stop: no new stage starts; running stages may finish.

        Unstarted stages end CANCELLED. Idempotent; harmless once the run has finished.
        """
        self._run.request_close()

    def cancel(self) -> None:
        """Cancel running stages; every unfinished stage ends CANCELLED, the run CANCELLED.

        Events are still delivered (within ``drain_timeout``). Idempotent; harmless
        once all stages have finished (draining is not cut short).
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


def _check_options(
    sinks: Sequence[Sink],
    max_parallel: int | None,
    drain_timeout: float,
    max_backlog: int | None = None,
) -> None:
    # Run options raise what stage options raise (StageDefinitionError, ...TypeError).
    check_optional_int(max_parallel, "max_parallel", minimum=1)
    check_seconds(drain_timeout, "drain_timeout", infinite=True)
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


@asynccontextmanager
async def open_run(
    pipeline: Pipeline,
    *,
    sinks: Sequence[Sink] = (),
    keep_going: bool = False,
    max_parallel: int | None = None,
    drain_timeout: float = 5.0,
    max_backlog: int | None = DEFAULT_MAX_BACKLOG,
) -> AsyncGenerator[RunHandle]:
    """Start a run of `pipeline` in the background of the ``async with`` block.

    The block owns every task of the run. Leaving it waits for the run to finish;
    an exception or cancellation in the block cancels the run first (its events
    are still delivered, bounded by `drain_timeout`).

    Args:
        sinks: Receive every event, in order.
        keep_going: On a failure, block only its downstream; independent stages go on.
            Otherwise (fail-fast) the first failure cancels everything else.
        max_parallel: At most this many stage attempts run at once (None: no limit).
        drain_timeout: Seconds the sinks get, once all stages are done, to receive the
            remaining events; a sink not done by then is cut off, its undelivered
            count reported, and the run ends CANCELLED.
        max_backlog: While the slowest sink (of those not disabled) has more than this
            many events emitted and not yet handled, no new stage attempt starts
            (running ones go on, and emitting never blocks). None: unbounded.

    Raises:
        PipelineError: the pipeline is invalid; raised before anything starts.
    """
    plan = pipeline.compile()
    sinks = tuple(sinks)
    _check_options(sinks, max_parallel, drain_timeout, max_backlog)
    run = _Run(
        plan,
        sinks=sinks,
        keep_going=keep_going,
        max_parallel=max_parallel,
        drain_timeout=drain_timeout,
        max_backlog=max_backlog,
    )
    handle = RunHandle(run)
    async with trio.open_nursery() as nursery:
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


async def run(
    pipeline: Pipeline,
    *,
    sinks: Sequence[Sink] = (),
    keep_going: bool = False,
    max_parallel: int | None = None,
    drain_timeout: float = 5.0,
    max_backlog: int | None = DEFAULT_MAX_BACKLOG,
) -> RunResult:
    """Run `pipeline` to the end and return its `RunResult`.

    Stage failures are reported in the result, not raised (see
    `RunResult.raise_for_failures`). Options are those of `open_run`. If the caller
    is cancelled, running stages are cancelled, the sinks still receive every event
    (within `drain_timeout`), and then `Cancelled` propagates.
    """
    async with open_run(
        pipeline,
        sinks=sinks,
        keep_going=keep_going,
        max_parallel=max_parallel,
        drain_timeout=drain_timeout,
        max_backlog=max_backlog,
    ) as handle:
        pass
    return handle.result
