"""File dependencies and outputs: content hashes (memoised in the store) and the object cache.

Blocking (reads files): called only from the cache's worker thread or the CLI.

A file's hash is memoised by its absolute path with ``(mtime_ns, size, inode)``, as
Pivot does: while those are unchanged the file is not read again. A directory is
every regular file below it (symlinks followed, sorted by relative path): its
per-file hashes enter the key, so an explanation names the file that changed. A
missing path hashes as ``"missing"``, so its appearance changes the key.

The object cache (``<cache_dir>/objects/ab/abcdef...``, 0700 folders, 0600 files) keeps
the outputs of stages with ``CachePolicy(restore_outs=True)`` by content hash. Files are
written to a temporary name and renamed, so a crash never leaves a partial object
under a hash, and restored the same way, so a partial output never appears.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from ._store import CacheStore, FileMemo, ensure_private_dir

MISSING = "missing"
# Read once at import, in the main thread: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_CHUNK = 1 << 20


def _hash_file(path: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str, store: CacheStore | None) -> str:
    """The content hash of the regular file at absolute `path`, memoised in `store`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return MISSING
    if store is not None:
        memo = store.file_memo(path)
        if (
            memo is not None
            and memo.mtime_ns == st.st_mtime_ns
            and memo.size == st.st_size
            and memo.inode == st.st_ino
        ):
            return memo.digest
    digest = _hash_file(path)
    after = os.stat(path)
    if store is not None and (after.st_mtime_ns, after.st_size) == (st.st_mtime_ns, st.st_size):
        # Not memoised if the file changed while we read it: the next look re-reads it.
        store.put_file_memo(path, FileMemo(st.st_mtime_ns, st.st_size, st.st_ino, digest))
    return digest


def path_digests(path: str, store: CacheStore | None, *, base: str | None = None) -> dict[str, str]:
    """Each file at or below `path` -> its hash; a missing `path` -> ``"missing"``.

    Keys are `path` as given for a file, ``path/relative/name`` for files in a directory.
    `base` is the folder relative paths are resolved against (default: the working one).
    """
    full = os.path.join(base, path) if base is not None else os.path.abspath(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        return {path: MISSING}
    if not stat.S_ISDIR(st.st_mode):
        return {path: file_digest(os.path.abspath(full), store)}
    found: dict[str, str] = {}
    for root, dirs, files in os.walk(full, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            absolute = os.path.abspath(os.path.join(root, name))
            if not os.path.isfile(absolute):
                continue  # a socket, fifo or dangling link
            rel = os.path.relpath(absolute, full).replace(os.sep, "/")
            found[f"{path.rstrip('/')}/{rel}"] = file_digest(absolute, store)
    if not found:
        found[path] = "empty directory"
    return found


def digests_of(paths: Iterable[str], store: CacheStore | None) -> dict[str, str]:
    """`path_digests` of every path, merged."""
    merged: dict[str, str] = {}
    for path in paths:
        merged.update(path_digests(path, store))
    return merged


def outs_changed(recorded: Mapping[str, str], store: CacheStore | None) -> list[str]:
    """The recorded output files whose current content differs (or that are missing)."""
    changed: list[str] = []
    for path, digest in recorded.items():
        current = file_digest(os.path.abspath(path), store)
        if current != digest:
            changed.append(path)
    return changed


class ObjectCache:
    """Content-addressed copies of outputs, in `folder` (created 0700)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def _path(self, digest: str) -> Path:
        return self.folder / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def save(self, path: str, digest: str) -> None:
        """Copy the file at `path` in under `digest` (a no-op if already there)."""
        target = self._path(digest)
        if target.is_file():
            return
        ensure_private_dir(target.parent)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def restore(self, digest: str, path: str) -> bool:
        """Write the object `digest` to `path` (atomically); False if it is not cached."""
        source = self._path(digest)
        if not source.is_file():
            return False
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".trio-pipeline-restore-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, _CHUNK)
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return True

    def prune(self, keep: set[str]) -> int:
        """Delete objects not in `keep`; return how many were removed."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        for sub in self.folder.iterdir():
            if not sub.is_dir():
                continue
            for obj in sub.iterdir():
                if obj.name not in keep:
                    with contextlib.suppress(OSError):
                        obj.unlink()
                        removed += 1
        return removed

    def size(self) -> int:
        if not self.folder.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())
