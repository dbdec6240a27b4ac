"""Run parameters: given once, read by every stage, carried by RunStarted; the CLI's parsing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

import trio_pipeline as tp
from trio_pipeline._params import Params, check_params, load_params_file, parse_param
from trio_pipeline.testing import RecordingSink


def read_params(snap: tp.StageSnapshot) -> dict[str, Any]:
    return dict(snap.params)


async def test_every_kind_of_stage_reads_the_params_and_run_started_carries_them() -> None:
    seen: dict[str, Any] = {}
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def task(ctx: tp.StageContext) -> None:
        seen["task"] = dict(ctx.params)
        with pytest.raises(TypeError):
            ctx.params["env"] = "x"  # type: ignore[index]

    pipe.add_stage("thread", read_params, executor=tp.ThreadExecutor())
    pipe.add_stage("process", read_params, executor=tp.ProcessExecutor(limit=1))
    given = {"env": "ci", "n": 3}
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink], params=given)
    given["n"] = 4  # the run took a copy
    assert seen["task"] == {"env": "ci", "n": 3}
    assert result.stages["thread"].value == {"env": "ci", "n": 3}
    assert result.stages["process"].value == {"env": "ci", "n": 3}
    started = sink.events[0]
    assert isinstance(started, tp.RunStarted)
    assert started.params == {"env": "ci", "n": 3}


async def test_no_params_is_an_empty_mapping() -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("thread", read_params, executor=tp.ThreadExecutor())
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.stages["thread"].value == {}
    started = sink.events[0]
    assert isinstance(started, tp.RunStarted)
    assert started.params == {}


@pytest.mark.parametrize("bad", [["a"], {1: "x"}, "text"])
async def test_bad_params_raise_before_anything_runs(bad: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("thread", read_params, executor=tp.ThreadExecutor())
    sink = RecordingSink()
    with pytest.raises(TypeError, match="params"):
        await tp.run(pipe, sinks=[sink], params=bad)
    assert sink.events == []


def test_params_mapping_is_read_only_hashable_and_pickles() -> None:
    params = check_params({"a": [1]})
    assert params == {"a": [1]}
    assert hash(Params({"a": 1})) == hash(Params({"a": 2}))  # by keys; equal ones agree
    assert pickle.loads(pickle.dumps(params)) == params
    assert check_params(params) is params
    assert check_params(None) == {}
    snap = tp.StageSnapshot("s", {}, 1, "r", params=params)
    assert pickle.loads(pickle.dumps(snap)).params == {"a": [1]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("n=3", ("n", 3)),
        ("on=true", ("on", True)),
        ('tags=["a", "b"]', ("tags", ["a", "b"])),
        ("name=ci", ("name", "ci")),
        ("v=007", ("v", "007")),
        ('s="3"', ("s", "3")),
        ("empty=", ("empty", "")),
        ("url=http://x/?a=b", ("url", "http://x/?a=b")),
        ('cfg={"k": null}', ("cfg", {"k": None})),
    ],
)
def test_parse_param_takes_json_when_it_parses(text: str, expected: tuple[str, Any]) -> None:
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=3", " =3"])
def test_parse_param_needs_key_equals_value(text: str) -> None:
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_param(text)


def test_params_files(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"n": 1, "tags": ["a"]}))
    (tmp_path / "p.toml").write_text('n = 1\nname = "ci"\n[db]\nport = 5432\n')
    assert load_params_file(str(tmp_path / "p.json")) == {"n": 1, "tags": ["a"]}
    assert load_params_file(str(tmp_path / "p.toml")) == {
        "n": 1,
        "name": "ci",
        "db": {"port": 5432},
    }


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("p.yaml", "a: 1", r"p\.yaml: expected a \.json or \.toml file"),
        ("p.json", "[1]", r"p\.json: expected a JSON object, got list"),
        ("p.json", "{", r"p\.json: not valid JSON"),
        ("p.toml", "a = ", r"p\.toml: not valid TOML"),
        ("missing.json", None, r"missing\.json: No such file"),
    ],
)
def test_bad_params_files_name_the_file(
    tmp_path: Path, name: str, content: str | None, match: str
) -> None:
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        load_params_file(str(tmp_path / name))
