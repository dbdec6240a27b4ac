"""A worker thread that writes chunks in order, so slow I/O never blocks the Trio loop.

`BackgroundWriter.put` only appends to a deque and, if the thread is idle, wakes it;
the thread takes everything queued and writes it as one batch. A batch is what
arrived while the previous one was being written, so a line waits at most about one
write (and one GIL switch interval, 5 ms) before it is written: flushed per batch.

Ownership: the sink that creates the writer owns its thread and must `aclose` it;
`aclose` writes what is queued and joins the thread. If `aclose` is cancelled (a
drain deadline), the thread still writes what was queued and then ends on its own.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")

HIGH_WATER = 65_536
"""Queued chunks above which `wait_room` waits (backpressure from a slow device)."""


class BackgroundWriter(Generic[T]):
    """Writes chunks from its own thread, in `put` order, with `write(batch)`.

    Args:
        write: Called in the thread with a non-empty list of chunks; an exception
            stops the writer and is raised by the next `check` / `aclose`.
        close: Called in the thread once, after the last batch (even after an error).
        name: The thread's name.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        close: Callable[[], None] = lambda: None,
        name: str = "trio_pipeline writer",
    ) -> None:
        self.error: BaseException | None = None
        self._write = write
        self._close = close
        self._queue: collections.deque[T] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._queued = 0  # updated in the Trio thread
        self._written = 0  # updated in the writer thread
        self._token = trio.lowlevel.current_trio_token()
        self._waiter: trio.Event | None = None
        self._waiting_for = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Chunks put and not yet written."""
        return self._queued - self._written

    def put(self, chunk: T) -> None:
        """Queue `chunk` for writing; never blocks."""
        self._queue.append(chunk)
        self._queued += 1
        if not self._wake.is_set():
            self._wake.set()

    def check(self) -> None:
        """Raise the error that stopped the writer thread, if any."""
        if self.error is not None:
            raise self.error

    async def wait_room(self) -> None:
        """Wait until at most HIGH_WATER // 2 chunks are pending (if more are)."""
        if self.pending > HIGH_WATER // 2:
            await self._wait_until(self._queued - HIGH_WATER // 2)

    async def wait_written(self) -> None:
        """Wait until every chunk put so far is written (or the writer failed)."""
        await self._wait_until(self._queued)

    async def aclose(self) -> None:
        """Write what is queued, stop the thread and join it; raise its error if any.

        Cancellation abandons the join only: the thread still writes and ends.
        """
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            await trio.to_thread.run_sync(self._thread.join, abandon_on_cancel=True)
        self.check()

    def close_now(self) -> None:
        """`aclose` for synchronous code: write what is queued, then join the thread."""
        self._closing = True
        self._wake.set()
        self._thread.join()

    def wait_written_now(self) -> None:
        """Block until every chunk put so far is written (short waits only: it blocks)."""
        while self.pending and self.error is None and self._thread.is_alive():
            time.sleep(0.0005)

    async def _wait_until(self, written: int) -> None:
        while self._written < written and self.error is None and self._thread.is_alive():
            event = self._waiter = trio.Event()
            self._waiting_for = written
            # Re-checked after publishing the waiter: the thread may have finished
            # the batch before it could see it.
            if self._written >= written or self.error is not None:
                break
            await event.wait()
        self._waiter = None

    def _notify(self) -> None:  # in the writer thread
        waiter = self._waiter
        if waiter is not None and (
            self._written >= self._waiting_for or self.error is not None or self._closing
        ):
            self._wake_waiter()

    def _run(self) -> None:  # the thread
        queue, pop = self._queue, self._queue.popleft
        try:
            while True:
                self._wake.wait()
                self._wake.clear()  # before taking the batch: a later put wakes us again
                while queue:
                    batch: list[T] = []
                    try:
                        while True:
                            batch.append(pop())
                    except IndexError:
                        pass
                    if self.error is None:
                        try:
                            self._write(batch)
                        except BaseException as exc:
                            self.error = exc
                    self._written += len(batch)
                    self._notify()
                if self._closing and not queue:
                    return
        finally:
            try:
                self._close()
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
            self._wake_waiter()

    def _wake_waiter(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(waiter.set)
