"""The built-in sinks: what they write, and when."""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing

import trio_pipeline as tp
from tests.support.runs import seed_pipeline


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
    }
    failed = next(r for r in rows if r["type"] == "StageFinished" and r["stage"] == "first")
    assert failed["status"] == "failed"
    assert failed["error"] == "ZeroDivisionError: integer division or modulo by zero"
    blocked = next(r for r in rows if r["type"] == "StageFinished" and r["stage"] == "second")
    assert blocked["blocked_by"] == "first"
    assert all(r["run_id"] == result.run_id for r in rows)


async def test_jsonl_sink_flushes_each_event(tmp_path: Any) -> None:
    path = tmp_path / "events.jsonl"
    sink = tp.JsonlSink(path)
    pipe = tp.Pipeline("p")
    lines_seen: list[int] = []

    @pipe.stage
    async def look(ctx: tp.StageContext) -> None:
        await trio.testing.wait_all_tasks_blocked()
        lines_seen.append(len(path.read_text().splitlines()))

    await tp.run(pipe, sinks=[sink])
    assert lines_seen == [2]  # RunStarted and StageStarted are on disk already
