"""Command stages: an external program run by `Pipeline.add_command`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import trio

from ._context import StageContext
from ._errors import StageDefinitionError, StageDefinitionTypeError
from ._graph import edge
from ._options import check_int, check_seconds


class CommandError(Exception):
    """A command stage's program exited with a non-zero code.

    Attributes:
        stage: The stage's name.
        argv: The command line.
        returncode: The exit code; ``-N`` when killed by signal N.
        stderr_tail: The last lines of its stderr (at most `Command.tail_lines`).
    """

    def __init__(
        self, stage: str, argv: Sequence[str], returncode: int, stderr_tail: Sequence[str]
    ) -> None:
        if returncode < 0:
            how = f"was killed by {_signal_name(-returncode)}"
        else:
            how = f"exited with code {returncode}"
        message = f"stage {stage!r}: command {argv[0]!r} {how}"
        if stderr_tail:
            message += "; stderr ends with:\n" + "\n".join(stderr_tail)
        super().__init__(message)
        self.stage = stage
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr_tail = tuple(stderr_tail)

    def __reduce__(
        self,
    ) -> tuple[type[CommandError], tuple[str, tuple[str, ...], int, tuple[str, ...]]]:
        return (type(self), (self.stage, self.argv, self.returncode, self.stderr_tail))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Command:
    """The async stage function of a command stage (made by `Pipeline.add_command`).

    Runs `argv` with stdin from /dev/null. Each line of stdout is emitted as a
    `StageLog` as it arrives, each line of stderr likewise prefixed ``"stderr: "``;
    the stage's value is the whole stdout, decoded as UTF-8 (undecodable bytes
    replaced). The pipe readers are tasks of a nursery owned by the attempt.

    Process group: the program runs in a session (and process group) of its own, so
    everything it starts can be found and signalled together, and a Ctrl-C on the
    terminal reaches only the CLI (which decides what to stop). When the attempt is
    cancelled (timeout, fail-fast, `RunHandle.cancel`) the whole group gets SIGTERM,
    then SIGKILL if any of it is still alive `grace_period` seconds later; the stage
    ends once none of it is left. Processes the program left behind in its group when
    it exited on its own are stopped the same way: no process outlives its stage.
    What the program prints while it stops is still logged. (A process that starts
    a session of its own, as daemons do, leaves the group and is not tracked; if it
    keeps a pipe open, the stage ends `OUTPUT_DRAIN` seconds after the group.)

    Raises:
        StageDefinitionError: an argument is invalid (a `StageDefinitionTypeError`
            for a wrong type, such as a str `argv`).
    """

    __slots__ = ("argv", "cwd", "env", "grace_period", "tail_lines")

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        grace_period: float = 5.0,
        tail_lines: int = 20,
    ) -> None:
        self.argv: tuple[str, ...] = _check_argv(argv)
        if cwd is not None and not isinstance(cwd, str | os.PathLike):
            raise StageDefinitionTypeError(f"cwd must be a str, a path or None, got {cwd!r}")
        self.cwd = cwd
        if env is not None and not (
            isinstance(env, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())  # pyright: ignore[reportUnknownVariableType]
        ):
            raise StageDefinitionTypeError(f"env must map str to str, got {env!r}")
        self.env = dict(env) if env is not None else None
        self.grace_period = check_seconds(grace_period, "grace_period")
        self.tail_lines = check_int(tail_lines, "tail_lines", minimum=0)

    async def __call__(self, ctx: StageContext) -> str:
        stdout: list[bytes | bytearray] = []
        tail: deque[str] = deque(maxlen=self.tail_lines)
        env = None if self.env is None else {**os.environ, **self.env}
        # Spawned outside the nursery so a spawn error (say, FileNotFoundError) is
        # the stage's error as is, not wrapped in an ExceptionGroup.
        process = await trio.lowlevel.open_process(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=self.cwd,
            env=env,
            start_new_session=True,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        LIVE_GROUPS[process.pid] = ctx.name
        # The readers outlive a cancellation of the attempt, so what the command says
        # while it stops ("caught SIGTERM, cleaning up") is still logged; they get
        # OUTPUT_DRAIN seconds once the group is gone, in case something that left
        # the group still holds a pipe.
        readers = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _read_output, readers, process, ctx.log, _stderr_sink(ctx, tail), stdout.append
            )
            try:
                await process.wait()
                # What the command left running in its group must not outlive the stage.
                if _group_alive(process.pid):
                    ctx.log("trio-pipeline: stopping what the command left running in its group")
                    await self._stop_group(process)
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None or _group_alive(process.pid):
                        # Cancelled (or a reader failed): no process may outlive the stage.
                        await self._stop_group(process)
                    del LIVE_GROUPS[process.pid]  # stopped, or SIGKILLed and bounded
                    readers.deadline = trio.current_time() + OUTPUT_DRAIN
        returncode = process.returncode
        assert returncode is not None
        if returncode != 0:
            raise CommandError(ctx.name, self.argv, returncode, list(tail))
        return b"".join(stdout).decode("utf-8", errors="replace")

    async def _stop_group(self, process: trio.Process) -> None:
        """SIGTERM the group, SIGKILL what is left of it after `grace_period`; wait for it."""
        group = process.pid  # the session leader's pid is its group's id
        _signal_group(group, signal.SIGTERM)
        with trio.move_on_after(self.grace_period):
            await _wait_group(process)
            return
        _signal_group(group, signal.SIGKILL)
        # SIGKILL cannot be ignored: the group dies promptly (bounded, in case of a
        # process stuck in the kernel, so the stage cannot hang on it).
        with trio.move_on_after(max(1.0, self.grace_period)):
            await _wait_group(process)

    def __repr__(self) -> str:
        return f"<Command {list(self.argv)!r}>"


LIVE_GROUPS: dict[int, str] = {}
"""The process groups of command stages that may still have a live process, by stage name.

Read by `kill_command_groups`, for a process about to exit without waiting for its runs.
"""


def kill_command_groups() -> list[str]:
    """SIGKILL every command stage's process group still alive; return their stages' names.

    For the CLI's forced exit (``os._exit`` leaves the run, and would leave these
    processes running, as the run's cleanup never comes).
    """
    killed = [name for group, name in LIVE_GROUPS.items() if _group_alive(group)]
    for group in LIVE_GROUPS:
        _signal_group(group, signal.SIGKILL)
    LIVE_GROUPS.clear()
    return killed


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited already
        os.killpg(group, signum)


_GROUP_POLL = 0.01
"""Seconds between checks for a group's last member (a group cannot be waited for)."""


async def _wait_group(process: trio.Process) -> None:
    """Wait until the leader has exited and no live process is left in its group.

    Only the leader is our child; the others can be observed, not waited for, so
    the group is polled (briefly: this runs only while stopping a command).
    """
    await process.wait()
    while _group_alive(process.pid):  # noqa: ASYNC110 - no event exists for another's process
        await trio.sleep(_GROUP_POLL)


def _group_alive(group: int) -> bool:
    """True while a process of `group` is alive (zombies, which only await reaping, are not)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False  # the common case, at the cost of one system call
    except PermissionError:
        return True
    # Someone is in the group, maybe only a zombie nobody reaps yet: look closer.
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs (macOS, BSD): zombies then count as alive
        return True
    return any(entry.isdigit() and _proc_group(entry) == group for entry in entries)


def _proc_group(pid: str) -> int | None:
    """The process group of a live (non-zombie) process from /proc/PID/stat, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 3 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[2])


def _check_argv(argv: object) -> tuple[str, ...]:
    if isinstance(argv, str | bytes):
        raise StageDefinitionTypeError(
            f"argv must be a sequence of strings (no shell), got the string {argv!r}:"
            " pass a list such as ['ls', '-l'] (shlex.split parses a command line)"
        )
    if not isinstance(argv, Sequence) or not argv:
        raise StageDefinitionError(
            f"argv must be a non-empty sequence of strings (no shell), got {argv!r}"
        )
    if not all(isinstance(arg, str) for arg in argv):  # pyright: ignore[reportUnknownVariableType]
        raise StageDefinitionTypeError(f"argv entries must be str, got {argv!r}")
    return tuple(cast("Sequence[str]", argv))


edge.command = Command


OUTPUT_DRAIN = 1.0
"""Seconds a command's pipes get, once its group is gone, to reach end of file."""


async def _read_output(
    scope: trio.CancelScope,
    process: trio.Process,
    emit_out: Callable[[str], None],
    emit_err: Callable[[str], None],
    keep: Callable[[bytes | bytearray], None],
) -> None:
    assert process.stdout is not None
    assert process.stderr is not None
    with scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stream_lines, process.stdout, emit_out, keep)
            nursery.start_soon(_stream_lines, process.stderr, emit_err, None)


def _stderr_sink(ctx: StageContext, tail: deque[str]) -> Callable[[str], None]:
    def emit(line: str) -> None:
        tail.append(line)
        ctx.log("stderr: " + line)

    return emit


async def _stream_lines(
    stream: trio.abc.ReceiveStream,
    emit: Callable[[str], None],
    keep: Callable[[bytes | bytearray], None] | None,
) -> None:
    """Read `stream` to EOF, calling `emit` once per line (without its line ending)."""
    buffer = bytearray()
    async with stream:
        while chunk := await stream.receive_some():
            if keep is not None:
                keep(chunk)
            buffer += chunk
            if b"\n" in chunk:  # split only when a line is complete: no quadratic rescans
                *lines, rest = buffer.split(b"\n")
                buffer = rest
                for line in lines:
                    emit(_decode_line(line))
    if buffer:
        emit(_decode_line(buffer))


def _decode_line(line: bytes | bytearray) -> str:
    return line.decode("utf-8", errors="replace").removesuffix("\r")
