"""Logging from a thread stage: `StageSnapshot.log` per line vs the floors, in one run.

Run ``python -m benchmarks.thread_log [--lines N] [--repeat R]``. Rows:

- "thread snap.log": a ThreadExecutor stage logs N lines (the hand-off to the Trio
  thread, the StageLog events, their delivery to a counting sink).
- "async ctx.log": an async stage logs N lines (no thread: the floor of the events).
- "floor: from_thread.run_sync": a bare thread calls ``trio.from_thread.run_sync`` once
  per line into a memory channel, what `snap.log` cost before the hand-off.

Medians of R repetitions, in microseconds per line; "in thread" is the time the
stage's own loop spent, that is what logging costs the function.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import trio

import trio_pipeline as tp


class _Counter:
    def __init__(self) -> None:
        self.events = 0

    async def handle(self, event: tp.Event, /) -> None:
        self.events += 1

    async def aclose(self) -> None:
        pass


def _thread_pipeline(lines: int) -> tp.Pipeline:
    def chatty(snap: tp.StageSnapshot) -> float:
        started = time.perf_counter()
        for _ in range(lines):
            snap.log("line")
        return time.perf_counter() - started

    pipe = tp.Pipeline("thread-log")
    pipe.add_stage("chatty", chatty, executor=tp.ThreadExecutor())
    return pipe


def _async_pipeline(lines: int) -> tp.Pipeline:
    pipe = tp.Pipeline("async-log")

    @pipe.stage
    async def chatty(ctx: tp.StageContext) -> float:
        started = time.perf_counter()
        for _ in range(lines):
            ctx.log("line")
        return time.perf_counter() - started

    return pipe


async def _floor(lines: int) -> tuple[float, float]:
    send, receive = trio.open_memory_channel[str](math.inf)

    def chatty() -> float:
        started = time.perf_counter()
        for _ in range(lines):
            trio.from_thread.run_sync(send.send_nowait, "line")
        return time.perf_counter() - started

    started = time.perf_counter()
    in_thread = await trio.to_thread.run_sync(chatty)
    total = time.perf_counter() - started
    receive.close()
    return in_thread, total


async def _measure(pipe: tp.Pipeline) -> tuple[float, float]:
    started = time.perf_counter()
    result = await tp.run(pipe, sinks=[_Counter()])
    total = time.perf_counter() - started
    return result.stages["chatty"].value, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lines: int = args.lines
    rows: dict[str, list[tuple[float, float]]] = {}

    async def once() -> None:
        rows.setdefault("thread snap.log", []).append(await _measure(_thread_pipeline(lines)))
        rows.setdefault("async ctx.log", []).append(await _measure(_async_pipeline(lines)))
        rows.setdefault("floor: from_thread.run_sync", []).append(await _floor(lines))

    for _ in range(args.repeat):
        trio.run(once)
    print(f"{lines} lines, medians of {args.repeat}; microseconds per line")
    print(f"{'':30} {'in thread/stage':>16} {'whole run':>10}")
    for name, samples in rows.items():
        inner = statistics.median(s[0] for s in samples) / lines * 1e6
        total = statistics.median(s[1] for s in samples) / lines * 1e6
        print(f"{name:30} {inner:16.2f} {total:10.2f}")


if __name__ == "__main__":
    main()
