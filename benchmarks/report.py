"""``python -m benchmarks.report``: the HTML run report of a large run, its size and render time.

A layered pipeline of N stages (default 10,000; 1-2 parents each in the previous
layer, random sleeps on a MockClock, 2% flaky stages retried once, a few failures
near the end) runs with a JSONL log; the report is built from the log, and headless
Chromium opens it. Rendered is the page's own ``performance.now()`` at its first
animation frame after load (the ``#check`` mode of the page's script); screenshot
is the wall time of ``chromium --screenshot`` minus that of a blank page.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline._report import write_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]


def pipeline(n: int, *, width: int = 100, seed: int = 1) -> tp.Pipeline:
    rnd = random.Random(seed)
    pipe = tp.Pipeline(f"layered-{n}")

    def make(i: int) -> tp.StageFunction:
        duration = rnd.uniform(0.1, 2.0)
        fails = i >= n - 300 and rnd.random() < 0.01
        flaky = rnd.random() < 0.02

        async def stage(ctx: tp.StageContext) -> None:
            await trio.sleep(duration)
            if fails:
                raise ValueError(f"stage {i} broke")
            if flaky and ctx.attempt == 1:
                raise ConnectionError("flaky")

        return stage

    for i in range(n):
        layer = i // width
        parents = {(layer - 1) * width + rnd.randrange(width) for _ in range(rnd.randint(1, 2))}
        after = [] if layer == 0 else [f"s{j}" for j in sorted(parents)]
        pipe.add_stage(f"s{i}", make(i), after=after, retries=1, retry_delay=0.5)
    return pipe


def chromium_seconds(binary: str, url: str, png: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [binary, *FLAGS, "--window-size=1200,900", f"--screenshot={png}", url],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return time.perf_counter() - start


def rendered_ms(binary: str, url: str) -> float:
    done = subprocess.run(
        [binary, *FLAGS, "--dump-dom", url + "#check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    marker = '{"rendered_ms":'
    start = done.stdout.index(marker) + len(marker)
    return float(done.stdout[start : done.stdout.index(",", start)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="keep the log and the report in DIR")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="tp-report-"))
    folder.mkdir(parents=True, exist_ok=True)
    log, page = folder / "run.jsonl", folder / "report.html"
    pipe = pipeline(args.stages)
    sink = tp.JsonlSink(log)
    clock = trio.testing.MockClock(autojump_threshold=0)
    trio.run(lambda: tp.run(pipe, sinks=[sink], keep_going=True, max_parallel=200), clock=clock)
    start = time.perf_counter()
    events = list(tp.read_jsonl(log))
    read = time.perf_counter() - start
    start = time.perf_counter()
    write_report(events, page)
    render = time.perf_counter() - start
    print(f"stages            {args.stages:,}  ({len(events):,} events)")
    print(f"log               {os.path.getsize(log) / 1e6:.2f} MB, read in {read:.2f} s")
    print(f"report            {os.path.getsize(page) / 1e6:.2f} MB, built in {render:.2f} s")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print("chromium          not installed: no render times")
        return
    blank = folder / "blank.html"
    blank.write_text("<!DOCTYPE html><title>blank</title>")
    rendered = [rendered_ms(binary, page.as_uri()) for _ in range(args.reps)]
    shots = [
        chromium_seconds(binary, page.as_uri(), folder / "report.png")
        - chromium_seconds(binary, blank.as_uri(), folder / "blank.png")
        for _ in range(args.reps)
    ]
    print(f"rendered (page)   median {statistics.median(rendered):.0f} ms, max {max(rendered):.0f}")
    print(f"screenshot - blank median {statistics.median(shots):.2f} s, max {max(shots):.2f}")
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
