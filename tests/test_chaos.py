"""The chaos hook is a context variable: installed for a block, inherited by tasks, restored."""

from __future__ import annotations

import pytest
import trio

from trio_pipeline import _chaos


async def _hook_a(name: str) -> None:
    pass


async def _hook_b(name: str) -> None:
    pass


def _raise_inside(hook: _chaos.Hook, seen: list[object]) -> None:
    with _chaos.installed(hook):
        seen.append(_chaos.current())
        raise KeyError


def test_installed_nests_and_restores_even_on_error() -> None:
    assert _chaos.current() is None
    with _chaos.installed(_hook_a):
        assert _chaos.current() is _hook_a
        seen: list[object] = []
        with pytest.raises(KeyError):
            _raise_inside(_hook_b, seen)
        assert seen == [_hook_b]
        assert _chaos.current() is _hook_a
    assert _chaos.current() is None


async def test_tasks_inherit_the_hook_of_the_context_that_spawned_them() -> None:
    seen: dict[str, object] = {}

    async def look(label: str) -> None:
        seen[label] = _chaos.current()

    async with trio.open_nursery() as nursery:
        with _chaos.installed(_hook_a):
            nursery.start_soon(look, "spawned inside")
        nursery.start_soon(look, "spawned outside")
    assert seen == {"spawned inside": _hook_a, "spawned outside": None}
