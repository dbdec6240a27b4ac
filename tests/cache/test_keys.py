"""Cache keys: code fingerprints follow own code, count libraries by version; values by bytes."""

from __future__ import annotations

import functools
import json
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import trio_pipeline as tp
from trio_pipeline._cache._keys import (
    CodeFingerprinter,
    Fingerprint,
    functions_json,
    hash_params,
    hash_value,
    input_piece,
    key_of,
    key_parts,
    parts_text,
    text_from,
    text_head,
)
from trio_pipeline._cache._store import canonical_json, digest_bytes
from trio_pipeline._cli import load_file


def load(tmp_path: Path, source: str, name: str = "pipe.py") -> ModuleType:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return load_file(str(path))


def fp(obj: object) -> Fingerprint:
    return CodeFingerprinter().fingerprint(obj)


BASE = """
    import json
    LIMIT = 3
    UNUSED = 1

    def helper(x):
        return x + LIMIT

    async def stage(ctx):
        'Add one.'
        return helper(1) + len(json.dumps([]))
"""


def test_same_source_same_fingerprint_across_loads(tmp_path: Path) -> None:
    one = load(tmp_path, BASE)
    two = load(tmp_path, BASE)
    assert one.stage is not two.stage
    assert fp(one.stage) == fp(two.stage)


def test_items_name_the_own_functions_constants_and_packages(tmp_path: Path) -> None:
    module = load(tmp_path, BASE)
    items = fp(module.stage).items
    assert "pipe.py:stage" in items or any(k.endswith("pipe.py:stage") for k in items)
    names = {k.rpartition(":")[2] for k in items if ":" in k}
    assert names == {"stage", "helper", "LIMIT"}
    assert any(k.startswith("python ") for k in items)  # json: the stdlib by version


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("return x + LIMIT", "return x - LIMIT"),  # a helper's body
        ("LIMIT = 3", "LIMIT = 4"),  # a constant it reads
        ("return helper(1)", "return helper(2)"),  # the stage's own body
        ("def helper(x):", "def helper(x, y=1):"),  # a signature
    ],
)
def test_a_change_in_reached_code_changes_the_fingerprint(
    tmp_path: Path, old: str, new: str
) -> None:
    before = fp(load(tmp_path, BASE).stage)
    assert old in BASE
    after = fp(load(tmp_path, BASE.replace(old, new)).stage)
    assert before.digest != after.digest


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("UNUSED = 1", "UNUSED = 2"),  # not referenced
        ("    import json\n", "    import json\n\n\n\n"),  # line numbers move
        ("'Add one.'", "'Add one, then some: an edited docstring.'"),
    ],
)
def test_what_the_code_does_not_depend_on_leaves_it(tmp_path: Path, old: str, new: str) -> None:
    before = fp(load(tmp_path, BASE).stage)
    assert old in BASE
    after = fp(load(tmp_path, BASE.replace(old, new)).stage)
    assert before == after


def test_the_changed_item_is_named(tmp_path: Path) -> None:
    before = fp(load(tmp_path, BASE).stage).items
    after = fp(load(tmp_path, BASE.replace("x + LIMIT", "x * LIMIT")).stage).items
    changed = {k for k in after if before.get(k) != after[k]}
    assert {k.rpartition(":")[2] for k in changed} == {"helper"}


def test_a_helper_in_another_own_module_is_followed(tmp_path: Path) -> None:
    (tmp_path / "helpers_mod.py").write_text("K = 1\ndef f():\n    return K\n")
    src = """
        import helpers_mod
        async def stage(ctx):
            return helpers_mod.f()
    """
    before = fp(load(tmp_path, src).stage)
    assert any(k.endswith("helpers_mod.py:f") for k in before.items)
    assert any(k.endswith("helpers_mod.py:K") for k in before.items)
    import sys

    sys.modules.pop("helpers_mod")
    (tmp_path / "helpers_mod.py").write_text("K = 2\ndef f():\n    return K\n")
    after = fp(load(tmp_path, src).stage)
    sys.modules.pop("helpers_mod")
    assert before.digest != after.digest


def test_libraries_count_by_version_not_content() -> None:
    import trio

    items = fp(trio.sleep).items
    assert len(items) == 1
    (only,) = items
    assert only.startswith("trio ")  # the distribution and its version
    assert fp(tp.run).items.keys() == {f"trio-pipeline {tp.__version__}"}


def test_recursion_terminates(tmp_path: Path) -> None:
    module = load(
        tmp_path,
        """
        def even(n):
            return n == 0 or odd(n - 1)
        def odd(n):
            return n != 0 and even(n - 1)
        async def stage(ctx):
            return even(4)
        """,
    )
    names = {k.rpartition(":")[2] for k in fp(module.stage).items if ":" in k}
    assert names == {"stage", "even", "odd"}


def test_closures_partials_classes_and_wrappers(tmp_path: Path) -> None:
    src = """
        import functools

        def make(n):
            async def stage(ctx):
                return n
            return stage

        class Job:
            FACTOR = 2
            def compute(self):
                return self.FACTOR
            async def __call__(self, ctx):
                return self.compute()

        def work(snapshot, scale=1):
            return scale

        one = make(1)
        two = make(2)
        job = Job()
        part = functools.partial(work, scale=3)
    """
    module = load(tmp_path, src)
    assert fp(module.one).digest != fp(module.two).digest  # the captured value counts
    job_items = fp(module.job).items
    assert any(k.endswith("Job.compute") for k in job_items)
    changed = load(tmp_path, src.replace("FACTOR = 2", "FACTOR = 5"))
    assert fp(module.job).digest != fp(changed.job).digest
    assert fp(module.part).digest != fp(functools.partial(module.work, scale=4)).digest
    pipe = tp.Pipeline("p")
    stage = pipe.add_stage("w", module.work, executor=tp.ThreadExecutor())
    assert fp(stage.fn).digest == fp(module.work).digest  # the wrapper is looked through


def test_command_stages_fingerprint_their_argv() -> None:
    pipe = tp.Pipeline("p")
    a = pipe.add_command("a", ["echo", "1"])
    b = pipe.add_command("b", ["echo", "2"])
    assert fp(a.fn).digest != fp(b.fn).digest
    assert fp(a.fn).digest == fp(tp.Pipeline("q").add_command("a", ["echo", "1"]).fn).digest


def test_fingerprints_are_memoised_per_object(tmp_path: Path) -> None:
    module = load(tmp_path, BASE)
    printer = CodeFingerprinter()
    assert printer.fingerprint(module.stage) is printer.fingerprint(module.stage)


def test_values_hash_by_pickled_bytes() -> None:
    assert hash_value([1, 2, {"a": 3}]) == hash_value([1, 2, {"a": 3}])
    assert hash_value([1, 2]) != hash_value([2, 1])
    assert hash_value(1) != hash_value(1.0)
    with pytest.raises(Exception, match="pickle"):
        hash_value(lambda: None)


def test_params_hash_each_key_and_can_be_limited() -> None:
    params: dict[str, Any] = {"lr": 0.1, "epochs": 3}
    digests = hash_params(params)
    assert digests.keys() == {"lr", "epochs"}
    assert hash_params(params, ["lr", "missing"]).keys() == {"lr"}
    assert hash_params({"lr": 0.2, "epochs": 3})["epochs"] == digests["epochs"]


def _parts(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "stage": "s",
        "code": Fingerprint("c", {"f": "1"}),
        "version": None,
        "inputs": {"a": "1"},
        "params": {"p": "1"},
        "deps": {"d.txt": "1"},
    }
    base.update(overrides)
    return key_parts(**base)


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "t"},
        {"code": Fingerprint("c2", {"f": "1"})},
        {"version": "2"},
        {"inputs": {"a": "2"}},
        {"inputs": {"a": "1", "b": "1"}},
        {"params": {"p": "2"}},
        {"deps": {"d.txt": "2"}},
    ],
)
def test_every_component_enters_the_key(change: dict[str, Any]) -> None:
    assert key_of(_parts()) != key_of(_parts(**change))


def test_the_key_does_not_depend_on_order() -> None:
    one = _parts(inputs={"a": "1", "b": "2"})
    two = _parts(inputs={"b": "2", "a": "1"})
    assert key_of(one) == key_of(two)


_ODD_PARTS: list[dict[str, Any]] = [
    {},
    {"stage": 'a "quoted" \\ stage', "version": "2"},
    {"inputs": {"b": "2", "a": "1", "\u00e9t\u00e9\n": "3"}, "params": {}, "deps": {}},
    {"inputs": {"it's": "ab12", 'say "x"\\': "cd34", "a": "1"}},
    {"code": Fingerprint("", {}), "inputs": {}, "params": {"z": "1", "y": "2"}},
    {"deps": {"dir/\u2603.txt": "9", "a.txt": "8"}},
    {"code": Fingerprint("c3", {"b.py:g": "2", "a.py:\u00e9": "1"}), "version": "\u2603"},
]


@pytest.mark.parametrize("change", [c for c in _ODD_PARTS if not c.get("deps")])
def test_the_fast_text_is_parts_text_and_the_key_its_hash(change: dict[str, Any]) -> None:
    parts = _parts(**{"deps": {}, **change})  # the fast text is for parts without deps
    inputs = parts["inputs"]
    text = text_from(
        text_head(parts["code"]),
        [input_piece(name, inputs[name]) for name in sorted(inputs)],
        canonical_json(parts["params"]),
        parts["stage"],
        parts["version"],
    )
    assert text == parts_text(parts)
    assert digest_bytes(text.encode()) == key_of(parts)
    stored = json.loads(text)
    assert stored == {name: value for name, value in parts.items() if name != "functions"}


@pytest.mark.parametrize("change", _ODD_PARTS)
def test_functions_json_is_the_stores_json(change: dict[str, Any]) -> None:
    import json

    functions = _parts(**change)["functions"]
    assert functions_json(functions) == json.dumps(functions, sort_keys=True, separators=(",", ":"))
