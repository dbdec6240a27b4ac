"""``python -m benchmarks.cache``: what the result cache costs, against the same run without it.

Three runs of one layered pipeline (the shared edge list, no-op stages), interleaved
in one process: **no cache** (the reference), **cold** (cache on, an empty store:
every stage is looked up, misses, runs and is stored) and **cached** (cache on, a
store holding every entry: every stage hits, nothing runs). Timed from the start of
the run to its end, including opening the store, the code fingerprints, every store
read and write (on the cache's worker thread) and recording the run history. Three
clocks: the Trio thread's own CPU time (`time.thread_time`, what the event loop
spends: the part a user waits for), the process's CPU time (`time.process_time`:
every thread, so work moved to the worker thread still counts) and wall time.
Medians of the repetitions; GC on.

Pivot (the system this project descends from) needed 8.9 s to confirm that a 173-stage
pipeline was fully cached: about 51 ms per stage. That is the reference figure.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import trio_pipeline as tp

from . import graphs

PIVOT_US_PER_STAGE = 51_000.0


async def _noop(ctx: tp.StageContext) -> Any:
    return None


def build(parents: graphs.Graph, *, cache: bool) -> tp.Pipeline:
    names = [f"s{i}" for i in range(len(parents))]
    pipeline = tp.Pipeline("bench", cache=True if cache else None)
    for i, ups in enumerate(parents):
        pipeline.add_stage(names[i], _noop, after=[names[j] for j in ups])
    return pipeline


CLOCKS = ("thread", "cpu", "wall")
"""The Trio thread's CPU, the process's CPU, wall time (the order of `_timed`'s tuple)."""


def _timed(
    pipeline: tp.Pipeline, cache_dir: Path | None, expect: tp.StageStatus
) -> tuple[float, float, float]:
    async def main() -> tuple[float, float, float]:
        thread, cpu, wall = time.thread_time(), time.process_time(), time.perf_counter()
        result = await tp.run(pipeline, cache_dir=cache_dir)
        thread = time.thread_time() - thread
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        assert result.ok, result.counts
        assert result.counts[expect] == len(pipeline), result.counts
        return thread, cpu, wall

    gc.collect()
    return trio.run(main)


def measure(n: int, reps: int) -> dict[str, Any]:
    parents = graphs.layered(n)
    plain = build(parents, cache=False)
    cached = build(parents, cache=True)
    root = Path(tempfile.mkdtemp(prefix="trio-pipeline-bench-"))
    try:
        warm = root / "warm"
        _timed(cached, warm, tp.StageStatus.SUCCEEDED)  # fill the warm store once
        times: dict[str, list[tuple[float, float, float]]] = {"none": [], "cold": [], "cached": []}
        for rep in range(reps):
            cold = root / f"cold{rep}"
            order = ["none", "cold", "cached"] if rep % 2 == 0 else ["cached", "cold", "none"]
            for kind in order:
                if kind == "none":
                    times[kind].append(_timed(plain, None, tp.StageStatus.SUCCEEDED))
                elif kind == "cold":
                    times[kind].append(_timed(cached, cold, tp.StageStatus.SUCCEEDED))
                else:
                    times[kind].append(_timed(cached, warm, tp.StageStatus.CACHED))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row: dict[str, Any] = {"n": n, "reps": reps}
    for kind, samples in times.items():
        for k, clock in enumerate(CLOCKS):
            row[f"{kind}_{clock}"] = statistics.median(s[k] for s in samples) / n * 1e6
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| N | no cache us/stage | cold with cache us/stage | cold / no cache"
        " | fully cached us/stage | cached / no cache | Pivot / cached |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        for clock in CLOCKS:
            none, cold, hit = r[f"none_{clock}"], r[f"cold_{clock}"], r[f"cached_{clock}"]
            lines.append(
                f"| {r['n']:,} ({clock}) | {none:.1f} | {cold:.1f} | {cold / none:.2f}"
                f" | {hit:.1f} | {hit / none:.2f} | {PIVOT_US_PER_STAGE / hit:,.0f}x |"
            )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(n, args.reps) for n in args.sizes]
    print(table(rows), end="")


if __name__ == "__main__":
    main()
