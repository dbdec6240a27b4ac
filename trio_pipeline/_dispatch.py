"""The dispatcher: the single consumer of a run's event channel.

It runs inside a shielded cancel scope, so cancelling the run's nursery (an outer
cancellation, a crashing body) cannot drop buffered events. The engine bounds it
instead: once the send side is closed it sets the scope's deadline to
``now + drain_timeout``. The dispatcher then reports through `on_done` exactly
once, whether it drained everything or the deadline cut it short, and the engine
reads `delivered` and `errors` to tell the two apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from . import _chaos
from ._events import Event
from ._sinks import Sink

logger = logging.getLogger("trio_pipeline")

_YIELD_EVERY = 64  # events delivered between looks at the clock
_YIELD_AFTER = 0.001  # seconds of delivering without a checkpoint that force one


class Dispatcher:
    """Delivers each event to every enabled sink, in order; disables sinks that raise.

    Owned by the run's nursery (started with `nursery.start`). `on_done` is called
    from the dispatcher's task when it stops.
    """

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[Event],
        sinks: Sequence[Sink],
        on_done: Callable[[Dispatcher], None],
    ) -> None:
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self.delivered: list[int] = [0] * len(self.sinks)
        self.errors: dict[int, BaseException] = {}
        self.overran = False
        self._receive = receive
        self._on_done = on_done
        self._closed: set[int] = set()
        self._scope = trio.CancelScope(shield=True)
        # Called when a sink raises a BaseException that is not Cancelled (say a
        # KeyboardInterrupt): the sink is disabled like one that raised an Exception,
        # and the engine cancels the run and re-raises it at the end.
        self.on_fatal: Callable[[BaseException], None] | None = None
        self._chaos = _chaos.current()  # read once, at run start: scoped to the run

    def set_deadline(self, deadline: float) -> None:
        """Bound the rest of the drain: at `deadline` delivery stops and is reported."""
        self._scope.deadline = min(self._scope.deadline, deadline)

    def cancel(self) -> None:
        """Stop delivering now (counts as an overrun)."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                task_status.started()
                # Plain `with`, not `async with`: trio issue 455 (an exception raised
                # inside `async with receive_channel` can be swallowed when cancelled).
                with self._receive:
                    await self._deliver_all()
                await self._close_sinks()
            if self._scope.cancelled_caught:
                self.overran = True
                await self._close_sinks_after_overrun()
        finally:
            self._on_done(self)

    async def _deliver_all(self) -> None:
        receive = self._receive
        sinks = self.sinks
        now = trio.lowlevel.current_clock().current_time
        unyielded = 0
        yielded_at = now()
        while True:
            # Take what is buffered without a scheduler round-trip; block only when empty.
            try:
                event = receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    event = await receive.receive()
                except trio.EndOfChannel:
                    return
                unyielded = 0
                yielded_at = now()
            except trio.EndOfChannel:
                return
            unyielded += 1
            if unyielded == _YIELD_EVERY:
                # Sinks need not await, so a long backlog could otherwise be drained
                # without a checkpoint: stages would starve, and the drain deadline,
                # which trio only delivers at a checkpoint, would go unnoticed. Not
                # every 64 events, though: then a dispatcher woken once per scheduler
                # batch falls behind stages that emit more than that per batch, and
                # the backlog (every event a live object) is what the GC walks.
                unyielded = 0
                if now() - yielded_at >= _YIELD_AFTER:
                    await trio.lowlevel.checkpoint()
                    yielded_at = now()
            if self._chaos is not None:
                await self._chaos("dispatch")
            for i, sink in enumerate(sinks):
                if i in self.errors:
                    continue
                try:
                    await sink.handle(event)
                except Exception as exc:
                    self._disable(i, exc, f"handling event seq={event.seq}")
                except BaseException as exc:
                    self._fatal(i, exc, f"handling event seq={event.seq}")
                else:
                    self.delivered[i] += 1

    async def _close_sinks(self) -> None:
        for i, sink in enumerate(self.sinks):
            if self._chaos is not None:
                await self._chaos("sink.aclose")
            self._closed.add(i)
            try:
                await sink.aclose()
            except Exception as exc:
                if i not in self.errors:
                    self._disable(i, exc, "closing")
                else:
                    logger.warning("sink %r raised again while closing: %r", sink, exc)
            except BaseException as exc:
                self._fatal(i, exc, "closing")

    async def _close_sinks_after_overrun(self) -> None:
        # The deadline has passed, so each aclose runs already cancelled: a sink that
        # releases its resources before its first await still gets to do so.
        for i, sink in enumerate(self.sinks):
            if i in self._closed:
                continue
            self._closed.add(i)
            with trio.CancelScope(shield=True) as scope:
                scope.cancel()
                try:
                    await sink.aclose()
                except Exception as exc:
                    if i not in self.errors:
                        self._disable(i, exc, "closing after the drain deadline")

    def _fatal(self, i: int, exc: BaseException, when: str) -> None:
        if isinstance(exc, trio.Cancelled) or self.on_fatal is None:
            raise exc
        if i not in self.errors:
            self._disable(i, exc, when)
        self.on_fatal(exc)

    def _disable(self, i: int, exc: BaseException, when: str) -> None:
        self.errors[i] = exc
        logger.error("sink %r raised while %s and was disabled: %r", self.sinks[i], when, exc)
