"""``python -m benchmarks.items``: item streams vs a hand-written Trio floor and slurry.

Three measurements (issue 13):

1. ``source -> each(workers=1) -> each(workers=1) -> consumes`` over N small ints (+1
   per each stage), in CPU time of the Trio thread (`time.thread_time`), against a
   hand-written pipeline of the same shape (memory channels of the same buffer, 1,
   a task per worker, no events) and slurry (``Map`` sections, its zero-buffer
   channels) as a peer, interleaved in one process; medians of the repetitions.
2. 8 workers, each item ``await trio.sleep(0.01)``, 2,000 items: throughput in wall
   time against the ideal 800 items/s.
3. Memory: ``source -> each -> consumes`` over 1,000,000 items; the resident set is
   sampled in the consumer after 100,000 items and at the end (nothing collects).

slurry 1.3.1 pins ``trio<0.22``; install it with ``pip install --no-deps slurry
async_generator`` to get the peer column (it is skipped when missing).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

import trio_pipeline as tp

BUFFER = 1  # the engine's default: buffer = workers = 1


async def _plus_one_stage(ctx: tp.StageContext, item: int) -> int:
    return item + 1


async def _plus_one(item: int) -> int:
    return item + 1


def engine_pipeline(n: int) -> tp.Pipeline:
    pipe = tp.Pipeline("items")

    @pipe.stage
    async def source(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    pipe.stage(_plus_one_stage, name="a", each=source)
    pipe.stage(_plus_one_stage, name="b", each="a")

    @pipe.stage(consumes="b")
    async def collect(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        total = 0
        async for item in items:
            total += item
        return total

    return pipe


async def run_engine(n: int) -> int:
    result = await tp.run(engine_pipeline(n), progress_interval=0.1)
    value = result.stages["collect"].value
    assert isinstance(value, int)
    return value


async def run_floor(n: int) -> int:
    """The same shape by hand: channels of the same buffer, a task per worker, no events."""
    send_a, recv_a = trio.open_memory_channel[int](BUFFER)
    send_b, recv_b = trio.open_memory_channel[int](BUFFER)
    send_c, recv_c = trio.open_memory_channel[int](BUFFER)

    async def source() -> None:
        async with send_a:
            for i in range(n):
                await send_a.send(i)

    async def worker(
        receive: trio.MemoryReceiveChannel[int], send: trio.MemorySendChannel[int]
    ) -> None:
        async with send, receive:
            async for item in receive:
                await send.send(await _plus_one(item))

    total = 0

    async def collect() -> None:
        nonlocal total
        async with recv_c:
            async for item in recv_c:
                total += item

    async with trio.open_nursery() as nursery:
        nursery.start_soon(source)
        nursery.start_soon(worker, recv_a, send_b)
        nursery.start_soon(worker, recv_b, send_c)
        nursery.start_soon(collect)
    return total


def slurry_available() -> bool:
    try:
        import slurry  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


async def run_slurry(n: int) -> int:
    import slurry  # type: ignore[import-not-found, import-untyped, unused-ignore]
    from slurry.sections import Map  # type: ignore[import-not-found, import-untyped, unused-ignore]

    async def source() -> AsyncIterator[int]:
        for i in range(n):
            yield i

    total = 0
    sections = (source(), Map(lambda x: x + 1), Map(lambda x: x + 1))
    async with slurry.Pipeline.create(*sections) as pipeline:  # pyright: ignore
        tap: Any = pipeline.tap()  # pyright: ignore
        async with tap:
            async for item in tap:
                total += item
    return total


def _cpu_time(fn: Callable[[int], Awaitable[int]], n: int) -> tuple[float, int]:
    async def main() -> tuple[float, int]:
        start = time.thread_time()
        value = await fn(n)
        return time.thread_time() - start, value

    gc.collect()
    return trio.run(main)


def throughput(n: int, reps: int) -> dict[str, float]:
    """Median us/item per runner, interleaved; every runner must compute the same total."""
    runners: dict[str, Callable[[int], Awaitable[int]]] = {
        "floor": run_floor,
        "engine": run_engine,
    }
    if slurry_available():
        runners["slurry"] = run_slurry
    samples: dict[str, list[float]] = {name: [] for name in runners}
    expected = sum(range(n)) + 2 * n
    for rep in range(reps):
        order = list(runners) if rep % 2 == 0 else list(reversed(runners))
        for name in order:
            seconds, value = _cpu_time(runners[name], n)
            if value != expected:
                raise AssertionError(f"{name}: total {value}, expected {expected}")
            samples[name].append(seconds)
    return {name: statistics.median(s) / n * 1e6 for name, s in samples.items()}


def workers_throughput(n: int = 2_000, workers: int = 8, delay: float = 0.01) -> float:
    """Items per second through an each stage of `workers` workers sleeping `delay`."""
    pipe = tp.Pipeline("sleepy")

    @pipe.stage
    async def source(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @pipe.stage(each=source, workers=workers)
    async def nap(ctx: tp.StageContext, item: int) -> int:
        await trio.sleep(delay)
        return item

    async def main() -> float:
        start = time.perf_counter()
        result = await tp.run(pipe)
        assert result.stages["nap"].items_out == n
        return n / (time.perf_counter() - start)

    return trio.run(main)


def workers_floor(n: int = 2_000, workers: int = 8, delay: float = 0.01) -> float:
    """The same by hand: a source task, `workers` tasks on one channel, no events."""

    async def main() -> float:
        send, receive = trio.open_memory_channel[int](workers)

        async def source() -> None:
            async with send:
                for i in range(n):
                    await send.send(i)

        async def worker() -> None:
            async for _ in receive:
                await trio.sleep(delay)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(source)
            for _ in range(workers):
                nursery.start_soon(worker)
        return n / (time.perf_counter() - start)

    return trio.run(main)


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory(n: int = 1_000_000, early: int = 100_000) -> tuple[float, float]:
    """Resident MiB after `early` items and after all `n` (no stage collects them)."""
    pipe = tp.Pipeline("memory")
    samples: list[float] = []

    @pipe.stage
    async def source(ctx: tp.StageContext) -> AsyncIterator[bytes]:
        for i in range(n):
            yield i.to_bytes(8, "little")

    @pipe.stage(each=source)
    async def work(ctx: tp.StageContext, item: bytes) -> int:
        return len(item)

    @pipe.stage(consumes=work)
    async def count(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        seen = 0
        async for _ in items:
            seen += 1
            if seen == early:
                gc.collect()
                samples.append(_rss_mib())
        gc.collect()
        samples.append(_rss_mib())
        return seen

    result = trio.run(tp.run, pipe)
    assert result.stages["count"].value == n
    return samples[0], samples[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.items", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000, help="items for the ratio rows")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-items", type=int, default=1_000_000)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ratio", "workers", "memory"])
    args = parser.parse_args(argv)
    print(f"trio {trio.__version__}, {args.items:,} items, {args.reps} interleaved reps (CPU time)")
    if "ratio" not in args.skip:
        us = throughput(args.items, args.reps)
        floor = us["floor"]
        print("| runner | us/item | / floor |")
        print("|---|---|---|")
        for name, value in us.items():
            print(f"| {name} | {value:.1f} | {value / floor:.2f} |")
    if "workers" not in args.skip:
        for name, measure in (("engine", workers_throughput), ("floor", workers_floor)):
            rate = statistics.median(measure() for _ in range(3))
            print(
                f"8 workers x sleep(0.01) x 2,000 items, {name}: {rate:.0f}/s"
                f" ({rate / 800:.1%} of the ideal 800/s)"
            )
    if "memory" not in args.skip:
        early, late = memory(args.memory_items)
        print(
            f"memory, {args.memory_items:,} items: RSS {early:.1f} MiB after 100,000,"
            f" {late:.1f} MiB at the end ({late - early:+.1f} MiB)"
        )


if __name__ == "__main__":
    main()
