"""The SQLite cache store: schema marks, refusal of foreign/corrupt files, crash safety, sharing."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_pipeline._cache._store import (
    _DATA,
    _META,
    _PARTS,
    APPLICATION_ID,
    SCHEMA_VERSION,
    CacheEntry,
    CacheStore,
    CacheStoreError,
    FileMemo,
    RunRecord,
    SQLiteStore,
    StageColumns,
    StageRecord,
    _check,
    _decode,
    _encode,
    _little_endian,
    decode_stages,
    digest_bytes,
    encode_stages,
    kid_of,
    remove_store_files,
)

ROOT = Path(__file__).resolve().parent.parent


def entry(key: str, value: bytes = b"v", *, stage: str = "a", created: float = 0.0) -> CacheEntry:
    return CacheEntry(
        key=key,
        pipeline="p",
        stage=stage,
        value=value,
        value_digest=digest_bytes(value),
        parts={"stage": stage, "inputs": {"x": "1"}},
        outs={"out.txt": "abc"},
        created=created,
        run_id="run1",
    )


def test_it_is_a_cache_store(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        assert isinstance(store, CacheStore)


def test_put_get_latest_delete(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        assert store.get("k1") is None
        store.put(entry("k1", b"one", created=100.0))
        store.put(entry("k2", b"two", created=200.0))
        got = store.get("k1")
        assert got is not None
        assert got.value == b"one"
        assert got.outs == {"out.txt": "abc"}
        assert got.run_id == "run1"
        latest = store.latest("p", "a")
        assert latest is not None
        assert latest.key == "k2"
        assert latest.parts == {"stage": "a", "inputs": {"x": "1"}}
        assert store.latest("p", "other") is None
        assert store.latest("q", "a") is None
        store.delete("k1")
        assert store.get("k1") is None


def test_a_write_is_visible_to_another_connection_when_put_returns(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store, SQLiteStore(tmp_path / "c") as other:
        store.put(entry("k", b"x"))
        assert other.get("k") is not None


def test_files_are_private(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    with SQLiteStore(folder) as store:
        store.put(entry("k"))
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for name in os.listdir(folder):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name


def test_an_existing_folder_and_file_are_tightened(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    (folder / "cache.sqlite").touch()
    os.chmod(folder / "cache.sqlite", 0o644)
    SQLiteStore(folder).close()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "cache.sqlite").stat().st_mode) == 0o600


def test_the_file_is_marked_as_a_trio_pipeline_store(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "c").close()
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    path = folder / "cache.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE mine (x)")
    db.execute("INSERT INTO mine VALUES (42)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(CacheStoreError) as info:
        SQLiteStore(folder)
    message = str(info.value)
    assert str(path) in message
    assert "not a trio_pipeline cache store" in message
    assert "trio-pipeline cache clear" in message
    assert path.read_bytes() == before
    assert isinstance(info.value, OSError)


def test_a_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    db = sqlite3.connect(folder / "cache.sqlite")
    db.execute("PRAGMA application_id=1234")
    db.commit()
    db.close()
    with pytest.raises(CacheStoreError, match="not a trio_pipeline cache store"):
        SQLiteStore(folder)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "c").close()
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(CacheStoreError, match="newer trio_pipeline"):
        SQLiteStore(tmp_path / "c")


@pytest.mark.parametrize(
    "garbage",
    [b"this is not a database at all, just text" * 10, b"SQLite format 3\x00" + b"\xff" * 5000],
)
def test_a_corrupt_file_gives_a_clear_error(tmp_path: Path, garbage: bytes) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "cache.sqlite").write_bytes(garbage)
    with pytest.raises(CacheStoreError) as info:
        SQLiteStore(folder)
    assert str(folder / "cache.sqlite") in str(info.value)
    assert "cache clear" in str(info.value)


def test_clear_removes_even_a_corrupt_store(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "cache.sqlite").write_bytes(b"garbage")
    (folder / "keep.txt").write_text("not ours")
    removed = remove_store_files(folder)
    assert str(folder / "cache.sqlite") in removed
    assert (folder / "keep.txt").exists()
    SQLiteStore(folder).close()  # usable again


def _damage(folder: Path, column: str, key: str) -> None:
    """Flip one byte of `column` in the pack holding `key` (its hash left as it was)."""
    db = sqlite3.connect(folder / "cache.sqlite")
    for pack, meta, digests, blob in db.execute(f"SELECT id, meta, digests, {column} FROM packs"):
        if any(item and item[0] == key for item in _decode(meta, digests[_META]) or ()):
            flipped = bytearray(blob)
            flipped[len(flipped) // 2] ^= 0xFF
            db.execute(f"UPDATE packs SET {column} = ? WHERE id = ?", (bytes(flipped), pack))
    db.commit()
    db.close()


def _packs(folder: Path) -> list[tuple[int, list[object]]]:
    db = sqlite3.connect(folder / "cache.sqlite")
    try:
        rows = db.execute("SELECT id, meta, digests FROM packs ORDER BY id").fetchall()
    finally:
        db.close()
    return [(pack, _decode(meta, digests[_META]) or []) for pack, meta, digests in rows]


@pytest.mark.parametrize("column", ["data", "meta"])
def test_a_damaged_pack_is_never_decoded_or_returned(
    tmp_path: Path, column: str, caplog: pytest.LogCaptureFixture
) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        store.put(entry("k", b"the real value"))
        store.put(entry("other", b"kept"))
        _damage(tmp_path / "c", column, "k")
        assert store.get("k") is None
        damaged = [r for r in caplog.records if "is damaged" in r.getMessage()]
        assert len(damaged) == 1  # said, once
        assert str(tmp_path / "c" / "cache.sqlite") in damaged[0].getMessage()
        assert store.stats().entries == 1  # its pack was dropped; the other is intact
        got = store.get("other")
        assert got is not None
        assert got.value == b"kept"
    with SQLiteStore(tmp_path / "c") as fresh:  # a store that never saw it
        assert fresh.get("k") is None


def test_a_pack_that_is_not_a_list_is_never_used(tmp_path: Path) -> None:
    blob, digest = _encode([])
    assert _decode(blob, digest) == []
    assert _decode(blob, "0" * 8) is None  # not its hash: never decoded
    not_a_list = b"\xe9"  # marshal of True
    assert _decode(not_a_list, _check(not_a_list)) is None
    assert _decode(b"\xff", _check(b"\xff")) is None  # not marshal data at all


def test_batch_commits_once_and_rolls_back_on_error(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store, SQLiteStore(tmp_path / "c") as other:
        with store.batch():
            store.put(entry("a"))
            with store.batch():  # nested: joins
                store.put(entry("b"))
            assert other.get("a") is None  # not committed yet
        assert other.get("a") is not None
        assert other.get("b") is not None

        def failing_batch() -> None:
            with store.batch():
                store.put(entry("c"))
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            failing_batch()
        assert store.get("c") is None


def test_file_memo(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        assert store.file_memo("/x") is None
        store.put_file_memo("/x", FileMemo(1, 2, 3, "d"))
        assert store.file_memo("/x") == FileMemo(1, 2, 3, "d")
        store.put_file_memo("/x", FileMemo(4, 5, 6, "e"))
        assert store.file_memo("/x") == FileMemo(4, 5, 6, "e")


def record(run_id: str, started: float, *, file: str | None = "/p.py") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        pipeline="p",
        file=file,
        started=started,
        duration=1.5,
        state="closed",
        ok=False,
        counts={"succeeded": 1, "failed": 1},
        params={"lr": 0.1, "obj": object()},
        stages=(
            StageRecord("a", "succeeded", 1, 0.5),
            StageRecord("b", "failed", 2, 1.0, error="ValueError: boom"),
        ),
    )


def test_history(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        store.record_run(record("aaa111", 10.0))
        store.record_run(record("aab222", 20.0, file="/q.py"))
        store.record_run(record("bbb333", 30.0))
        assert [r.run_id for r in store.runs()] == ["bbb333", "aab222", "aaa111"]
        assert [r.run_id for r in store.runs(limit=1)] == ["bbb333"]
        assert [r.run_id for r in store.runs(file="/p.py")] == ["bbb333", "aaa111"]
        run = store.run("bbb")
        assert run is not None
        assert run.run_id == "bbb333"
        assert [s.name for s in run.stages] == ["a", "b"]
        assert run.stages[1].error == "ValueError: boom"
        assert run.params["lr"] == 0.1
        assert run.params["obj"].startswith("<object")  # not JSON: kept as its repr
        assert store.run("aa") is None  # ambiguous
        assert store.run("aaa111") is not None
        assert store.run("zzz") is None
        assert store.run("%") is None  # LIKE wildcards are literal


# A run's stages with every field in use: quotes, backslashes and non-ASCII text,
# durations that need every digit, reasons and errors on some stages only.
STAGES = (
    StageRecord("a", "succeeded", 1, 0.000123456789012345),
    StageRecord('b "\\\u00fc\n', "failed", 3, 1e-9, "cache miss", 'ValueError: boom "x"\n'),
    StageRecord("c", "cached", 0, 0.0, "cache hit: stored by run r0 at 12:00"),
    StageRecord("d", "blocked", 0, 0.0, "upstream 'b \"' failed"),
    StageRecord("e", "skipped", 0, 0.0),
    StageRecord("f", "cancelled", 1, 12345.678901234567, None, None),
)


def test_a_runs_stages_are_stored_as_columns_and_read_back_exactly(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        store.record_run(dataclasses.replace(record("r", 1.0), stages=STAGES))
        run = store.run("r")
    assert run is not None
    assert run.stages == STAGES
    stored = stored_stages(tmp_path / "c", "r")
    assert list(stored) == ["names", "statuses", "attempts", "durations", "reasons", "errors"]
    assert stored["names"] == [s.name for s in STAGES]
    assert stored["statuses"] == [s.status for s in STAGES]
    assert stored["reasons"] == [s.reason for s in STAGES]
    assert stored["errors"] == {"1": STAGES[1].error}  # only the stages with one
    # float64, little-endian whatever the machine, so a store can move between them.
    durations = struct.unpack(f"<{len(STAGES)}d", base64.b64decode(stored["durations"]))
    assert durations == tuple(s.duration for s in STAGES)


def stored_stages(folder: Path, run_id: str) -> dict[str, Any]:
    db = sqlite3.connect(folder / "cache.sqlite")
    (text,) = db.execute("SELECT stages FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    db.close()
    stored: dict[str, Any] = json.loads(text)
    return stored


def test_a_column_with_one_value_for_every_stage_is_stored_once(tmp_path: Path) -> None:
    cold = tuple(StageRecord(f"s{i}", "succeeded", 1, i / 7, "cache miss") for i in range(3))
    cached = tuple(StageRecord(f"s{i}", "cached", 0, 0.0, None) for i in range(3))
    one = (StageRecord("only", "failed", 2, 0.5, None, "ValueError: x"),)
    with SQLiteStore(tmp_path / "c") as store:
        for run_id, stages in [("cold", cold), ("cached", cached), ("one", one), ("none", ())]:
            store.record_run(dataclasses.replace(record(run_id, 1.0), stages=stages))
            run = store.run(run_id)
            assert run is not None
            assert run.stages == stages
    stored = stored_stages(tmp_path / "c", "cold")
    assert (stored["statuses"], stored["attempts"], stored["reasons"]) == (
        "succeeded",
        1,
        "cache miss",
    )
    stored = stored_stages(tmp_path / "c", "cached")
    assert (stored["statuses"], stored["attempts"], stored["reasons"]) == ("cached", 0, None)
    assert stored["names"] == ["s0", "s1", "s2"]  # names are always a list
    assert stored_stages(tmp_path / "c", "one")["names"] == ["only"]
    assert stored_stages(tmp_path / "c", "none")["statuses"] == []


def test_a_run_recorded_as_a_list_per_stage_reads_back_the_same(tmp_path: Path) -> None:
    # Schema 2's first form of `runs.stages`, written as its `record_run` wrote it.
    encode = json.JSONEncoder(separators=(",", ":")).encode
    rows = [encode([s.name, s.status, s.attempts, s.duration, s.reason, s.error]) for s in STAGES]
    with SQLiteStore(tmp_path / "c") as store:
        store.record_run(dataclasses.replace(record("new", 1.0), stages=STAGES))
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite")
    db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("old", "p", "/p.py", 2.0, 1.5, "closed", 0, '{"succeeded": 1, "failed": 1}',
         '{"lr": 0.1}', "[" + ",".join(rows) + "]"),
    )  # fmt: skip
    db.commit()
    db.close()
    with SQLiteStore(tmp_path / "c") as store:
        old, new = store.run("old"), store.run("new")
    assert old is not None
    assert new is not None
    assert old.stages == new.stages == STAGES


@settings(max_examples=50, deadline=None)
@given(
    stages=st.lists(
        st.builds(
            StageRecord,
            st.text(),
            st.sampled_from(["succeeded", "failed", "blocked", "skipped", "cancelled", "cached"]),
            st.integers(0, 2**40),
            st.floats(allow_nan=False),
            st.none() | st.text(),
            st.none() | st.text(),
        ),
        max_size=8,
    )
)
def test_any_stages_read_back_as_recorded(stages: list[StageRecord]) -> None:
    with tempfile.TemporaryDirectory() as folder, SQLiteStore(folder) as store:
        store.record_run(dataclasses.replace(record("r", 1.0), stages=tuple(stages)))
        run = store.run("r")
    assert run is not None
    assert run.stages == tuple(stages)


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        encode_stages(StageColumns(["a", "b"], ["succeeded"] * 2, [1, 1], [0.0], [None, None]))


def test_durations_are_stored_little_endian_on_a_big_endian_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    durations = array("d", [1.5, 2.25])
    columns = StageColumns(["a", "b"], ["succeeded"] * 2, [1, 1], durations, [None, None])
    little = encode_stages(columns)
    monkeypatch.setattr(sys, "byteorder", "big")  # as if this memory were big-endian
    swapped = array("d", durations)
    swapped.byteswap()
    assert _little_endian(durations) == swapped
    assert durations == array("d", [1.5, 2.25])  # a copy is swapped, not the columns
    # Big-endian memory holds `swapped`: it is stored as `little`, and read back as it.
    assert encode_stages(dataclasses.replace(columns, durations=swapped)) == little
    read = array("d", [stage.duration for stage in decode_stages(little)])
    assert read.tobytes() == swapped.tobytes()


@pytest.mark.parametrize(
    "text",
    [
        "{",
        '{"names": []}',
        '[["a"]]',
        '{"names":["a"],"statuses":[],"attempts":[],"durations":"","reasons":[],"errors":{}}',
        '{"names":[],"statuses":[],"attempts":[],"durations":"!!","reasons":[],"errors":{}}',
        '{"names":[],"statuses":[],"attempts":[],"durations":"AA==","reasons":[],"errors":{}}',
        '{"names":[],"statuses":[],"attempts":[],"durations":"","reasons":[],"errors":[]}',
    ],
)
def test_a_runs_unreadable_stages_are_reported_as_corrupt(tmp_path: Path, text: str) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        store.record_run(record("r", 1.0))
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite")
    db.execute("UPDATE runs SET stages = ?", (text,))
    db.commit()
    db.close()
    with SQLiteStore(tmp_path / "c") as store, pytest.raises(CacheStoreError, match="run r"):
        store.run("r")


def test_stats_and_prune(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        now = time.time()
        store.put(entry("old", b"x" * 10, created=now - 10 * 86400))
        store.put(entry("new", b"y" * 20, created=now))
        store.record_run(record("r-old", now - 10 * 86400))
        store.record_run(record("r-new", now))
        stats = store.stats()
        assert (stats.entries, stats.value_bytes, stats.runs, stats.stages) == (2, 30, 2, 1)
        assert store.prune(5 * 86400) == 1
        assert store.get("old") is None
        assert store.get("new") is not None
        assert [r.run_id for r in store.runs()] == ["r-new"]


def test_closed_store_raises(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c")
    store.close()
    store.close()  # idempotent
    with pytest.raises(CacheStoreError, match="closed"):
        store.get("k")


# -- crashes and concurrency -------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import os, random, sys
    sys.path.insert(0, {root!r})
    from trio_pipeline._cache._store import CacheEntry, SQLiteStore, digest_bytes

    def value_for(key):
        rnd = random.Random(key)
        return rnd.randbytes(rnd.choice([10, 1000, 100_000, 1_000_000]))

    store = SQLiteStore(sys.argv[1])
    rnd = random.Random(int(sys.argv[2]))
    print("ready", flush=True)
    n = 0
    while True:
        keys = [f"{{sys.argv[2]}}-{{n + i}}" for i in range(rnd.choice([1, 1, 5]))]
        n += len(keys)
        with store.batch():
            for key in keys:
                value = value_for(key)
                store.put(CacheEntry(key, "p", "s", value, digest_bytes(value)))
        for key in keys:
            print(key, flush=True)
    """
)


def _value_for(key: str) -> bytes:
    rnd = random.Random(key)
    return rnd.randbytes(rnd.choice([10, 1000, 100_000, 1_000_000]))


def _check_store(folder: Path, committed: list[str], after_rowid: int) -> int:
    """Committed keys are there with their values; no row written since `after_rowid` is torn."""
    with SQLiteStore(folder) as store:
        for key in committed:
            got = store.get(key)
            assert got is not None, f"{key} was reported committed but is gone"
            assert got.value == _value_for(key)
    db = sqlite3.connect(folder / "cache.sqlite")
    try:
        rows = db.execute(
            "SELECT id, meta, data, digests FROM packs WHERE id > ?", (after_rowid,)
        ).fetchall()
    finally:
        db.close()
    for pack, meta_blob, data_blob, digests in rows:
        meta, data = _decode(meta_blob, digests[_META]), _decode(data_blob, digests[_DATA])
        assert meta is not None, f"torn pack {pack}"
        assert data is not None, f"torn pack {pack}"
        for item, value in zip(meta, data, strict=True):
            if item is not None:
                assert digest_bytes(value) == item[3], f"torn value {item[0]}"
                assert value == _value_for(item[0])
        after_rowid = max(after_rowid, pack)
    return after_rowid


def kill_loop(folder: Path, kills: int, seed: int) -> int:
    """SIGKILL a writer at random moments `kills` times; check the store after each."""
    rnd = random.Random(seed)
    script = _WRITER.format(root=str(ROOT))
    total = 0
    rowid = 0
    for i in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(folder), str(seed * 1000 + i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rnd.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        committed = [line for line in out.splitlines() if line]
        total += len(committed)
        rowid = _check_store(folder, committed, rowid)
    db = sqlite3.connect(folder / "cache.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    return total


def test_sigkill_at_random_moments_never_tears_or_loses_a_committed_value(tmp_path: Path) -> None:
    # `nox -s stress` style long version: TRIO_PIPELINE_KILLS=50.
    kills = int(os.environ.get("TRIO_PIPELINE_KILLS", "6"))
    total = kill_loop(tmp_path / "c", kills, seed=1)
    assert total > 0


_SHARER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from trio_pipeline._cache._store import CacheEntry, RunRecord, SQLiteStore, digest_bytes

    store = SQLiteStore(sys.argv[1])
    me = sys.argv[2]
    for i in range(300):
        for key in (f"{{me}}-{{i}}", f"shared-{{i}}"):
            value = key.encode() if key.startswith(me) else f"shared-{{i}}".encode()
            store.put(CacheEntry(key, "p", "s", value, digest_bytes(value)))
            assert store.get(key) is not None
        if i % 50 == 0:
            store.record_run(RunRecord(f"{{me}}-{{i}}", "p", None, i, 0.0, "closed", True, {{}}))
            store.runs()
    print("done", flush=True)
    """
)


def test_two_processes_share_one_store(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    script = _SHARER.format(root=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(folder), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("one", "two")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out == "done\n"
        assert "locked" not in err
    with SQLiteStore(folder) as store:
        assert store.stats().entries == 900
        for i in range(300):
            for key in (f"one-{i}", f"two-{i}", f"shared-{i}"):
                assert store.get(key) is not None, key
        assert len(store.runs(limit=100)) == 12


def test_opening_retries_while_another_process_initialises_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: two processes opening one new store at once; the loser's
    # `PRAGMA journal_mode=WAL` failed with "database is locked", reported as corrupt.
    real_init = SQLiteStore._init
    calls: list[int] = []

    def init_locked_twice(self: SQLiteStore, db: sqlite3.Connection) -> None:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        real_init(self, db)

    monkeypatch.setattr(SQLiteStore, "_init", init_locked_twice)
    with SQLiteStore(tmp_path / "c") as store:
        store.put(entry("k1", b"one"))
        assert store.get("k1") is not None
    assert len(calls) == 3


def test_snapshot_reads_a_pipelines_entries_once(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:
        store.put(entry("k1", b"one"))
        store.put(entry("k2", b"two"))
        store.put(CacheEntry("k3", "other", "a", b"x", digest_bytes(b"x")))
        snap = store.snapshot("p", 1 << 20)
        assert set(snap) == {"k1", "k2"}
        one = snap["k1"]
        assert one is not None
        assert one.value == b"one"
        assert one.outs == {"out.txt": "abc"}
        assert store.snapshot("p", 0) == {"k1": None, "k2": None}  # too big: keys only
        _damage(tmp_path / "c", "data", "k2")
        assert set(store.snapshot("p", 1 << 20)) == {"k1"}  # a torn value is left out


# Schema 1, as the store made it before schema 2 (kept verbatim to test the migration).
_SCHEMA_1 = """
CREATE TABLE entries (key TEXT PRIMARY KEY, pipeline TEXT NOT NULL, stage TEXT NOT NULL,
    value BLOB NOT NULL, value_digest TEXT NOT NULL, parts TEXT NOT NULL, outs TEXT NOT NULL,
    created REAL NOT NULL, run_id TEXT NOT NULL);
CREATE INDEX entries_by_stage ON entries (pipeline, stage, created);
CREATE INDEX entries_by_age ON entries (created);
CREATE TABLE file_memo (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
    inode INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, file TEXT,
    started REAL NOT NULL, duration REAL NOT NULL, state TEXT NOT NULL, ok INTEGER NOT NULL,
    counts TEXT NOT NULL, params TEXT NOT NULL);
CREATE INDEX runs_by_start ON runs (started);
CREATE TABLE run_stages (run_id TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, duration REAL NOT NULL, reason TEXT,
    error TEXT, PRIMARY KEY (run_id, position));
"""


def _schema_1_store(folder: Path) -> None:
    folder.mkdir(mode=0o700)
    db = sqlite3.connect(folder / "cache.sqlite")
    db.executescript(_SCHEMA_1)
    parts = '{"code":"c1","functions":{"p.py:f":"d1"},"inputs":{},"stage":"a"}'
    db.execute(
        "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?)",
        ("k-old", "p", "a", b"old", digest_bytes(b"old"), parts, "{}", time.time(), "run0"),
    )
    db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
        ("run0", "p", None, 1.0, 2.0, "closed", 1, '{"succeeded": 1}', "{}"),
    )
    db.executemany(
        "INSERT INTO run_stages VALUES (?,?,?,?,?,?,?,?)",
        [("run0", i, *astuple(stage)) for i, stage in enumerate(STAGES)],
    )
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


def test_a_schema_1_store_is_migrated_and_keeps_its_entries_and_history(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    _schema_1_store(folder)
    with SQLiteStore(folder) as store:
        old = store.get("k-old")
        assert old is not None
        assert old.value == b"old"
        latest = store.latest("p", "a")
        assert latest is not None
        assert latest.parts["functions"] == {"p.py:f": "d1"}  # kept in the entry by schema 1
        run = store.run("run0")
        assert run is not None
        assert run.stages == STAGES
        store.put(entry("k-new", b"new", created=time.time() + 1))
        store.record_run(record("run1", 3.0))
        assert [s.name for s in store.run("run1").stages] == ["a", "b"]  # type: ignore[union-attr]
        assert store.prune(-60) == 2  # everything
    db = sqlite3.connect(folder / "cache.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert "entries" not in tables
    assert {"packs", "packs_by_pipeline", "functions"} <= tables
    db.close()
    SQLiteStore(folder).close()  # opening a migrated store again changes nothing


def test_a_fingerprints_items_are_stored_once_not_per_entry(tmp_path: Path) -> None:
    functions = {"p.py:f": "d1", "p.py:helper": "d2"}
    with SQLiteStore(tmp_path / "c") as store:
        with store.batch():
            for i in range(3):
                e = entry(f"k{i}", created=float(i))
                store.put(
                    CacheEntry(
                        e.key,
                        "p",
                        "a",
                        e.value,
                        e.value_digest,
                        {"code": "c1", "functions": functions, "stage": "a"},
                        created=e.created,
                    )
                )
        latest = store.latest("p", "a")
        assert latest is not None
        assert latest.key == "k2"
        assert latest.parts["functions"] == functions
        assert latest.parts["code"] == "c1"
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite")
    assert db.execute("SELECT count(*) FROM functions").fetchone()[0] == 1
    stored = [
        parts
        for blob, digests in db.execute("SELECT parts, digests FROM packs")
        for parts in _decode(blob, digests[_PARTS]) or ()
    ]
    db.close()
    assert len(stored) == 3
    assert all(parts is not None and "functions" not in parts for parts in stored)


def test_prune_drops_the_items_of_fingerprints_no_entry_uses(tmp_path: Path) -> None:
    now = time.time()
    with SQLiteStore(tmp_path / "c") as store:
        for key, code, created in (("old", "c-old", now - 9 * 86400), ("new", "c-new", now)):
            e = entry(key, created=created)
            store.put(
                CacheEntry(
                    key,
                    "p",
                    "a",
                    e.value,
                    e.value_digest,
                    {"code": code, "functions": {f"{code}:f": "d"}},
                    created=created,
                )
            )
        assert store.prune(5 * 86400) == 1
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite")
    assert [c for (c,) in db.execute("SELECT code FROM functions")] == ["c-new"]
    db.close()


def test_schema_2s_index_integer_of_a_key(tmp_path: Path) -> None:
    # (Still used by the migration from schema 1, whose entries go through schema 2.)
    first, second = "ab" * 8 + "0" * 24, "ab" * 8 + "1" * 24
    assert kid_of(first) == kid_of(second)
    assert kid_of("k1") != kid_of("k2")  # keys that are not hex are hashed
    for odd in ("-" + "f" * 39, " " * 40, "g" * 40):
        assert -(1 << 63) <= kid_of(odd) < 1 << 63  # an integer SQLite can store
    with SQLiteStore(tmp_path / "c") as store:  # packs find entries by the whole key
        store.put(entry(first, b"one"))
        store.put(entry(second, b"two"))
        assert store.get(first).value == b"one"  # type: ignore[union-attr]
        assert store.get(second).value == b"two"  # type: ignore[union-attr]
        store.delete(first)
        assert store.get(first) is None
        assert store.get(second) is not None


def test_two_openers_of_a_schema_1_store_migrate_it_once(tmp_path: Path) -> None:
    """Openers racing: each re-reads the version under the write lock (a race, so a
    migration run twice fails here only some of the time: about 2 runs in 5)."""
    import threading

    folder = tmp_path / "c"
    _schema_1_store(folder)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait()
            with SQLiteStore(folder) as store:
                assert store.get("k-old") is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = sqlite3.connect(folder / "cache.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    assert [len(meta) for _, meta in _packs(folder)] == [1]


# Schema 2, as the store made it before packs (kept verbatim to test the migration).
_SCHEMA_2 = """
CREATE TABLE entries (kid INTEGER NOT NULL, key TEXT NOT NULL, pipeline TEXT NOT NULL,
    stage TEXT NOT NULL, value BLOB NOT NULL, value_digest TEXT NOT NULL, parts TEXT NOT NULL,
    outs TEXT NOT NULL, created REAL NOT NULL, run_id TEXT NOT NULL);
CREATE UNIQUE INDEX entries_by_key ON entries (kid);
CREATE INDEX entries_by_stage ON entries (pipeline, stage, created);
CREATE TABLE functions (code TEXT PRIMARY KEY, items TEXT NOT NULL);
CREATE TABLE file_memo (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL, size INTEGER NOT NULL,
    inode INTEGER NOT NULL, digest TEXT NOT NULL);
CREATE TABLE runs (run_id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, file TEXT,
    started REAL NOT NULL, duration REAL NOT NULL, state TEXT NOT NULL, ok INTEGER NOT NULL,
    counts TEXT NOT NULL, params TEXT NOT NULL, stages TEXT);
CREATE INDEX runs_by_start ON runs (started);
CREATE TABLE run_stages (run_id TEXT NOT NULL, position INTEGER NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL, attempts INTEGER NOT NULL, duration REAL NOT NULL, reason TEXT,
    error TEXT, PRIMARY KEY (run_id, position));
"""


def test_a_schema_2_store_is_migrated_into_packs(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir(mode=0o700)
    db = sqlite3.connect(folder / "cache.sqlite")
    db.executescript(_SCHEMA_2)
    rows = [
        ("k-a1", "p", "a", b"a1", 10.0, '{"code":"c1","stage":"a"}', '{"o.txt":"d"}'),
        ("k-a2", "p", "a", b"a2", 20.0, '{"code":"c1","stage":"a","inputs":{"x":"2"}}', "{}"),
        ("k-b", "q", "b", b"b", 15.0, '{"code":"c2"}', "{}"),
        ("k-torn", "p", "c", b"torn", 30.0, "{}", "{}"),
    ]
    for key, pipeline, stage, value, created, parts, outs in rows:
        digest = digest_bytes(b"not it" if key == "k-torn" else value)
        db.execute(
            "INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)",
            (kid_of(key), key, pipeline, stage, value, digest, parts, outs, created, "r0"),
        )
    db.execute("INSERT INTO functions VALUES ('c1', '{\"p.py:f\":\"d1\"}')")
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with SQLiteStore(folder) as store:
        assert store.get("k-torn") is None  # a value that did not match its hash is left behind
        a1 = store.get("k-a1")
        assert a1 is not None
        assert (a1.value, a1.outs, a1.created, a1.run_id) == (b"a1", {"o.txt": "d"}, 10.0, "r0")
        latest = store.latest("p", "a")
        assert latest is not None
        assert latest.key == "k-a2"
        assert latest.parts == {
            "code": "c1",
            "stage": "a",
            "inputs": {"x": "2"},
            "functions": {"p.py:f": "d1"},
        }
        assert set(store.snapshot("q", 1 << 20)) == {"k-b"}
        assert store.stats().entries == 3
    db = sqlite3.connect(folder / "cache.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert "entries" not in {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
    db.close()


def test_a_schema_2_stores_runs_read_back_as_they_were_recorded(tmp_path: Path) -> None:
    # Schema 2 stored a run's stages as a JSON list of one list per stage.
    encode = json.JSONEncoder(separators=(",", ":")).encode
    rows = [encode([s.name, s.status, s.attempts, s.duration, s.reason, s.error]) for s in STAGES]
    folder = tmp_path / "c"
    folder.mkdir(mode=0o700)
    db = sqlite3.connect(folder / "cache.sqlite")
    db.executescript(_SCHEMA_2)
    db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)",
        ("r2", "p", "/p.py", 2.0, 1.5, "closed", 0, '{"succeeded": 1}', "{}",
         "[" + ",".join(rows) + "]"),
    )  # fmt: skip
    db.execute(f"PRAGMA application_id={APPLICATION_ID}")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with SQLiteStore(folder) as store:
        run = store.run("r2")
        assert run is not None
        assert run.stages == STAGES
        store.record_run(dataclasses.replace(record("r3", 3.0), stages=STAGES))  # as columns
        assert store.run("r3").stages == STAGES  # type: ignore[union-attr]
        assert [r.run_id for r in store.runs()] == ["r3", "r2"]


def test_a_key_stored_again_replaces_its_entry_and_the_old_one_is_dropped(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    with SQLiteStore(folder) as store:
        store.put(entry("k", b"one"))
        store.put(entry("k", b"two"))
        with store.batch():
            store.put(entry("j", b"x"))
            store.put(entry("j", b"y"))  # twice in one pack: the later wins there too
        assert store.get("k").value == b"two"  # type: ignore[union-attr]
        assert store.get("j").value == b"y"  # type: ignore[union-attr]
        assert store.stats().entries == 2
    packs = _packs(folder)
    live = [item for _, meta in packs for item in meta if item is not None]
    assert sorted(item[0] for item in live) == ["j", "k"]  # type: ignore[index]
    assert len(packs) == 2  # the pack holding only the old "k" was deleted


def test_a_store_another_process_changed_never_answers_from_stale_knowledge(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "c"
    with SQLiteStore(folder) as mine, SQLiteStore(folder) as other:
        mine.put(entry("k", b"one", created=time.time()))
        assert mine.get("k") is not None  # `mine` knows where "k" is
        other.delete("k")
        assert mine.get("k") is None
        other.put(entry("k", b"two", created=time.time()))
        assert mine.get("k").value == b"two"  # type: ignore[union-attr]
        assert mine.latest("p", "a").value == b"two"  # type: ignore[union-attr]
        assert other.prune(-60) == 1
        assert mine.get("k") is None
        assert mine.latest("p", "a") is None


def test_a_batch_bigger_than_a_pack_is_split(tmp_path: Path) -> None:
    from trio_pipeline._cache._store import PACK_BYTES

    folder = tmp_path / "c"
    big = b"x" * (PACK_BYTES // 2 + 1)
    with SQLiteStore(folder) as store:
        with store.batch():
            for key in ("a", "b", "c"):
                store.put(entry(key, big + key.encode()))
            store.put(entry("small", b"s"))
            store.put(CacheEntry("elsewhere", "q", "a", b"q", digest_bytes(b"q")))
        for key in ("a", "b", "c"):
            assert store.get(key).value == big + key.encode()  # type: ignore[union-attr]
    assert [len(meta) for _, meta in _packs(folder)] == [1, 1, 2, 1]


def test_what_a_store_forgets_it_reads_again(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    with SQLiteStore(folder) as mine, SQLiteStore(folder) as other:
        mine.put(entry("k1", b"one"))
        mine.put(entry("k2", b"two"))
        assert mine.latest("p", "a") is not None  # it has read every pack
        other.delete("k2")
        assert mine.get("k2") is None  # what it knew was stale: forgotten
        assert mine.get("k1") is not None  # and read again, all of it


def test_a_rolled_back_batch_leaves_no_trace_in_what_the_store_knows(tmp_path: Path) -> None:
    with SQLiteStore(tmp_path / "c") as store:

        def failing_batch() -> None:
            with store.batch():
                store.put(entry("gone", b"g"))
                assert store.get("gone") is not None  # written (not committed) before the read
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            failing_batch()
        store.put(entry("next", b"n"))  # may take the rolled-back pack's id
        assert store.get("gone") is None
        assert store.get("next").value == b"n"  # type: ignore[union-attr]


def test_entries_stored_again_die_per_pipeline(tmp_path: Path) -> None:
    folder = tmp_path / "c"

    def put(store: SQLiteStore, pipeline: str, key: str, value: bytes) -> None:
        store.put(CacheEntry(key, pipeline, "a", value, digest_bytes(value)))

    with SQLiteStore(folder) as store:
        put(store, "p", "a", b"p1")
        put(store, "q", "b", b"q1")
        put(store, "p", "shared", b"p-shared")
        with store.batch():  # one batch, two pipelines: each old entry dies
            put(store, "p", "a", b"p2")
            put(store, "q", "b", b"q2")
        put(store, "q", "shared", b"q-shared")  # the same key in another pipeline: both stay
        assert {k: e.value for k, e in store.snapshot("p", 1 << 20).items() if e} == {
            "a": b"p2",
            "shared": b"p-shared",
        }
        assert {k: e.value for k, e in store.snapshot("q", 1 << 20).items() if e} == {
            "b": b"q2",
            "shared": b"q-shared",
        }
    live = sorted(item[0] for _, meta in _packs(folder) for item in meta if item)  # type: ignore[index]
    assert live == ["a", "b", "shared", "shared"]


# -- the store against a model ----------------------------------------------------------

from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

_KEYS = st.sampled_from(["k0", "k1", "k2", "k3"])
_PIPELINES = st.sampled_from(["p", "q"])
_STAGES = st.sampled_from(["a", "b"])
_PUTS = st.tuples(_PIPELINES, _KEYS, st.integers(0, 1_100)).map(
    lambda t: (t[0], t[1], _stage_of(t[1]), t[2])
)


def _stage_of(key: str) -> str:
    return "a" if key in ("k0", "k1") else "b"  # a key is one stage's (it names it)


def _value(n: int) -> bytes:
    # Above 1,000: half a pack (two fill one, so batches split); drawn as an int so
    # that a failing example prints short.
    return n.to_bytes(2, "big") * (1 << 18 if n > 1_000 else 1)


class StoreMachine(RuleBasedStateMachine):
    """Two stores on one file (as two processes would), random writes and reads; a
    model of what was stored says what every read may answer.

    A key's entry may come back from any of its puts not deleted or pruned since (two
    entries under one key are one value, and a store that does not know of another's
    entry leaves it in place); reads of the whole file (`snapshot`, `stats`, `latest`)
    answer the newest.
    """

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="store-machine-"))
        self.stores = (SQLiteStore(self.folder), SQLiteStore(self.folder))
        self.puts: list[tuple[int, str, str, str, bytes]] = []  # live: (seq, p, key, stage, v)
        self.seq = 0

    def _put(self, which: int, put: tuple[str, str, str, int]) -> None:
        pipeline, key, stage, n = put
        value = _value(n)
        self.stores[which].put(CacheEntry(key, pipeline, stage, value, digest_bytes(value)))

    def _model_put(self, put: tuple[str, str, str, int]) -> None:
        self.seq += 1
        pipeline, key, stage, n = put
        self.puts.append((self.seq, pipeline, key, stage, _value(n)))

    @rule(which=st.integers(0, 1), put=_PUTS)
    def put(self, which: int, put: tuple[str, str, str, int]) -> None:
        self._put(which, put)
        self._model_put(put)

    @rule(which=st.integers(0, 1), puts=st.lists(_PUTS, min_size=1, max_size=4), fail=st.booleans())
    def batch(self, which: int, puts: list[tuple[str, str, str, int]], fail: bool) -> None:
        store = self.stores[which]

        def run_batch() -> None:
            with store.batch():
                for put in puts:
                    self._put(which, put)
                assert store.get(puts[0][1]) is not None  # a read inside writes the batch first
                if fail:
                    raise ZeroDivisionError

        if fail:
            with pytest.raises(ZeroDivisionError):
                run_batch()
        else:
            run_batch()
            for put in puts:
                self._model_put(put)

    @rule(which=st.integers(0, 1), key=_KEYS)
    def delete(self, which: int, key: str) -> None:
        self.stores[which].delete(key)
        self.puts = [p for p in self.puts if p[2] != key]

    @precondition(lambda self: self.seq % 7 == 6)
    @rule(which=st.integers(0, 1))
    def prune_everything(self, which: int) -> None:
        live = {(p[1], p[2]) for p in self.puts}
        assert self.stores[which].prune(-60) >= len(live)
        self.puts = []

    @rule(which=st.integers(0, 1), key=_KEYS)
    def get(self, which: int, key: str) -> None:
        got = self.stores[which].get(key)
        values = {p[4] for p in self.puts if p[2] == key}
        if values:
            assert got is not None, key
            assert got.value in values
            assert digest_bytes(got.value) == got.value_digest
        else:
            assert got is None

    def _newest(self) -> dict[tuple[str, str], tuple[int, str, str, str, bytes]]:
        newest: dict[tuple[str, str], tuple[int, str, str, str, bytes]] = {}
        for put in self.puts:
            newest[put[1], put[2]] = put
        return newest

    @rule(which=st.integers(0, 1), pipeline=_PIPELINES, small=st.booleans())
    def snapshot(self, which: int, pipeline: str, small: bool) -> None:
        snap = self.stores[which].snapshot(pipeline, 0 if small else 1 << 30)
        newest = {k: put[4] for (p, k), put in self._newest().items() if p == pipeline}
        assert set(snap) == set(newest)
        if not small:
            assert {k: e.value for k, e in snap.items() if e is not None} == newest

    @rule(which=st.integers(0, 1), pipeline=_PIPELINES, stage=_STAGES)
    def latest(self, which: int, pipeline: str, stage: str) -> None:
        got = self.stores[which].latest(pipeline, stage)
        mine = [p for p in self.puts if p[1] == pipeline and p[3] == stage]
        if not mine:
            assert got is None
        else:
            assert got is not None
            assert (got.key, got.value) == (mine[-1][2], mine[-1][4])

    @invariant()
    def counts_are_exact(self) -> None:
        assert self.stores[self.seq % 2].stats().entries == len(self._newest())

    def teardown(self) -> None:
        import shutil

        for store in self.stores:
            store.close()
        shutil.rmtree(self.folder, ignore_errors=True)


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
