"""File dependencies: content hashes memoised by stat, directories, missing paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from trio_pipeline._cache._files import file_digest, path_digests
from trio_pipeline._cache._store import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with SQLiteStore(tmp_path / "cache") as s:
        yield s


def test_file_hashes_are_memoised_by_stat(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio_pipeline._cache._files as files

    reads: list[str] = []
    real = files._hash_file

    def counting(path: str) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(files, "_hash_file", counting)
    path = tmp_path / "f.txt"
    path.write_text("one")
    first = file_digest(str(path), store)
    assert file_digest(str(path), store) == first
    assert len(reads) == 1
    path.write_text("two!")  # another size: the memo no longer matches
    assert file_digest(str(path), store) != first
    assert len(reads) == 2
    os.utime(path, ns=(1, 1))  # same size, another mtime: read again
    file_digest(str(path), store)
    assert len(reads) == 3


def test_directories_list_their_files(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "x").write_text("x")
    (folder / "sub" / "y").write_text("y")
    digests = path_digests(str(folder), None)
    assert set(digests) == {f"{folder}/x", f"{folder}/sub/y"}
    assert path_digests(str(tmp_path / "nope"), None) == {str(tmp_path / "nope"): "missing"}
    (tmp_path / "empty").mkdir()
    assert path_digests(str(tmp_path / "empty"), None) == {
        str(tmp_path / "empty"): "empty directory"
    }


def test_a_replaced_file_with_the_same_size_and_mtime_is_read_again(
    store: SQLiteStore, tmp_path: Path
) -> None:
    path = tmp_path / "f.txt"
    path.write_text("aaaa")
    os.utime(path, ns=(10**18, 10**18))
    first = file_digest(str(path), store)
    other = tmp_path / "g.txt"
    other.write_text("bbbb")  # same size
    os.utime(other, ns=(10**18, 10**18))  # same mtime
    os.replace(other, path)  # another inode
    assert file_digest(str(path), store) != first
