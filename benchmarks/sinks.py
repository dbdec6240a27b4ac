"""Sink throughput, each sink against a hand-written floor doing the same work.

``python -m benchmarks.sinks``.

The events: a RunStarted, then per stage a StageStarted, a StageLog and a
StageFinished (N events in all). Each figure is the median of `--reps` runs
(wall time, `time.perf_counter`), sink and floor alternating. "loop" columns are
the time spent in ``handle`` calls on the Trio thread; JSONL's total also waits
for its writer thread to put the whole file on disk (``aclose``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio
from rich.console import Console

import trio_pipeline as tp
from trio_pipeline import _jsonl
from trio_pipeline._dispatch import Dispatcher
from trio_pipeline._events import event_to_dict
from trio_pipeline._live import FRAME_BUDGET, LiveSink, RunTracker
from trio_pipeline._sinks import format_stage_line

S = tp.StageStatus


def make_events(n: int) -> list[tp.Event]:
    stages = (n - 1) // 3
    out: list[tp.Event] = [tp.RunStarted("r", 0, 0.0, "p", tuple(f"s{i}" for i in range(stages)))]
    for i in range(stages):
        name = f"s{i}"
        out.append(tp.StageStarted("r", len(out), 0.1, name, 1))
        out.append(tp.StageLog("r", len(out), 0.2, name, f"message number {i}"))
        out.append(tp.StageFinished("r", len(out), 0.3, name, S.SUCCEEDED, 1, 0.2, None, None))
    return out


async def _feed(sink: Any, events: list[tp.Event]) -> tuple[float, float]:
    start = time.perf_counter()
    for event in events:
        await sink.handle(event)
    loop = time.perf_counter() - start
    await sink.aclose()
    return time.perf_counter() - start, loop


def _median(fn: Callable[[], float], reps: int) -> float:
    return statistics.median(fn() for _ in range(reps))


def bench(n: int, reps: int, tmp: str) -> list[tuple[str, float, float, float, str]]:
    events = make_events(n)
    rows = [event_to_dict(e) for e in events]
    path = os.path.join(tmp, "out.jsonl")
    results: list[tuple[str, float, float, float, str]] = []

    def json_floor() -> float:
        start = time.perf_counter()
        with open(path, "w") as file:
            for row in rows:
                file.write(json.dumps(row) + "\n")
        return time.perf_counter() - start

    def jsonl(fast: bool) -> tuple[float, float]:
        sink = tp.JsonlSink(path)
        sink._encode = _jsonl.encoder(fast)  # type: ignore[attr-defined]
        return trio.run(_feed, sink, events)

    for fast, label in ((True, "JsonlSink (orjson)"), (False, "JsonlSink (stdlib json)")):
        totals, loops, floors = [], [], []
        for _ in range(reps):
            floors.append(json_floor())
            total, loop = jsonl(fast)
            totals.append(total)
            loops.append(loop)
        floor = statistics.median(floors)
        total = statistics.median(totals)
        note = f"loop side {n / statistics.median(loops):,.0f} ev/s"
        results.append((label, n / total, n / floor, total / floor, note))

    # ConsoleSink: a line per finished stage and per log line, flushed per line.
    lines = []
    for e in events:
        if isinstance(e, tp.StageFinished):
            lines.append(format_stage_line(e))
        elif isinstance(e, tp.StageLog):
            lines.append(f"{e.stage} | {e.message}")

    def console_floor() -> float:
        with open(os.devnull, "w") as file:
            start = time.perf_counter()
            for line in lines:
                file.write(line + "\n")
                file.flush()
            return time.perf_counter() - start

    def console() -> float:
        with open(os.devnull, "w") as file:
            return trio.run(_feed, tp.ConsoleSink(file, logs=True), events)[0]

    floor, total = _median(console_floor, reps), _median(console, reps)
    results.append(("ConsoleSink(logs=True) to /dev/null", n / total, n / floor, total / floor, ""))

    # The live view's handle: O(1) folding into state; the floor keeps each event.
    def keep_floor() -> float:
        kept: list[tp.Event] = []

        async def handle(event: tp.Event) -> None:
            kept.append(event)

        async def go() -> float:
            start = time.perf_counter()
            for event in events:
                await handle(event)
            return time.perf_counter() - start

        return trio.run(go)

    def live_handle() -> float:
        console = Console(file=io.StringIO(), force_terminal=True, width=100)
        sink = LiveSink(console)

        async def go() -> float:
            start = time.perf_counter()
            for event in events:
                await sink.handle(event)
            return time.perf_counter() - start

        return trio.run(go)

    def tracker() -> float:
        return trio.run(_feed, RunTracker(), events)[1]

    floor = _median(keep_floor, reps)
    total = _median(live_handle, reps)
    frame = repaint_cost(events)
    results.append(
        (
            "LiveSink.handle",
            n / total,
            n / floor,
            total / floor,
            f"repaint max {frame * 1e3:.1f} ms",
        )
    )
    total = _median(tracker, reps)
    results.append(("RunTracker.handle", n / total, n / floor, total / floor, ""))

    # Dispatcher + one feed vs a loop calling the sink straight off the channel.
    class Counting:
        count = 0

        async def handle(self, event: tp.Event, /) -> None:
            self.count += 1

        async def aclose(self) -> None:
            pass

    async def direct() -> float:
        send, receive = trio.open_memory_channel[tp.Event](math.inf)
        for e in events:
            send.send_nowait(e)
        send.close()
        sink = Counting()
        start = time.perf_counter()
        while True:
            try:
                event = receive.receive_nowait()
            except trio.WouldBlock:
                await trio.lowlevel.checkpoint()
                continue
            except trio.EndOfChannel:
                break
            await sink.handle(event)
        return time.perf_counter() - start

    async def dispatched() -> float:
        send, receive = trio.open_memory_channel[tp.Event](math.inf)
        for e in events:
            send.send_nowait(e)
        send.close()
        sink = Counting()
        done = trio.Event()
        dispatcher = Dispatcher(receive, [sink], lambda _: done.set())
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            await nursery.start(dispatcher.run)
            await done.wait()
        assert sink.count == len(events)
        return time.perf_counter() - start

    floor = _median(lambda: trio.run(direct), reps)
    total = _median(lambda: trio.run(dispatched), reps)
    results.append(("dispatcher + feed, counting sink", n / total, n / floor, total / floor, ""))
    return results


def repaint_cost(events: list[tp.Event]) -> float:
    """The longest repaint (seconds on the Trio thread) while draining every line once."""
    console = Console(file=io.StringIO(), force_terminal=True, width=100, height=40)
    sink = LiveSink(console)

    async def go() -> float:
        for event in events[: len(events) // 2]:  # half done: many lines and a running area
            await sink.handle(event)
        worst = 0.0
        while sink._pending:  # type: ignore[attr-defined]
            start = time.perf_counter()
            sink._frame(budget=FRAME_BUDGET)  # type: ignore[attr-defined]
            worst = max(worst, time.perf_counter() - start)
        return worst

    return trio.run(go)


async def _noop(ctx: tp.StageContext) -> None:
    pass


class _Counting:
    async def handle(self, event: tp.Event, /) -> None:
        pass

    async def aclose(self) -> None:
        pass


def run_with_jsonl(n: int, reps: int, tmp: str) -> tuple[float, float]:
    """A run of `n` no-op stages with a counting sink, without and with a JsonlSink."""
    pipe = tp.Pipeline("noop")
    for i in range(n):
        pipe.add_stage(f"s{i}", _noop)

    def once(with_jsonl: bool) -> float:
        sinks: list[tp.Sink] = [_Counting()]
        if with_jsonl:
            sinks.append(tp.JsonlSink(os.path.join(tmp, "run.jsonl")))

        async def go() -> float:
            start = time.perf_counter()
            result = await tp.run(pipe, sinks=sinks)
            assert result.ok
            return time.perf_counter() - start

        return trio.run(go)

    without, with_ = [], []
    for _ in range(reps):
        without.append(once(False))
        with_.append(once(True))
    return statistics.median(without), statistics.median(with_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000, help="events per sink run")
    parser.add_argument("--stages", type=int, default=50_000, help="stages in the run figure")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(args.n, args.reps, tmp)
        without, with_ = run_with_jsonl(args.stages, max(3, args.reps // 2), tmp)
    print(f"{args.n:,} events, median of {args.reps}")
    print("| sink | events/s | floor events/s | sink/floor time | note |")
    print("|---|---|---|---|---|")
    for label, rate, floor, ratio, note in results:
        print(f"| {label} | {rate:,.0f} | {floor:,.0f} | {ratio:.2f} | {note} |")
    print()
    print(
        f"run of {args.stages:,} no-op stages: {without:.2f} s with a counting sink,"
        f" {with_:.2f} s with a JsonlSink too: {with_ / without:.2f}x"
    )
    print("floors: JSONL json.dumps + write of event_to_dict rows built beforehand;")
    print("console write + flush of the same lines; live view a handle that keeps the event;")
    print("dispatcher a loop calling the sink straight off the channel.")


if __name__ == "__main__":
    main()
