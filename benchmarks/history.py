"""``python -m benchmarks.history``: what recording a run in the history costs, per stage.

A run with a store ends by writing its history record (`RunCache._finish_sync`, on a
worker thread, before the run returns): every stage's status, attempts, duration,
reason and error. This times that step alone for one layered pipeline of no-op stages
whose cache is cold (every stage's reason is "cache miss"), three ways, interleaved in
one process on fresh results of real runs:

- **before**: the former path, kept here as the reference: a `StageOutcome` and a
  `StageRecord` per stage, `describe_error` per error, the stages encoded as one JSON
  list per stage;
- **built-in**: what a run with `SQLiteStore` does now (`RunCache.stage_columns`, then
  `SQLiteStore.record_run_columns`: columns straight from the scheduler's tables);
- **protocol**: what a run with another `CacheStore` does (`RunCache.run_record`, then
  `record_run`), timed here into a `SQLiteStore`.

Each is timed from the finished `RunResult` to the committed row (the store is opened
before and closed after: closing is not counted). Thread CPU time and wall time,
medians, GC on (a collection before each repetition).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import trio_pipeline as tp
from trio_pipeline._cache._run import RunCache, open_run_cache
from trio_pipeline._cache._store import RunRecord, SQLiteStore, StageRecord
from trio_pipeline._events import describe_error

from . import graphs
from .cache import build

_encode_row = json.JSONEncoder(separators=(",", ":")).encode


def before(
    cache: RunCache, result: tp.RunResult, store: SQLiteStore, db: sqlite3.Connection
) -> None:
    """The history record as it was built and stored before columns (the reference)."""
    stages: list[StageRecord] = []
    reasons = cache.reasons
    for name, out in result.stages.items():
        reason = reasons.get(name)
        if out.blocked_by is not None:
            reason = f"upstream {out.blocked_by!r} failed"
        error = None if out.error is None else describe_error(out.error)
        stages.append(
            StageRecord(name, out.status.value, out.attempts, out.duration, reason, error)
        )
    record = cache.run_record(result, "bench", None, {}, tuple(stages))
    row = (
        record.run_id,
        record.pipeline,
        record.file,
        record.started,
        record.duration,
        record.state,
        int(record.ok),
        json.dumps(dict(record.counts)),
        json.dumps(dict(record.params)),
        "["
        + ",".join(
            [
                _encode_row([s.name, s.status, s.attempts, s.duration, s.reason, s.error])
                for s in record.stages
            ]
        )
        + "]",
    )
    db.execute("BEGIN IMMEDIATE")  # the store's own transaction, on a connection of the same file
    db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", row)
    db.execute("DELETE FROM run_stages WHERE run_id = ?", (record.run_id,))
    db.execute("COMMIT")


def built_in(cache: RunCache, result: tp.RunResult, store: SQLiteStore, db: Any) -> None:
    record: RunRecord = cache.run_record(result, "bench", None, {}, ())
    store.record_run_columns(record, cache.stage_columns(result))


def protocol(cache: RunCache, result: tp.RunResult, store: SQLiteStore, db: Any) -> None:
    store.record_run(cache.run_record(result, "bench", None, {}))


WAYS = {"before": before, "built-in": built_in, "protocol": protocol}


def measure(n: int, reps: int) -> dict[str, tuple[float, float]]:
    pipeline = build(graphs.layered(n), cache=False)
    plan = pipeline.compile()
    root = Path(tempfile.mkdtemp(prefix="trio-pipeline-history-"))

    async def open_cache() -> RunCache:
        cache = await open_run_cache(plan, run_id="r", pipeline_cache=True, cache_dir=root / "s")
        assert cache is not None
        return cache

    samples: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    try:
        cache = trio.run(open_cache)
        cache.reasons.update(dict.fromkeys(pipeline.stages, "cache miss"))  # as a cold run
        cache.store.close()
        order = list(WAYS)
        for rep in range(reps):
            for way in order if rep % 2 == 0 else order[::-1]:
                result = trio.run(tp.run, pipeline)  # fresh: no outcome built yet
                store = SQLiteStore(root / f"{way}{rep}")
                db = sqlite3.connect(store.path, isolation_level=None)  # for "before"
                db.execute("PRAGMA synchronous=NORMAL")  # as the store's connection
                gc.collect()
                thread, wall = time.thread_time(), time.perf_counter()
                WAYS[way](cache, result, store, db)
                thread, wall = time.thread_time() - thread, time.perf_counter() - wall
                db.close()
                store.close()
                samples[way].append((thread, wall))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        way: (
            statistics.median(t for t, _ in times) / n * 1e6,
            statistics.median(w for _, w in times) / n * 1e6,
        )
        for way, times in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.history", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print("| N | way | thread CPU us/stage | wall us/stage | / before (wall) |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        row: Any = measure(n, args.reps)
        for way, (thread, wall) in row.items():
            ratio = wall / row["before"][1]
            print(f"| {n:,} | {way} | {thread:.2f} | {wall:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
