"""The JSONL format: JsonlSink writes it off the event loop, read_jsonl reads it back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline import _jsonl
from trio_pipeline._events import event_to_dict
from trio_pipeline._result import count_statuses
from trio_pipeline.testing import RecordingSink

ROOT = Path(__file__).resolve().parent.parent
S = tp.StageStatus


def seed_pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("seed")

    @pipe.stage
    async def first(ctx: tp.StageContext) -> None:
        ctx.log('quote " and newline \n and ünïcode')
        raise ZeroDivisionError("integer division or modulo by zero")

    @pipe.stage(after=first)
    async def second(ctx: tp.StageContext) -> None:
        pass

    @pipe.stage
    async def independent(ctx: tp.StageContext) -> int:
        return 1

    return pipe


EVERY_KIND: list[tp.Event] = [
    tp.RunStarted("r", 0, 0.0, "p", ("a", "b")),
    tp.StageStarted("r", 1, 0.5, "a", 1),
    tp.StageLog("r", 2, 0.75, "a", 'say "hi"\n'),
    tp.StageRetrying("r", 3, 1.0, "a", 1, "ValueError: x", 0.5),
    tp.StageFinished("r", 4, 2.0, "a", S.FAILED, 2, 1.5, "ValueError: y", None),
    tp.StageFinished("r", 5, 2.0, "b", S.BLOCKED, 0, 0.0, None, "a"),
    tp.RunFinished(
        "r", 6, 2.0, tp.RunState.CLOSED, MappingProxyType(count_statuses([S.FAILED])), 2.0
    ),
]


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "stdlib"])
def test_rows_are_event_to_dict_plus_the_schema(fast: bool) -> None:
    encode = _jsonl.encoder(fast)
    for event in EVERY_KIND:
        row = json.loads(encode(_jsonl.event_row(event)))
        expected = event_to_dict(event)
        if isinstance(event, tp.RunStarted):
            expected["schema"] = _jsonl.SCHEMA
        assert row == expected


async def test_jsonl_sink_writes_every_event(tmp_path: Any) -> None:
    path = tmp_path / "events.jsonl"
    sink = tp.JsonlSink(path)
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["seq"] for row in rows] == list(range(len(rows)))
    assert rows[0]["type"] == "RunStarted"
    assert rows[0]["stages"] == ["first", "second", "independent"]
    last = rows[-1]
    assert last["type"] == "RunFinished"
    assert last["state"] == "closed"
    assert last["counts"] == {
        "succeeded": 1,
        "failed": 1,
        "blocked": 1,
        "skipped": 0,
        "cancelled": 0,
        "cached": 0,
    }
    failed = next(r for r in rows if r["type"] == "StageFinished" and r["stage"] == "first")
    assert failed["status"] == "failed"
    assert failed["error"] == "ZeroDivisionError: integer division or modulo by zero"
    blocked = next(r for r in rows if r["type"] == "StageFinished" and r["stage"] == "second")
    assert blocked["blocked_by"] == "first"
    assert all(r["run_id"] == result.run_id for r in rows)


async def test_jsonl_sink_writes_every_event_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink, recorded = tp.JsonlSink(path), RecordingSink()
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink, recorded])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["seq"] for row in rows] == list(range(len(recorded.events)))
    assert rows[0]["schema"] == 1
    assert rows[-1]["counts"] == {
        "succeeded": 1,
        "failed": 1,
        "blocked": 1,
        "skipped": 0,
        "cancelled": 0,
        "cached": 0,
    }
    assert all(r["run_id"] == result.run_id for r in rows)
    assert list(tp.read_jsonl(path)) == recorded.events
    assert result.deliveries[sink].state is tp.SinkState.CLOSED


async def test_lines_reach_the_file_while_the_run_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = tp.JsonlSink(path)
    pipe = tp.Pipeline("p")
    seen: list[int] = []

    @pipe.stage
    async def look(ctx: tp.StageContext) -> None:
        # Not synchronised with the writer on purpose: what a reader of the file sees.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= 2:
                seen.append(len(lines))
                return
            await trio.sleep(0.001)

    await tp.run(pipe, sinks=[sink])
    assert seen == [2]  # RunStarted and StageStarted, written while the stage runs


async def test_an_io_error_disables_only_the_jsonl_sink(tmp_path: Path) -> None:
    sink, other = tp.JsonlSink(tmp_path / "missing" / "events.jsonl"), RecordingSink()
    result = await tp.run(seed_pipeline(), keep_going=True, sinks=[sink, other])
    assert isinstance(result.sink_errors[sink], FileNotFoundError)
    assert result.deliveries[sink].state is tp.SinkState.DISABLED
    assert isinstance(other.events[-1], tp.RunFinished)
    assert result.state is tp.RunState.CLOSED


async def test_append_mode_keeps_what_was_there(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"old": 1}\n')
    await tp.run(seed_pipeline(), keep_going=True, sinks=[tp.JsonlSink(path, append=True)])
    lines = path.read_text().splitlines()
    assert lines[0] == '{"old": 1}'
    assert json.loads(lines[1])["type"] == "RunStarted"


def test_read_jsonl_warns_on_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "torn.jsonl"
    encode = _jsonl.encoder()
    whole = b"".join(encode(_jsonl.event_row(e)) + b"\n" for e in EVERY_KIND[:3])
    path.write_bytes(whole + encode(_jsonl.event_row(EVERY_KIND[3]))[:17])
    with pytest.warns(UserWarning, match=r"torn\.jsonl:4: torn last line ignored"):
        events = list(tp.read_jsonl(path))
    assert events == EVERY_KIND[:3]


def test_read_jsonl_raises_on_a_broken_middle_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    encode = _jsonl.encoder()
    rows = [encode(_jsonl.event_row(e)) for e in EVERY_KIND[:3]]
    rows[1] = b'{"type": "StageStarted", "seq": 1}'
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: row lacks the field 'run_id'"):
        list(tp.read_jsonl(path))
    rows[1] = b'{"type": "Nope"}'
    path.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not an event row: unknown event type"):
        list(tp.read_jsonl(path))


def test_read_jsonl_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "new.jsonl"
    path.write_text('{"type":"RunStarted","schema":2,"run_id":"r","seq":0,"pipeline":"p"}')
    with pytest.raises(ValueError, match="log schema 2 is newer than this version reads"):
        list(tp.read_jsonl(path))


LOGGING = """\
import trio
import trio_pipeline as tp

pipe = tp.Pipeline("chatty")

@pipe.stage
async def chatty(ctx):
    for i in range(10_000_000):
        ctx.log(f"line {i} " + "x" * (i % 50))
        if i % 100 == 0:
            await trio.sleep(0)
"""


def test_sigkill_leaves_a_gap_free_prefix_of_valid_lines(tmp_path: Path) -> None:
    source = tmp_path / "chatty.py"
    source.write_text(textwrap.dedent(LOGGING))
    path = tmp_path / "run.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trio_pipeline",
            "run",
            str(source),
            "--plain",
            "--jsonl",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            not path.exists() or path.stat().st_size < 2_000_000
        ):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or the torn line
    rows = [json.loads(line) for line in lines]
    assert len(rows) > 10_000
    assert [row["seq"] for row in rows] == list(range(len(rows)))
    assert rows[0]["type"] == "RunStarted"
    with pytest.warns() if tail else _no_warning():
        events = list(tp.read_jsonl(path))
    assert len(events) == len(rows)


class _no_warning:
    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error")

    def __exit__(self, *exc: Any) -> None:
        self._catch.__exit__(*exc)


async def test_the_writer_thread_is_joined_by_aclose(tmp_path: Path) -> None:
    import threading

    before = set(threading.enumerate())
    sink = tp.JsonlSink(tmp_path / "e.jsonl")
    await tp.run(seed_pipeline(), keep_going=True, sinks=[sink])
    assert set(threading.enumerate()) - before <= {
        t for t in threading.enumerate() if t.name.startswith("Trio thread")
    }


async def test_a_slow_disk_holds_back_only_the_jsonl_sink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer thread is stuck (a slow disk); handle keeps returning at once until
    # the queue is long, so the loop and the other sinks go on.
    import threading

    release = threading.Event()
    sink = tp.JsonlSink(tmp_path / "slow.jsonl")
    original = sink._write

    def slow_write(batch: list[bytes]) -> None:
        release.wait(10)
        original(batch)

    monkeypatch.setattr(sink, "_write", slow_write)
    other = RecordingSink()
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def logs(ctx: tp.StageContext) -> None:
        for i in range(1000):
            ctx.log(str(i))
        await trio.sleep(0.05)
        assert isinstance(other.events[-1], tp.StageLog)  # the other sink is not held up
        release.set()

    result = await tp.run(pipe, sinks=[sink, other])
    assert result.ok
    assert len((tmp_path / "slow.jsonl").read_text().splitlines()) == 1004
