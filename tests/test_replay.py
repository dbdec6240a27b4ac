"""A run from its JSONL log: check_log's invariants, replay, and the two commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline import _jsonl
from trio_pipeline._replay import LogInvariantError, check_log, cmd_check, cmd_replay, replay
from trio_pipeline._result import count_statuses
from trio_pipeline.testing import RecordingSink

S = tp.StageStatus


def demo() -> tp.Pipeline:
    pipe = tp.Pipeline("demo")

    @pipe.stage(retries=1)
    async def flaky(ctx: tp.StageContext) -> None:
        ctx.log(f"attempt {ctx.attempt}")
        await trio.sleep(1)
        if ctx.attempt == 1:
            raise ValueError("first time")

    @pipe.stage(after=flaky)
    async def after(ctx: tp.StageContext) -> None:
        await trio.sleep(2)

    return pipe


async def recorded_run() -> list[tp.Event]:
    sink = RecordingSink()
    await tp.run(demo(), sinks=[sink])
    return sink.events


async def test_a_real_run_passes(autojump_clock: trio.testing.MockClock) -> None:
    events = await recorded_run()
    assert check_log(events) == events


def _replace(events: list[tp.Event], index: int, **changes: Any) -> list[tp.Event]:
    out = list(events)
    out[index] = dataclasses.replace(out[index], **changes)
    return out


async def test_each_broken_invariant_is_named(autojump_clock: trio.testing.MockClock) -> None:
    events = await recorded_run()
    started = next(i for i, e in enumerate(events) if isinstance(e, tp.StageStarted))
    finished = [i for i, e in enumerate(events) if isinstance(e, tp.StageFinished)]
    log_at = next(i for i, e in enumerate(events) if isinstance(e, tp.StageLog))
    broken = {
        "RunStarted first": events[1:],
        "seq contiguous from 0": events[:3] + events[4:],
        "one run id": _replace(events, 2, run_id="other"),
        "time never goes backwards": _replace(events, len(events) - 2, time=-1.0),
        "RunFinished last": events[:-1],
        "exactly one StageFinished per stage": [
            *[dataclasses.replace(e, seq=i) for i, e in enumerate(events[:-1])],
            dataclasses.replace(events[finished[0]], seq=len(events) - 1, time=events[-1].time),
            dataclasses.replace(events[-1], seq=len(events)),
        ],
        "RunFinished.counts matches the events": _replace(
            events, len(events) - 1, counts=count_statuses([S.SUCCEEDED, S.FAILED])
        ),
        "attempts numbered 1, 2, ...": _replace(events, started, attempt=2),
        "logs and item events come only from a running stage": _replace(
            events, log_at, stage="after"
        ),
        "events name only the run's stages": _replace(events, started, stage="ghost"),
    }
    for invariant, log in broken.items():
        with pytest.raises(LogInvariantError, match=f"invariant broken: {invariant}:"):
            check_log(log)
    with pytest.raises(AssertionError, match="the log is empty"):
        check_log([])


async def test_replay_paces_and_restamps_the_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = await recorded_run()
    sink = RecordingSink()
    start = trio.current_time()
    await replay(events, [sink], speed=2)
    assert trio.current_time() - start == pytest.approx(events[-1].time / 2)
    assert [dataclasses.replace(e, time=0.0) for e in sink.events] == [
        dataclasses.replace(e, time=0.0) for e in events
    ]
    assert sink.events[-1].time == pytest.approx(start + events[-1].time / 2)
    assert sink.closed
    sink = RecordingSink()
    start = trio.current_time()
    await replay(events, [sink], speed=0)
    assert trio.current_time() == start
    assert len(sink.events) == len(events)


def write_log(path: Path, events: list[tp.Event]) -> None:
    encode = _jsonl.encoder()
    path.write_bytes(b"".join(encode(_jsonl.event_row(e)) + b"\n" for e in events))


async def test_check_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], autojump_clock: trio.testing.MockClock
) -> None:
    events = await recorded_run()
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    write_log(good, events)
    write_log(bad, events[:-1])
    assert cmd_check(str(good)) == 0
    assert f"good.jsonl: ok: {len(events)} events, 2 stages, run" in capsys.readouterr().out
    assert cmd_check(str(bad)) == 1
    assert "invariant broken: RunFinished last: the log ends at seq=" in capsys.readouterr().out
    # A torn last line: warned about on stderr, then judged like the rest.
    with bad.open("ab") as file:
        file.write(b'{"type": "RunFin')
    assert cmd_check(str(bad)) == 1
    captured = capsys.readouterr()
    assert "bad.jsonl:" in captured.err
    assert "torn last line ignored" in captured.err
    assert cmd_check(str(tmp_path / "missing.jsonl")) == 2
    rows = good.read_text().splitlines()
    rows[1] = json.dumps({"type": "StageStarted"})
    bad.write_text("\n".join(rows) + "\n")
    assert cmd_check(str(bad)) == 1
    assert "bad.jsonl:2: row lacks the field 'run_id'" in capsys.readouterr().out


def test_replay_command_plain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = trio.run(recorded_run, clock=trio.testing.MockClock(autojump_threshold=0))
    path = tmp_path / "run.jsonl"
    write_log(path, events)
    assert cmd_replay(str(path), speed=0, live=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "flaky | attempt 1",
        "flaky: attempt 1 failed (ValueError: first time); retrying in 0s",
        "flaky | attempt 2",
        "flaky: succeeded (2.00s)",
        "after: succeeded (2.00s)",
        "Summary: 2 succeeded in 4.00s",
    ]
