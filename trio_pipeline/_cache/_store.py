"""The cache store: entries, file-hash memos and run history in one SQLite file.

Theory of operation
-------------------
One file, ``<cache_dir>/cache.sqlite``, in WAL mode, holds three things: cache entries
(a stage's pickled value under its key), the memo of file hashes by
``(mtime_ns, size, inode)``, and the run history. Every write is one transaction that
is committed before the method returns, so a caller that goes on (say, to emit
`StageFinished`) knows the write is durable against a crash of the process. SQLite's
journal makes each transaction all or nothing.

Entries are stored in *packs*: one row holds the entries one transaction wrote (up to
`PACK_BYTES` of values), as three marshalled lists (what finds an entry, the values,
the key parts for explanations), each with its checksum. A cold run commits one entry per
stage, and a row per entry with an index on its key cost ~5 us of SQLite a stage (the
index pages each commit dirties); a pack costs a fraction of that. Each list is
checked against its checksum before it is decoded: a damaged pack is dropped whole (its
entries become misses), never decoded, never handed out. The store keeps, in memory,
where each key it has seen lives (refreshed from packs it has not read yet); a later
pack's entry replaces an earlier one's of the same key, and the earlier one is marked
dead in its pack when the store knows of it.

The file is marked with an ``application_id`` and a schema ``user_version``: a SQLite
file that is not a trio_pipeline store is refused, never adopted, and so is one made
by a newer schema. A corrupt file raises `CacheStoreError` naming the file and the
way out (``trio-pipeline cache clear``).

The store is blocking and not thread-safe: the engine calls it from one worker
thread (see `_worker`), the CLI directly. Two processes may share one store: SQLite
serialises their writes; a busy database is waited for (busy timeout), and a write
that still finds it locked is retried, so ``database is locked`` never surfaces.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import marshal
import os
import sqlite3
import stat
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, TypeGuard, TypeVar, cast, runtime_checkable

from .._errors import PipelineError

_T = TypeVar("_T")

APPLICATION_ID = 0x54504331  # "TPC1"
SCHEMA_VERSION = 3
"""Schemas 1 and 2 (stores made before) are migrated when opened: see `_MIGRATIONS`."""
STORE_FILENAME = "cache.sqlite"
OBJECTS_DIRNAME = "objects"
DEFAULT_CACHE_DIR = ".trio-pipeline"
CACHE_DIR_VARIABLE = "TRIO_PIPELINE_CACHE_DIR"

_SQLITE_HEADER = b"SQLite format 3\x00"
_BUSY_TIMEOUT = 60.0  # seconds SQLite itself waits for a lock
_LOCKED_RETRY_FOR = 300.0  # then we retry the whole transaction for this long
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_NO_ERRORS: Mapping[int, str] = MappingProxyType({})


class CacheStoreError(PipelineError, OSError):
    """The cache store cannot be used: corrupt, not a trio_pipeline store, or unreadable.

    The message names the file and the way out. Attributes: `path`.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        where = os.fspath(path)
        folder = os.path.dirname(where) or "."
        super().__init__(
            f"cache store {where}: {problem}; remove it with"
            f" `trio-pipeline cache clear --cache-dir {folder}` (or delete the folder)"
        )
        self.path = where


def default_cache_dir() -> str:
    """``$TRIO_PIPELINE_CACHE_DIR`` if set, else ``.trio-pipeline`` (in the working directory)."""
    return os.environ.get(CACHE_DIR_VARIABLE) or DEFAULT_CACHE_DIR


_BLAKE2B_160 = hashlib.blake2b(digest_size=20)  # never updated: only copied


_encode_row = json.JSONEncoder(separators=(",", ":")).encode


def digest_bytes(data: bytes | bytearray | memoryview) -> str:
    """The hash the cache uses everywhere (values, files, keys): blake2b-160, hex."""
    # Copying an empty state is 2.5x faster than building one (the constructor parses
    # its keyword arguments every time): 0.76 -> 0.30 us, paid per key and per value.
    hasher = _BLAKE2B_160.copy()
    hasher.update(data)
    return hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored result: the pickled value of stage `stage` under `key`.

    Attributes:
        key: The cache key (hex).
        pipeline: The pipeline the stage belonged to when stored.
        stage: The stage's name.
        value: The pickled value (loading it runs code: the store must be trusted).
        value_digest: The hash of `value`; downstream keys use it.
        parts: The key's components (code, inputs, params, deps, version), for `explain`.
        outs: Declared output path -> content hash, checked (or restored) on a hit.
        created: Wall-clock time (epoch seconds) the entry was stored.
        run_id: The run that stored it.
    """

    key: str
    pipeline: str
    stage: str
    value: bytes
    value_digest: str
    parts: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    outs: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    created: float = 0.0
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class FileMemo:
    """A file's content hash, valid while its ``(mtime_ns, size, inode)`` are unchanged."""

    mtime_ns: int
    size: int
    inode: int
    digest: str


@dataclass(frozen=True, slots=True)
class StageRecord:
    """How one stage ended in a recorded run."""

    name: str
    status: str
    attempts: int = 0
    duration: float = 0.0
    reason: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StageColumns:
    """A run's stages as one sequence per `StageRecord` field, in definition order.

    How `SQLiteStore.record_run_columns` takes them: a run records its stages this way
    without building a `StageRecord` per stage.

    Attributes:
        names, statuses, attempts, durations, reasons: One item per stage.
        errors: Stage position -> its error text, for the stages with one.
    """

    names: Sequence[str]
    statuses: Sequence[str]
    attempts: Sequence[int]
    durations: Sequence[float]
    reasons: Sequence[str | None]
    errors: Mapping[int, str] = field(default_factory=lambda: _NO_ERRORS)

    @classmethod
    def of(cls, stages: Sequence[StageRecord]) -> StageColumns:
        return cls(
            [s.name for s in stages],
            [s.status for s in stages],
            [s.attempts for s in stages],
            [s.duration for s in stages],
            [s.reason for s in stages],
            {i: s.error for i, s in enumerate(stages) if s.error is not None},
        )

    def records(self) -> tuple[StageRecord, ...]:
        """The stages as `StageRecord`s (statuses as plain strings)."""
        error = self.errors.get
        return tuple(
            StageRecord(name, str(status), attempts, duration, reason, error(i))
            for i, (name, status, attempts, duration, reason) in enumerate(
                zip(
                    self.names,
                    self.statuses,
                    self.attempts,
                    self.durations,
                    self.reasons,
                    strict=True,
                )
            )
        )


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run in the history.

    Attributes:
        run_id: The run's id (as in its events).
        pipeline: The pipeline's name.
        file: The pipeline file (absolute path) when run from the CLI, else None.
        started: Wall-clock start (epoch seconds).
        duration: Seconds from start to the end of draining.
        state: The run's final `RunState` value (``"closed"`` or ``"cancelled"``).
        ok: `RunResult.ok`.
        counts: Stages per terminal status value.
        params: The run's parameters (JSON-compatible; others as their repr).
        stages: Each stage's outcome, in definition order.
    """

    run_id: str
    pipeline: str
    file: str | None
    started: float
    duration: float
    state: str
    ok: bool
    counts: Mapping[str, int]
    params: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    stages: tuple[StageRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What `CacheStore.stats` reports."""

    entries: int
    value_bytes: int
    runs: int
    oldest: float | None
    newest: float | None
    file_bytes: int
    stages: int  # distinct (pipeline, stage) pairs with an entry


@runtime_checkable
class CacheStore(Protocol):
    """What a run needs from a store: `SQLiteStore` is built in; pass another as ``store=``.

    Every method blocks and is called from one thread at a time. A write is durable
    when the method returns, except inside `batch`, where it is durable when the
    ``with`` block exits without error. `get` must never return a partial value.
    """

    def get(self, key: str) -> CacheEntry | None:
        """The entry stored under `key`, or None. Its `parts` may be left empty (a hit
        does not need them; `latest` fills them)."""
        ...

    def put(self, entry: CacheEntry) -> None:
        """Store `entry` (replacing one with the same key)."""
        ...

    def latest(self, pipeline: str, stage: str) -> CacheEntry | None:
        """The most recently stored entry of `stage` in `pipeline` (explains a miss)."""
        ...

    def snapshot(self, pipeline: str, max_bytes: int) -> Mapping[str, CacheEntry | None]:
        """`pipeline`'s entries by key, read once before a run starts: with their values
        (checked against their hashes) if those total at most `max_bytes`, else as None
        (the run then calls `get` per hit). The run looks up only these keys: an entry
        another process stores meanwhile is a miss."""
        ...

    def delete(self, key: str) -> None:
        """Remove the entry under `key`, if any."""
        ...

    def file_memo(self, path: str) -> FileMemo | None:
        """The memoised hash of the file at absolute `path`, or None."""
        ...

    def put_file_memo(self, path: str, memo: FileMemo) -> None:
        """Memoise a file's hash."""
        ...

    def record_run(self, record: RunRecord) -> None:
        """Add a run to the history."""
        ...

    def runs(self, *, limit: int = 20, file: str | None = None) -> list[RunRecord]:
        """Recent runs, newest first (without their stages), optionally of one pipeline file."""
        ...

    def run(self, run_id: str) -> RunRecord | None:
        """One run with its stages; `run_id` may be a unique prefix."""
        ...

    def stats(self) -> CacheStats:
        """Counts and sizes."""
        ...

    def prune(self, older_than: float) -> int:
        """Delete entries and runs older than `older_than` seconds; return the entries removed."""
        ...

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Group calls into one transaction, committed when the block exits."""
        ...

    def close(self) -> None:
        """Release the store. Idempotent."""
        ...


_ENTRIES_2 = """
CREATE TABLE {name} (
    kid INTEGER NOT NULL,
    key TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    stage TEXT NOT NULL,
    value BLOB NOT NULL,
    value_digest TEXT NOT NULL,
    parts TEXT NOT NULL,
    outs TEXT NOT NULL,
    created REAL NOT NULL,
    run_id TEXT NOT NULL
)
"""
_ENTRIES_2_INDEXES = (
    "CREATE UNIQUE INDEX entries_by_key ON entries (kid)",
    "CREATE INDEX entries_by_stage ON entries (pipeline, stage, created)",
)
_PACKS = """
CREATE TABLE packs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    run_id TEXT NOT NULL,
    oldest REAL NOT NULL,
    newest REAL NOT NULL,
    value_bytes INTEGER NOT NULL,
    meta BLOB NOT NULL,
    data BLOB NOT NULL,
    parts BLOB NOT NULL,
    digests TEXT NOT NULL
)
"""
_PACKS_INDEX = "CREATE INDEX packs_by_pipeline ON packs (pipeline)"
# A pack's three lists, position by position (None: the entry there is dead):
#   meta:  (key, stage, created, value_digest, outs or None, len(value))
#   data:  value (the pickled bytes)
#   parts: the JSON text of the key's components without the fingerprint's items (which
#          are in `functions`): a text, not a dict, is one object, untracked by the GC
# `digests` is the CRC-32 of meta, data and parts, in that order (8 hex digits each): it
# tells damage (a blob is never decoded unless it matches), and it is 7x cheaper than
# blake2b on a pack (5 against 34 us for 34 KB, measured); values keep their blake2b.
# AUTOINCREMENT: ids are never reused, so "packs after the last one read" is exact.
_SCHEMA = """
CREATE TABLE functions (
    code TEXT PRIMARY KEY,
    items TEXT NOT NULL
);
CREATE TABLE file_memo (
    path TEXT PRIMARY KEY,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    inode INTEGER NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    file TEXT,
    started REAL NOT NULL,
    duration REAL NOT NULL,
    state TEXT NOT NULL,
    ok INTEGER NOT NULL,
    counts TEXT NOT NULL,
    params TEXT NOT NULL,
    stages TEXT
);
CREATE INDEX runs_by_start ON runs (started);
CREATE TABLE run_stages (
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    duration REAL NOT NULL,
    reason TEXT,
    error TEXT,
    PRIMARY KEY (run_id, position)
);
"""
# Schema 2 (kept above for the migration from 1): a row per entry found by `kid`, 64 bits
# of its key; an entry's `parts` leave out the code fingerprint's items
# (``"functions"``), stored once per fingerprint in `functions`; a run's stages are one
# JSON list in `runs.stages`, not a row each in `run_stages` (schema 1's runs stay there,
# with `stages` NULL). Schema 3 keeps all of that but the entries, which are in packs
# (and a run's stages, now written as columns: see `encode_stages`; both forms read).


def _migrate_1(db: sqlite3.Connection) -> None:
    db.create_function("trio_pipeline_kid", 1, kid_of, deterministic=True)
    db.execute(_ENTRIES_2.format(name="entries_2"))
    db.execute(
        "INSERT OR REPLACE INTO entries_2 SELECT trio_pipeline_kid(key), key, pipeline, stage,"
        " value, value_digest, parts, outs, created, run_id FROM entries ORDER BY created"
    )
    db.execute("DROP TABLE entries")  # and its indexes
    db.execute("ALTER TABLE entries_2 RENAME TO entries")
    for statement in _ENTRIES_2_INDEXES:
        db.execute(statement)
    db.execute("CREATE TABLE functions (code TEXT PRIMARY KEY, items TEXT NOT NULL)")
    db.execute("ALTER TABLE runs ADD COLUMN stages TEXT")


def _migrate_2(db: sqlite3.Connection) -> None:
    # Schema 2 kept a row per entry: they go into packs, oldest first (so the newest of
    # a stage is still the latest), a value that does not match its hash left behind.
    db.execute(_PACKS)
    db.execute(_PACKS_INDEX)
    rows = db.execute(
        "SELECT key, pipeline, stage, value, value_digest, parts, outs, created, run_id"
        " FROM entries ORDER BY created, rowid"
    )
    pending: list[PackRow] = []
    size = 0
    for key, pipeline, stage, value, value_digest, parts, outs, created, run_id in rows:
        value = bytes(value)
        if digest_bytes(value) != value_digest:
            continue
        pending.append(
            (
                pipeline,
                run_id,
                key,
                stage,
                created,
                value_digest,
                json.loads(outs) or None,
                value,
                parts,
            )
        )
        size += len(value)
        if size >= PACK_BYTES:
            _insert_packs(db, pending)
            pending, size = [], 0
    if pending:
        _insert_packs(db, pending)
    db.execute("DROP TABLE entries")  # and its indexes


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1, 2: _migrate_2}
"""Version -> what takes a store of that version to the next (in one transaction)."""


PACK_BYTES = 1 << 20
"""A pack takes entries until their values reach this many bytes (so reading one entry
reads at most about this much); a bigger value is a pack of its own."""

PackRow = tuple[str, str, str, str, float, str, "Mapping[str, str] | None", bytes, str]
"""An entry on its way into a pack: ``(pipeline, run_id, key, stage, created,
value_digest, outs or None, value, parts)``; `parts` is the JSON text of the key's
components without the fingerprint's items."""


_META, _DATA, _PARTS = slice(0, 8), slice(8, 16), slice(16, 24)  # of `digests`


def _check(blob: bytes) -> str:
    return f"{zlib.crc32(blob):08x}"


def _encode(items: list[Any]) -> tuple[bytes, str]:
    blob = marshal.dumps(items, 4)
    return blob, _check(blob)


def _encode_pack(
    meta: list[Any], data: list[Any], parts: list[Any]
) -> tuple[bytes, bytes, bytes, str]:
    """A pack's lists as stored: ``(meta, data, parts, digests)`` (see `_PACKS`)."""
    meta_blob, meta_check = _encode(meta)
    data_blob, data_check = _encode(data)
    parts_blob, parts_check = _encode(parts)
    return meta_blob, data_blob, parts_blob, meta_check + data_check + parts_check


def _decode(blob: bytes, digest: str) -> list[Any] | None:
    """A pack's list, or None if its bytes do not match their checksum (never decoded then)."""
    if _check(blob) != digest:
        return None
    try:
        items: object = marshal.loads(blob)
    except (ValueError, EOFError, TypeError):
        return None
    if not isinstance(items, list):
        return None
    found: list[Any] = items  # pyright: ignore[reportUnknownVariableType]
    return found


_INSERT_PACK = (
    "INSERT INTO packs (pipeline, run_id, oldest, newest, value_bytes, meta, data, parts,"
    " digests) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_POSITION = (1 << 32) - 1


def _insert_packs(db: sqlite3.Connection, rows: Sequence[PackRow]) -> list[int]:
    """Write `rows` as packs (one per pipeline and run, up to `PACK_BYTES` each).

    Returns where each row went, in order: ``pack id << 32 | position`` (an int, not a
    tuple: the garbage collector does not track it, and a cold run notes 10,000 of them).
    A key twice in one pack keeps its last entry (the earlier is written dead).
    """
    placed: list[int] = []
    start, n = 0, len(rows)
    while start < n:
        pipeline, run_id = rows[start][0], rows[start][1]
        meta: list[Any] = []
        data: list[Any] = []
        parts: list[Any] = []
        seen: dict[str, int] = {}
        size = 0
        oldest = newest = rows[start][4]
        end = start
        while end < n:
            row = rows[end]
            if end > start and (
                row[0] != pipeline or row[1] != run_id or size + len(row[7]) > PACK_BYTES
            ):
                break
            _, _, key, stage, created, value_digest, outs, value, row_parts = row
            earlier = seen.get(key)
            if earlier is not None:
                meta[earlier] = data[earlier] = parts[earlier] = None
                size -= len(rows[start + earlier][7])
            seen[key] = len(meta)
            meta.append((key, stage, created, value_digest, outs, len(value)))
            data.append(value)
            parts.append(row_parts)
            size += len(value)
            oldest, newest = min(oldest, created), max(newest, created)
            end += 1
        pack = db.execute(
            _INSERT_PACK, (pipeline, run_id, oldest, newest, size, *_encode_pack(meta, data, parts))
        ).lastrowid
        assert pack is not None
        first = pack << 32
        placed.extend(range(first, first + end - start))
        start = end
    return placed


def kid_of(key: str) -> int:
    """The 64-bit integer an entry is indexed by: from its key (hex, as `digest_bytes`)."""
    if len(key) == 40:
        try:
            value = int(key[:16], 16)
        except ValueError:
            value = -1
        if value >= 0:  # not "-..." (int() takes a sign, spaces, "0x" and "_": harmless)
            return value - (1 << 63)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), signed=True)


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _while_locked(work: Callable[[], _T]) -> _T:
    """Call `work` until it stops failing with "database is locked" (or time is up)."""
    give_up = time.monotonic() + _LOCKED_RETRY_FOR
    pause = 0.01
    while True:
        try:
            return work()
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() > give_up:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def ensure_private_dir(path: Path) -> None:
    """Create `path` readable by the user only (and its missing parents); tighten `path`."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process was quicker
            folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, 0o700)


class SQLiteStore:
    """The built-in `CacheStore`: one SQLite file in `cache_dir` (created 0700, file 0600).

    Raises `CacheStoreError` on opening a corrupt or foreign file. Blocking; use it
    from one thread at a time (the engine uses a worker thread of its own).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR) -> None:
        self.cache_dir = Path(cache_dir)
        self.path = self.cache_dir / STORE_FILENAME
        self.objects_dir = self.cache_dir / OBJECTS_DIRNAME
        self._db: sqlite3.Connection | None = None
        self._depth = 0
        self._pending: list[PackRow] = []  # entries put inside batch(), not yet written
        self._pending_functions: dict[str, str] = {}  # their fingerprints' items (JSON)
        self._in_tx = False  # batch() has begun its transaction
        # Where entries live, as far as this store has read (`_loc`): key -> its entry's,
        # (pipeline, stage) -> the latest one's; complete up to pack `_seen`.
        self._where: dict[str, int] = {}
        self._latest: dict[tuple[str, str], int] = {}
        self._seen = 0
        self._parts_memo: tuple[int, list[Any]] | None = None  # one pack's decoded parts
        self._damage_told = False
        try:
            ensure_private_dir(self.cache_dir)
        except OSError as exc:
            raise CacheStoreError(self.path, f"cannot create its folder ({exc})") from None
        self._check_header()
        self._open()

    # -- opening ----------------------------------------------------------------------

    def _check_header(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CacheStoreError(self.path, f"cannot open it ({exc})") from None
        try:
            st = os.fstat(fd)
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.fchmod(fd, 0o600)
            head = os.read(fd, len(_SQLITE_HEADER)) if st.st_size else b""
        finally:
            os.close(fd)
        if head and head != _SQLITE_HEADER:
            raise CacheStoreError(self.path, "not a SQLite file (corrupt or foreign)")

    def _open(self) -> None:
        try:
            db = sqlite3.connect(
                self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise CacheStoreError(self.path, f"cannot open it ({exc})") from None
        try:
            self._init_retrying(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise CacheStoreError(self.path, f"corrupt ({exc})") from None
        except BaseException:
            db.close()
            raise
        self._db = db

    def _init_retrying(self, db: sqlite3.Connection) -> None:
        # Another process opening the same new store holds locks while it switches to
        # WAL and creates the schema, and those statements (journal_mode above all) may
        # fail with "database is locked" without waiting on the busy timeout.
        _while_locked(lambda: self._init(db))

    def _init(self, db: sqlite3.Connection) -> None:
        # Check what the file is before anything writes to it (even a pragma). One
        # statement, so one snapshot: read apart, another process creating the schema
        # in between showed us its tables without its application_id ("foreign").
        app_id, version, tables = db.execute(
            "SELECT (SELECT application_id FROM pragma_application_id),"
            " (SELECT user_version FROM pragma_user_version),"
            " (SELECT count(*) FROM sqlite_master)"
        ).fetchone()
        if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
            raise CacheStoreError(
                self.path,
                f"made by a newer trio_pipeline (schema {version}, this one reads"
                f" {SCHEMA_VERSION})",
            )
        ours = app_id == APPLICATION_ID and (version == SCHEMA_VERSION or version in _MIGRATIONS)
        if not ours and (app_id != 0 or tables):
            raise CacheStoreError(
                self.path, "a SQLite file that is not a trio_pipeline cache store; refusing it"
            )
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of the process (SIGKILL);
        # only a power loss may drop the last commits, never tear one.
        db.execute("PRAGMA synchronous=NORMAL")
        if app_id != APPLICATION_ID:
            self._run_locked(db, self._create_schema)
        elif version != SCHEMA_VERSION:
            self._run_locked(db, self._migrate)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        # Another process may have migrated it meanwhile: re-read under the write lock.
        version = db.execute("PRAGMA user_version").fetchone()[0]
        while version in _MIGRATIONS:
            _MIGRATIONS[version](db)
            version += 1
        db.execute(f"PRAGMA user_version={version}")

    @staticmethod
    def _create_schema(db: sqlite3.Connection) -> None:
        # Another process may have created it meanwhile: re-check under the write lock.
        if db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID:
            return
        db.execute(_PACKS)
        db.execute(_PACKS_INDEX)
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA application_id={APPLICATION_ID}")
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise CacheStoreError(self.path, "the store was closed")
        return self._db

    # -- transactions -----------------------------------------------------------------

    def _run_locked(self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work(db)` in one IMMEDIATE transaction, retrying while the file is locked."""

        def transaction() -> _T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                self._forget()  # it may have noted where rolled-back entries were
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return _while_locked(transaction)

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        db = self._conn
        try:
            if self._depth:
                self._begin()
                return work(db)  # inside batch(): committed when it exits
            return self._run_locked(db, work)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _corrupt(exc):
                raise
            raise CacheStoreError(self.path, f"corrupt ({exc})") from None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        try:
            if self._pending:
                self._flush()
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _corrupt(exc):
                raise
            raise CacheStoreError(self.path, f"corrupt ({exc})") from None

    def _begin(self) -> None:
        """Start the batch's IMMEDIATE transaction (at its first write), waiting out locks."""
        if self._in_tx:
            return
        db = self._conn
        _while_locked(lambda: db.execute("BEGIN IMMEDIATE"))
        self._in_tx = True

    @contextlib.contextmanager
    def batch(self) -> Generator[None]:
        """One IMMEDIATE transaction for the writes inside; committed on a clean exit.

        The transaction starts at the first write (a batch of lookups takes no lock);
        puts are written together, with one ``executemany``, at the end or before a
        read. Nested batches join the outer one. On an exception everything written
        inside is rolled back.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth = 1
        try:
            yield
            if self._pending:
                self._flush()
        except BaseException:
            self._depth = 0
            self._pending.clear()
            self._pending_functions.clear()
            self._forget()
            if self._in_tx:
                self._in_tx = False
                self._conn.execute("ROLLBACK")
            raise
        self._depth = 0
        if not self._in_tx:
            return
        self._in_tx = False
        db = self._conn
        try:
            db.execute("COMMIT")
        except sqlite3.OperationalError:
            # COMMIT of an IMMEDIATE transaction can be busy only while readers
            # hold the WAL; SQLite waits for them with the busy timeout already.
            self._forget()
            db.execute("ROLLBACK")
            raise

    # -- entries ----------------------------------------------------------------------

    def get(self, key: str) -> CacheEntry | None:
        for _ in range(2):  # a second time after re-reading where entries are
            loc = self._locate(key)
            if loc is None:
                return None
            found = self._load(loc, key)
            if found is not _STALE:
                return cast(CacheEntry | None, found)
            self._forget()
        return None

    def _locate(self, key: str) -> int | None:
        if self._pending:
            self._flush()
        loc = self._where.get(key)
        if loc is None:
            self._refresh()
            loc = self._where.get(key)
        return loc

    def _load(self, loc: int, key: str) -> object:
        """The entry at `loc` if it is `key`'s (None if damaged); `_STALE` if it is not."""
        pack, pos = loc >> 32, loc & _POSITION
        rows = self._read(
            "SELECT pipeline, run_id, meta, data, digests FROM packs WHERE id = ?", (pack,)
        )
        if not rows:
            return _STALE
        pipeline, run_id, meta_blob, data_blob, digests = rows[0]
        meta = _decode(meta_blob, digests[_META])
        data = _decode(data_blob, digests[_DATA])
        if meta is None or data is None:
            self._drop_pack(pack)
            return None
        item = meta[pos] if pos < len(meta) else None
        if item is None or item[0] != key:
            return _STALE
        _, stage, created, value_digest, outs, _ = item
        return CacheEntry(
            key, pipeline, stage, data[pos], value_digest, _EMPTY, outs or _EMPTY, created, run_id
        )

    def _refresh(self) -> None:
        """Note where the entries of the packs not read yet are (in order: later wins)."""
        where, latest = self._where, self._latest
        rows = self._read(
            "SELECT id, pipeline, meta, digests FROM packs WHERE id > ? ORDER BY id",
            (self._seen,),
        )
        for pack, pipeline, meta_blob, digests in rows:
            self._seen = pack
            meta = _decode(meta_blob, digests[_META])
            if meta is None:
                self._damaged(pack)
                continue
            for pos, item in enumerate(meta):
                if item is not None:
                    where[item[0]] = latest[pipeline, item[1]] = pack << 32 | pos

    def _forget(self) -> None:
        """Drop what this store noted of where entries are (read again when needed)."""
        self._where.clear()
        self._latest.clear()
        self._seen = 0
        self._parts_memo = None

    def _drop_pack(self, pack: int) -> None:
        # A pack whose bytes do not match their checksum: its entries are misses from now on.
        self._damaged(pack)
        self._write(lambda db: db.execute("DELETE FROM packs WHERE id = ?", (pack,)))
        self._forget()

    def _damaged(self, pack: int) -> None:
        """Say (once per store) that a pack is damaged: never silent, never fatal."""
        if not self._damage_told:
            self._damage_told = True
            logging.getLogger("trio_pipeline").warning(
                "cache store %s: pack %d is damaged (it does not match its checksum); its"
                " entries are misses and it is dropped when next written",
                self.path,
                pack,
            )

    def latest(self, pipeline: str, stage: str) -> CacheEntry | None:
        for _ in range(2):
            if self._pending:
                self._flush()
            self._refresh()
            loc = self._latest.get((pipeline, stage))
            if loc is None:
                return None
            found = self._load_latest(loc, pipeline, stage)
            if found is not _STALE:
                return cast(CacheEntry, found)
            self._forget()
        return None

    def _load_latest(self, loc: int, pipeline: str, stage: str) -> object:
        pack, pos = loc >> 32, loc & _POSITION
        rows = self._read(
            "SELECT pipeline, run_id, meta, data, parts, digests FROM packs WHERE id = ?",
            (pack,),
        )
        if not rows or rows[0][0] != pipeline:
            return _STALE
        _, run_id, meta_blob, data_blob, parts_blob, digests = rows[0]
        memo = self._parts_memo
        if memo is not None and memo[0] == pack:
            parts: list[Any] | None = memo[1]  # a run's misses explained in a row share packs
        else:
            parts = _decode(parts_blob, digests[_PARTS])
        meta = _decode(meta_blob, digests[_META])
        data = _decode(data_blob, digests[_DATA])
        if meta is None or data is None or parts is None:
            self._drop_pack(pack)
            return _STALE  # the entry before it may be the latest now
        self._parts_memo = (pack, parts)
        item = meta[pos] if pos < len(meta) else None
        if item is None or item[1] != stage:
            return _STALE
        key, _, created, value_digest, outs, _ = item
        entry_parts: dict[str, Any] = json.loads(parts[pos]) if parts[pos] else {}
        if "functions" not in entry_parts:  # (schema 1 kept them in the entry)
            code = entry_parts.get("code")
            found = self._read("SELECT items FROM functions WHERE code = ?", (code,))
            if found:
                entry_parts = dict(entry_parts, functions=json.loads(found[0][0]))
        return CacheEntry(
            key,
            pipeline,
            stage,
            data[pos],
            value_digest,
            entry_parts,
            outs or _EMPTY,
            created,
            run_id,
        )

    def put(self, entry: CacheEntry) -> None:
        parts = dict(entry.parts)
        functions = parts.pop("functions", None)
        code = parts.get("code")
        text = canonical_json(parts)
        self.put_encoded(
            (
                entry.pipeline,
                entry.run_id,
                entry.key,
                entry.stage,
                float(entry.created),
                entry.value_digest,
                {str(k): str(v) for k, v in entry.outs.items()} if entry.outs else None,
                bytes(entry.value),
                text,
            ),
            code if isinstance(code, str) and functions is not None else None,
            canonical_json(_plain(functions)) if functions is not None else "{}",
        )

    def put_encoded(self, row: PackRow, code: str | None, functions: str) -> None:
        """`put`, from the entry as packed (a cheaper commit; not in `CacheStore`).

        `row` is a `PackRow` of plain values only (dict, str, float, bytes, None), its
        ``parts`` without the fingerprint's items; `functions` is those items' JSON,
        stored once per `code` (the fingerprint's digest; None: nothing to store).
        """
        self._pending.append(row)
        if code is not None:
            self._pending_functions[code] = functions
        if not self._depth:
            rows, self._pending = self._pending, []
            items, self._pending_functions = self._pending_functions, {}
            self._write(lambda db: self._write_rows(db, rows, items))
        # Inside a batch, written together when it ends (or before a read): one pack
        # for a batch of commits costs a fraction of a row each.

    def _flush(self) -> None:
        rows, self._pending = self._pending, []
        functions, self._pending_functions = self._pending_functions, {}
        try:
            self._begin()
            self._write_rows(self._conn, rows, functions)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _corrupt(exc):
                raise
            raise CacheStoreError(self.path, f"corrupt ({exc})") from None

    def _write_rows(
        self, db: sqlite3.Connection, rows: list[PackRow], functions: dict[str, str]
    ) -> None:
        if functions:
            db.executemany(_INSERT_FUNCTIONS, functions.items())
        where = self._where
        replaced: dict[int, tuple[str, str]] = {}
        for row, loc in zip(rows, _insert_packs(db, rows), strict=True):
            old = where.get(row[2])
            if old is not None and old >> 32 != loc >> 32:
                replaced[old] = (row[0], row[2])  # only if it is this pipeline's entry
            where[row[2]] = loc
        if replaced:
            self._kill(db, list(replaced), replaced)

    def _kill(
        self,
        db: sqlite3.Connection,
        locs: Sequence[int],
        expect: Mapping[int, tuple[str, str]] | None = None,
    ) -> int:
        """Mark the entries at `locs` dead; with `expect`, only where the entry at a
        location is still that ``(pipeline, key)``'s.

        A pack left with no entry is deleted. Returns how many entries died.
        """
        by_pack: dict[int, list[int]] = {}
        for loc in locs:
            by_pack.setdefault(loc >> 32, []).append(loc & _POSITION)
        died = 0
        for pack, positions in by_pack.items():
            rows = db.execute(
                "SELECT pipeline, meta, data, parts, digests FROM packs WHERE id = ?", (pack,)
            ).fetchall()
            if not rows:
                continue
            pipeline, meta_blob, data_blob, parts_blob, digests = rows[0]
            meta = _decode(meta_blob, digests[_META])
            data = _decode(data_blob, digests[_DATA])
            parts = _decode(parts_blob, digests[_PARTS])
            if meta is None or data is None or parts is None:
                self._damaged(pack)
                db.execute("DELETE FROM packs WHERE id = ?", (pack,))
                continue
            for pos in positions:
                item = meta[pos] if pos < len(meta) else None
                if item is None:
                    continue
                if expect is not None and expect[pack << 32 | pos] != (pipeline, item[0]):
                    continue  # another pipeline's entry under the same key: it stays
                meta[pos] = data[pos] = parts[pos] = None
                died += 1
            alive = [item for item in meta if item is not None]
            if not alive:
                db.execute("DELETE FROM packs WHERE id = ?", (pack,))
                continue
            db.execute(
                "UPDATE packs SET oldest = ?, newest = ?, value_bytes = ?, meta = ?, data = ?,"
                " parts = ?, digests = ? WHERE id = ?",
                (
                    min(item[2] for item in alive),
                    max(item[2] for item in alive),
                    sum(item[5] for item in alive),
                    *_encode_pack(meta, data, parts),
                    pack,
                ),
            )
        self._parts_memo = None
        return died

    def _all_meta(
        self, where: str = "", args: Sequence[Any] = ()
    ) -> list[tuple[int, str, list[Any]]]:
        """``(pack, pipeline, meta)`` of every readable pack (matching `where`), in order."""
        rows = self._read(f"SELECT id, pipeline, meta, digests FROM packs{where} ORDER BY id", args)
        found: list[tuple[int, str, list[Any]]] = []
        for pack, pipeline, meta_blob, digests in rows:
            meta = _decode(meta_blob, digests[_META])
            if meta is None:
                self._damaged(pack)
            else:
                found.append((pack, pipeline, meta))
        return found

    def _live(self) -> dict[tuple[str, str], Any]:
        """Every entry by (pipeline, key), the latest of each: its meta item."""
        live: dict[tuple[str, str], Any] = {}
        for _, pipeline, meta in self._all_meta():
            for item in meta:
                if item is not None:
                    live[pipeline, item[0]] = item
        return live

    def snapshot(self, pipeline: str, max_bytes: int) -> dict[str, CacheEntry | None]:
        (total,) = self._read(
            "SELECT coalesce(sum(value_bytes), 0) FROM packs WHERE pipeline = ?", (pipeline,)
        )[0]
        where = self._where
        if total > max_bytes:
            keys: dict[str, CacheEntry | None] = {}
            for pack, _, meta in self._all_meta(" WHERE pipeline = ?", (pipeline,)):
                for pos, item in enumerate(meta):
                    if item is not None:
                        keys[item[0]] = None
                        where[item[0]] = pack << 32 | pos
            return keys
        found: dict[str, CacheEntry | None] = {}
        rows = self._read(
            "SELECT id, run_id, meta, data, digests FROM packs WHERE pipeline = ? ORDER BY id",
            (pipeline,),
        )
        for pack, run_id, meta_blob, data_blob, digests in rows:
            listed, data = _decode(meta_blob, digests[_META]), _decode(data_blob, digests[_DATA])
            if listed is None or data is None:
                self._damaged(pack)
                continue  # never handed out; `get` drops the pack if it is ever asked for
            for pos, item in enumerate(listed):
                if item is not None:
                    key, stage, created, value_digest, outs, _ = item
                    found[key] = CacheEntry(
                        key,
                        pipeline,
                        stage,
                        data[pos],
                        value_digest,
                        _EMPTY,
                        outs or _EMPTY,
                        created,
                        run_id,
                    )
                    where[key] = pack << 32 | pos
        return found

    def delete(self, key: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            doomed = [
                pack << 32 | pos
                for pack, _, meta in self._all_meta()
                for pos, item in enumerate(meta)
                if item is not None and item[0] == key
            ]
            if doomed:
                self._kill(db, doomed)
            self._forget()

        self._write(work)

    # -- file memo --------------------------------------------------------------------

    def file_memo(self, path: str) -> FileMemo | None:
        rows = self._read(
            "SELECT mtime_ns, size, inode, digest FROM file_memo WHERE path = ?", (path,)
        )
        return FileMemo(*rows[0]) if rows else None

    def put_file_memo(self, path: str, memo: FileMemo) -> None:
        row = (path, memo.mtime_ns, memo.size, memo.inode, memo.digest)
        self._write(
            lambda db: db.execute("INSERT OR REPLACE INTO file_memo VALUES (?,?,?,?,?)", row)
        )

    # -- history ----------------------------------------------------------------------

    def record_run(self, record: RunRecord) -> None:
        self.record_run_columns(record, StageColumns.of(record.stages))

    def record_run_columns(self, record: RunRecord, stages: StageColumns) -> None:
        """`record_run`, the stages given as columns (`record.stages` is not read).

        What a run uses (not in `CacheStore`): no `StageRecord` per stage.
        """
        run_row = (
            record.run_id,
            record.pipeline,
            record.file,
            record.started,
            record.duration,
            record.state,
            int(record.ok),
            json.dumps(dict(record.counts)),
            json.dumps(_jsonable(record.params)),
            encode_stages(stages),
        )

        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", run_row)
            db.execute("DELETE FROM run_stages WHERE run_id = ?", (record.run_id,))

        self._write(work)

    def runs(self, *, limit: int = 20, file: str | None = None) -> list[RunRecord]:
        where, args = ("", ()) if file is None else (" WHERE file = ?", (file,))
        rows = self._read(
            "SELECT run_id, pipeline, file, started, duration, state, ok, counts, params"
            f" FROM runs{where} ORDER BY started DESC LIMIT ?",
            (*args, limit),
        )
        return [_run_from_row(row, ()) for row in rows]

    def run(self, run_id: str) -> RunRecord | None:
        rows = self._read(
            "SELECT run_id, pipeline, file, started, duration, state, ok, counts, params,"
            " stages FROM runs WHERE run_id = ? OR run_id LIKE ? ORDER BY run_id = ? DESC LIMIT 2",
            (run_id, _like_prefix(run_id), run_id),
        )
        if not rows or (len(rows) > 1 and rows[0][0] != run_id):
            return None  # unknown, or an ambiguous prefix
        *row, stages = rows[0]
        if stages is None:  # recorded by schema 1
            stage_rows = self._read(
                "SELECT name, status, attempts, duration, reason, error FROM run_stages"
                " WHERE run_id = ? ORDER BY position",
                (row[0],),
            )
            return _run_from_row(row, tuple(StageRecord(*r) for r in stage_rows))
        try:
            records = decode_stages(stages)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError too
            problem = f"corrupt (the stages of run {row[0]}: {exc!r})"
            raise CacheStoreError(self.path, problem) from None
        return _run_from_row(row, records)

    # -- maintenance ------------------------------------------------------------------

    def stats(self) -> CacheStats:
        live = self._live()
        created = [item[2] for item in live.values()]
        runs = self._read("SELECT count(*) FROM runs")[0][0]
        file_bytes = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                file_bytes += os.stat(f"{self.path}{suffix}").st_size
        return CacheStats(
            len(live),
            sum(item[5] for item in live.values()),
            runs,
            min(created, default=None),
            max(created, default=None),
            file_bytes,
            len({(pipeline, item[1]) for (pipeline, _), item in live.items()}),
        )

    def prune(self, older_than: float) -> int:
        cutoff = time.time() - older_than

        def work(db: sqlite3.Connection) -> int:
            doomed = [
                pack << 32 | pos
                for pack, _, meta in self._all_meta(" WHERE oldest < ?", (cutoff,))
                for pos, item in enumerate(meta)
                if item is not None and item[2] < cutoff
            ]
            removed = self._kill(db, doomed) if doomed else 0
            old_runs = "SELECT run_id FROM runs WHERE started < ?"
            db.execute(f"DELETE FROM run_stages WHERE run_id IN ({old_runs})", (cutoff,))
            db.execute("DELETE FROM runs WHERE started < ?", (cutoff,))
            if removed:
                # The fingerprints' items no entry refers to any more.
                used: set[Any] = set()
                for parts_blob, digests in db.execute("SELECT parts, digests FROM packs"):
                    for parts in _decode(parts_blob, digests[_PARTS]) or ():
                        if parts:
                            used.add(json.loads(parts).get("code"))
                stale = [
                    (code,)
                    for (code,) in db.execute("SELECT code FROM functions").fetchall()
                    if code not in used
                ]
                db.executemany("DELETE FROM functions WHERE code = ?", stale)
            self._forget()
            return removed

        return int(self._write(work))

    def referenced_objects(self) -> set[str]:
        """Digests of restorable outputs still referenced by an entry."""
        found: set[str] = set()
        for item in self._live().values():
            if item[4]:
                found.update(item[4].values())
        return found

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({os.fspath(self.cache_dir)!r})"


_STALE = object()  # a pack is not what the store noted: read again where entries are
_INSERT_FUNCTIONS = "INSERT OR IGNORE INTO functions VALUES (?, ?)"


def canonical_json(mapping: Mapping[str, Any]) -> str:
    """`mapping` as the cache writes JSON everywhere: sorted keys, no spaces (so equal
    mappings give equal texts: a key is the hash of one)."""
    return json.dumps(mapping, sort_keys=True, separators=(",", ":"))


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return mapping if isinstance(mapping, dict) else dict(mapping)


def _corrupt(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _run_from_row(row: Sequence[Any], stages: tuple[StageRecord, ...]) -> RunRecord:
    run_id, pipeline, file, started, duration, state, ok, counts, params = row
    return RunRecord(
        run_id=run_id,
        pipeline=pipeline,
        file=file,
        started=started,
        duration=duration,
        state=state,
        ok=bool(ok),
        counts=json.loads(counts),
        params=json.loads(params),
        stages=stages,
    )


# A run's stages in ``runs.stages`` come in two forms, told apart by their text (no
# schema change): a JSON object of columns (`encode_stages`, written now) or a JSON
# list of one list per stage (the former form, schema 2's; still read). Columns cost
# a tenth: the C encoder turns a list of 10,000 strings into text in ~0.04 us a stage,
# where a list per stage cost ~1.5 us; durations, as float64 bytes (little-endian,
# base64), skip ~0.35 us a stage of float repr and come back exact; errors are by
# position, for the stages with one.


def _little_endian(durations: array[float]) -> array[float]:
    if sys.byteorder == "little":
        return durations
    swapped = array("d", durations)
    swapped.byteswap()
    return swapped


def encode_stages(stages: StageColumns) -> str:
    """The text `SQLiteStore` stores for a run's stages (`decode_stages` reads it).

    Raises:
        ValueError: the columns differ in length.
    """
    names, durations, errors = stages.names, stages.durations, stages.errors
    columns = (stages.statuses, stages.attempts, durations, stages.reasons)
    if any(len(column) != len(names) for column in columns):
        raise ValueError("the stage columns differ in length")
    if not (isinstance(durations, array) and durations.typecode == "d"):
        durations = array("d", durations)
    # Each column encoded on its own, then joined: 0.16 us a stage, against 0.27 for
    # the encoder given the whole dict.
    return "".join(
        [
            '{"names":',
            _encode_row(names if type(names) is list else list(names)),
            ',"statuses":',
            _encode_column(stages.statuses),
            ',"attempts":',
            _encode_column(stages.attempts),
            ',"durations":"',
            base64.b64encode(_little_endian(durations)).decode("ascii"),
            '","reasons":',
            _encode_column(stages.reasons),
            ',"errors":',
            _encode_row(errors if isinstance(errors, dict) else dict(errors)),
            "}",
        ]
    )


def _encode_column(values: Sequence[Any]) -> str:
    # A column with one value for every stage is stored as that value, once: most
    # runs' statuses are all "succeeded" (or all "cached"), their attempts all 1 (or
    # 0), a cold run's reasons all "cache miss". `count` is a C loop that compares
    # identity first: ~0.005 us a stage, where encoding the list costs ~0.04.
    if values and values.count(values[0]) == len(values):
        return _encode_row(values[0])
    if isinstance(values, array):
        return _encode_row(values.tolist())
    return _encode_row(values if type(values) is list else list(values))


def _decode_column(column: object, n: int) -> Sequence[Any]:
    return column if _is_list(column) else [column] * n  # one value for all


def _is_list(value: object) -> TypeGuard[list[Any]]:
    return isinstance(value, list)


def decode_stages(text: str) -> tuple[StageRecord, ...]:
    """A run's stages from `encode_stages`' text, or from the former list per stage.

    Raises:
        ValueError, KeyError, TypeError, AttributeError: the text is neither.
    """
    data: Any = json.loads(text)
    if _is_list(data):  # the former form: a list per stage
        return tuple(StageRecord(*row) for row in data)
    durations = array("d")
    durations.frombytes(base64.b64decode(data["durations"], validate=True))
    errors = {int(i): error for i, error in data["errors"].items()}
    names: list[str] = data["names"]
    n = len(names)
    return StageColumns(
        names,
        _decode_column(data["statuses"], n),
        _decode_column(data["attempts"], n),
        _little_endian(durations),
        _decode_column(data["reasons"], n),
        errors,
    ).records()


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in params.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = repr(value)
        out[str(name)] = value
    return out


def remove_store_files(cache_dir: str | os.PathLike[str]) -> list[str]:
    """Delete the store and the object cache in `cache_dir`; return what was removed.

    Works on a corrupt store (it never opens it) and removes only files trio_pipeline
    creates there.
    """
    import shutil

    folder = Path(cache_dir)
    removed: list[str] = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = folder / f"{STORE_FILENAME}{suffix}"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(str(path))
    objects = folder / OBJECTS_DIRNAME
    if objects.is_dir():
        shutil.rmtree(objects)
        removed.append(str(objects))
    with contextlib.suppress(OSError):
        folder.rmdir()  # only if nothing else is in it
    return removed
