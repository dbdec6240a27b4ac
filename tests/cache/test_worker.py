"""The cache's worker thread: batching, commit-before-delivery, ordering, shutdown, cancellation."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import outcome
import pytest
import trio

from trio_pipeline._cache._store import CacheEntry, SQLiteStore, digest_bytes
from trio_pipeline._cache._worker import CacheWorker


class SpyStore(SQLiteStore):
    """Records batch boundaries and which thread touched the store."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.log: list[str] = []
        self.threads: set[int] = set()

    @contextlib.contextmanager
    def batch(self) -> Generator[None]:
        self.threads.add(threading.get_ident())
        self.log.append("begin")
        with super().batch():
            yield
        self.log.append("commit")


def put(store: SQLiteStore, key: str) -> str:
    store.put(CacheEntry(key, "p", "s", b"v", digest_bytes(b"v")))
    return key


async def test_jobs_run_off_the_event_loop_and_deliver_after_commit(tmp_path: Path) -> None:
    store = SpyStore(tmp_path / "c")
    worker = CacheWorker(store)
    got: list[str] = []

    def deliver(result: outcome.Outcome[str]) -> None:
        # The commit happened before we hear about the result.
        assert store.log[-1] == "commit"
        key = result.unwrap()
        with SQLiteStore(tmp_path / "c") as other:
            assert other.get(key) is not None
        got.append(key)

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        for i in range(20):
            worker.submit(functools.partial(put, store, f"k{i}"), deliver)
        worker.close()
    assert got == [f"k{i}" for i in range(20)]  # in submission order
    assert threading.get_ident() not in store.threads
    assert 1 <= worker.batches <= 20
    store.close()


async def test_queued_jobs_share_one_transaction(tmp_path: Path) -> None:
    store = SpyStore(tmp_path / "c")
    worker = CacheWorker(store)
    gate = threading.Event()
    got: list[Any] = []
    # The first job holds the thread until all the others are queued.
    worker.submit(gate.wait, got.append)
    for i in range(50):
        worker.submit(functools.partial(put, store, f"k{i}"), got.append)
    worker.close()
    gate.set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.serve)
    assert len(got) == 51
    assert worker.batches <= 2
    store.close()


async def test_an_error_in_a_job_is_delivered_to_it_alone(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c")
    worker = CacheWorker(store)
    got: list[outcome.Outcome[Any]] = []

    def boom() -> None:
        raise ValueError("nope")

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        worker.submit(boom, got.append)
        worker.submit(lambda: put(store, "ok"), got.append)
        worker.close()
    assert isinstance(got[0], outcome.Error)
    assert isinstance(got[0].error, ValueError)
    assert got[1].unwrap() == "ok"
    assert store.get("ok") is not None
    store.close()


async def test_a_failed_commit_fails_the_whole_batch(tmp_path: Path) -> None:
    class FailingCommit(SQLiteStore):
        @contextlib.contextmanager
        def batch(self) -> Generator[None]:
            yield
            raise OSError("disk full")

    store = FailingCommit(tmp_path / "c")
    worker = CacheWorker(store)
    got: list[outcome.Outcome[Any]] = []
    worker.submit(lambda: 1, got.append)
    worker.submit(lambda: 2, got.append)
    worker.close()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.serve)
    assert [type(r) for r in got] == [outcome.Error, outcome.Error]
    store.close()


async def test_serving_survives_cancellation_until_closed(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c")
    worker = CacheWorker(store)
    got: list[Any] = []
    gate = threading.Event()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            worker.submit(gate.wait, got.append)
            worker.submit(lambda: put(store, "late"), got.append)
            scope.cancel()

            async def release() -> None:
                with trio.CancelScope(shield=True):
                    await trio.sleep(0.05)
                    worker.close()
                    gate.set()

            nursery.start_soon(release)
    # The cancellation did not drop the answers the run was waiting for.
    assert len(got) == 2
    assert got[1].unwrap() == "late"
    store.close()


async def test_submit_after_close_raises(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c")
    worker = CacheWorker(store)
    worker.close()
    worker.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(lambda: 1, lambda r: None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.serve)  # returns at once: nothing to do
    store.close()
