"""Command stages: an external program run by `Pipeline.add_command`."""

from __future__ import annotations

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

    Cancellation: the program gets SIGTERM, then SIGKILL if it has not exited after
    `grace_period` seconds; the stage ends once it has exited.

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
        )
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stream_lines, process.stdout, ctx.log, stdout.append)
                nursery.start_soon(_stream_lines, process.stderr, _stderr_sink(ctx, tail), None)
                await process.wait()
        finally:
            if process.returncode is None:
                # Cancelled (or a reader failed): the process must not outlive the stage.
                with trio.CancelScope(shield=True):
                    await self._stop(process)
        returncode = process.returncode
        assert returncode is not None
        if returncode != 0:
            raise CommandError(ctx.name, self.argv, returncode, list(tail))
        return b"".join(stdout).decode("utf-8", errors="replace")

    async def _stop(self, process: trio.Process) -> None:
        process.terminate()
        with trio.move_on_after(self.grace_period):
            await process.wait()
            return
        process.kill()
        await process.wait()

    def __repr__(self) -> str:
        return f"<Command {list(self.argv)!r}>"


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
