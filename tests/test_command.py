"""Command stages against real subprocesses: streamed output, failures, signals, timeouts.

Waiting on a child uses its own output (a log line), never a sleep.
"""

from __future__ import annotations

import math
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
