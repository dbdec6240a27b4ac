"""Deliberately broken shutdown variants of the engine: the harness must catch each.

DO NOT COPY ANY OF THIS. Every variant below contains the bug named in its
docstring on purpose; `tests/test_teeth.py` fails if the property harness does not
find it. Each variant reuses the real `_Run` and changes only its shutdown path, so
what the harness catches is that one bug.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager

import trio

import trio_pipeline as tp
from trio_pipeline._delivery import SinkState, SinkTimeout
from trio_pipeline._dispatch import Dispatcher
from trio_pipeline._engine import RunHandle, _Run
from trio_pipeline._feeds import Feed
from trio_pipeline._sinks import Sink


class UnshieldedDispatcher(Dispatcher):
    """The real dispatcher minus its shield: a cancelled nursery reaches it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        # BUG under test: the dispatcher and its feeds are cancellable.
        self._scope = trio.CancelScope()
        for feed in self.feeds:
            feed.scope = trio.CancelScope()


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
    max_backlog: int | None = None,
    teardown_timeout: float = 30.0,
) -> AsyncGenerator[RunHandle]:
    """Variant 1, the classic drain race: once the stages are done (event channel
    closed), yield once and cancel the nursery, dispatcher included."""
    run = _DrainRaceRun(
        pipeline.compile(),
        sinks=tuple(sinks),
        keep_going=keep_going,
        max_parallel=max_parallel,
        drain_timeout=drain_timeout,
        max_backlog=max_backlog,
        teardown_timeout=teardown_timeout,
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


class _FanOutFeed(Feed):
    """A feed that lets its sink's exception out of the receive loop and catches it outside.

    `swallow=True` is variant 3: the loop runs in ``async with receive_channel:``,
    whose ``aclose`` checkpoints; when the drain deadline has cancelled the feed, that
    checkpoint raises Cancelled, which replaces the sink's exception and is then
    absorbed by the feed's scope (trio issue 455). With `swallow=False` (the control)
    the feed uses a plain ``with``, and the harness must find nothing.
    """

    swallow = True

    async def run(self) -> None:
        with self.scope:
            try:
                try:
                    if self.swallow:
                        # BUG under test (trio issue 455): aclose() checkpoints, and when
                        # we are cancelled its Cancelled replaces the sink's exception.
                        async with self._receive:
                            await self._handle_all()
                    else:
                        with self._receive:
                            await self._handle_all()
                except Exception as exc:
                    self._disable(exc, "handling an event")
            finally:
                self._dispatcher.feed_ended(self)
            await self._close()
        if not self._aclose_called:
            if self.state is None:
                self.state = SinkState.CUT_OFF
                self._note_backlog()
            await self._close_after_deadline()
        elif self.scope.cancelled_caught and self.state is None:
            self.state = SinkState.CUT_OFF

    async def _handle_all(self) -> None:
        timeout = math.inf if self.handle_timeout is None else self.handle_timeout
        async for event in self._receive:
            with trio.move_on_after(timeout) as timer:
                await self.sink.handle(event)
            if timer.cancelled_caught:
                raise SinkTimeout(repr(self.sink), timeout, "to handle an event")
            self.count_delivery()


class _ControlFeed(_FanOutFeed):
    swallow = False


class FanOutDispatcher(Dispatcher):
    """Variant 3's dispatcher: its feeds catch sink exceptions around the receive loop."""

    feed_type = _FanOutFeed


class SwallowingRun(_Run):
    """Variant 3 (use with the real `open_run`)."""

    dispatcher_type = FanOutDispatcher


class _FanOutControl(Dispatcher):
    feed_type = _ControlFeed


class FanOutControlRun(_Run):
    """Variant 3 with the bug fixed: the harness must find nothing."""

    dispatcher_type = _FanOutControl
