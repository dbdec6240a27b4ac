"""The CLI end to end on a pseudo-terminal: ``python -m benchmarks.cli``.

Two runs from issue 11: a stage logging 100,000 lines, and 100,000 no-op stages.
Each runs as ``trio-pipeline run FILE`` with stdout and stderr on a pty that is
read as fast as it is written (like a terminal emulator), in the live view and
with ``--plain``, with and without ``--jsonl``. Reported: wall time from spawn to
exit (median of `--reps`), whether the JSONL file is complete (`check_log`) and
whether the summary was printed.
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import trio_pipeline as tp
from trio_pipeline._replay import check_log

LINES = """\
import trio_pipeline as tp

pipe = tp.Pipeline("lines")


@pipe.stage
async def chatty(ctx):
    for i in range(100_000):
        ctx.log(f"line {i}")
"""

NOOP = """\
import trio_pipeline as tp

pipe = tp.Pipeline("noop")


async def noop(ctx):
    pass


for i in range(100_000):
    pipe.add_stage(f"s{i}", noop)
"""


def run_on_pty(args: list[str]) -> tuple[float, int, str]:
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="100", LINES="40")
    env.pop("CI", None)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_pipeline", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child and its pty are gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    code = proc.wait()
    elapsed = time.perf_counter() - start
    os.close(master)
    return elapsed, code, b"".join(chunks).decode(errors="replace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(
        "| run | mode | --jsonl | wall s (median) | exit | summary | JSONL complete"
        " | live / plain |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, source in (("100,000-line log", LINES), ("100,000 no-op stages", NOOP)):
            path = os.path.join(tmp, "pipe.py")
            with open(path, "w") as file:
                file.write(textwrap.dedent(source))
            modes = (("plain", False), ("plain", True), ("live", True))
            log = os.path.join(tmp, "run.jsonl")
            times: dict[tuple[str, bool], list[float]] = {mode: [] for mode in modes}
            last: dict[tuple[str, bool], tuple[int, str, str]] = {}
            # Interleaved, so a change in the machine's load hits every mode alike.
            for _ in range(args.reps):
                for mode, jsonl in modes:
                    argv = ["run", path] + (["--plain"] if mode == "plain" else [])
                    argv += ["--jsonl", log] if jsonl else []
                    elapsed, code, out = run_on_pty(argv)
                    times[mode, jsonl].append(elapsed)
                    last[mode, jsonl] = (code, out, _complete(log) if jsonl else "-")
            plain = statistics.median(times["plain", True])
            for mode, jsonl in modes:
                wall = statistics.median(times[mode, jsonl])
                code, out, complete = last[mode, jsonl]
                summary = "yes" if "Summary: " in out and "(forced exit)" not in out else "NO"
                ratio = f"{wall / plain:.2f}" if mode == "live" else ""
                print(
                    f"| {label} | {mode} | {'yes' if jsonl else 'no'} | {wall:.2f} | {code}"
                    f" | {summary} | {complete} | {ratio} |"
                )


def _complete(log: str) -> str:
    try:
        check_log(tp.read_jsonl(log))
    except AssertionError as exc:
        return f"NO: {exc}"
    return "yes"


if __name__ == "__main__":
    main()
