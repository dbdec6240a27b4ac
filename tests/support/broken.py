"""Deliberately broken shutdown variants of the engine: the harness must catch each.

DO NOT COPY ANY OF THIS. Every variant below contains the bug named in its
docstring on purpose; `tests/test_teeth.py` fails if the property harness does not
find it. Each variant reuses the real `_Run` and changes only its shutdown path, so
what the harness catches is that one bug.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from contextlib import ExitStack, asynccontextmanager, suppress

import trio

import trio_pipeline as tp
from trio_pipeline import _chaos
from trio_pipeline._dispatch import Dispatcher
from trio_pipeline._engine import RunHandle, _Run
from trio_pipeline._events import Event
from trio_pipeline._sinks import Sink


class UnshieldedDispatcher(Dispatcher):
    """The real dispatcher minus its shield: a cancelled nursery reaches it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._scope = trio.CancelScope()  # BUG under test: the dispatcher is cancellable.


# -- (1) close the channel, one sleep(0), cancel the nursery --------------------------


class _DrainRaceRun(_Run):
    dispatcher_type = UnshieldedDispatcher


@asynccontextmanager
async def open_run_drain_race(
    pipeline: tp.Pipeline,
    *,
    sinks: Sequence[Sink] = (),
    keep_going: bool = False,
    max_parallel: int | None = None,
    drain_timeout: float = 5.0,
) -> AsyncGenerator[RunHandle]:
    """Variant 1, the classic drain race: once the stages are done (event channel
    closed), yield once and cancel the nursery, dispatcher included."""
    run = _DrainRaceRun(
        pipeline.compile(),
        sinks=tuple(sinks),
        keep_going=keep_going,
        max_parallel=max_parallel,
        drain_timeout=drain_timeout,
    )
    handle = RunHandle(run)
    async with trio.open_nursery() as nursery:
        await nursery.start(run.dispatcher.run)
        run.begin(nursery)
        try:
            yield handle
            await run._stages_done.wait()  # set when the channel closes
        except BaseException:
            run.abort()
            raise
        # BUG under test (the classic drain race): one scheduler turn is not a drain.
        await trio.sleep(0)  # noqa: ASYNC115 - the deliberate bug, do not copy
        nursery.cancel_scope.cancel()


# -- (2) wait for the drained signal without a shield ---------------------------------


class UnshieldedWaitRun(_Run):
    """Variant 2: the closer (the `open_run` block) waits for the dispatcher's drained
    signal unshielded and nothing else protects the dispatcher, so cancelling the
    closer cancels the dispatcher and drops the buffered events. Use with the real
    `open_run` (patch `trio_pipeline._engine._Run`)."""

    dispatcher_type = UnshieldedDispatcher


# -- (3) a sink exception swallowed by `async with receive_channel` -------------------


class FanOutDispatcher(Dispatcher):
    """One feeder task per sink, so a slow sink does not hold up the others.

    `swallow=True` is variant 3: each feeder catches its sink's exception outside an
    ``async with receive_channel:`` block, whose ``aclose`` checkpoints; when the drain
    deadline has cancelled the feeder, that checkpoint raises Cancelled, which
    replaces the sink's exception and is then absorbed (trio issue 455). With
    `swallow=False` (the control) the feeder uses a plain ``with``, and the harness
    must find nothing.
    """

    swallow = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                task_status.started()
                async with trio.open_nursery() as nursery:
                    with ExitStack() as feeds_closing:
                        feeds: list[trio.MemorySendChannel[Event]] = []
                        for i in range(len(self.sinks)):
                            send, receive = trio.open_memory_channel[Event](math.inf)
                            feeds.append(feeds_closing.enter_context(send))
                            nursery.start_soon(self._feed, i, receive)
                        with self._receive:
                            async for event in self._receive:
                                if _chaos.hook is not None:
                                    await _chaos.hook("dispatch")
                                for feed in feeds:
                                    # A feeder stops after its sink raised.
                                    with suppress(trio.BrokenResourceError):
                                        feed.send_nowait(event)
                await self._close_sinks()
            if self._scope.cancelled_caught:
                self.overran = True
                await self._close_sinks_after_overrun()
        finally:
            self._on_done(self)

    async def _feed(self, i: int, receive: trio.MemoryReceiveChannel[Event]) -> None:
        sink = self.sinks[i]
        try:
            if self.swallow:
                # BUG under test (trio issue 455): aclose() checkpoints, and when we are
                # cancelled its Cancelled replaces the sink's exception in flight.
                async with receive:
                    await self._feed_from(i, sink, receive)
            else:
                with receive:
                    await self._feed_from(i, sink, receive)
        except Exception as exc:
            self._disable(i, exc, "handling an event")

    async def _feed_from(
        self, i: int, sink: Sink, receive: trio.MemoryReceiveChannel[Event]
    ) -> None:
        async for event in receive:
            await sink.handle(event)
            self.delivered[i] += 1


class SwallowingRun(_Run):
    """Variant 3 (use with the real `open_run`)."""

    dispatcher_type = FanOutDispatcher


class _FanOutControl(FanOutDispatcher):
    swallow = False


class FanOutControlRun(_Run):
    """Variant 3 with the bug fixed: the harness must find nothing."""

    dispatcher_type = _FanOutControl
