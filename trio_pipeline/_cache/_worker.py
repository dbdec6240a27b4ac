"""The cache's worker thread: every store access of a run happens there, off the event loop.

Ownership: `CacheWorker.serve` runs in a nursery of the run (the engine starts it)
and owns the thread for its whole life. Jobs are submitted without blocking from the
Trio thread; the worker takes every job queued, runs them in one store transaction
(`CacheStore.batch`), commits, and only then hands the results back, so a result the
engine acts on (say, by emitting `StageFinished`) is durable. Results are delivered in
the serving task, which calls each job's callback synchronously.

Shutdown: `close` (idempotent, synchronous) queues the end; jobs queued before it are
still run and delivered. The serving task is shielded: a cancelled run still gets the
answers it waits for (commits in flight complete, they are never torn), and the task
ends as soon as the thread has drained the queue after `close`. Lookups and commits
hold no concurrency slot of the run: they wait only for this thread.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import queue
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

from ._store import CacheStore

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("deliver", "work")

    def __init__(
        self, work: Callable[[], T], deliver: Callable[[outcome.Outcome[T]], None]
    ) -> None:
        self.work = work
        self.deliver = deliver


_CLOSE = object()


class CacheWorker:
    """Runs blocking cache jobs on one dedicated thread, in batched store transactions."""

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self._jobs: queue.SimpleQueue[_Job[Any] | object] = queue.SimpleQueue()
        self._replies: collections.deque[tuple[_Job[Any], outcome.Outcome[Any]]] = (
            collections.deque()
        )
        self._wakeup = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        self._thread_done = False
        self.batches = 0  # transactions run (a statistic for tests and benchmarks)

    def submit(self, work: Callable[[], T], deliver: Callable[[outcome.Outcome[T]], None]) -> None:
        """Queue `work` (called on the worker thread); `deliver` gets its outcome, in Trio.

        Never blocks. Jobs run, and are delivered, in submission order.

        Raises:
            RuntimeError: after `close`.
        """
        if self._closed:
            raise RuntimeError("the cache worker is closed")
        self._jobs.put(_Job(work, deliver))

    async def call(self, work: Callable[[], T]) -> T:
        """Run `work` on the worker thread and wait for its (committed) result.

        Not cancellable once submitted: the job runs anyway, so the caller waits for
        it (a bounded wait: the store's busy timeout) and a cancellation is delivered
        at the caller's next checkpoint. Raises what `work` raised.
        """
        task = trio.lowlevel.current_task()
        result: list[outcome.Outcome[T]] = []

        def deliver(answer: outcome.Outcome[T]) -> None:
            result.append(answer)
            trio.lowlevel.reschedule(task)

        self.submit(work, deliver)
        await trio.lowlevel.wait_task_rescheduled(lambda _: trio.lowlevel.Abort.FAILED)
        return result[0].unwrap()

    def close(self) -> None:
        """No more jobs; the worker finishes those queued and the serving task returns."""
        if not self._closed:
            self._closed = True
            self._jobs.put(_CLOSE)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the worker thread until `close` has been called and every job delivered."""
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    functools.partial(
                        trio.to_thread.run_sync, self._thread_main, abandon_on_cancel=False
                    )
                )
                task_status.started()
                while True:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    replies = self._replies
                    while replies:
                        job, result = replies.popleft()
                        job.deliver(result)
                    if self._thread_done and not replies:
                        break

    # -- the thread -------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            while True:
                first = self._jobs.get()
                batch: list[_Job[Any]] = []
                stop = first is _CLOSE
                if not stop:
                    batch.append(first)  # type: ignore[arg-type]
                    while True:
                        try:
                            item = self._jobs.get_nowait()
                        except queue.Empty:
                            break
                        if item is _CLOSE:
                            stop = True
                            break
                        batch.append(item)  # type: ignore[arg-type]
                if batch:
                    self._run_batch(batch)
                if stop:
                    return
        finally:
            self._thread_done = True
            self._wake()

    def _run_batch(self, batch: list[_Job[Any]]) -> None:
        results: list[tuple[_Job[Any], outcome.Outcome[Any]]] = []
        try:
            with self.store.batch():
                results.extend((job, outcome.capture(job.work)) for job in batch)
        except Exception as exc:
            # The transaction did not commit: nothing of this batch is durable.
            results = [(job, outcome.Error(exc)) for job in batch]
        self.batches += 1
        self._replies.extend(results)
        self._wake()

    def _on_wake(self) -> None:
        # In the Trio thread, so it sets the event the serving task waits on now.
        self._wakeup.set()

    def _wake(self) -> None:
        token = self._token
        assert token is not None
        # RunFinishedError: the run is gone, and nobody waits for the answer.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(self._on_wake)
