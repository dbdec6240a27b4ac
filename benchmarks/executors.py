"""Executor overhead: a chain of N stages vs N sequential calls in the same executor.

Run ``python -m benchmarks.executors [--quick] [--repeat R]``. One row per kind of
stage. "direct" awaits the same no-op function N times, one after another, the
way one would without trio_pipeline (``trio.to_thread.run_sync``,
``trio_parallel.run_sync``, ``Client.submit(...).result()`` in a thread,
``trio.run_process``, a plain ``await``); "pipeline" runs N stages in a chain, so
each waits for the previous one as the direct calls do. The overhead per stage is
the difference divided by N: what the engine, its events (delivered to one
recording sink) and the executor's wrapping (snapshot, pickled envelope, log
collection) add per stage. Medians of R repetitions; the process worker and the
Dask cluster (in-process workers, TCP on 127.0.0.1) are warmed up first.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink

TRUE = "/bin/true"


def noop(snap: tp.StageSnapshot) -> int:
    return snap.attempt


async def noop_async(ctx: tp.StageContext) -> int:
    return ctx.attempt


def snapshot(i: int) -> tp.StageSnapshot:
    return tp.StageSnapshot(f"s{i}", {}, 1, "bench")


@dataclass
class Row:
    kind: str
    n: int
    direct: float  # seconds for n direct calls
    pipeline: float  # seconds for a chain of n stages

    def cells(self) -> list[str]:
        direct_us = self.direct / self.n * 1e6
        stage_us = self.pipeline / self.n * 1e6
        return [
            self.kind,
            str(self.n),
            f"{direct_us:,.0f}",
            f"{stage_us:,.0f}",
            f"{stage_us - direct_us:,.0f}",
            f"{stage_us / direct_us:.2f}x",
        ]


def chain(kind: str, n: int, add: Callable[[tp.Pipeline, str, list[str]], None]) -> tp.Pipeline:
    pipe = tp.Pipeline(f"bench-{kind}")
    previous: list[str] = []
    for i in range(n):
        name = f"s{i}"
        add(pipe, name, previous)
        previous = [name]
    return pipe


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def measure(
    kind: str,
    n: int,
    repeat: int,
    direct_once: Callable[[int], Awaitable[object]],
    add: Callable[[tp.Pipeline, str, list[str]], None],
) -> Row:
    pipe = chain(kind, n, add)

    async def direct() -> None:
        for i in range(n):
            await direct_once(i)

    async def pipeline() -> None:
        result = await tp.run(pipe, sinks=[RecordingSink()])
        if result.counts[tp.StageStatus.SUCCEEDED] != n:
            raise RuntimeError(f"{kind}: not every stage succeeded: {result.counts}")

    await direct_once(-1)  # warm up: worker process, Dask connection
    directs: list[float] = []
    pipelines: list[float] = []
    for _ in range(repeat):
        directs.append(await timed(direct))
        pipelines.append(await timed(pipeline))
    return Row(kind, n, statistics.median(directs), statistics.median(pipelines))


async def bench(sizes: dict[str, int], repeat: int, client: Any) -> list[Row]:
    import trio_parallel

    rows: list[Row] = []

    async def task_direct(i: int) -> object:
        ctx = tp.StageContext(name="s", inputs={}, attempt=1, run_id="b", emit_log=print)
        return await noop_async(ctx)

    rows.append(
        await measure(
            "task (async def)",
            sizes["task"],
            repeat,
            task_direct,
            lambda pipe, name, after: pipe.add_stage(name, noop_async, after=after),
        )
    )

    threads = tp.ThreadExecutor(limit=1)
    thread_limiter = trio.CapacityLimiter(1)
    rows.append(
        await measure(
            "ThreadExecutor",
            sizes["thread"],
            repeat,
            lambda i: trio.to_thread.run_sync(noop, snapshot(i), limiter=thread_limiter),
            lambda pipe, name, after: pipe.add_stage(name, noop, after=after, executor=threads),
        )
    )

    processes = tp.ProcessExecutor(limit=1)
    process_limiter = trio.CapacityLimiter(1)
    rows.append(
        await measure(
            "ProcessExecutor",
            sizes["process"],
            repeat,
            lambda i: trio_parallel.run_sync(
                noop, snapshot(i), kill_on_cancel=True, limiter=process_limiter
            ),
            lambda pipe, name, after: pipe.add_stage(name, noop, after=after, executor=processes),
        )
    )

    dask = tp.DaskExecutor(client)

    async def dask_direct(i: int) -> object:
        future = client.submit(noop, snapshot(i), pure=False)
        return await trio.to_thread.run_sync(future.result)

    rows.append(
        await measure(
            "DaskExecutor",
            sizes["dask"],
            repeat,
            dask_direct,
            lambda pipe, name, after: pipe.add_stage(name, noop, after=after, executor=dask),
        )
    )

    async def command_direct(i: int) -> object:
        return await trio.run_process([TRUE], stdin=subprocess.DEVNULL, capture_stdout=True)

    rows.append(
        await measure(
            "add_command",
            sizes["command"],
            repeat,
            command_direct,
            lambda pipe, name, after: pipe.add_command(name, [TRUE], after=after),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.executors", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small N, for a smoke run")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions (median is shown)")
    args = parser.parse_args(argv)
    sizes = {"task": 5000, "thread": 1000, "process": 300, "dask": 200, "command": 100}
    if args.quick:
        sizes = {kind: max(10, n // 20) for kind, n in sizes.items()}
    repeat = max(1, args.repeat if not args.quick else min(args.repeat, 2))

    import distributed

    logging.getLogger("distributed").setLevel(logging.WARNING)
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        rows = trio.run(bench, sizes, repeat, client)

    header = ["stage kind", "N", "direct us/call", "pipeline us/stage", "overhead us", "ratio"]
    print(
        f"Python {sys.version.split()[0]}, trio {trio.__version__}, chain of N, median of {repeat}"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


if __name__ == "__main__":
    main()
