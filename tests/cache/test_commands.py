"""`trio-pipeline cache stats|clear|prune`, `history [FILE]`, `show RUN_ID`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trio_pipeline._cache._store import (
    CacheEntry,
    RunRecord,
    SQLiteStore,
    StageRecord,
    digest_bytes,
)
from trio_pipeline._cli import main


def seed(folder: Path) -> None:
    now = time.time()
    with SQLiteStore(folder) as store:
        store.put(CacheEntry("old", "p", "a", b"x", digest_bytes(b"x"), created=now - 9 * 86400))
        store.put(CacheEntry("new", "p", "b", b"yy", digest_bytes(b"yy"), created=now))
        store.record_run(
            RunRecord(
                "run111aaa",
                "p",
                str(Path("pipe.py").resolve()),
                now - 60,
                1.25,
                "closed",
                False,
                {"succeeded": 1, "failed": 1, "cached": 1},
                {"lr": 0.1},
                (
                    StageRecord("a", "succeeded", 1, 0.5),
                    StageRecord("b", "failed", 3, 0.7, error="ValueError: boom"),
                    StageRecord("c", "cached", 0, 0.0, reason="cache hit"),
                    StageRecord("d", "blocked", 0, 0.0, reason="upstream 'b' failed"),
                ),
            )
        )
        store.record_run(
            RunRecord("run222bbb", "q", "/elsewhere/q.py", now, 0.5, "closed", True, {"cached": 2})
        )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    seed(tmp_path / ".trio-pipeline")
    return tmp_path / ".trio-pipeline"


def test_stats(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "stats"]) == 0
    out = capsys.readouterr().out
    assert "entries: 2 (2 stages)" in out
    assert "runs recorded: 2" in out
    assert str(cache / "cache.sqlite") in out


def test_prune_and_clear(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "prune", "--older-than", "7"]) == 0
    assert "removed 1 entry older than 7 days" in capsys.readouterr().out
    with SQLiteStore(cache) as store:
        assert store.get("old") is None
        assert store.get("new") is not None
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not (cache / "cache.sqlite").exists()
    assert main(["cache", "clear"]) == 0
    assert "no cache" in capsys.readouterr().out


def test_prune_rejects_bad_days(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["cache", "prune", "--older-than", "-1"])
    assert info.value.code == 2
    assert "days >= 0" in capsys.readouterr().err


def test_history_lists_newest_first_and_filters_by_file(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "STARTED", "PIPELINE", "STATE", "DURATION", "STAGES"]
    assert lines[1].startswith("run222bbb")
    assert lines[2].startswith("run111aaa")
    assert "failed" in lines[2].split()  # a closed run with failures
    assert "1 succeeded, 1 failed, 1 cached" in lines[2]
    assert main(["history", "pipe.py"]) == 0
    out = capsys.readouterr().out
    assert "run111aaa" in out
    assert "run222bbb" not in out
    assert main(["history", "other.py"]) == 0
    assert "no runs recorded for other.py" in capsys.readouterr().out


def test_show(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "run111"]) == 0
    out = capsys.readouterr().out
    assert "run run111aaa of pipeline 'p'" in out
    assert "with failures" in out
    assert "params: lr=0.1" in out
    assert "b: failed after 3 attempts: ValueError: boom" in out
    assert "d: blocked: upstream 'b' failed" in out
    assert "cached: c" in out
    assert "a: succeeded" not in out
    assert main(["show", "run"]) == 1  # ambiguous
    assert "no run 'run'" in capsys.readouterr().err


def test_without_a_store_nothing_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["history"]) == 0
    assert main(["cache", "stats", "--cache-dir", "elsewhere"]) == 0
    assert "no cache in elsewhere/" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_store_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cache.sqlite").write_bytes(b"\x00garbage" * 100)
    for argv in (["history", "--cache-dir", "c"], ["cache", "stats", "--cache-dir", "c"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("trio-pipeline: error: cache store c/cache.sqlite")
        assert "trio-pipeline cache clear --cache-dir c" in err
        assert "Traceback" not in err
    assert main(["cache", "clear", "--cache-dir", "c"]) == 0
    assert main(["history", "--cache-dir", "c"]) == 0
