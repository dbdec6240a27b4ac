"""Command stages against real subprocesses: streamed output, failures, signals, timeouts.

Waiting on a child uses its own output (a log line), never a sleep.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_pipeline as tp
from tests.support.runs import LineWatcher, check_complete, logs_of
from trio_pipeline.testing import RecordingSink

PY = sys.executable


@pytest.mark.parametrize(
    ("argv", "options", "match"),
    [
        ("echo hi", {}, "argv must be a sequence of strings .no shell., got the string .echo hi."),
        ([], {}, "argv must be a non-empty sequence"),
        (["echo", 1], {}, "argv entries must be str"),
        (["echo"], {"env": {"A": 1}}, "env must map str to str"),
        (["echo"], {"grace_period": -1}, "grace_period must be"),
        (["echo"], {"grace_period": math.inf}, "grace_period must be"),
        (["echo"], {"timeout": 0}, "timeout must be"),
    ],
)
def test_add_command_checks_its_options(argv: Any, options: Any, match: str) -> None:
    pipe = tp.Pipeline("p")
    with pytest.raises(tp.StageDefinitionError, match=match):
        pipe.add_command("cmd", argv, **options)
    assert len(pipe) == 0


async def test_command_streams_lines_and_returns_stdout(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = (
        "import os, sys, time\n"
        "print('first', flush=True)\n"
        "print('warn: ' + os.environ['TP_GREETING'], file=sys.stderr, flush=True)\n"
        "while not os.path.exists('gate'): time.sleep(0.01)\n"
        "assert 'PATH' in os.environ\n"
        "sys.stdout.write('second\\r\\nno newline: ' + os.getcwd())\n"
    )
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [PY, "-c", script], cwd=str(tmp_path), env={"TP_GREETING": "hello"})
    sink = LineWatcher("first", "stderr: warn: hello")
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        # The lines arrive while the command still runs: streamed, not batched.
        with trio.fail_after(20):  # fail, not hang, if the line never comes
            await sink.seen.wait()
        assert handle.state is tp.RunState.RUNNING
        gate.touch()
    result = handle.result
    assert result.stages["cmd"].value == f"first\nsecond\r\nno newline: {tmp_path}"
    # Each pipe keeps its order; how the two interleave depends on the readers.
    assert logs_of(sink, "cmd")[:2] in (
        ["first", "stderr: warn: hello"],
        ["stderr: warn: hello", "first"],
    )
    assert logs_of(sink, "cmd")[2:] == ["second", f"no newline: {tmp_path}"]
    check_complete(sink, result)


async def test_command_failure_carries_code_and_stderr_tail() -> None:
    script = (
        "import sys\n"
        "for i in range(30): print(f'err {i}', file=sys.stderr)\n"
        "print('partial output')\n"
        "sys.exit(3)\n"
    )
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [PY, "-c", script])
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    error = result.stages["cmd"].error
    assert isinstance(error, tp.CommandError)
    assert error.returncode == 3
    assert error.stderr_tail == tuple(f"err {i}" for i in range(10, 30))
    assert error.stage == "cmd"
    assert "exited with code 3; stderr ends with:\nerr 10\n" in str(error)
    assert len(logs_of(sink, "cmd")) == 31
    check_complete(sink, result)


async def test_command_cancel_sends_sigterm(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [PY, "-c", script])
    sink = LineWatcher("ready")
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        with trio.fail_after(20):  # fail, not hang, if the line never comes
            await sink.seen.wait()
        handle.cancel()
    result = handle.result
    assert result.stages["cmd"].status is tp.StageStatus.CANCELLED
    assert marker.exists()
    check_complete(sink, result)


async def test_command_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    grace = 0.3
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [PY, "-c", script], timeout=30, grace_period=grace)
    sink = LineWatcher("ready")
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        with trio.fail_after(20):  # fail, not hang, if the line never comes
            await sink.seen.wait()
        cancelled_at = time.monotonic()
        handle.cancel()
    result = handle.result
    assert time.monotonic() - cancelled_at >= grace
    assert result.stages["cmd"].status is tp.StageStatus.CANCELLED
    check_complete(sink, result)


async def test_command_timeout_is_retried() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [PY, "-c", "import time; time.sleep(60)"], timeout=0.3, retries=1)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    outcome = result.stages["cmd"]
    assert isinstance(outcome.error, tp.StageTimeout)
    assert outcome.attempts == 2
    check_complete(sink, result)


async def test_command_that_cannot_start_fails_with_the_os_error(tmp_path: Path) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [str(tmp_path / "no-such-program")])
    result = await tp.run(pipe)
    assert isinstance(result.stages["cmd"].error, FileNotFoundError)


async def test_command_killed_by_a_signal_says_so() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_command("cmd", [PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    result = await tp.run(pipe)
    error = result.stages["cmd"].error
    assert isinstance(error, tp.CommandError)
    assert error.returncode == -signal.SIGKILL
    assert "was killed by SIGKILL" in str(error)


# -- Command arguments: checked like stage options -------------------------------------------

TYPE = tp.StageDefinitionTypeError
VALUE = tp.StageDefinitionError


@pytest.mark.parametrize(
    ("argv", "options", "error", "message"),
    [
        ("ls", {}, TYPE, "argv must be a sequence of strings .no shell., got the string 'ls'"),
        (b"ls", {}, TYPE, "argv must be a sequence of strings .no shell., got the string b'ls'"),
        ([], {}, VALUE, r"argv must be a non-empty sequence of strings .no shell., got \[\]"),
        (None, {}, VALUE, "argv must be a non-empty sequence of strings .no shell., got None"),
        (["ls", 1], {}, TYPE, r"argv entries must be str, got \['ls', 1\]"),
        (["ls"], {"env": {"A": 1}}, TYPE, "env must map str to str, got {'A': 1}"),
        (["ls"], {"env": ["A"]}, TYPE, r"env must map str to str, got \['A'\]"),
        (["ls"], {"cwd": 3}, TYPE, "cwd must be a str, a path or None, got 3"),
        (["ls"], {"grace_period": -1}, VALUE, "grace_period must be a finite number >= 0"),
        (["ls"], {"grace_period": "1"}, TYPE, "grace_period must be a finite number >= 0"),
        (["ls"], {"tail_lines": -1}, VALUE, "tail_lines must be a non-negative int, got -1"),
    ],
)
def test_command_checks_its_arguments(
    argv: Any, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="^" + message) as info:
        tp.Command(argv, **options)
    assert type(info.value) is error
    if "tail_lines" not in options:  # not an add_command keyword
        pipe = tp.Pipeline("p")
        with pytest.raises(error, match="^stage 'cmd': " + message):
            pipe.add_command("cmd", argv, **options)
        assert len(pipe) == 0


def test_command_takes_a_path_as_cwd(tmp_path: Path) -> None:
    command = tp.Command(["ls"], cwd=tmp_path)
    assert command.cwd == tmp_path
    stage = tp.Pipeline("p").add_command("ls", ["ls"], cwd=tmp_path, retries=2, priority=3)
    assert isinstance(stage.fn, tp.Command)
    assert (stage.retries, stage.options.priority) == (2, 3)


# -- process groups: no process outlives its stage (checked by PID) --------------------------
# Each shell prints its own pid first (``echo $$``): a command runs in a session of its
# own, so that pid is also its process group's id, and /proc tells the group's members.


def stat_of(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after "(comm)": state, ppid, pgrp, ...; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (which nobody may reap in a container)."""
    fields = stat_of(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def group_members(root: int) -> set[int]:
    """Live processes of `root`'s group, and its live descendants wherever they are."""
    parents: dict[int, int] = {}
    members = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat_of(int(entry))) and fields[0] not in (b"Z", b"X"):
            parents[int(entry)] = int(fields[1])
            if int(fields[2]) == root:
                members.add(int(entry))
    for pid in parents:
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            members.add(pid)
    return members


class FirstLine(RecordingSink):
    """Records events; `line` is set to the stage's first log line once dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.line: str | None = None
        self.seen = trio.Event()

    async def handle(self, event: tp.Event, /) -> None:
        await super().handle(event)
        if isinstance(event, tp.StageLog) and self.line is None:
            self.line = event.message
            self.seen.set()


async def run_and_watch_group(
    pipe: tp.Pipeline, *, members: int
) -> tuple[tp.RunResult, set[int], FirstLine]:
    """Run `pipe`; while it runs, collect the command's group once it has `members` processes."""
    sink = FirstLine()
    seen: set[int] = set()
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        with trio.fail_after(20):
            await sink.seen.wait()
            assert sink.line is not None
            group = int(sink.line)
            while len(seen) < members:
                seen |= group_members(group)
                await trio.sleep(0.005)  # polling another process's state: no event exists
    return handle.result, seen, sink


async def test_timed_out_shell_leaves_no_process() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_command("w", ["sh", "-c", "echo $$; sleep 31; echo done"], timeout=0.5)
    result, pids, _ = await run_and_watch_group(pipe, members=2)  # sh and sleep
    assert isinstance(result.stages["w"].error, tp.StageTimeout)
    assert len(pids) == 2
    assert not [pid for pid in pids if alive(pid)]


async def test_term_ignoring_children_die_at_sigkill() -> None:
    pipe = tp.Pipeline("p")
    script = "trap '' TERM; echo $$; sleep 31; echo done"
    pipe.add_command("w", ["sh", "-c", script], timeout=0.5, grace_period=0.3)
    started = time.monotonic()
    result, pids, _ = await run_and_watch_group(pipe, members=2)
    assert time.monotonic() - started >= 0.8  # the timeout, then the whole grace period
    assert isinstance(result.stages["w"].error, tp.StageTimeout)
    assert not [pid for pid in pids if alive(pid)]


async def test_processes_left_behind_by_a_finished_command_are_stopped() -> None:
    pipe = tp.Pipeline("p")
    script = "echo $$; sleep 31 >/dev/null 2>&1 & echo started"
    pipe.add_command("w", ["sh", "-c", script], grace_period=0.3)
    sink = FirstLine()
    with trio.fail_after(20):
        result = await tp.run(pipe, sinks=[sink])
    assert result.stages["w"].status is tp.StageStatus.SUCCEEDED
    logs = [e.message for e in sink.events if isinstance(e, tp.StageLog)]
    ours = [line for line in logs if line.startswith("trio-pipeline: stopping")]
    assert len(ours) == 1  # said once, wherever it falls among the command's lines
    group = int(result.stages["w"].value.split()[0])
    assert not group_members(group)  # not even the backgrounded sleep


async def test_a_command_runs_in_a_session_of_its_own() -> None:
    # So a terminal's Ctrl-C reaches only the CLI's group, which decides what to stop.
    pipe = tp.Pipeline("p")
    pipe.add_command("w", [sys.executable, "-c", "import os; print(os.getpgrp(), os.getsid(0))"])
    result = await tp.run(pipe)
    group, session = map(int, result.stages["w"].value.split())
    assert group == session
    assert group != os.getpgrp()
    assert session != os.getsid(0)


async def test_what_a_command_says_while_it_stops_is_logged() -> None:
    pipe = tp.Pipeline("p")
    script = "trap 'echo caught TERM; echo cleaning up >&2; exit 3' TERM; echo $$; sleep 31 & wait"
    pipe.add_command("w", ["sh", "-c", script], timeout=0.5)
    result, pids, sink = await run_and_watch_group(pipe, members=2)
    assert isinstance(result.stages["w"].error, tp.StageTimeout)
    # Each pipe keeps its order; how the two interleave depends on the readers.
    assert sorted(logs_of(sink, "w")[1:]) == ["caught TERM", "stderr: cleaning up"]
    assert not [pid for pid in pids if alive(pid)]


async def test_a_pipe_held_by_an_escaped_process_does_not_hold_the_stage() -> None:
    # setsid leaves the group (so it is not stopped) and keeps stdout open for 31 s.
    pipe = tp.Pipeline("p")
    pipe.add_command("w", ["sh", "-c", "setsid sleep 31 & echo $!"])
    started = time.monotonic()
    result = await tp.run(pipe)
    escaped = int(result.stages["w"].value)  # setsid execs in place: the sleep's own pid
    try:
        assert time.monotonic() - started < 10
        assert result.stages["w"].status is tp.StageStatus.SUCCEEDED
    finally:
        os.kill(escaped, signal.SIGKILL)  # the test's own clean-up


async def test_a_command_s_group_is_known_exactly_while_it_may_run() -> None:
    # `LIVE_GROUPS` is what the CLI's forced exit kills: it must hold a running
    # command's group and forget it once the stage ends, however it ends.
    from trio_pipeline._command import LIVE_GROUPS, kill_command_groups

    pipe = tp.Pipeline("p")
    pipe.add_command("ok", ["true"])
    pipe.add_command("bad", ["false"])
    pipe.add_command("slow", ["sleep", "30"], timeout=1.0)
    seen: list[dict[int, str]] = []

    @pipe.stage(after=["ok", "bad"], trigger=tp.Trigger.ALL_DONE)
    async def look(ctx: tp.StageContext) -> None:
        with trio.fail_after(5):
            while not LIVE_GROUPS:  # noqa: ASYNC110 - nothing to wait on for another stage's spawn
                await trio.sleep(0.01)
        seen.append(dict(LIVE_GROUPS))

    result = await tp.run(pipe, keep_going=True)
    assert result.stages["slow"].status is tp.StageStatus.FAILED  # timed out
    assert list(seen[0].values()) == ["slow"]
    assert LIVE_GROUPS == {}
    assert kill_command_groups() == []
