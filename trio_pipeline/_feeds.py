"""One ordered feed per sink: a buffer and the task that empties it into the sink.

The dispatcher hands each event to every open feed with `put` (never awaiting),
so a slow sink holds up only its own feed. Each feed task runs in a shielded cancel
scope of its own: cancelling the run cannot drop buffered events; only the drain
deadline, set on every feed by the dispatcher, cuts a feed short, and then only the
feeds that had not finished count events as undelivered.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from ._delivery import SinkDelivery, SinkState, SinkTimeout, sink_name
from ._events import Event
from ._sinks import Sink

if TYPE_CHECKING:
    from ._dispatch import Dispatcher

logger = logging.getLogger("trio_pipeline")

_YIELD_EVERY = 64  # events handled between looks at the clock
_YIELD_AFTER = 0.001  # seconds of handling without a checkpoint that force one


class Feed:
    """The events not yet handled by one sink, and the task that hands them over.

    Owned by the dispatcher's nursery. `state` is None while the feed is open.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        sink: Sink,
        *,
        handle_timeout: float | None = None,
        critical: bool = False,
    ) -> None:
        self.sink = sink
        self.handle_timeout = handle_timeout
        self.critical = critical
        self.delivered = 0
        self.peak_backlog = 0
        self.state: SinkState | None = None
        self.error: BaseException | None = None
        self.scope = trio.CancelScope(shield=True)
        self._dispatcher = dispatcher
        self._aclose_called = False
        send, self._receive = trio.open_memory_channel[Event](math.inf)
        self._send = send
        self.put = send.send_nowait
        """Buffer one event for the sink; never blocks (the buffer is unbounded)."""

    def end_of_input(self) -> None:
        """No more events: the feed closes its sink once it has handled the buffered ones."""
        self._send.close()

    def statistics(self, total: int) -> SinkDelivery:
        """The record of this feed, given the run's `total` events."""
        state = self.state
        if state is not SinkState.DISABLED and self.delivered < total:
            state = SinkState.CUT_OFF  # also when the dispatcher itself was cut off
        elif state is None:
            state = SinkState.CUT_OFF
        missing = total - self.delivered if state is SinkState.CUT_OFF else 0
        return SinkDelivery(self.delivered, self.peak_backlog, state, self.error, missing)

    async def run(self) -> None:
        try:
            with self.scope:
                # Plain `with`, not `async with`: trio issue 455 (an exception raised
                # inside `async with receive_channel` can be swallowed when cancelled).
                try:
                    with self._receive:
                        await self._deliver_all()
                finally:
                    # Synchronously with closing the buffer: the dispatcher must not
                    # put into a closed one (BrokenResourceError).
                    self._dispatcher.feed_ended(self)
                await self._close()
        except trio.Cancelled:
            raise  # from outside an unshielded feed (never in a real run): not ours to keep
        except BaseException as exc:
            # A sink let a KeyboardInterrupt or similar through. Disable it; the engine, if it takes
            # such exceptions (`on_fatal`), cancels the run and re-raises it at the end.
            if self.state is None:
                self._disable(exc, "handling an event")
            on_fatal = self._dispatcher.on_fatal
            if on_fatal is None:
                raise
            on_fatal(exc)
            if not self._aclose_called:
                await self._close()
            return
        if not self._aclose_called:
            if self.state is None:
                self.state = SinkState.CUT_OFF
                self._note_backlog()
            await self._close_after_deadline()
        elif self.scope.cancelled_caught and self.state is None:
            self.state = SinkState.CUT_OFF  # the deadline passed inside `aclose`

    async def _deliver_all(self) -> None:
        # The receive/checkpoint loop is written out here and in
        # `Dispatcher._dispatch_all` on purpose: it runs once per event, and a shared
        # helper would cost a call per event on both hot paths. Change them together.
        # This one also skips `receive_nowait` when nothing can be buffered: its
        # WouldBlock costs 0.33 us, about 2% of a chain stage, which empties the buffer
        # once per stage.
        receive = self._receive
        sink = self.sink
        timeout = self.handle_timeout
        dispatcher = self._dispatcher
        chaos = dispatcher.chaos
        now = trio.lowlevel.current_clock().current_time
        unyielded = 0
        yielded_at = now()
        while True:
            # Take what is buffered without a scheduler round-trip; block only when empty.
            # Every event is counted in `emitted` before it is put, so a feed that has
            # handled that many has nothing buffered.
            event: Event | None = None
            if self.delivered < dispatcher.emitted:
                try:
                    event = receive.receive_nowait()
                except trio.WouldBlock:
                    pass
                except trio.EndOfChannel:
                    return
            if event is None:
                try:
                    event = await receive.receive()
                except trio.EndOfChannel:
                    return
                unyielded = 0
                yielded_at = now()
            unyielded += 1
            if unyielded == _YIELD_EVERY:
                # A sink need not await, so a long backlog could otherwise be handled
                # without a checkpoint: stages would starve and the drain deadline,
                # which trio delivers only at a checkpoint, would go unnoticed.
                unyielded = 0
                if now() - yielded_at >= _YIELD_AFTER:
                    await trio.lowlevel.checkpoint()
                    yielded_at = now()
            if chaos is not None:
                await chaos("dispatch")  # per event and sink: the feeds interleave
            if timeout is None:
                try:
                    await sink.handle(event)
                except Exception as exc:
                    self._disable(exc, f"handling event seq={event.seq}")
                    return
            else:
                # A scope per event costs about 5 us: only supervised sinks pay it.
                with trio.move_on_after(timeout) as timer:
                    try:
                        await sink.handle(event)
                    except Exception as exc:
                        self._disable(exc, f"handling event seq={event.seq}")
                        return
                if timer.cancelled_caught:
                    what = f"to handle event seq={event.seq}"
                    self._disable(SinkTimeout(sink_name(sink), timeout, what), "timing out")
                    return
            self.count_delivery()

    def count_delivery(self) -> None:
        """One more event handled: statistics, and maybe the end of a backlog pause."""
        dispatcher = self._dispatcher
        # The backlog only falls when a handle returns: its peaks are right here.
        backlog = dispatcher.emitted - self.delivered
        if backlog > self.peak_backlog:
            self.peak_backlog = backlog
        self.delivered += 1
        if dispatcher.paused and self.delivered - 1 == dispatcher.floor:
            dispatcher.backlog_fell()  # this was (one of) the slowest feeds

    async def _close(self) -> None:
        chaos = self._dispatcher.chaos
        if chaos is not None:
            await chaos("sink.aclose")
        timeout = self.handle_timeout
        self._aclose_called = True
        try:
            if timeout is None:
                await self.sink.aclose()
            else:
                with trio.move_on_after(timeout) as timer:
                    await self.sink.aclose()
                if timer.cancelled_caught:
                    error = SinkTimeout(sink_name(self.sink), timeout, "to close")
                    if self.state is None:
                        self._disable(error, "closing")
                    return
        except Exception as exc:
            if self.state is None:
                self._disable(exc, "closing")
            else:
                logger.warning("sink %r raised again while closing: %r", self.sink, exc)
            return
        if self.state is None:
            self.state = SinkState.CLOSED

    async def _close_after_deadline(self) -> None:
        # The deadline has passed, so aclose runs already cancelled: a sink that
        # releases its resources before its first await still gets to do so.
        with trio.CancelScope(shield=True) as scope:
            scope.cancel()
            self._aclose_called = True
            try:
                await self.sink.aclose()
            except Exception as exc:
                if self.state is not SinkState.DISABLED:
                    self.state = SinkState.DISABLED
                    self.error = exc
                logger.error(  # noqa: TRY400 - the sink's traceback is its own business
                    "sink %r raised while closing after the drain deadline: %r",
                    self.sink,
                    exc,
                )

    def _note_backlog(self) -> None:
        backlog = self._dispatcher.emitted - self.delivered
        if backlog > self.peak_backlog:
            self.peak_backlog = backlog

    def _disable(self, exc: BaseException, when: str) -> None:
        """Stop feeding the sink; it is closed next (a disabled sink still gets `aclose`)."""
        self._note_backlog()
        self.state = SinkState.DISABLED
        self.error = exc
        # The sink itself as the argument: the CLI recognises (and drops) records
        # about its own sinks, which it reports once at the end.
        logger.error("sink %r raised while %s and was disabled: %r", self.sink, when, exc)
        self._dispatcher.feed_disabled(self)
