"""Running one stream group: stream edges, worker pools, ordered emission, item accounting.

The rules (what a group is, when it may start) live in the pure `_items`; this module
only moves items. The engine starts a `GroupRun` as one task when the group's unit is
ready and reports each member's start and end through its `StreamHost`.

Ownership: `GroupRun.run` owns a nursery holding one task per member, the members'
worker tasks, a dynamic map's feeder and the progress ticker. It returns once every
member has finished (each one reported through `StreamHost.member_finished`). A
member's failure cancels only that member's own scope; cancelling the group (the
engine's fail-fast stop, `RunHandle.cancel`, an outer cancellation) reaches every
member, which reports CANCELLED with its counts and lets `Cancelled` propagate.

Stream edges are trio memory channels of the reader's ``buffer`` carrying
``(index, item)`` pairs. A producer emits through one send at a time (its workers
take turns), so at most one item waits at a blocked send: items produced minus items
a reader has finished is at most ``buffer + workers + 1``. A producer sends each item
to every reader in turn, so the slowest sets the pace. A reader that fails closes
its input; its producer drops it and goes on for the others.
"""

from __future__ import annotations

import math
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Protocol, cast

import trio

from . import _chaos
from ._context import StageContext
from ._errors import StageTimeout
from ._events import ItemFailed, StageProgress, describe_error
from ._graph import Stage
from ._items import ItemError, ItemOptions, StreamPlan
from ._options import Trigger
from ._state import StageStatus

_Pair = tuple[int, Any]


class ItemCounts(Protocol):
    """A member's final counts, as `StreamHost.member_finished` receives them."""

    items_in: int
    items_out: int
    items_failed: int
    items_cancelled: int
    items_ok: int


class StreamHost(Protocol):
    """What a running group needs from the engine."""

    run_id: str

    def now(self) -> float: ...

    def next_seq(self) -> int: ...

    def send_event(self, event: ItemFailed | StageProgress) -> None: ...

    def log(self, stage: str, message: str) -> None: ...

    def inputs_of(self, index: int) -> Mapping[str, Any]:
        """The values of the stage's ordinary (non-stream) upstream stages."""
        ...

    async def take_item_slots(self, index: int) -> None:
        """Wait until an item call of stage `index` holds all its pool slots (``uses=``)."""
        ...

    def give_item_slots(self, index: int) -> None:
        """The item call is over: give its pool slots back."""
        ...

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
        """The member reached `status` (emit its `StageFinished`, schedule its downstream)."""
        ...


class _ItemCall:
    """``fn(snapshot, item)`` as the one-argument function an executor runs (picklable)."""

    __slots__ = ("fn", "item")

    def __init__(self, fn: Callable[[Any, Any], Any], item: Any) -> None:
        self.fn = fn
        self.item = item

    def __call__(self, snapshot: Any) -> Any:
        return self.fn(snapshot, self.item)

    def __reduce__(self) -> tuple[type[_ItemCall], tuple[Any, Any]]:
        return (_ItemCall, (self.fn, self.item))


_SKIPPED = object()  # an item left out (on_item_error="skip")
_FAILED = object()  # an item that failed its stage (on_item_error="fail")


class _Member:
    """One stage of a running group, with its counts."""

    __slots__ = (
        "blocked_by",
        "closed_early",
        "collect",
        "contexts",
        "done",
        "dynamic",
        "emit_lock",
        "failure",
        "in_hand",
        "index",
        "input",
        "items_cancelled",
        "items_failed",
        "items_in",
        "items_ok",
        "items_out",
        "name",
        "next_turn",
        "options",
        "orphaned",
        "outputs",
        "readers",
        "reported",
        "scope",
        "short",
        "stage",
        "turn_waiters",
        "value",
    )

    def __init__(self, index: int, stage: Stage, options: ItemOptions) -> None:
        self.index = index
        self.stage = stage
        self.name = stage.name
        self.options = options
        self.input: trio.MemoryReceiveChannel[_Pair] | None = None
        self.dynamic: str | None = None  # the ordinary stage whose value a dynamic map reads
        self.outputs: list[trio.MemorySendChannel[_Pair]] = []
        self.readers: list[_Member] = []
        self.collect: list[Any] | None = None
        self.items_in = 0
        self.items_out = 0
        self.items_ok = 0
        self.items_failed = 0
        self.items_cancelled = 0
        self.reported: tuple[int, int, int] = (0, 0, 0)
        # Items taken from the input and neither finished nor failed yet: the workers'
        # (a consumes= function's) hands. Whatever is in hand when the stage stops is cancelled.
        self.in_hand = 0
        self.failure: BaseException | None = None
        self.blocked_by: str | None = None
        # A trigger='all_done' reader's producer that FAILED or was BLOCKED, with how.
        self.short: tuple[_Member, StageStatus] | None = None
        self.closed_early = False
        self.orphaned = False
        self.done = False
        self.value: Any = None
        self.scope = trio.CancelScope()
        self.contexts: list[StageContext] = []
        self.next_turn = 0
        self.turn_waiters: dict[int, trio.Event] = {}
        self.emit_lock: trio.Lock | None = None


class GroupRun:
    """One run of one stream group. Build it, then run `run` as one task."""

    def __init__(
        self,
        host: StreamHost,
        stages: Sequence[Stage],
        plan: StreamPlan,
        members: Sequence[int],
        *,
        progress_interval: float = 0.1,
        chaos: _chaos.Hook | None = None,
    ) -> None:
        self.host = host
        self.progress_interval = progress_interval
        self.closing = False
        self.members: list[_Member] = []
        by_index: dict[int, _Member] = {}
        for i in members:
            options = stages[i].items
            assert options is not None
            member = _Member(i, stages[i], options)
            if i in plan.collects:
                member.collect = []
            self.members.append(member)
            by_index[i] = member
        for member in self.members:
            producer_index = plan.stream_input.get(member.index)
            if producer_index is None:
                member.dynamic = member.options.reads  # None for a source
            else:
                send, receive = trio.open_memory_channel[_Pair](member.options.buffer)
                producer = by_index.get(producer_index)
                if producer is None:
                    # It ended without running (BLOCKED, SKIPPED, CANCELLED) and this
                    # reader's trigger rule still said run: an empty stream.
                    send.close()
                else:
                    producer.outputs.append(send)
                    producer.readers.append(member)
                member.input = receive
            options = member.options
            if options.kind == "each" and options.workers > 1 and not options.ordered:
                # Workers take turns at the one send, so one item at most waits there.
                member.emit_lock = trio.Lock()
        self._unfinished = len(self.members)
        self._ticker_scope = trio.CancelScope()
        # Set while the ticker waits for items to move; whoever moves one sets it.
        # Set while the ticker waits for items to move; whoever moves one sets it.
        self.ticker_wake: trio.Event | None = None
        self._chaos = chaos  # the run's hook (tests only), awaited before each item call

    # -- control ----------------------------------------------------------------------

    def request_close(self) -> None:
        """Sources (and dynamic maps' feeders) stop at their next item; the rest drains."""
        self.closing = True

    # -- the group task ---------------------------------------------------------------

    async def run(self) -> None:
        """Run every member to its end (the scheduler has reported them started).

        Cancelling the caller cancels them all."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            for member in self.members:
                nursery.start_soon(self._run_member, member)

    async def _run_member(self, m: _Member) -> None:
        kind = m.options.kind
        timeout = m.stage.timeout if kind != "each" else None
        try:
            with m.scope:
                if timeout is None:
                    await self._body(m, kind)
                else:
                    with trio.move_on_after(timeout) as deadline:
                        await self._body(m, kind)
                    if deadline.cancelled_caught and m.failure is None:
                        m.failure = StageTimeout(m.name, timeout, 1)
        except Exception as exc:
            # The source or consumes= function raised (each= items are handled per item).
            if m.failure is None:
                m.failure = _unwrap(exc)
        except BaseException:
            m.items_cancelled += m.in_hand
            m.in_hand = 0
            self._finish(m, StageStatus.CANCELLED, reason="run cancelled")
            raise
        if m.failure is not None and kind == "consumes":
            m.items_failed += m.in_hand  # the item it held when it raised or timed out
        else:
            m.items_cancelled += m.in_hand  # other workers' items when one failed the stage
        m.in_hand = 0
        if m.failure is not None:
            self._finish(m, StageStatus.FAILED)
        elif m.blocked_by is not None:
            self._finish(m, StageStatus.BLOCKED, reason=f"upstream {m.blocked_by!r} failed")
        elif m.orphaned:
            self._finish(m, StageStatus.CANCELLED, reason="every reader stopped")
        elif m.closed_early:
            self._finish(m, StageStatus.CANCELLED, reason="close requested")
        else:
            self._finish(m, StageStatus.SUCCEEDED)

    def _finish(self, m: _Member, status: StageStatus, *, reason: str | None = None) -> None:
        m.done = True
        for send in m.outputs:
            send.close()
        if m.input is not None:
            m.input.close()  # a reader that stops early lets its producer go on without it
        blocked = status in (StageStatus.FAILED, StageStatus.BLOCKED)
        if blocked:
            root = m.blocked_by if status is StageStatus.BLOCKED else m.name
            for reader in m.readers:
                if reader.stage.options.trigger is Trigger.ALL_DONE:
                    # It reads what arrived and ends normally; its reason tells the shortfall.
                    reader.short = (m, status)
                elif reader.blocked_by is None:
                    reader.blocked_by = root
        value: Any = None
        if status is StageStatus.SUCCEEDED:
            value = m.collect if m.collect is not None else m.value
            if m.short is not None:
                producer, its_status = m.short
                reason = (
                    f"upstream {producer.name!r} {its_status}: received {m.items_in} of its"
                    f" {producer.items_out} items"
                )
        self._unfinished -= 1
        if not self._unfinished:
            self._ticker_scope.cancel()
        self.host.member_finished(
            m.index,
            status,
            value=value,
            error=m.failure if status is StageStatus.FAILED else None,
            blocked_by=m.blocked_by if status is StageStatus.BLOCKED else None,
            reason=reason,
            counts=_Counts(m),
        )

    async def _body(self, m: _Member, kind: str) -> None:
        if kind == "source":
            await self._source(m)
            return
        async with trio.open_nursery() as nursery:
            if m.dynamic is not None:
                send, receive = trio.open_memory_channel[_Pair](m.options.buffer)
                m.input = receive
                # Absent when its trigger rule let it run without the stage succeeding:
                # then it maps over nothing.
                values: Any = self.host.inputs_of(m.index).get(m.dynamic, ())
                try:
                    iterator: Iterator[Any] = iter(values)
                except TypeError:
                    raise TypeError(
                        f"stage {m.name!r} maps over the value of {m.dynamic!r}, which is not"
                        f" iterable: {type(values).__name__}"
                    ) from None
                nursery.start_soon(self._feed, m, send, iterator)
            if kind == "each":
                for _ in range(m.options.workers):
                    nursery.start_soon(self._worker, m)
            else:
                nursery.start_soon(self._consume, m)

    # -- producing --------------------------------------------------------------------

    async def _emit(self, m: _Member, item: Any) -> None:
        index = m.items_out
        m.items_out = index + 1
        wake = self.ticker_wake
        if wake is not None:
            self.ticker_wake = None
            wake.set()
        if m.collect is not None:
            m.collect.append(item)
        outputs = m.outputs
        if not outputs:
            return
        pair = (index, item)
        if len(outputs) == 1:
            try:
                await outputs[0].send(pair)
            except trio.BrokenResourceError:
                outputs.clear()  # the only reader stopped (it failed)
                self._orphaned(m)
            return
        for send in tuple(outputs):
            try:
                await send.send(pair)
            except trio.BrokenResourceError:
                outputs.remove(send)
        if not outputs:
            self._orphaned(m)

    def _orphaned(self, m: _Member) -> None:
        """Every reader stopped: without a collector, producing more is pointless."""
        if m.collect is None:
            m.orphaned = True
            m.scope.cancel()

    async def _source(self, m: _Member) -> None:
        agen = m.stage.fn(self._context(m, 1))
        try:
            while not (self.closing or m.orphaned):
                try:
                    item = await agen.__anext__()  # type: ignore[attr-defined]
                except StopAsyncIteration:
                    return
                if self.closing:
                    break  # yielded as the close came: not counted, not delivered
                await self._emit(m, item)
            m.closed_early = not m.orphaned
        finally:
            with trio.CancelScope(shield=True):
                await agen.aclose()  # type: ignore[attr-defined]

    async def _feed(
        self, m: _Member, send: trio.MemorySendChannel[_Pair], values: Iterable[Any]
    ) -> None:
        with send:
            for index, item in enumerate(values):
                if self.closing:
                    m.closed_early = True
                    return
                await send.send((index, item))

    # -- each= ------------------------------------------------------------------------

    def _context(self, m: _Member, attempt: int) -> StageContext:
        contexts = m.contexts
        while len(contexts) < attempt:
            contexts.append(
                StageContext(
                    name=m.name,
                    inputs=self.host.inputs_of(m.index),
                    attempt=len(contexts) + 1,
                    run_id=self.host.run_id,
                    emit_log=self.host.log,
                )
            )
        return contexts[attempt - 1]

    async def _worker(self, m: _Member) -> None:
        receive = m.input
        assert receive is not None
        options = m.options
        fn = _per_item(m.stage)
        fast = (
            not options.emits
            and not options.ordered
            and m.emit_lock is None
            and m.stage.timeout is None
            and m.stage.executor is None
            and not m.stage.options.uses
            and self._chaos is None
        )
        ctx = self._context(m, 1)
        while True:
            try:
                index, item = await receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            m.items_in += 1
            m.in_hand += 1
            if not fast:
                if not await self._process(m, index, item):
                    return
                continue
            # The common case inlined: one await per item beyond the channel's.
            try:
                result = await fn(ctx, item)
            except Exception as exc:
                result = await self._item_error(m, index, item, exc)
                if result is _FAILED:
                    return
                if result is _SKIPPED:
                    continue
            else:
                m.in_hand -= 1
                m.items_ok += 1
            await self._emit(m, result)

    async def _call(self, m: _Member, attempt: int, item: Any) -> Any:
        ctx = self._context(m, attempt)
        if self._chaos is not None:
            await self._chaos("item.call")
        stage = m.stage
        if stage.options.uses:
            await self.host.take_item_slots(m.index)
            try:
                return await self._run_call(m, attempt, item, ctx)
            finally:
                self.host.give_item_slots(m.index)
        return await self._run_call(m, attempt, item, ctx)

    async def _run_call(self, m: _Member, attempt: int, item: Any, ctx: StageContext) -> Any:
        stage = m.stage
        if stage.executor is not None:
            fn = cast(Callable[[Any, Any], Any], stage.fn)
            call: Awaitable[Any] = stage.executor.run(_ItemCall(fn, item), ctx)
        else:
            call = _per_item(stage)(ctx, item)
        timeout = stage.timeout
        result: Any
        if timeout is None:
            result = await call
            return result
        with trio.move_on_after(timeout):
            result = await call
            return result
        raise StageTimeout(m.name, timeout, attempt)

    async def _process(self, m: _Member, index: int, item: Any) -> bool:
        """One item through the general path; False when it failed the stage."""
        if m.options.emits:
            return await self._flat_map(m, index, item)
        try:
            result = await self._call(m, 1, item)
        except Exception as exc:
            result = await self._item_error(m, index, item, exc)
        else:
            m.in_hand -= 1
            m.items_ok += 1
        if result is _FAILED:
            return False
        results = () if result is _SKIPPED else (result,)
        if m.options.ordered:
            await self._wait_turn(m, index)
            for out in results:
                await self._emit(m, out)
            self._pass_turn(m, index)
        elif m.emit_lock is not None:
            if results:
                async with m.emit_lock:
                    await self._emit(m, results[0])
        elif results:
            await self._emit(m, results[0])
        return True

    async def _wait_turn(self, m: _Member, index: int) -> None:
        if m.next_turn != index:
            event = m.turn_waiters[index] = trio.Event()
            await event.wait()

    def _pass_turn(self, m: _Member, index: int) -> None:
        m.next_turn = index + 1
        event = m.turn_waiters.pop(index + 1, None)
        if event is not None:
            event.set()

    async def _step(self, m: _Member, agen: Any, attempt: int) -> Any:
        if self._chaos is not None:
            await self._chaos("item.call")
        if m.stage.options.uses:  # slots per step: never held while emitting
            await self.host.take_item_slots(m.index)
            try:
                return await self._timed_step(m, agen, attempt)
            finally:
                self.host.give_item_slots(m.index)
        return await self._timed_step(m, agen, attempt)

    async def _timed_step(self, m: _Member, agen: Any, attempt: int) -> Any:
        timeout = m.stage.timeout
        if timeout is None:
            return await agen.__anext__()
        with trio.move_on_after(timeout):
            return await agen.__anext__()
        raise StageTimeout(m.name, timeout, attempt)

    async def _flat_map(self, m: _Member, index: int, item: Any) -> bool:
        """One item of an async-generator each= stage; False when it failed the stage.

        Retried only while it has yielded nothing (its outputs cannot be taken back);
        the timeout applies to each step up to the next yield.
        """
        attempt = 1
        emitted = 0
        ordered = m.options.ordered
        have_turn = not ordered
        lock = m.emit_lock
        while True:
            agen = cast(AsyncGenerator[Any], _per_item(m.stage)(self._context(m, attempt), item))
            error: Exception | None = None
            try:
                while True:
                    try:
                        out = await self._step(m, agen, attempt)
                    except StopAsyncIteration:
                        break
                    if not have_turn:
                        await self._wait_turn(m, index)
                        have_turn = True
                    if lock is not None:
                        async with lock:
                            await self._emit(m, out)
                    else:
                        await self._emit(m, out)
                    emitted += 1
            except Exception as exc:
                error = exc
            finally:
                with trio.CancelScope(shield=True):
                    await agen.aclose()
            if error is None:
                m.in_hand -= 1
                m.items_ok += 1
                break
            if emitted or not self._should_retry(m.stage, error, attempt):
                if self._give_up(m, index, error):
                    return False
                break
            await self._sleep_before_retry(m.stage, attempt)
            attempt += 1
        if ordered:
            if not have_turn:
                await self._wait_turn(m, index)
            self._pass_turn(m, index)
        return True

    async def _item_error(self, m: _Member, index: int, item: Any, exc: Exception) -> Any:
        """Retry a failed item call per the stage's policy; its result, or a marker."""
        attempt = 1
        while self._should_retry(m.stage, exc, attempt):
            await self._sleep_before_retry(m.stage, attempt)
            attempt += 1
            try:
                result = await self._call(m, attempt, item)
            except Exception as again:
                exc = again
            else:
                m.in_hand -= 1
                m.items_ok += 1
                return result
        return _FAILED if self._give_up(m, index, exc) else _SKIPPED

    def _give_up(self, m: _Member, index: int, exc: Exception) -> bool:
        """Count item `index` as failed; True when that fails the stage."""
        m.in_hand -= 1
        m.items_failed += 1
        if m.options.on_item_error == "skip":
            host = self.host
            host.send_event(
                ItemFailed(
                    host.run_id, host.next_seq(), host.now(), m.name, index, describe_error(exc)
                )
            )
            return False
        if m.failure is None:
            m.failure = ItemError(m.name, index, exc)
        m.scope.cancel()
        return True

    @staticmethod
    def _should_retry(stage: Stage, exc: BaseException, failed_attempt: int) -> bool:
        # The stage's own policy, applied per item call (cancellation never gets here).
        return stage.options.retry.should_retry(exc, failed_attempt)

    @staticmethod
    async def _sleep_before_retry(stage: Stage, failed_attempt: int) -> None:
        delay = stage.options.retry.delay_before(failed_attempt)
        if delay > 0:
            await trio.sleep(delay)

    # -- consumes= --------------------------------------------------------------------

    async def _consume(self, m: _Member) -> None:
        receive = m.input
        assert receive is not None
        items = _Items(m, receive, self)
        ctx = self._context(m, 1)
        if m.options.emits:
            agen = cast(AsyncGenerator[Any], _per_item(m.stage)(ctx, items))
            try:
                async for out in agen:
                    await self._emit(m, out)
            finally:
                with trio.CancelScope(shield=True):
                    await agen.aclose()
        else:
            m.value = await _per_item(m.stage)(ctx, items)
        if m.in_hand:
            m.in_hand = 0
            m.items_ok += 1
        # Returned before its stream ended: read the rest so its producer is not held up;
        # those items count as cancelled (received, never processed).
        async for _ in _drain(receive):
            m.items_in += 1
            m.items_cancelled += 1

    # -- progress ---------------------------------------------------------------------

    async def _ticker(self) -> None:
        """Emit `StageProgress` for members whose counts moved, once per interval at most."""
        interval = self.progress_interval
        host = self.host
        with self._ticker_scope:
            if not math.isfinite(interval):
                await trio.sleep_forever()
            while True:
                await trio.sleep(interval)
                moved = False
                for m in self.members:
                    if m.done:
                        continue
                    counts = (m.items_in, m.items_out, m.items_failed)
                    if counts != m.reported:
                        m.reported = counts
                        moved = True
                        host.send_event(
                            StageProgress(host.run_id, host.next_seq(), host.now(), m.name, *counts)
                        )
                if not moved:
                    # Nothing flows: park until an item moves, so an idle run's clock stays put.
                    wake = self.ticker_wake = trio.Event()
                    await wake.wait()


def _per_item(stage: Stage) -> Callable[..., Any]:
    """An item stage's function: ``f(ctx, item)`` or ``f(ctx, items)`` (`Stage.fn` is typed
    for task stages)."""
    return cast(Callable[..., Any], stage.fn)


def _unwrap(exc: Exception) -> Exception:
    """The one error inside the member's own nursery groups, else the group itself."""
    found = exc
    while isinstance(found, ExceptionGroup):
        inner: tuple[Exception, ...] = cast(ExceptionGroup[Exception], found).exceptions
        if len(inner) != 1:
            break
        found = inner[0]
    return cast(Exception, found)  # type: ignore[redundant-cast]  # pyright narrows less


async def _drain(receive: trio.MemoryReceiveChannel[_Pair]) -> AsyncIterator[_Pair]:
    while True:
        try:
            yield await receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return


class _Items:
    """The async iterator a consumes= function reads; counts what it takes."""

    __slots__ = ("_group", "_m", "_receive")

    def __init__(
        self, m: _Member, receive: trio.MemoryReceiveChannel[_Pair], group: GroupRun
    ) -> None:
        self._m = m
        self._receive = receive
        self._group = group

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> Any:
        m = self._m
        if m.in_hand:
            m.in_hand = 0
            m.items_ok += 1
        try:
            _, item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        m.items_in += 1
        m.in_hand = 1
        group = self._group
        wake = group.ticker_wake
        if wake is not None:
            group.ticker_wake = None
            wake.set()
        return item

    def __repr__(self) -> str:
        return f"<items of stage {self._m.name!r}>"


class _Counts:
    __slots__ = ("items_cancelled", "items_failed", "items_in", "items_ok", "items_out")

    def __init__(self, m: _Member) -> None:
        self.items_in = m.items_in
        self.items_out = m.items_out
        self.items_failed = m.items_failed
        self.items_cancelled = m.items_cancelled
        self.items_ok = m.items_ok
