"""Decisions and their reasons."""

from __future__ import annotations

from trio_pipeline._cache._explain import explain_changes, format_age


def test_explain_changes_lists_every_kind() -> None:
    old = {
        "format": 1,
        "code": "1",
        "functions": {"p.py:f": "1", "p.py:g": "1", "numpy 1.0": "x"},
        "version": None,
        "inputs": {"a": "1", "b": "1"},
        "params": {"lr": "1"},
        "deps": {"d": "1"},
    }
    new = {
        "format": 1,
        "code": "2",
        "functions": {"p.py:f": "2", "p.py:g": "1", "numpy 2.0": "y"},
        "version": "v2",
        "inputs": {"a": "2", "b": "1"},
        "params": {"lr": "2", "new": "1"},
        "deps": {"d": "2"},
    }
    assert explain_changes(old, new) == [
        "version changed: None -> 'v2'",
        "code changed: function 'p.py:f'",
        "code changed: packages 'numpy 2.0', 'numpy 1.0'",
        "input changed: upstream 'a'",
        "params changed: keys 'lr', 'new'",
        "dep changed: file 'd'",
    ]
    assert explain_changes({**old, "format": 0}, old) == [
        "cache format changed (a new trio_pipeline)"
    ]


def test_format_age() -> None:
    assert format_age(5) == "5s"
    assert format_age(600) == "10.0 min"
    assert format_age(7200) == "2.0 h"
    assert format_age(86400 * 3) == "3.0 days"


def test_a_changed_command_is_named_as_such() -> None:
    def parts(argv: str, digest: str) -> dict[str, object]:
        return {"format": 1, "code": digest, "functions": {f"command {argv}": digest}}

    old, new = parts("('echo', 'a')", "1"), parts("('echo', 'b')", "2")
    assert explain_changes(old, new) == ["code changed: the command, now ('echo', 'b')"]
    same_argv = parts("('echo', 'a')", "3")  # its cwd or env changed
    assert explain_changes(old, same_argv) == ["code changed: the command, now ('echo', 'a')"]
