"""`__all__` lists exactly the public names, and they claim the public module."""

from __future__ import annotations

import types

import trio_pipeline as tp


def test_all_lists_every_public_name_and_nothing_else() -> None:
    public = {
        name
        for name, value in vars(tp).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(tp.__all__)
    assert len(tp.__all__) == len(set(tp.__all__))


def test_public_objects_report_the_public_module() -> None:
    checked = 0
    for name in tp.__all__:
        obj = getattr(tp, name)
        if isinstance(obj, type | types.FunctionType):  # not the type aliases
            assert obj.__module__ == "trio_pipeline", name
            checked += 1
    assert checked >= len(tp.__all__) - 3  # Event, StageFunction, SyncStageFunction
