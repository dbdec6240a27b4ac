"""The dispatcher: the single consumer of a run's event channel, feeding one feed per sink.

It takes events off the channel in order and hands each to every open `Feed` without
awaiting a sink, so a slow sink delays only itself. It and the feeds run in shielded
cancel scopes, so cancelling the run's nursery (an outer cancellation, a crashing
body) cannot drop buffered events. The engine bounds them instead: once the send
side is closed it calls `set_deadline(now + drain_timeout)`. The dispatcher then
reports through `on_done` exactly once, when every feed has closed its sink or been
cut off, and the engine reads `deliveries` and `clean`.

Backpressure: the engine sends through `emitter(send)`, which counts what the run
emitted. When the backlog of the slowest open feed (events emitted and not yet
handled by its sink) goes above `max_backlog`, the dispatcher calls
``on_backlog(True)``; when it is back at or under half of it, ``on_backlog(False)``.
The engine starts no new stage attempt in between, and between pauses only as many
as `room` says (so one scheduler decision cannot start more than that either).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence

import trio

from . import _chaos
from ._delivery import SinkDelivery, SinkState, unwrap
from ._events import Event
from ._feeds import Feed
from ._sinks import Sink

DEFAULT_MAX_BACKLOG = 1_000
"""Default `max_backlog` of a run (see benchmarks/README.md for the measurement)."""

_YIELD_EVERY = 64  # events dispatched between looks at the clock
_YIELD_AFTER = 0.001  # seconds of dispatching without a checkpoint that force one


def _ignore(_: bool) -> None:
    pass


class Emitter:
    """The engine's send side: counts each event for the backlog and hands it to the feeds.

    The dispatcher's fan-out, done synchronously in the emitting task: the event is
    in every feed's buffer before `send_nowait` returns, in emission order. Going
    through the channel and the dispatcher's task instead costs a task step per
    scheduler batch, which on a chain of no-op stages (one stage per batch) is 15-30%
    of a stage (benchmarks/, engine vs baseline). `close` ends the input.
    """

    __slots__ = ("_dispatcher", "_puts", "close")

    def __init__(self, dispatcher: Dispatcher, send: trio.MemorySendChannel[Event]) -> None:
        self._dispatcher = dispatcher
        self._puts = dispatcher.puts  # shrinks when a feed ends (never during the loop)
        self.close = send.close  # the dispatcher's task then ends every feed's input

    def send_nowait(self, event: Event) -> None:
        dispatcher = self._dispatcher
        emitted = dispatcher.emitted = dispatcher.emitted + 1
        # `floor` is a stale minimum of what the open feeds delivered, so this
        # over-estimates the backlog: made exact only when it might be over the limit.
        # Once paused, only deliveries can change anything.
        if emitted - dispatcher.floor > dispatcher.max_backlog and not dispatcher.paused:
            dispatcher.backlog_rose()
        for put in self._puts:
            put(event)


class Dispatcher:
    """Delivers each event to every sink through a feed of its own; disables sinks that raise.

    Owned by the run's nursery (started with `nursery.start`); it owns the feeds'
    tasks. `on_done` is called from the dispatcher's task when every feed has ended.

    Args:
        receive: The run's event channel.
        sinks: As passed to the run; `supervised` / `critical` wrappers are unwrapped
            (results are keyed by the wrapped sink).
        on_done: Called once, at the end.
        max_backlog: Events the slowest open feed may lag behind the run before
            ``on_backlog(True)``; None: unbounded.
        on_backlog: Called with True when that backlog goes above `max_backlog`,
            with False when it is back at or under it.
        on_critical: Called once when a critical sink is disabled.
    """

    # A seam for tests that swap in deliberately broken feeds (tests/support/broken.py).
    feed_type: type[Feed] = Feed

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[Event],
        sinks: Sequence[Sink],
        on_done: Callable[[Dispatcher], None],
        *,
        max_backlog: int | None = None,
        on_backlog: Callable[[bool], None] = _ignore,
        on_critical: Callable[[Feed], None] | None = None,
    ) -> None:
        self.feeds: tuple[Feed, ...] = tuple(
            self.feed_type(self, sink, handle_timeout=timeout, critical=critical)
            for sink, timeout, critical in map(unwrap, sinks)
        )
        self.sinks: tuple[Sink, ...] = tuple(feed.sink for feed in self.feeds)
        if len({id(sink) for sink in self.sinks}) != len(self.sinks):
            raise ValueError("the same sink was passed twice; each sink receives each event once")
        self.emitted = 0
        self.max_backlog: float = math.inf if max_backlog is None else max_backlog
        # Resume at half the limit, not just under it: resuming per delivered event
        # starts one stage at a time, measured 1.5x slower (benchmarks/backlog.py).
        self._resume_at = self.max_backlog // 2
        self.floor = 0
        self.paused = False
        self._open: list[Feed] = list(self.feeds)
        self.puts = [feed.put for feed in self.feeds]
        self._receive = receive
        self._on_done = on_done
        self._on_backlog = on_backlog
        self._on_critical = on_critical
        self._scope = trio.CancelScope(shield=True)
        self.chaos = _chaos.current()  # read once, at run start: scoped to the run
        # Called when a sink raises a BaseException that is not Cancelled (say a
        # KeyboardInterrupt): the sink is disabled like one that raised an Exception,
        # the other feeds go on, and the engine cancels the run and re-raises it at the end.
        self.on_fatal: Callable[[BaseException], None] | None = None

    def emitter(self, send: trio.MemorySendChannel[Event]) -> Emitter:
        """The send side to emit through: feeds get each event at once, `max_backlog` sees it.

        `send` (the channel this dispatcher reads) is only closed through it; events
        sent into that channel directly are dispatched by this dispatcher's task.
        """
        return Emitter(self, send)

    def set_deadline(self, deadline: float) -> None:
        """Bound the rest of the drain: at `deadline` feeds not yet done are cut off."""
        self._scope.deadline = min(self._scope.deadline, deadline)
        for feed in self.feeds:
            feed.scope.deadline = min(feed.scope.deadline, deadline)

    # -- results --------------------------------------------------------------------

    def deliveries(self, total: int) -> dict[Sink, SinkDelivery]:
        """Each sink's record, given the `total` events the run emitted."""
        return {feed.sink: feed.statistics(total) for feed in self.feeds}

    def clean(self, total: int) -> bool:
        """Every sink not disabled got all `total` events and closed; no critical sink failed."""
        for feed in self.feeds:
            record = feed.statistics(total)
            if record.state is SinkState.CUT_OFF:
                return False
            if feed.critical and record.state is SinkState.DISABLED:
                return False
        return True

    # -- backlog (called by the emitter and the feeds) ------------------------------

    def room(self) -> int:
        """How many more stages may start now: 0 while paused (``on_backlog(False)`` follows).

        Each start emits one event; starting this many keeps the slowest open feed's
        backlog at or under `max_backlog` before each of them (at least 1 when not
        paused, since the backlog is then at or under the limit).
        """
        if self.paused:
            return 0
        if not self._open or self.max_backlog == math.inf:
            return sys.maxsize  # no sink can fall behind
        self.floor = floor = min(feed.delivered for feed in self._open)
        return max(1, int(self.max_backlog) + 1 - (self.emitted - floor))

    def backlog_rose(self) -> None:
        self._recompute_backlog()

    def backlog_fell(self) -> None:
        self._recompute_backlog()

    def feed_disabled(self, feed: Feed) -> None:
        self.feed_ended(feed)
        if feed.critical and self._on_critical is not None:
            self._on_critical(feed)

    def feed_ended(self, feed: Feed) -> None:
        """`feed` takes no more events (disabled, or its buffer closed); idempotent."""
        if feed in self._open:
            self._open.remove(feed)
            self.puts.remove(feed.put)
            self._recompute_backlog()

    def _recompute_backlog(self) -> None:
        self.floor = floor = min((feed.delivered for feed in self._open), default=self.emitted)
        backlog = self.emitted - floor
        if not self.paused:
            if backlog > self.max_backlog:
                self.paused = True
                self._on_backlog(True)
        elif backlog <= self._resume_at:
            self.paused = False
            self._on_backlog(False)

    # -- the task -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    for feed in self.feeds:
                        nursery.start_soon(feed.run, name=f"feed of {feed.sink!r}")
                    task_status.started()
                    try:
                        # Plain `with`, not `async with`: trio issue 455.
                        with self._receive:
                            await self._dispatch_all()
                    finally:
                        for feed in self.feeds:
                            feed.end_of_input()
        finally:
            self._on_done(self)

    async def _dispatch_all(self) -> None:
        # Same receive/checkpoint loop as `Feed._deliver_all` (see there why it is twice).
        receive = self._receive
        puts = self.puts  # shrinks when a feed ends (never during the loop body)
        now = trio.lowlevel.current_clock().current_time
        dispatched = 0
        unyielded = 0
        yielded_at = now()
        while True:
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
            dispatched += 1
            if dispatched > self.emitted:  # events sent around the emitter (tests, replay)
                self.emitted = dispatched
            unyielded += 1
            if unyielded == _YIELD_EVERY:
                # Taking a long backlog off the channel without a checkpoint would starve
                # the feeds and the stages.
                unyielded = 0
                if now() - yielded_at >= _YIELD_AFTER:
                    await trio.lowlevel.checkpoint()
                    yielded_at = now()
            for put in puts:
                put(event)
