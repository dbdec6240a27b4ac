"""The `trio-pipeline` command, run for real in a subprocess (and under a pty for the live view).

Signal tests synchronise on what the child prints (a stage logs "ready"; the CLI
announces each interrupt), never on sleeps; timeouts only bound a failing test.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

import trio_pipeline as tp
from tests.support.report_page import parse
from tests.support.terminal import assert_display_ended
from trio_pipeline._dispatch import DEFAULT_MAX_BACKLOG
from trio_pipeline._replay import check_log

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TIMEOUT = 30.0  # bounds a hung child; a passing test takes well under a second


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CI", None)
    # A child with unbuffered output would hide a missing flush before os._exit.
    env.pop("PYTHONUNBUFFERED", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "100"
    env.update(extra)
    return env


def test_children_buffer_their_output_like_a_users_program_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    assert "PYTHONUNBUFFERED" not in child_env()
    probe = "import sys; print(sys.stdout.line_buffering, sys.stdout.write_through)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=child_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]  # a pipe: block-buffered


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_pipeline", *args]


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=child_env(**env),
        cwd=ROOT,
        timeout=TIMEOUT,
        check=False,
    )


def normalise(text: str) -> list[str]:
    """Output lines with durations replaced, so they compare exactly."""
    return re.sub(r"\d+\.\d\ds", "T", text).splitlines()


def write_file(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


# -- running the examples -----------------------------------------------------------


def test_files_example_succeeds(tmp_path: Path) -> None:
    done = cli("run", "examples/files.py", TRIO_PIPELINE_DEMO_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    lines = normalise(done.stdout)
    finished = sorted(line for line in lines if ": succeeded (T)" in line)
    stages = ["archive", "checksums", "index", "make_inputs", "normalise", "report", "word_counts"]
    assert finished == [f"{name}: succeeded (T)" for name in stages]
    assert lines[-1] == "Summary: 7 succeeded in T"
    assert "report | 12 files, " in done.stdout
    index = json.loads((tmp_path / "output" / "index.json").read_text())
    assert len(index) == 12
    assert all(len(row["sha256"]) == 64 for row in index.values())
    assert (tmp_path / "output" / "normalised.zip").stat().st_size > 0
    assert done.stderr == ""


def test_streaming_examples_run_and_show_item_counts() -> None:
    done = cli("run", "examples/crawl.py")
    assert done.returncode == 0, done.stderr
    lines = normalise(done.stdout)
    counts = {line.split(":")[0]: line for line in lines if "[" in line}
    assert counts["urls"].startswith("urls: succeeded [0 in, 40 out, ")
    assert counts["fetch"].startswith("fetch: succeeded [40 in, 40 out, ")
    assert counts["links"].startswith("links: succeeded [40 in, 120 out, ")
    assert counts["save"].startswith("save: succeeded [120 in, 0 out, ")
    assert lines[-1] == "Summary: 5 succeeded in T"
    done = cli("run", "examples/sizes.py")
    assert done.returncode == 0, done.stderr
    assert normalise(done.stdout)[-1] == "Summary: 3 succeeded in T"


KEEP_GOING_LINES = {
    "checkout | at commit 3f2a9c1",
    "checkout: succeeded (T)",
    "lint: succeeded (T)",
    "unit_tests | 128 passed",
    "unit_tests: succeeded (T)",
    "docs: succeeded (T)",
    "fetch_mirror: failed (ConnectionError: mirror.invalid is unreachable"
    " (attempt 2; on purpose); 2 attempts)",
    "fetch_mirror: attempt 1 failed (ConnectionError: mirror.invalid is unreachable"
    " (attempt 1; on purpose)); retrying in T",
    "package: blocked (upstream 'fetch_mirror' failed)",
    "publish: blocked (upstream 'fetch_mirror' failed)",
}


def test_keep_going_example_exit_1_with_one_traceback() -> None:
    done = cli("run", "examples/keep_going.py", "--keep-going")
    assert done.returncode == 1
    lines = normalise(done.stdout)
    assert lines[-1] == "Summary: 4 succeeded, 1 failed, 2 blocked in T"
    assert set(lines[:-1]) == KEEP_GOING_LINES
    assert len(lines) == len(KEEP_GOING_LINES) + 1
    # The failure's traceback: once, at the end, starting in the stage's own code.
    assert done.stderr.count("Traceback (most recent call last)") == 1
    assert done.stderr.startswith("\n--- stage 'fetch_mirror' failed (last of 2 attempts) ---\n")
    assert 'keep_going.py", line' in done.stderr
    assert "_engine.py" not in done.stderr
    assert done.stderr.rstrip().endswith(
        "ConnectionError: mirror.invalid is unreachable (attempt 2; on purpose)"
    )


KEYBOARD_INTERRUPT_IN_A_STAGE = """\
import trio
import trio_pipeline as tp

pipe = tp.Pipeline("ki")


@pipe.stage
async def dies(ctx):
    await trio.sleep(0.1)
    raise KeyboardInterrupt


@pipe.stage
async def long(ctx):
    await trio.sleep(30)


@pipe.stage(after=["long"], trigger=tp.Trigger.ALWAYS)
async def cleanup(ctx):
    ctx.log("cleaning up")
"""


def test_a_stage_s_keyboard_interrupt_ends_the_run_with_one_line(tmp_path: Path) -> None:
    # Regression (issue 10): it printed a 47-line exception group and exited 1.
    path = write_file(tmp_path, "ki.py", KEYBOARD_INTERRUPT_IN_A_STAGE)
    done = cli("run", path, "--plain")
    assert done.returncode == 130
    assert done.stderr == "trio-pipeline: error: interrupted\n"
    assert "cleanup | cleaning up" in done.stdout  # the teardown stage still ran
    assert done.stdout.splitlines()[-1].startswith("Summary: 1 succeeded, 2 cancelled in ")


def test_fail_fast_cancels_the_rest() -> None:
    done = cli("run", "examples/keep_going.py")
    assert done.returncode == 1
    lines = normalise(done.stdout)
    # fetch_mirror fails (twice) while unit_tests runs; docs waits for unit_tests.
    assert {"unit_tests: cancelled (fail-fast stop)", "docs: cancelled (fail-fast stop)"} <= set(
        lines
    )
    assert re.fullmatch(
        r"Summary: [12] succeeded, 1 failed, 2 blocked, [23] cancelled in T", lines[-1]
    )


def test_quiet_prints_only_the_summary_and_errors() -> None:
    done = cli("run", "examples/keep_going.py", "-k", "--quiet")
    assert done.returncode == 1
    assert normalise(done.stdout) == ["Summary: 4 succeeded, 1 failed, 2 blocked in T"]
    assert done.stderr.count("Traceback (most recent call last)") == 1


def test_jsonl_file_is_complete(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    done = cli("run", "examples/keep_going.py", "-k", "--jsonl", str(path))
    assert done.returncode == 1
    rows = check_jsonl(path, stages=7)
    assert rows[-1]["state"] == "closed"
    assert rows[-1]["counts"] == {
        "succeeded": 4,
        "failed": 1,
        "blocked": 2,
        "skipped": 0,
        "cancelled": 0,
        "cached": 0,
    }
    assert [r["stage"] for r in rows if r["type"] == "StageRetrying"] == ["fetch_mirror"]


def check_jsonl(path: Path, *, stages: int) -> list[dict[str, object]]:
    """Every event once, in order: RunStarted first, RunFinished last, one StageFinished each."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["seq"] for row in rows] == list(range(len(rows)))
    assert rows[0]["type"] == "RunStarted"
    assert rows[-1]["type"] == "RunFinished"
    assert len({row["run_id"] for row in rows}) == 1
    finished = [row["stage"] for row in rows if row["type"] == "StageFinished"]
    assert len(finished) == len(set(finished)) == stages
    return rows


# -- list, dry run, graph ---------------------------------------------------------------

FILES_ORDER = """\
pipeline 'files': 7 stages in start order
  1. make_inputs
  2. word_counts  after make_inputs
  3. checksums    after make_inputs
  4. normalise    after make_inputs
  5. index        after word_counts, checksums
  6. archive      after normalise
  7. report       after index, archive
"""


FILES_DRY_RUN = """\
dry run of pipeline 'files': 7 stages in start order; nothing runs
  #  stage        after                   runs in  retries  timeout  trigger      pools
  1  make_inputs  -                       task     0        -        all_success  -
  2  word_counts  make_inputs             task     0        -        all_success  -
  3  checksums    make_inputs             task     0        -        all_success  -
  4  normalise    make_inputs             task     0        -        all_success  -
  5  index        word_counts, checksums  task     0        -        all_success  -
  6  archive      normalise               task     0        -        all_success  -
  7  report       index, archive          task     0        -        all_success  -
"""


def test_dry_run_prints_what_would_run_and_runs_nothing(tmp_path: Path) -> None:
    done = cli("run", "examples/files.py", "--dry-run", TRIO_PIPELINE_DEMO_DIR=str(tmp_path))
    assert (done.returncode, done.stdout, done.stderr) == (0, FILES_DRY_RUN, "")
    assert list(tmp_path.iterdir()) == []


def test_list(tmp_path: Path) -> None:
    assert cli("list", "examples/files.py").stdout == FILES_ORDER
    two = write_file(tmp_path, "two.py", TWO_PIPELINES)
    done = cli("list", two)
    assert done.returncode == 0
    assert done.stdout == (
        "pipeline 'build': 1 stage in start order\n"
        "  1. compile\n"
        "\n"
        "pipeline 'deploy': 3 stages in start order\n"
        "  1. upload\n"
        '  2. say "hi"  after upload\n'
        '  3. notify    after upload, say "hi"\n'
    )
    assert cli("list", f"{two}:build").stdout == (
        "pipeline 'build': 1 stage in start order\n  1. compile\n"
    )


TWO_PIPELINES = """\
import trio_pipeline as tp

build = tp.Pipeline("build")
deploy = tp.Pipeline("deploy")
same_as_build = build

async def step(ctx):
    return None

def helper():
    pass

build.add_stage("compile", step)
deploy.add_stage("notify", step, after=["upload", 'say "hi"'])
deploy.add_stage("upload", step)
deploy.add_stage('say "hi"', step, after="upload")
"""


def test_graph_mermaid_and_dot(tmp_path: Path) -> None:
    two = write_file(tmp_path, "two.py", TWO_PIPELINES)
    mermaid = cli("graph", f"{two}:deploy")
    assert mermaid.returncode == 0
    assert mermaid.stdout == (
        "flowchart TD\n"
        '    s0["notify"]\n'
        '    s1["upload"]\n'
        '    s2["say #quot;hi#quot;"]\n'
        "    s1 --> s0\n"
        "    s2 --> s0\n"
        "    s1 --> s2\n"
    )
    dot = cli("graph", f"{two}:deploy", "--format", "dot")
    assert dot.returncode == 0
    assert dot.stdout == (
        'digraph "deploy" {\n'
        "    rankdir=TB;\n"
        '    "notify";\n'
        '    "upload";\n'
        '    "say \\"hi\\"";\n'
        '    "upload" -> "notify";\n'
        '    "say \\"hi\\"" -> "notify";\n'
        '    "upload" -> "say \\"hi\\"";\n'
        "}\n"
    )


# -- exit code 2 ----------------------------------------------------------------------

BAD_PIPELINES = {
    "cycle.py": (
        """\
        import trio_pipeline as tp
        pipe = tp.Pipeline("cyc")
        async def f(ctx): pass
        pipe.add_stage("a", f, after="c")
        pipe.add_stage("b", f, after="a")
        pipe.add_stage("c", f, after="b")
        """,
        "invalid pipeline: pipeline 'cyc' in {path}: dependency cycle: a -> b -> c -> a",
    ),
    "unknown.py": (
        """\
        import trio_pipeline as tp
        pipe = tp.Pipeline("unk")
        async def f(ctx): pass
        pipe.add_stage("fetch", f)
        pipe.add_stage("parse", f, after="fetc")
        """,
        "invalid pipeline: pipeline 'unk' in {path}: stage 'parse' depends on unknown stage"
        " 'fetc' (did you mean 'fetch'?)",
    ),
    "duplicate.py": (
        """\
        import trio_pipeline as tp
        pipe = tp.Pipeline("dup")
        async def f(ctx): pass
        pipe.add_stage("fetch", f)
        pipe.add_stage("fetch", f)
        """,
        "invalid pipeline: {path}:5: stage 'fetch' is already defined in pipeline 'dup'",
    ),
    "none.py": (
        "x = 1\n",
        "{path} defines no trio_pipeline.Pipeline at module level"
        " (e.g. pipe = trio_pipeline.Pipeline('name'))",
    ),
    "two.py": (
        TWO_PIPELINES,
        "{path} defines 2 pipelines (build, deploy); choose one with {path}:NAME",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_PIPELINES))
@pytest.mark.parametrize("subcommand", ["run", "graph"])
def test_invalid_pipeline_exit_2_names_the_culprit(
    tmp_path: Path, name: str, subcommand: str
) -> None:
    source, message = BAD_PIPELINES[name]
    path = write_file(tmp_path, name, source)
    done = cli(subcommand, path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"trio-pipeline: error: {message.format(path=path)}\n"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("{two}:nope", "{two} has no pipeline 'nope'; its pipelines: build, deploy\n"),
        ("{two}:biuld", "{two} has no pipeline 'biuld' (did you mean 'build'?);"),
        ("{two}:helper", "{two}:helper is a function, not a trio_pipeline.Pipeline;"),
        ("{tmp}/missing.py", "{tmp}/missing.py: no such file"),
    ],
)
def test_bad_target_exit_2(tmp_path: Path, target: str, message: str) -> None:
    two = write_file(tmp_path, "two.py", TWO_PIPELINES)
    fill = {"two": two, "tmp": str(tmp_path)}
    done = cli("run", target.format(**fill))
    assert done.returncode == 2
    assert done.stderr.startswith(f"trio-pipeline: error: {message.format(**fill)}")
    assert "Traceback" not in done.stderr


def test_selecting_one_of_several_pipelines(tmp_path: Path) -> None:
    two = write_file(tmp_path, "two.py", TWO_PIPELINES)
    done = cli("run", f"{two}:deploy")
    assert done.returncode == 0
    assert normalise(done.stdout)[-1] == "Summary: 3 succeeded in T"


def test_file_raising_while_loading_shows_its_traceback(tmp_path: Path) -> None:
    path = write_file(tmp_path, "raises.py", "import trio\nraise RuntimeError('at import')\n")
    done = cli("run", path)
    assert done.returncode == 2
    assert done.stderr == (
        f"trio-pipeline: error: {path} raised RuntimeError while loading\n"
        "Traceback (most recent call last):\n"
        f'  File "{path}", line 2, in <module>\n'
        "    raise RuntimeError('at import')\n"
        "RuntimeError: at import\n"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["run", "examples/files.py", "-j", "0"],
        ["run", "examples/files.py", "--grace", "-1"],
        ["graph", "examples/files.py", "--format", "png"],
        ["run"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    done = cli(*args)
    assert done.returncode == 2
    # One line naming the culprit (it printed a usage block of up to 9 lines first).
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert re.fullmatch(
        r"trio-pipeline( \w+)?: error: .+ \(see trio-pipeline( \w+)? --help\)\n", done.stderr
    )


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["run", "examples/files.py", "--plian"],
            "trio-pipeline run: error: unrecognized arguments: --plian; did you mean --plain?"
            " (see trio-pipeline run --help)",
        ),
        (
            ["run", "examples/files.py", "--teardown=3"],
            "trio-pipeline run: error: unrecognized arguments: --teardown=3;"
            " did you mean --teardown-timeout? (see trio-pipeline run --help)",
        ),
        (  # STAGE is optional: argparse called it required too
            ["run"],
            "trio-pipeline run: error: the following arguments are required: FILE[:NAME]"
            " (see trio-pipeline run --help)",
        ),
    ],
)
def test_a_bad_command_line_is_one_line_with_a_suggestion(
    in_process: InProcess, args: list[str], line: str
) -> None:
    code, out, err = in_process(*args)
    assert (code, out) == (2, "")
    assert err.splitlines() == [line]


def test_a_file_that_is_not_python_is_refused_before_it_runs(
    in_process: InProcess, tmp_path: Path
) -> None:
    # Regression: a log passed to `run` was executed as Python: "raised NameError
    # while loading" and a traceback of JSON.
    log = tmp_path / "run.jsonl"
    log.write_text('{"type": "RunStarted", "error": null}\n')
    code, out, err = in_process("run", str(log))
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"trio-pipeline: error: {log}: not a Python file (a pipeline file is a .py file);"
        f" a run's log: trio-pipeline check {log}"
    ]
    notes = tmp_path / "notes.md"
    notes.write_text("# not a pipeline\n")
    assert in_process("list", str(notes))[2] == (
        f"trio-pipeline: error: {notes}: not a Python file (a pipeline file is a .py file)\n"
    )


def test_unwritable_jsonl_path_exit_2(tmp_path: Path) -> None:
    done = cli("run", "examples/keep_going.py", "--jsonl", str(tmp_path / "no" / "x.jsonl"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"trio-pipeline: error: --jsonl {tmp_path}/no/x.jsonl: ")
    assert done.stdout == ""


MARKUP = """\
import trio_pipeline as tp

pipe = tp.Pipeline("markup")

@pipe.stage
async def shout(ctx):
    ctx.log("[bold]not bold[/bold]")
    raise ValueError("[red]not red[/red] [link=x]")
"""


def test_failure_text_is_printed_verbatim(tmp_path: Path) -> None:
    path = write_file(tmp_path, "markup.py", MARKUP)
    done = cli("run", path)
    assert done.returncode == 1
    assert normalise(done.stdout) == [
        "shout | [bold]not bold[/bold]",
        "shout: failed (ValueError: [red]not red[/red] [link=x])",
        "Summary: 1 failed in T",
    ]
    assert done.stderr.rstrip().endswith("ValueError: [red]not red[/red] [link=x]")


# -- signals ------------------------------------------------------------------------

SIGNALLED = """\
import os

import trio

import trio_pipeline as tp

MODE = os.environ["SIG_MODE"]
pipe = tp.Pipeline("sig")

@pipe.stage
async def quick(ctx):
    return 0

@pipe.stage(after=quick)
async def work(ctx):
    ctx.log("ready")
    if MODE == "release":  # finishes when the test writes a line to stdin
        async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
            await stdin.receive_some()
    elif MODE == "forever":
        await trio.sleep_forever()
    else:  # "stubborn": ignores cancellation
        with trio.CancelScope(shield=True):
            await trio.sleep_forever()
    return 1

@pipe.stage(after=work)
async def later(ctx):
    return 2
"""


class Child:
    """A CLI child process whose stdout and stderr are read line by line by two threads."""

    def __init__(self, args: list[str], *, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            command(*args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self._queues: dict[str, queue.Queue[str | None]] = {
            "out": queue.Queue(),
            "err": queue.Queue(),
        }
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump, args=(stream, key), daemon=True)
            for key, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[str], key: str) -> None:
        for line in stream:
            self._queues[key].put(line.rstrip("\n"))
        self._queues[key].put(None)

    def wait_for(self, key: str, needle: str) -> str:
        """Block until a line of `key` ("out"/"err") contains `needle`; return it."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            line = self._queues[key].get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"{key} ended without {needle!r}: {self.lines[key]}")
            self.lines[key].append(line)
            if needle in line:
                return line

    def finish(self) -> int:
        code = self.proc.wait(timeout=TIMEOUT)
        for key, q in self._queues.items():
            while (line := q.get(timeout=TIMEOUT)) is not None:
                self.lines[key].append(line)
        return code

    def close(self) -> None:
        """Kill the child if it still runs, then release its pipes and reader threads."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for thread in self._threads:
            thread.join(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


Spawn = Callable[..., "Child"]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    children: list[Child] = []
    path = write_file(tmp_path, "sig.py", SIGNALLED)

    def start(mode: str, *extra: str) -> Child:
        jsonl = str(tmp_path / "events.jsonl")
        child = Child(["run", path, "--jsonl", jsonl, *extra], env=child_env(SIG_MODE=mode))
        children.append(child)
        child.wait_for("out", "work | ready")
        return child

    yield start
    for child in children:
        child.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_one_signal_closes_gracefully(spawn: Spawn, tmp_path: Path, signum: int) -> None:
    child: Child = spawn("release")
    child.proc.send_signal(signum)
    what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    notice = child.wait_for("err", "closing")
    assert notice == (
        f"trio-pipeline: {what}: closing: no new stage will start; waiting for"
        " 1 running stage (work). Press Ctrl-C again to cancel them."
    )
    child.wait_for("out", "later: cancelled (close requested)")  # never started
    assert child.proc.stdin is not None
    child.proc.stdin.write("go\n")
    child.proc.stdin.flush()
    assert child.finish() == 130
    assert normalise("\n".join(child.lines["out"]))[-3:] == [
        "later: cancelled (close requested)",
        "work: succeeded (T)",  # the running stage was allowed to finish
        "Summary: 2 succeeded, 1 cancelled in T",
    ]
    rows = check_jsonl(tmp_path / "events.jsonl", stages=3)
    assert rows[-1]["state"] == "closed"


def test_two_signals_cancel(spawn: Spawn, tmp_path: Path) -> None:
    child: Child = spawn("forever")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("err", "closing")
    # Trio coalesces a signal still pending, so the second waits for the first's notice.
    child.proc.send_signal(signal.SIGINT)
    notice = child.wait_for("err", "cancelling")
    assert notice == (
        "trio-pipeline: Ctrl-C again: cancelling 1 running stage (work); exiting within 5s"
        " even if a stage ignores cancellation. Press Ctrl-C again to exit now."
    )
    assert child.finish() == 130
    assert normalise("\n".join(child.lines["out"]))[-3:] == [
        "later: cancelled (close requested)",
        "work: cancelled (run cancelled)",
        "Summary: 1 succeeded, 2 cancelled in T",
    ]
    assert child.lines["err"] == [child.lines["err"][0], notice]
    rows = check_jsonl(tmp_path / "events.jsonl", stages=3)
    assert rows[-1]["state"] == "cancelled"


def test_stage_ignoring_cancellation_cannot_outlive_the_grace_period(spawn: Spawn) -> None:
    child: Child = spawn("stubborn", "--grace", "0.2")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("err", "closing")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("err", "cancelling")
    assert child.finish() == 130
    assert child.lines["err"][-1] == (
        "trio-pipeline: stages still running 0.2s after cancellation; still running: work."
        " The run did not finish: no RunFinished event"
    )
    assert normalise(child.lines["out"][-1]) == [
        "Summary: 1 succeeded, 1 cancelled, 1 still running in T (forced exit)"
    ]


@pytest.mark.parametrize(
    ("mode", "state", "work"),
    [("forever", "cancelled", "cancel"), ("stubborn", "incomplete log (no RunFinished)", "run")],
)
def test_report_is_written_after_ctrl_c_twice_and_after_a_forced_exit(
    spawn: Spawn, tmp_path: Path, mode: str, state: str, work: str
) -> None:
    report = tmp_path / "report.html"
    child: Child = spawn(mode, "--report", str(report), "--grace", "0.2")
    for needle in ("closing", "cancelling"):
        child.proc.send_signal(signal.SIGINT)
        child.wait_for("err", needle)
    assert child.finish() == 130
    assert "written to " + str(report) in child.lines["err"][-1]
    html = report.read_text()
    assert f'id="tp-state">{state}<' in html
    assert [cls for cls, _ in parse(html).rows["work"]["bars"]] == [work]


def test_third_signal_exits_at_once(spawn: Spawn) -> None:
    child: Child = spawn("stubborn", "--grace", "600")
    for needle in ("closing", "cancelling"):
        child.proc.send_signal(signal.SIGINT)
        child.wait_for("err", needle)
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 130
    assert child.lines["err"][-1].startswith(
        "trio-pipeline: Ctrl-C a third time: exiting now; still running: work."
    )


# -- the live view, under a pseudo-terminal ------------------------------------------


def run_in_pty(
    args: list[str],
    *,
    env: dict[str, str],
    on_output: Callable[[subprocess.Popen[bytes], str], None] | None = None,
) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pty; return its exit code and raw output.

    `on_output(proc, text_so_far)` is called after each read (to send signals).
    """
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        command(*args), stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, cwd=ROOT
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer has exited
                    break
                if not data:
                    break
                chunks.append(data)
                if on_output is not None:
                    on_output(proc, b"".join(chunks).decode(errors="replace"))
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=TIMEOUT)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode()


def test_live_view_on_a_terminal_ends_cleanly() -> None:
    code, raw = run_in_pty(["run", "examples/keep_going.py", "-k"], env=child_env())
    assert code == 1
    # unit_tests runs for longer than two repaints: its row shows its elapsed time.
    uncoloured = re.sub(r"\x1b\[[0-9;]*m", "", raw)
    assert re.search(r"unit_tests +\d\.\ds", uncoloured)
    assert re.search(r"\d/7 pending \d · running [1-9] · done \d", uncoloured)
    lines = normalise("\n".join(assert_display_ended(raw)))
    assert lines[0] == "Running 'release': 7 stages"
    assert "✓ checkout: succeeded (T)" in lines
    assert "⊘ publish: blocked (upstream 'fetch_mirror' failed)" in lines
    assert "↻ fetch_mirror: attempt 1 failed (ConnectionError: mirror.invalid is unreachable" in (
        "\n".join(lines)
    )
    summary = lines.index("Summary: 4 succeeded, 1 failed, 2 blocked in T")
    assert lines[summary + 2] == "--- stage 'fetch_mirror' failed (last of 2 attempts) ---"
    assert lines[-1] == "ConnectionError: mirror.invalid is unreachable (attempt 2; on purpose)"


def test_live_view_ends_cleanly_after_two_ctrl_c(tmp_path: Path) -> None:
    path = write_file(tmp_path, "sig.py", SIGNALLED)
    sent: list[str] = []

    def interrupt(proc: subprocess.Popen[bytes], text: str) -> None:
        # Second Ctrl-C only once the first was announced (trio coalesces pending signals).
        for trigger in ("work | ready", "again to cancel"):
            if trigger in text and trigger not in sent:
                sent.append(trigger)
                proc.send_signal(signal.SIGINT)

    code, raw = run_in_pty(["run", path], env=child_env(SIG_MODE="forever"), on_output=interrupt)
    assert code == 130
    lines = normalise("\n".join(assert_display_ended(raw)))
    assert lines[-1] == "Summary: 1 succeeded, 2 cancelled in T"
    assert "■ work: cancelled (run cancelled)" in lines
    assert any("Ctrl-C again: cancelling 1 running stage (work)" in line for line in lines)


TEARDOWN = """\
import os
import time

import trio

import trio_pipeline as tp

SECONDS = float(os.environ["TEARDOWN_SECONDS"])
pipe = tp.Pipeline("td")

@pipe.stage
async def work(ctx):
    ctx.log("ready")
    await trio.sleep_forever()

@pipe.stage(after=work, trigger=tp.Trigger.ALWAYS)
async def cleanup(ctx):
    await trio.sleep(SECONDS)
    ctx.log("cleaned up")

script = "echo $$ > \\"$0\\"; echo started; sleep \\"$1\\"; echo done"
pipe.add_command(
    "unmount",
    ["sh", "-c", script, os.environ["PID_FILE"], str(SECONDS)],
    after=[work],
    trigger=tp.Trigger.ALWAYS,
)

if os.environ.get("WITH_PROCESS"):
    def crunch(snap):
        with open(os.environ["PID_FILE"] + ".worker", "w") as file:
            file.write(str(os.getpid()))
        print("crunching", flush=True)
        time.sleep(SECONDS)

    pipe.add_stage(
        "crunch",
        crunch,
        executor=tp.ProcessExecutor(limit=1),
        after=[work],
        trigger=tp.Trigger.ALWAYS,
    )
"""


def _interrupter(*steps: tuple[str, ...]) -> Callable[[subprocess.Popen[bytes], str], None]:
    """An `on_output` that sends SIGINT once all of a step's needles are on screen, in turn."""
    pending = list(steps)

    def interrupt(proc: subprocess.Popen[bytes], text: str) -> None:
        if pending and all(needle in text for needle in pending[0]):
            pending.pop(0)
            proc.send_signal(signal.SIGINT)

    return interrupt


def _teardown_run(
    tmp_path: Path, seconds: float, *extra: str, interrupts: int, **more: str
) -> tuple[int, str]:
    path = write_file(tmp_path, "td.py", TEARDOWN)
    env = child_env(TEARDOWN_SECONDS=str(seconds), PID_FILE=str(tmp_path / "pid"), **more)
    running: tuple[str, ...] = ("again to exit now", "unmount | started")
    if more.get("WITH_PROCESS"):
        running += ("crunching",)
    steps = [("work | ready",), ("again to cancel them",), running]
    args = ["run", path, "--jsonl", str(tmp_path / "events.jsonl"), *extra]
    return run_in_pty(args, env=env, on_output=_interrupter(*steps[:interrupts]))


def test_two_ctrl_c_wait_for_the_teardown_stages_past_the_grace(tmp_path: Path) -> None:
    # Regression: the second Ctrl-C's --grace timer force-exited 0.2s later, killing
    # the teardown stages mid-way (no RunFinished, the command's process orphaned).
    code, raw = _teardown_run(tmp_path, 1.5, "--grace", "0.2", interrupts=2)
    assert code == 130
    lines = normalise("\n".join(assert_display_ended(raw)))
    closing = next(line for line in lines if "Ctrl-C: closing" in line)
    assert closing == (
        "trio-pipeline: Ctrl-C: closing: no new stage will start but teardown stages cleanup,"
        " unmount; waiting for 1 running stage (work). Press Ctrl-C again to cancel them."
    )
    notice = next(line for line in lines if "Ctrl-C again: cancelling" in line)
    assert notice == (
        "trio-pipeline: Ctrl-C again: cancelling 1 running stage (work); teardown stages"
        " cleanup, unmount may run 30s more (--teardown-timeout); exiting within 30.2s even"
        " if a stage ignores cancellation. Press Ctrl-C again to exit now."
    )
    assert "  cleanup | cleaned up" in lines
    assert "  unmount | done" in lines
    assert lines[-1] == "Summary: 2 succeeded, 1 cancelled in T"
    assert not any("forced exit" in line for line in lines)
    rows = check_jsonl(tmp_path / "events.jsonl", stages=3)
    assert rows[-1]["state"] == "cancelled"


def test_teardown_timeout_bounds_the_teardown_stages(tmp_path: Path) -> None:
    code, raw = _teardown_run(
        tmp_path, 30, "--plain", "--grace", "0.2", "--teardown-timeout", "0.5", interrupts=2
    )
    assert code == 130
    lines = normalise(raw.replace("\r\n", "\n"))
    assert "cleanup: cancelled (teardown_timeout passed)" in lines
    assert "unmount: cancelled (teardown_timeout passed)" in lines
    assert lines[-1] == "Summary: 3 cancelled in T"
    check_jsonl(tmp_path / "events.jsonl", stages=3)
    _assert_gone(int((tmp_path / "pid").read_text()))


def test_a_third_ctrl_c_exits_now_and_kills_the_child_processes(tmp_path: Path) -> None:
    # Regression: os._exit left the teardown command's process and the process
    # stage's worker running, orphaned.
    code, raw = _teardown_run(tmp_path, 30, "--plain", interrupts=3, WITH_PROCESS="1")
    assert code == 130
    lines = normalise(raw.replace("\r\n", "\n"))
    assert lines[-4:] == [
        "trio-pipeline: Ctrl-C a third time: exiting now; still running: cleanup, unmount,"
        " crunch. The run did not finish: no RunFinished event",
        "trio-pipeline: killed the processes of command stage unmount",
        "trio-pipeline: killed 1 worker process",
        "Summary: 1 cancelled, 3 still running in T (forced exit)",
    ]
    _assert_gone(int((tmp_path / "pid").read_text()))
    _assert_gone(int((tmp_path / "pid.worker").read_text()))


def _assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    pytest.fail(f"the command's process {pid} outlived the run")


@pytest.mark.parametrize(("flag", "env"), [("--plain", {}), ("-k", {"CI": "true"})])
def test_plain_output_on_a_terminal(flag: str, env: dict[str, str]) -> None:
    code, raw = run_in_pty(["run", "examples/keep_going.py", "-k", flag], env=child_env(**env))
    assert code == 1
    assert "\x1b[" not in raw
    assert "Summary: 4 succeeded, 1 failed, 2 blocked in" in raw


CHATTY = """\
import trio_pipeline as tp

pipe = tp.Pipeline("chatty")


@pipe.stage
async def chatty(ctx):
    for i in range(100_000):
        ctx.log(f"line {i}")
"""


def test_a_100000_line_log_on_a_terminal_loses_nothing(tmp_path: Path) -> None:
    # Issue 11: the live view used to fall so far behind that the drain deadline cut
    # every sink: no summary, exit 1, a truncated JSONL file.
    path = write_file(tmp_path, "chatty.py", CHATTY)
    log = tmp_path / "run.jsonl"
    code, raw = run_in_pty(["run", path, "--jsonl", str(log)], env=child_env())
    assert code == 0, raw[-2000:]
    assert "cut off" not in raw
    uncoloured = re.sub(r"\x1b\[[0-9;]*m", "", raw)
    assert uncoloured.count("  chatty | line ") == 100_000
    assert re.search(r"Summary: 1 succeeded in \d+\.\d\ds", uncoloured)
    assert raw.rfind("\x1b[?25h") > raw.rfind("\x1b[?25l")  # the cursor is back
    events = list(tp.read_jsonl(log))
    assert len(check_log(events)) == 100_004


def test_check_and_replay_commands(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    cli("run", "examples/keep_going.py", "-k", "--jsonl", str(log))
    done = cli("check", str(log))
    assert done.returncode == 0
    assert done.stdout.startswith(f"{log}: ok: ")
    log.write_text("\n".join(log.read_text().splitlines()[:-1]) + "\n")
    done = cli("check", str(log))
    assert done.returncode == 1
    assert "invariant broken: RunFinished last" in done.stdout
    done = cli("replay", str(log), "--speed", "0")
    assert done.returncode == 0
    assert "fetch_mirror: failed" in done.stdout
    done = cli("replay", str(log), "--speed", "-1")
    assert done.returncode == 2
    assert "expected a speed factor >= 0" in done.stderr


# -- what a new user hits (issue 12) ----------------------------------------------------------
# In process where the subprocess adds nothing (an interpreter start per call is most of
# the time of a CLI test): `main` is called as the entry point calls it.


@pytest.fixture
def in_process(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., tuple[int, str, str]]:
    from trio_pipeline._cli import main

    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [*sys.path])  # a loaded file's folder goes first on it

    def call(*args: str) -> tuple[int, str, str]:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return call


InProcess = Callable[..., tuple[int, str, str]]

WORKERS = """\
import os
import trio_pipeline as tp

pipe = tp.Pipeline("workers")

def helper(x):
    return x * 2

class Result:
    def __init__(self, value):
        self.value = value

def crunch(snap):
    return helper(21)

def scale(snap):
    return Result(snap.inputs["crunch"] + 1).value

pipe.add_stage("crunch", crunch, executor=tp.ProcessExecutor(limit=1))
pipe.add_stage("scale", scale, after=["crunch"], executor=tp.DaskExecutor(os.environ["DASK"]))

@pipe.stage(after=["scale"])
async def report(ctx):
    ctx.log(f"scaled {ctx.inputs['scale']}")
"""


def test_process_and_dask_stages_defined_in_a_pipeline_file(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("trio_parallel")
    path = write_file(tmp_path, "workers.py", WORKERS)
    # Workers in this process: they cannot import the CLI's module for the file either.
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        done = cli("run", path, "--plain", DASK=cluster.scheduler_address)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "report | scaled 43" in done.stdout
    assert "Summary: 3 succeeded in" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep"], "unrecognized arguments: --keep"),
        (["--dry"], "unrecognized arguments: --dry"),
        (["--json"], "--json goes with --dry-run"),
        (["-k", "--fail-fast"], "argument --fail-fast: not allowed with argument -k/--keep-going"),
        (["--only"], "--only needs the STAGEs to run"),
        (["--drain-timeout", "-1"], "expected a number of seconds >= 0"),
        (["--param", "novalue"], "expected KEY=VALUE, got 'novalue'"),
    ],
)
def test_no_abbreviations_and_bad_run_options_exit_2(
    in_process: InProcess, args: list[str], message: str
) -> None:
    code, out, err = in_process("run", "examples/keep_going.py", *args)
    assert (code, out) == (2, "")
    assert message in err


NAMED = """\
import trio_pipeline as tp

build = tp.Pipeline("build-all")
deploy = tp.Pipeline("deploy")

async def step(ctx):
    return None

build.add_stage("compile", step)
deploy.add_stage("upload", step)
"""


def test_file_name_takes_the_variable_or_the_pipelines_own_name(
    in_process: InProcess, tmp_path: Path
) -> None:
    path = write_file(tmp_path, "named.py", NAMED)
    for name in ("build", "build-all"):
        code, out, err = in_process("run", f"{path}:{name}")
        assert code == 0, err
        assert normalise(out) == ["compile: succeeded (T)", "Summary: 1 succeeded in T"]
    assert in_process("list", f"{path}:build-all")[1].startswith("pipeline 'build-all': 1 stage")
    code, out, err = in_process("run", f"{path}:build_all")
    assert code == 2
    assert err == (
        f"trio-pipeline: error: {path} has no pipeline 'build_all' (did you mean 'build-all'?);"
        " its pipelines: build-all (variable build), deploy\n"
    )


def test_summary_time_is_the_wall_time_until_the_output_ends(
    in_process: InProcess, tmp_path: Path
) -> None:
    path = write_file(
        tmp_path,
        "slow_load.py",
        """\
        import time
        import trio_pipeline as tp
        time.sleep(0.6)  # a slow import, as a heavy library's
        pipe = tp.Pipeline("p")

        @pipe.stage
        async def quick(ctx):
            return 1
        """,
    )
    started = time.monotonic()
    out = in_process("run", path)[1]
    waited = time.monotonic() - started
    match = re.fullmatch(r"Summary: 1 succeeded in (\d+\.\d\d)s", out.splitlines()[-1])
    assert match is not None, out
    assert 0.6 <= float(match[1]) <= waited + 0.005  # printed rounded to 0.01


def test_an_unwritable_jsonl_file_is_said_once_and_exits_1(
    in_process: InProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_PIPELINE_DEMO_DIR", str(tmp_path))
    code, _, err = in_process("run", "examples/files.py", "--jsonl", "/dev/full", "-q")
    assert code == 1
    assert err == (
        "trio-pipeline: error: --jsonl /dev/full: writing failed (No space left on device);"
        " the file is incomplete (exit code 1)\n"
    )


def test_help_documents_the_exit_codes(in_process: InProcess) -> None:
    for args in (["--help"], ["run", "--help"]):
        code, out, _ = in_process(*args)
        assert code == 0
        text = " ".join(out.split())
        assert "1 a stage failed, was blocked or cancelled; or an event sink failed" in text
        assert "the --jsonl file could not be written" in text
        assert "130 interrupted" in text


TARGETS = """\
import json
import trio_pipeline as tp

pipe = tp.Pipeline("targets")

async def step(ctx):
    ctx.log(json.dumps({"inputs": sorted(ctx.inputs), "params": dict(ctx.params)}))

pipe.add_stage("a", step)
pipe.add_stage("b", step, after=["a"])
pipe.add_stage("c", step, after=["b"])
pipe.add_stage("other", step)
"""


def test_run_only_the_named_stages_and_their_upstream(
    in_process: InProcess, tmp_path: Path
) -> None:
    path = write_file(tmp_path, "targets.py", TARGETS)
    jsonl = tmp_path / "events.jsonl"
    code, out, err = in_process("run", path, "b", "--jsonl", str(jsonl), "-k", "other")
    assert code == 0, err
    assert normalise(out)[-1] == "Summary: 3 succeeded in T"
    rows = check_jsonl(jsonl, stages=3)
    assert rows[0]["stages"] == ["a", "b", "other"]
    code, out, err = in_process("run", path, "c", "--only")
    assert code == 0, err
    assert normalise(out) == [
        'c | {"inputs": [], "params": {}}',
        "c: succeeded (T)",
        "Summary: 1 succeeded in T",
    ]
    assert in_process("run", path, "bb") == (
        2,
        "",
        "trio-pipeline: error: pipeline 'targets' has no stage 'bb' to run (did you mean 'b'?)\n",
    )


def test_params_from_the_command_line_and_a_file(in_process: InProcess, tmp_path: Path) -> None:
    path = write_file(tmp_path, "targets.py", TARGETS)
    (tmp_path / "params.toml").write_text('env = "prod"\nn = 1\n[db]\nport = 5432\n')
    jsonl = tmp_path / "events.jsonl"
    code, out, err = in_process(
        "run",
        path,
        "a",
        "--params",
        str(tmp_path / "params.toml"),
        "--param",
        "n=3",
        "--param",
        "tags=[1, 2]",
        "--param",
        "name=ci",
        "--jsonl",
        str(jsonl),
    )
    assert code == 0, err
    expected = {"env": "prod", "n": 3, "db": {"port": 5432}, "tags": [1, 2], "name": "ci"}
    logged = json.loads(normalise(out)[0].removeprefix("a | "))
    assert logged == {"inputs": [], "params": expected}
    assert check_jsonl(jsonl, stages=1)[0]["params"] == expected
    code, _, err = in_process("run", path, "--params", str(tmp_path / "nope.json"))
    assert code == 2
    assert err.startswith(f"trio-pipeline: error: --params {tmp_path}/nope.json: ")


OPTIONS = """\
import sys
import trio_pipeline as tp

pipe = tp.Pipeline("opts", pools={"gpu": 2})

def parse(snap):
    return 1

@pipe.stage(retries=2, retry_delay=0.5, retry_on=ConnectionError)
async def fetch(ctx):
    return 1

pipe.add_stage(
    "parse", parse, after=[fetch], executor=tp.ThreadExecutor(limit=4), timeout=60, uses="gpu"
)
pipe.add_command(
    "report", ["echo", "a b"], after=["parse"], timeout=30, trigger=tp.Trigger.ALWAYS
)
"""


def test_dry_run_shows_each_stages_plan_as_text_and_json(
    in_process: InProcess, tmp_path: Path
) -> None:
    path = write_file(tmp_path, "opts.py", OPTIONS)
    code, out, err = in_process("run", path, "--dry-run", "--param", "env=ci")
    assert (code, err) == (0, "")
    assert out == (
        "dry run of pipeline 'opts': 3 stages in start order; nothing runs\n"
        '  params: env="ci"\n'
        "  pools: gpu=2\n"
        "  #  stage   after  runs in                  retries         timeout  trigger      pools\n"
        "  1  fetch   -      task                     2 (delay 0.5s)  -        all_success  -\n"
        "  2  parse   fetch  ThreadExecutor(limit=4)  0               60s      all_success  gpu=1\n"
        "  3  report  parse  command: echo 'a b'      0               30s      always       -\n"
    )
    data = json.loads(in_process("run", path, "report", "--only", "--dry-run", "--json")[1])
    assert data["pipeline"] == "opts"
    assert [stage["name"] for stage in data["stages"]] == ["report"]
    report = data["stages"][0]
    assert report["after"] == []  # --only: its upstream is not part of the run
    assert (report["executor"], report["argv"], report["timeout"]) == (
        "command",
        ["echo", "a b"],
        30.0,
    )
    full = json.loads(in_process("run", path, "--dry-run", "--json")[1])["stages"]
    assert [(s["name"], s["executor"], s["retries"]) for s in full] == [
        ("fetch", "task", 2),
        ("parse", "thread", 0),
        ("report", "command", 0),
    ]
    assert full[1]["executor_repr"] == "ThreadExecutor(limit=4)"
    assert (full[0]["retry_delay"], full[0]["retry_on"]) == (0.5, "ConnectionError")
    assert (full[1]["uses"], full[2]["trigger"]) == ({"gpu": 1}, "always")
    assert data["pools"] == {"gpu": 2}


ALERTING = """\
import trio_pipeline as tp

pipe = tp.Pipeline("alerting")

@pipe.stage
async def build(ctx):
    return 1

@pipe.stage(after=build, trigger=tp.Trigger.ONE_FAILED)
async def alert(ctx):
    return 2

@pipe.stage(after=alert)
async def page(ctx):
    return 3

@pipe.stage(after=[build, alert], trigger=tp.Trigger.ALWAYS)
async def cleanup(ctx):
    return 4
"""


def test_dry_run_and_list_show_what_a_failure_free_run_skips(
    in_process: InProcess, tmp_path: Path
) -> None:
    # Regression: they left out alert and page (a run without failures skips them),
    # while cleanup's row named alert as its dependency.
    path = write_file(tmp_path, "alerting.py", ALERTING)
    one_failed = "skipped (trigger one_failed not met: no upstream failed)"
    upstream = "skipped (trigger all_success not met: upstream 'alert' skipped)"
    code, out, err = in_process("run", path, "--dry-run")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "dry run of pipeline 'alerting': 2 stages in start order, 2 skipped if nothing fails;"
        " nothing runs",
        "  #  stage    after         runs in  retries  timeout  trigger      pools",
        "  1  build    -             task     0        -        all_success  -",
        "  2  cleanup  build, alert  task     0        -        always       -",
        f"  -  alert    build         task     0        -        one_failed   -      {one_failed}",
        f"  -  page     alert         task     0        -        all_success  -      {upstream}",
    ]
    data = json.loads(in_process("run", path, "--dry-run", "--json")[1])["stages"]
    assert [(stage["name"], stage["skipped"]) for stage in data] == [
        ("build", None),
        ("cleanup", None),
        ("alert", one_failed[9:-1]),
        ("page", upstream[9:-1]),
    ]
    assert in_process("list", path)[1].splitlines() == [
        "pipeline 'alerting': 2 stages in start order, 2 skipped if nothing fails",
        "  1. build",
        "  2. cleanup  after build, alert",
        f"  -  alert    after build; {one_failed}",
        f"  -  page     after alert; {upstream}",
    ]
    # What the real run does.
    code, out, _ = in_process("run", path, "--plain")
    assert code == 0
    assert f"alert: {one_failed}" in out.splitlines()
    assert f"page: {upstream}" in out.splitlines()


def test_a_missing_extra_is_one_line_naming_the_file_and_the_pip_command(tmp_path: Path) -> None:
    path = write_file(
        tmp_path,
        "extra.py",
        """\
        import sys; sys.modules["trio_parallel"] = None  # as if not installed
        import trio_pipeline as tp
        pipe = tp.Pipeline("p")
        def crunch(snap): return 1
        pipe.add_stage("crunch", crunch, executor=tp.ProcessExecutor())
        """,
    )
    done = cli("run", path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"trio-pipeline: error: {path}:5: ProcessExecutor needs the 'trio_parallel' package,"
        " which is not installed: pip install 'trio-pipeline[process]'\n"
    )


async def test_a_second_ctrl_c_after_every_stage_finished_cancels_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import trio
    import trio.testing

    import trio_pipeline as tp
    from trio_pipeline._cli import _Interrupts, _Teardowns
    from trio_pipeline._live import RunTracker

    pipe = tp.Pipeline("p")

    @pipe.stage
    async def quick(ctx: tp.StageContext) -> None:
        pass

    tracker = RunTracker()
    send, receive = trio.open_memory_channel[int](2)
    interrupts = _Interrupts(
        tracker,
        None,
        grace=600,
        teardowns=_Teardowns(pipe),
        teardown_timeout=30,
        started=time.monotonic(),
    )
    async with tp.open_run(pipe, sinks=[tracker]) as handle:
        await handle.wait_finished()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(interrupts.watch, receive, handle, nursery)
            for _ in range(2):
                await send.send(signal.SIGINT)
            send.close()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert handle.result.state is tp.RunState.CLOSED
    assert capsys.readouterr().err.splitlines()[-1] == (
        "trio-pipeline: Ctrl-C again: every stage has finished; exiting within 600s"
        " (delivering the last events). Press Ctrl-C again to exit now."
    )


def test_max_backlog_is_passed_to_the_run(
    in_process: InProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import trio_pipeline as tp
    import trio_pipeline._cli as cli_module

    seen: list[object] = []
    real = tp.open_run

    def spy(pipeline: tp.Pipeline, **kwargs: Any) -> Any:
        seen.append(kwargs["max_backlog"])
        return real(pipeline, **kwargs)

    monkeypatch.setattr(cli_module, "open_run", spy)
    monkeypatch.setenv("TRIO_PIPELINE_DEMO_DIR", str(tmp_path))
    for value, expected in (("3", 3), ("none", None), ("0", 0)):
        assert in_process("run", "examples/files.py", "-q", "--max-backlog", value)[0] == 0
        assert seen.pop() == expected
    assert in_process("run", "examples/files.py", "-q")[0] == 0
    assert seen.pop() == DEFAULT_MAX_BACKLOG  # the library's default
    code, _, err = in_process("run", "examples/files.py", "--max-backlog", "-1")
    assert code == 2
    assert "expected an int >= 0 or 'none', got '-1'" in err
