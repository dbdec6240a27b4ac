"""The cache's blocking work for one run: look a stage up, commit its result. No trio.

`RunJobs` holds the state of one run that lives on the worker thread (the hashes of
the values seen so far, the parameters' hashes). Its methods block (store, files,
pickling) and are only called from that thread, or directly by ``--dry-run``.
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._explain import Decision, DecisionKind, format_age, hit_reason, miss_reason
from ._files import MISSING, ObjectCache, digests_of, outs_changed, path_digests
from ._keys import (
    KEY_FORMAT,
    Fingerprint,
    functions_json,
    hash_params,
    input_piece,
    key_of,
    key_parts,
    parts_text,
    pickle_value,
    text_from,
    text_head,
)
from ._policy import CachePolicy
from ._store import CacheEntry, CacheStore, SQLiteStore, canonical_json, digest_bytes

_NO_CODE = Fingerprint("", {})
_EMPTY_DEPS: Mapping[str, str] = {}
_NO_OUTS: dict[str, str] = {}  # never written to: `_commit` only fills a fresh dict

IN_MEMORY_LOAD_BYTES = 64 << 10
"""A hit whose pickled value is at most this big may be loaded on the event loop."""


@dataclass(slots=True)  # not frozen: built once per stage per run, and frozen costs 2x
class StageSpec:
    """What the cache needs to know about one stage for one run (built at run start)."""

    name: str
    policy: CachePolicy
    fingerprint: Fingerprint
    version: str | None = None
    deps: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    forced: bool = False
    upstream: tuple[str, ...] = ()


@dataclass(slots=True)
class LookupResult:
    """A lookup's answer. On a hit `value` is the stored value, loaded.

    `parts` is None on a hit answered by `RunJobs.probe_memory` (nothing to commit).
    """

    decision: Decision
    parts: dict[str, Any] | None = None  # the key's components, for the commit
    value: Any = None
    log: str | None = None  # a message for the stage's log (say, why it is not cacheable)


@dataclass(slots=True)
class CommitResult:
    stored: bool
    log: str | None = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass
class RunJobs:
    """One run's cache work, on the worker thread. `objects` is the restore cache (or None)."""

    store: CacheStore
    pipeline: str
    run_id: str
    params: Mapping[str, Any]
    objects: ObjectCache | None = None
    explain: bool = True  # False: a miss is not compared with the latest entry (cheaper)
    # The store's entries of this pipeline (`CacheStore.snapshot`), read once: a miss
    # then costs no query, and neither does a hit whose value was read with them.
    known: Mapping[str, CacheEntry | None] | None = None
    value_digests: dict[str, str] = field(default_factory=dict[str, str])
    _param_digests: dict[tuple[str, ...] | None, dict[str, str] | str] = field(
        default_factory=dict[tuple[str, ...] | None, dict[str, str] | str]
    )
    # The parameters' hashes as `canonical_json`, per selection (`CachePolicy.params`).
    _params_json: dict[tuple[str, ...] | None, str] = field(
        default_factory=dict[tuple[str, ...] | None, str]
    )
    # The code digest -> `functions_json` of its items (one per stage function, not per stage).
    _functions_json: dict[str, str] = field(default_factory=dict[str, str])
    # Why a committed stage's value has no hash (it could not be pickled), by stage.
    _unpicklable: dict[str, str] = field(default_factory=dict[str, str])
    # An upstream's entry in the parts' text (`input_piece`): made once per producing
    # stage (by its first consumer), not once per consumer.
    _pieces: dict[str, str] = field(default_factory=dict[str, str])
    # `text_head` per code digest (one per stage function, not per stage).
    _heads: dict[str, str] = field(default_factory=dict[str, str])

    def note_value(self, stage: str, value: Any) -> str | None:
        """The hash of an uncached stage's value (for downstream keys); None if unpicklable."""
        digest = self.value_digests.get(stage)
        if digest is None:
            try:
                digest = digest_bytes(pickle_value(value))
            except Exception:
                return None
            self.value_digests[stage] = digest
        return digest

    def _params(self, only: tuple[str, ...] | None) -> dict[str, str] | str:
        digests = self._param_digests.get(only)
        if digests is None:
            try:
                digests = hash_params(self.params, only)
            except Exception as exc:
                digests = f"a parameter cannot be pickled ({_describe(exc)})"
            self._param_digests[only] = digests
        return digests

    def parts_for(
        self, spec: StageSpec, inputs: Mapping[str, Any], *, known: Mapping[str, str] | None = None
    ) -> dict[str, Any] | str:
        """The key's components, or the reason the stage cannot be cached (str).

        `known` gives hashes of upstream values already known (dry run); others are
        hashed from `inputs`.
        """
        digests: dict[str, str] = {}
        for name in spec.upstream:
            digest = self.value_digests.get(name) if known is None else known.get(name)
            if digest is None:
                if name not in inputs:
                    return f"the value of upstream {name!r} is not known"
                try:
                    digest = digest_bytes(pickle_value(inputs[name]))
                except Exception as exc:
                    return f"its input from {name!r} cannot be pickled ({_describe(exc)})"
                self.value_digests[name] = digest
            digests[name] = digest
        params = self._params(spec.policy.params)
        if isinstance(params, str):
            return params
        return key_parts(
            stage=spec.name,
            code=spec.fingerprint if spec.policy.code else _NO_CODE,
            version=spec.version,
            inputs=digests,
            params=params,
            deps=digests_of(spec.deps, self.store),
        )

    def lookup_in_memory(self, spec: StageSpec) -> LookupResult | None:
        """`lookup`, when it can be answered from memory alone; None when it cannot."""
        found = self.probe_memory(spec)
        if isinstance(found, tuple):
            key = found[0]
            return LookupResult(
                Decision(spec.name, DecisionKind.NO_ENTRY, "cache miss", key),
                self.memory_parts(spec),
            )
        if found is not None and found.parts is None:
            found.parts = self.memory_parts(spec)
        return found

    def memory_parts(self, spec: StageSpec) -> dict[str, Any]:
        """The key's components of a stage `probe_memory` answered (its hashes are known).

        Built when needed (on the worker thread, for the commit), not on the event loop.
        """
        code = spec.fingerprint if spec.policy.code else _NO_CODE
        digests = self.value_digests
        # `key_parts`, without its copies: these mappings are fresh or never mutated.
        return {
            "format": KEY_FORMAT,
            "stage": spec.name,
            "code": code.digest,
            "functions": code.items,
            "version": spec.version,
            "inputs": {name: digests[name] for name in spec.upstream},
            "params": self._param_digests[spec.policy.params],
            "deps": _EMPTY_DEPS,
        }

    def memory_text(self, spec: StageSpec) -> str | None:
        """`parts_text` of `memory_parts`, made of memoised pieces (`text_from`); None
        when an upstream's or the parameters' hash is not known yet. The key is its hash."""
        digests, pieces = self.value_digests, self._pieces
        names = spec.upstream
        texts: list[str] = []
        for name in sorted(names) if len(names) > 1 else names:  # as JSON orders them
            piece = pieces.get(name)
            if piece is None:
                digest = digests.get(name)
                if digest is None:
                    return None
                piece = pieces[name] = input_piece(name, digest)
            texts.append(piece)
        only = spec.policy.params
        params_json = self._params_json.get(only)
        if params_json is None:
            params = self._param_digests.get(only)
            if params is None or isinstance(params, str):
                return None
            params_json = self._params_json[only] = canonical_json(params)
        code = spec.fingerprint.digest if spec.policy.code else ""
        head = self._heads.get(code)
        if head is None:
            head = self._heads[code] = text_head(code)
        return text_from(head, texts, params_json, spec.name, spec.version)

    def _unhashed(self, spec: StageSpec) -> str | None:
        """Why `spec`'s key cannot be made from hashes in memory (hashing the parameters
        if not yet done), as `parts_for` words it; None if it can."""
        params = self._params(spec.policy.params)
        if isinstance(params, str):
            return params
        digests = self.value_digests
        for name in spec.upstream:
            if name not in digests:
                why = self._unpicklable.get(name)
                if why is not None:
                    return f"its input from {name!r} cannot be pickled ({why})"
                return f"the value of upstream {name!r} is not known"
        return None

    def memory_key(self, spec: StageSpec) -> str | None:
        """`spec`'s key, from `memory_text` (None if that is not known yet)."""
        text = self.memory_text(spec)
        return None if text is None else digest_bytes(text.encode())

    def probe_memory(self, spec: StageSpec) -> LookupResult | tuple[str, None] | None:
        """`lookup_in_memory`, with a plain miss answered as ``(key, None)``, and no parts.

        The key's components (`memory_parts`) are left to whoever needs them: a
        commit builds them on the worker thread, a hit needs none. (A cold run is all
        plain misses: no Decision, LookupResult or parts made on the event loop.)

        The inputs are not needed: the hashes of the upstream values are.

        Safe on the event loop: it touches no store and no file and pickles nothing
        (it answers only when every upstream hash and the parameters' hashes are
        already known, the run's entries were read with `CacheStore.snapshot`, and a
        hit's value is small). Called from the Trio thread while the worker thread
        may be committing: it only reads the snapshot and adds to `value_digests`,
        and an upstream's hash is there before its `StageFinished`.
        """
        known = self.known
        if known is None or spec.deps:
            return None
        key = self.memory_key(spec)
        if key is None:
            return None
        if spec.forced:
            decision = Decision(spec.name, DecisionKind.FORCED, "forced", key)
            return LookupResult(decision, self.memory_parts(spec))
        if key not in known:
            if self.explain:
                return None  # the explanation reads the latest entry from the store
            return key, None
        entry = known[key]
        if entry is None or entry.outs or len(entry.value) > IN_MEMORY_LOAD_BYTES:
            return None
        found = self._hit(spec, entry, None, key, load=True)
        if not found.decision.hit:
            found.parts = self.memory_parts(spec)  # it runs (expired, does not load): a commit
        return found

    def lookup(
        self,
        spec: StageSpec,
        inputs: Mapping[str, Any],
        *,
        load: bool = True,
        known: Mapping[str, str] | None = None,
    ) -> LookupResult:
        """Decide whether `spec` hits. With `load`, a hit carries the loaded value."""
        parts = self.parts_for(spec, inputs, known=known)
        if isinstance(parts, str):
            reason = f"not cached: {parts}"
            return LookupResult(Decision(spec.name, DecisionKind.UNCACHEABLE, reason), log=reason)
        key = key_of(parts)
        if spec.forced:
            return LookupResult(Decision(spec.name, DecisionKind.FORCED, "forced", key), parts)
        if self.known is None:
            entry = self.store.get(key)
        else:
            entry = self.known.get(key)
            if entry is None and key in self.known:
                entry = self.store.get(key)  # too big to have been read with the rest
        if entry is None:
            if not self.explain:
                return LookupResult(
                    Decision(spec.name, DecisionKind.NO_ENTRY, "cache miss", key), parts
                )
            latest = self.store.latest(self.pipeline, spec.name)
            decision = miss_reason(None if latest is None else latest.parts, parts)
            return LookupResult(_with_key(decision, key), parts)
        return self._hit(spec, entry, parts, key, load=load)

    def _hit(
        self,
        spec: StageSpec,
        entry: CacheEntry,
        parts: dict[str, Any] | None,
        key: str,
        *,
        load: bool,
    ) -> LookupResult:
        now = time.time()
        expire = spec.policy.expire
        if expire is not None and now - entry.created > expire:
            reason = f"expired: stored {format_age(now - entry.created)} ago, expire={expire:g}s"
            return LookupResult(Decision(spec.name, DecisionKind.EXPIRED, reason, key), parts)
        problem = self._check_outs(spec, entry) if entry.outs else None
        if problem is not None:
            return LookupResult(Decision(spec.name, DecisionKind.OUTS, problem, key), parts)
        value: Any = None
        if load:
            try:
                value = pickle.loads(entry.value)
            except Exception as exc:
                reason = f"the stored value does not load ({_describe(exc)})"
                return LookupResult(
                    Decision(spec.name, DecisionKind.UNREADABLE, reason, key), parts, log=reason
                )
        self.value_digests[spec.name] = entry.value_digest
        decision = Decision(
            spec.name, DecisionKind.HIT, hit_reason(entry.run_id, entry.created), key
        )
        return LookupResult(decision, parts, value)

    def _check_outs(self, spec: StageSpec, entry: CacheEntry) -> str | None:
        changed = outs_changed(entry.outs, self.store)
        if not changed:
            return None
        if spec.policy.restore_outs and self.objects is not None:
            lost = [p for p in changed if not self.objects.has(entry.outs[p])]
            if not lost:
                for path in changed:
                    self.objects.restore(entry.outs[path], path)
                return None
            changed = lost
        missing = [p for p in changed if not os.path.exists(p)]
        what = "missing" if len(missing) == len(changed) else "changed"
        shown = ", ".join(repr(p) for p in changed[:5]) + (", ..." if len(changed) > 5 else "")
        noun = "file" if len(changed) == 1 else "files"
        return f"outs changed: {noun} {shown} {what}"

    def commit(
        self,
        spec: StageSpec,
        parts: Mapping[str, Any] | None,
        value: Any,
        *,
        created: float | None = None,
        key: str | None = None,
    ) -> CommitResult:
        """Store `value` under the key of `parts`; durable when this returns (outside a batch).

        `parts` None: the stage was answered by `probe_memory` (`memory_parts`, and `key`).
        """
        problem = self._commit(spec, parts, value, created, key)
        return CommitResult(problem is None, problem)

    def _commit(
        self,
        spec: StageSpec,
        parts: Mapping[str, Any] | None,
        value: Any,
        created: float | None,
        key: str | None,
    ) -> str | None:
        # `commit`, returning why the value was not stored (None: stored).
        try:
            data = pickle_value(value)
        except Exception as exc:
            why = self._unpicklable[spec.name] = _describe(exc)
            return f"not cached: its value cannot be pickled ({why})"
        digest = digest_bytes(data)
        self.value_digests[spec.name] = digest  # for downstream keys, stored or not
        store = self.store
        if parts is None:
            missing = self._unhashed(spec)
            if missing is not None:
                return f"not cached: {missing}"
        if parts is None and not spec.outs and isinstance(store, SQLiteStore):
            # A miss `probe_memory` answered, the common case of a cold run: the stored
            # parts are one text made of memoised pieces, not dicts (fewer objects for
            # the garbage collector while the batch is pending).
            code = spec.fingerprint if spec.policy.code else _NO_CODE
            functions = self._functions_json.get(code.digest)
            if functions is None:
                functions = self._functions_json[code.digest] = functions_json(code.items)
            text = self.memory_text(spec)
            assert text is not None  # `probe_memory` answered: every hash in it is known
            store.put_encoded(
                (
                    self.pipeline,
                    self.run_id,
                    digest_bytes(text.encode()) if key is None else key,
                    spec.name,
                    time.time() if created is None else created,
                    digest,
                    None,
                    data,
                    text,
                ),
                code.digest,
                functions,
            )
            return None
        if parts is None:
            parts = self.memory_parts(spec)
        outs: dict[str, str] = {} if spec.outs else _NO_OUTS  # (one dict less a commit)
        for path in spec.outs:
            found = path_digests(path, self.store)
            if any(d == MISSING for d in found.values()):
                return f"not cached: declared out {path!r} does not exist"
            outs.update(found)
        if outs and spec.policy.restore_outs and self.objects is not None:
            for path, file_digest in outs.items():
                self.objects.save(path, file_digest)
        code = parts["code"]
        functions = self._functions_json.get(code)
        if functions is None:
            functions = self._functions_json[code] = functions_json(parts["functions"])
        created = time.time() if created is None else created
        if isinstance(store, SQLiteStore):
            # The built-in store: its packed row, without a `CacheEntry` in between.
            text = parts_text(parts)
            key = digest_bytes(text.encode()) if key is None else key
            store.put_encoded(
                (
                    self.pipeline,
                    self.run_id,
                    key,
                    spec.name,
                    created,
                    digest,
                    outs or None,
                    data,
                    text,
                ),
                code,
                functions,
            )
        else:
            key = key_of(parts) if key is None else key
            outs = outs if outs else {}  # the store's own (never the shared empty one)
            store.put(
                CacheEntry(
                    key, self.pipeline, spec.name, data, digest, parts, outs, created, self.run_id
                )
            )
        return None

    def commit_many(
        self,
        commits: Sequence[tuple[StageSpec, Mapping[str, Any] | None, str | None, Any, object]],
    ) -> list[str | None]:
        """`commit` each ``(spec, parts, key, value, _)``: why each was not stored (None: it was).

        (The fifth item is the caller's, ignored: the caller's own list is passed as is.)
        """
        commit = self._commit
        return [commit(spec, parts, value, None, key) for spec, parts, key, value, _ in commits]


def _with_key(decision: Decision, key: str) -> Decision:
    return Decision(decision.stage, decision.kind, decision.reason, key)


def simulate(
    jobs: RunJobs, specs: Sequence[StageSpec | None], names: Sequence[str]
) -> list[Decision]:
    """``--dry-run --explain``: each stage's decision, in `names` order, running nothing.

    `specs[i]` is None for a stage that is not cached. A stage downstream of one that
    would run would run too (its input is not known without running); loads no pickle.
    """
    by_name = dict(zip(names, specs, strict=True))
    runs: set[str] = set()
    known: dict[str, str] = {}
    decisions: list[Decision] = []
    for name in names:
        spec = by_name[name]
        if spec is None:
            runs.add(name)
            decisions.append(Decision(name, DecisionKind.DISABLED, "not cached"))
            continue
        if spec.forced:
            runs.add(name)
            decisions.append(Decision(name, DecisionKind.FORCED, "forced"))
            continue
        upstream_runs = [u for u in spec.upstream if u in runs]
        if upstream_runs:
            runs.add(name)
            shown = ", ".join(repr(u) for u in upstream_runs[:3])
            reason = f"upstream {shown} will run (the new input is not known yet)"
            decisions.append(Decision(name, DecisionKind.CHANGED, reason))
            continue
        result = jobs.lookup(spec, {}, load=False, known=known)
        decision = result.decision
        if decision.hit:
            known[name] = jobs.value_digests[name]
        else:
            runs.add(name)
        decisions.append(decision)
    return decisions
