"""`trio_pipeline.testing.__all__` lists exactly its public names, which claim the package."""

from __future__ import annotations

import types

import trio_pipeline.testing as kit


def test_all_lists_every_public_name_and_nothing_else() -> None:
    public = {
        name
        for name, value in vars(kit).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(kit.__all__)
    assert len(kit.__all__) == len(set(kit.__all__))


def test_public_objects_report_the_package() -> None:
    for name in kit.__all__:
        assert getattr(kit, name).__module__ == "trio_pipeline.testing", name
