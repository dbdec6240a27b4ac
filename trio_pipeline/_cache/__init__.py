"""Incremental runs: the result cache, file dependencies, run history and watch mode.

An edge of the architecture: the store and files are touched only from the cache's
worker thread (or the CLI); the pure parts (`_keys`, `_policy`, `_explain`) import no trio.
"""

from ._explain import Decision, DecisionKind
from ._policy import CachePolicy
from ._store import (
    CacheEntry,
    CacheStats,
    CacheStore,
    CacheStoreError,
    FileMemo,
    RunRecord,
    SQLiteStore,
    StageRecord,
)

__all__ = [
    "CacheEntry",
    "CachePolicy",
    "CacheStats",
    "CacheStore",
    "CacheStoreError",
    "Decision",
    "DecisionKind",
    "FileMemo",
    "RunRecord",
    "SQLiteStore",
    "StageRecord",
]
