"""Executor and command options: checked like stage options, same classes, same messages.

(To be split into test_executors.py / test_command.py once the mirrored layout lands.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

import trio_pipeline as tp

TYPE = tp.StageDefinitionTypeError
VALUE = tp.StageDefinitionError


def add_one(snapshot: tp.StageSnapshot) -> int:
    return 1


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: tp.ThreadExecutor(limit=0), VALUE, "limit must be a positive int, got 0"),
        (lambda: tp.ThreadExecutor(limit=True), TYPE, "limit must be a positive int, got True"),
        (
            lambda: tp.ProcessExecutor(limit=1.5),  # type: ignore[arg-type]
            TYPE,
            "limit must be a positive int, got 1.5",
        ),
        (lambda: tp.ProcessExecutor(limit=-2), VALUE, "limit must be a positive int, got -2"),
        (
            lambda: tp.DaskExecutor("tcp://x:1", cancel_timeout=True),
            TYPE,
            "cancel_timeout must be a finite number > 0, got True",
        ),
        (
            lambda: tp.DaskExecutor("tcp://x:1", cancel_timeout=0),
            VALUE,
            "cancel_timeout must be a finite number > 0, got 0",
        ),
        (
            lambda: tp.DaskExecutor("tcp://x:1", cancel_timeout=math.inf),
            VALUE,
            "cancel_timeout must be a finite number > 0, got inf",
        ),
        (
            lambda: tp.DaskExecutor(42),  # type: ignore[arg-type]
            TYPE,
            "DaskExecutor needs a scheduler address .str. or a distributed.Client, got 42",
        ),
    ],
)
def test_executor_options(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match="^" + message) as info:
        make()
    assert type(info.value) is error


def test_executor_stage_errors_name_the_stage() -> None:
    pipe = tp.Pipeline("p")

    async def coro(ctx: tp.StageContext) -> None: ...

    with pytest.raises(TYPE, match=r"^stage 'b': with executor=ThreadExecutor\(limit=8\) the"):
        pipe.add_stage("b", coro, executor=tp.ThreadExecutor())
    with pytest.raises(TYPE, match=r"^stage 'c': executor must have a name and async run"):
        pipe.add_stage("c", add_one, executor=object())  # type: ignore[arg-type]
    with pytest.raises(TYPE, match=r"^stage 'd': function must be an async function"):
        pipe.add_stage("d", add_one)
    assert len(pipe) == 0


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
