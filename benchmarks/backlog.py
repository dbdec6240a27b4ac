"""What `max_backlog` costs and saves: 100,000 no-op stages, one slow-ish sink.

Each setting runs in a fresh process, timed once, then once more under tracemalloc
for the peak memory:
``python -m benchmarks.backlog``. The sink is the JSONL sink plus a sink that
spends `--sink-us` microseconds per event (a terminal, a network log), so it falls
behind the engine and the backlog builds up.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc

import trio

import trio_pipeline as tp


class Busy:
    """Spends `us` microseconds of CPU per event, without awaiting (like a slow terminal)."""

    def __init__(self, us: float) -> None:
        self.seconds = us / 1e6

    async def handle(self, event: tp.Event, /) -> None:
        end = time.perf_counter() + self.seconds
        while time.perf_counter() < end:
            pass

    async def aclose(self) -> None:
        pass


async def _noop(ctx: tp.StageContext) -> None:
    pass


def _run_once(n: int, max_backlog: int | None, sink_us: float, trace: bool) -> dict[str, float]:
    pipe = tp.Pipeline("noop")
    for i in range(n):
        pipe.add_stage(f"s{i}", _noop)
    slow = Busy(sink_us)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = tp.JsonlSink(f"{tmp}/run.jsonl")

        async def main() -> tp.RunResult:
            return await tp.run(
                pipe, sinks=[jsonl, slow], max_backlog=max_backlog, drain_timeout=600
            )

        if trace:
            tracemalloc.start()
        start = time.perf_counter()
        result = trio.run(main)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        tracemalloc.stop()
    assert result.ok
    assert result.deliveries[slow].delivered == 2 * n + 2
    return {
        "seconds": elapsed,
        "peak_mib": peak / 2**20,
        "peak_backlog": result.deliveries[slow].peak_backlog,
    }


def one(n: int, max_backlog: int | None, sink_us: float) -> dict[str, float]:
    timed = _run_once(n, max_backlog, sink_us, trace=False)
    timed["peak_mib"] = _run_once(n, max_backlog, sink_us, trace=True)["peak_mib"]
    return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--sink-us", type=float, default=20.0)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        limit = None if args.one == "none" else int(args.one)
        print(json.dumps(one(args.n, limit, args.sink_us)))
        return
    print(f"{args.n:,} no-op stages; JSONL sink + a sink spending {args.sink_us:g} us/event")
    print("| max_backlog | wall s | peak backlog | peak traced MiB during the run |")
    print("|---|---|---|---|")
    for limit in ["1000", "10000", "100000", "none"]:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.backlog",
                "--n",
                str(args.n),
                "--sink-us",
                str(args.sink_us),
                "--one",
                limit,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        r = json.loads(out)
        print(f"| {limit} | {r['seconds']:.2f} | {r['peak_backlog']:,} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
