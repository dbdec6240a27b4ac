"""One run's cache work: lookups, commits, outs, expiry, explanations, the dry run; the policy."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from trio_pipeline._cache._explain import (
    DecisionKind,
)
from trio_pipeline._cache._files import ObjectCache
from trio_pipeline._cache._keys import Fingerprint
from trio_pipeline._cache._lookup import RunJobs, StageSpec, simulate
from trio_pipeline._cache._policy import (
    CachePolicy,
)
from trio_pipeline._cache._store import SQLiteStore

CODE = Fingerprint("code1", {"p.py:f": "1"})


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with SQLiteStore(tmp_path / "cache") as s:
        yield s


def jobs(store: SQLiteStore, run_id: str = "r1", **params: Any) -> RunJobs:
    objects = ObjectCache(store.cache_dir / "objects")
    return RunJobs(store, "pipe", run_id, params, objects)


def spec(name: str = "s", **kw: Any) -> StageSpec:
    kw.setdefault("policy", CachePolicy())
    kw.setdefault("fingerprint", CODE)
    return StageSpec(name, **kw)


def run_once(j: RunJobs, s: StageSpec, inputs: dict[str, Any], value: Any) -> Any:
    """Look up; on a miss commit `value`. Returns the lookup's decision."""
    result = j.lookup(s, inputs)
    if not result.decision.hit:
        assert result.parts is not None
        assert j.commit(s, result.parts, value).stored
    return result


def test_miss_commit_hit(store: SQLiteStore) -> None:
    first = run_once(jobs(store), spec(), {}, {"answer": 42})
    assert first.decision.kind is DecisionKind.NO_ENTRY
    second = jobs(store, "r2").lookup(spec(), {})
    assert second.decision.hit
    assert second.value == {"answer": 42}
    assert "stored" in second.decision.reason
    assert "by run r1" in second.decision.reason


def test_value_based_inputs(store: SQLiteStore) -> None:
    down = spec("d", upstream=("u",))
    run_once(jobs(store), down, {"u": [1, 2]}, "x")
    assert jobs(store).lookup(down, {"u": [1, 2]}).decision.hit  # an equal value, rebuilt
    miss = jobs(store).lookup(down, {"u": [1, 3]}).decision
    assert miss.kind is DecisionKind.CHANGED
    assert miss.reason == "input changed: upstream 'u'"


def test_an_upstream_hit_gives_its_stored_hash(store: SQLiteStore) -> None:
    up, down = spec("u"), spec("d", upstream=("u",))
    j = jobs(store)
    run_once(j, up, {}, "value")
    run_once(j, down, {"u": "value"}, "x")
    again = jobs(store)
    assert again.lookup(up, {}).decision.hit
    # The downstream key uses the hash the hit carried, not the (absent) input value.
    assert again.lookup(down, {}).decision.hit


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"fingerprint": Fingerprint("code2", {"p.py:f": "2"})}, "code changed: function 'p.py:f'"),
        ({"version": "2"}, "version changed: None -> '2'"),
    ],
)
def test_a_changed_component_is_explained(
    store: SQLiteStore, change: dict[str, Any], reason: str
) -> None:
    run_once(jobs(store), spec(), {}, 1)
    decision = jobs(store).lookup(spec(**change), {}).decision
    assert decision.kind is DecisionKind.CHANGED
    assert decision.reason == reason


def test_params_enter_the_key_and_are_explained(store: SQLiteStore) -> None:
    run_once(jobs(store, lr=0.1, epochs=3), spec(), {}, 1)
    assert jobs(store, lr=0.1, epochs=3).lookup(spec(), {}).decision.hit
    decision = jobs(store, lr=0.2, epochs=3).lookup(spec(), {}).decision
    assert decision.reason == "params changed: key 'lr'"
    only_epochs = spec(policy=CachePolicy(params=["epochs"]))
    run_once(jobs(store, lr=0.1, epochs=3), only_epochs, {}, 1)
    assert jobs(store, lr=0.5, epochs=3).lookup(only_epochs, {}).decision.hit


def test_code_false_ignores_code_changes(store: SQLiteStore) -> None:
    s = spec(policy=CachePolicy(code=False))
    run_once(jobs(store), s, {}, 1)
    other = spec(policy=CachePolicy(code=False), fingerprint=Fingerprint("zzz", {}))
    assert jobs(store).lookup(other, {}).decision.hit


def test_deps_enter_the_key_and_the_file_is_named(store: SQLiteStore, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("1,2\n")
    s = spec(deps=(str(data),))
    run_once(jobs(store), s, {}, 1)
    assert jobs(store).lookup(s, {}).decision.hit
    data.write_text("1,3\n")
    decision = jobs(store).lookup(s, {}).decision
    assert decision.reason == f"dep changed: file {str(data)!r}"


def test_expired(store: SQLiteStore) -> None:
    s = spec(policy=CachePolicy(expire=60))
    first = jobs(store).lookup(s, {})
    assert first.parts is not None
    jobs(store).commit(s, first.parts, 1, created=0.0)  # stored long ago
    decision = jobs(store).lookup(s, {}).decision
    assert decision.kind is DecisionKind.EXPIRED
    assert "expire=60s" in decision.reason


def test_forced_still_computes_the_key(store: SQLiteStore) -> None:
    result = jobs(store).lookup(spec(forced=True), {})
    assert result.decision.kind is DecisionKind.FORCED
    assert result.parts is not None


def test_unpicklable_input_or_value_is_not_cached(store: SQLiteStore) -> None:
    down = spec("d", upstream=("u",))
    result = jobs(store).lookup(down, {"u": lambda: None})
    assert result.decision.kind is DecisionKind.UNCACHEABLE
    assert result.log is not None
    assert "input from 'u' cannot be pickled" in result.log
    first = jobs(store).lookup(spec(), {})
    assert first.parts is not None
    committed = jobs(store).commit(spec(), first.parts, lambda: None)
    assert not committed.stored
    assert committed.log is not None
    assert "value cannot be pickled" in committed.log
    assert store.stats().entries == 0


def test_unpicklable_param_is_not_cached(store: SQLiteStore) -> None:
    result = jobs(store, f=lambda: None).lookup(spec(), {})
    assert result.decision.kind is DecisionKind.UNCACHEABLE


def test_a_stored_value_that_no_longer_loads_is_a_miss(store: SQLiteStore) -> None:
    class Local:  # pickles by reference to a class that will not be found
        pass

    first = jobs(store).lookup(spec(), {})
    assert first.parts is not None
    import pickle

    data = pickle.dumps(1)
    j = jobs(store)
    j.commit(spec(), first.parts, 1)
    # Corrupt the stored pickle in a way its hash still matches.
    entry = store.get(first.decision.key or "")
    assert entry is not None
    from dataclasses import replace

    from trio_pipeline._cache._store import digest_bytes

    bad = b"\x80\x05cno_such_module\nThing\n."
    store.put(replace(entry, value=bad, value_digest=digest_bytes(bad)))
    decision = jobs(store).lookup(spec(), {}).decision
    assert decision.kind is DecisionKind.UNREADABLE
    assert data


def test_outs_are_checked_after_a_hit(store: SQLiteStore, tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    s = spec(outs=(str(out),))
    first = jobs(store).lookup(s, {})
    assert first.parts is not None
    out.write_text("result")
    assert jobs(store).commit(s, first.parts, 1).stored
    assert jobs(store).lookup(s, {}).decision.hit
    out.write_text("tampered")
    decision = jobs(store).lookup(s, {}).decision
    assert decision.kind is DecisionKind.OUTS
    assert decision.reason == f"outs changed: file {str(out)!r} changed"
    out.unlink()
    assert jobs(store).lookup(s, {}).decision.reason.endswith("missing")


def test_a_declared_out_that_is_not_written_is_not_cached(
    store: SQLiteStore, tmp_path: Path
) -> None:
    s = spec(outs=(str(tmp_path / "never.txt"),))
    first = jobs(store).lookup(s, {})
    assert first.parts is not None
    result = jobs(store).commit(s, first.parts, 1)
    assert not result.stored
    assert result.log is not None
    assert "does not exist" in result.log


def test_restore_outs(store: SQLiteStore, tmp_path: Path) -> None:
    folder = tmp_path / "outdir"
    folder.mkdir()
    (folder / "a.txt").write_text("A")
    (folder / "b.txt").write_text("B")
    s = spec(outs=(str(folder),), policy=CachePolicy(restore_outs=True))
    first = jobs(store).lookup(s, {})
    assert first.parts is not None
    assert jobs(store).commit(s, first.parts, 1).stored
    objects = store.cache_dir / "objects"
    assert stat.S_IMODE(objects.stat().st_mode) == 0o700
    for path in objects.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path
    (folder / "a.txt").unlink()
    (folder / "b.txt").write_text("changed")
    result = jobs(store).lookup(s, {})
    assert result.decision.hit
    assert (folder / "a.txt").read_text() == "A"
    assert (folder / "b.txt").read_text() == "B"
    # Without the object, the stage must run.
    for path in objects.rglob("*"):
        if path.is_file():
            path.unlink()
    (folder / "a.txt").unlink()
    assert jobs(store).lookup(s, {}).decision.kind is DecisionKind.OUTS


def test_simulate_runs_nothing_and_propagates_runs(store: SQLiteStore) -> None:
    a, b, c = spec("a"), spec("b", upstream=("a",)), spec("c", upstream=("b",))
    j = jobs(store)
    run_once(j, a, {}, 1)
    run_once(j, b, {"a": 1}, 2)
    run_once(j, c, {"b": 2}, 3)
    decisions = simulate(jobs(store), [a, b, c, None], ["a", "b", "c", "plain"])
    assert [d.kind for d in decisions] == [
        DecisionKind.HIT,
        DecisionKind.HIT,
        DecisionKind.HIT,
        DecisionKind.DISABLED,
    ]
    changed_b = spec("b", upstream=("a",), version="2")
    decisions = simulate(jobs(store), [a, changed_b, c], ["a", "b", "c"])
    assert [d.verb for d in decisions] == ["cached", "run", "run"]
    assert decisions[1].reason == "version changed: None -> '2'"
    assert "upstream 'b' will run" in decisions[2].reason
    forced = simulate(jobs(store), [spec("a", forced=True), b, c], ["a", "b", "c"])
    assert forced[0].kind is DecisionKind.FORCED


def test_lookup_in_memory_agrees_with_lookup(store: SQLiteStore) -> None:
    up, down = spec("u"), spec("d", upstream=("u",))
    j = jobs(store)
    run_once(j, up, {}, "value")
    run_once(j, down, {"u": "value"}, [1, 2])
    fresh = jobs(store, "r2")
    fresh.explain = False
    fresh.known = store.snapshot("pipe", 1 << 20)
    # Neither the parameters' hashes nor the upstream's hash is known yet: not from memory.
    assert fresh.lookup_in_memory(up) is None
    slow_up = fresh.lookup(up, {})
    fast_up = fresh.lookup_in_memory(up)
    assert fast_up is not None
    assert fast_up.decision.hit
    assert fast_up.value == "value"
    assert fast_up.decision.key == slow_up.decision.key
    assert fast_up.parts == slow_up.parts
    fast_down = fresh.lookup_in_memory(down)
    assert fast_down is not None
    assert fast_down.decision.hit
    assert fast_down.value == [1, 2]
    assert fast_down.decision.key == fresh.lookup(down, {}).decision.key
    other = spec("d", upstream=("u",), version="2")
    miss = fresh.lookup_in_memory(other)
    assert miss is not None
    assert miss.decision.kind is DecisionKind.NO_ENTRY
    assert miss.decision.key == fresh.lookup(other, {}).decision.key
    forced = fresh.lookup_in_memory(spec("u", forced=True))
    assert forced is not None
    assert forced.decision.kind is DecisionKind.FORCED


def test_lookup_in_memory_leaves_the_store_and_files_to_the_worker(
    store: SQLiteStore, tmp_path: Path
) -> None:
    j = jobs(store)
    run_once(j, spec(), {}, "value")
    j.known = store.snapshot("pipe", 1 << 20)
    dep = tmp_path / "dep.txt"
    dep.write_text("x")
    assert j.lookup_in_memory(spec(deps=(str(dep),))) is None  # a file to hash
    j.explain = True
    assert j.lookup_in_memory(spec(version="new")) is None  # a miss to explain
    j.known = dict.fromkeys(j.known)  # values too big to have been read with the snapshot
    assert j.lookup_in_memory(spec()) is None
    j.known = None  # no snapshot at all
    assert j.lookup_in_memory(spec()) is None


@pytest.mark.parametrize("commit_makes_the_key", [True, False])
@pytest.mark.parametrize(
    ("name", "ups", "version", "code"),
    [
        ("s", (), None, True),
        ('odd "name" \\ é', ('up "1"', "up\n2"), "v'2\"", True),
        ("nocode", ("a",), None, False),
    ],
)
def test_a_commit_answered_from_memory_stores_the_same_key_and_parts(
    store: SQLiteStore,
    name: str,
    ups: tuple[str, ...],
    version: str | None,
    code: bool,
    commit_makes_the_key: bool,
) -> None:
    """The cold run's commit builds the stored parts as text (and the key too, for a
    stage `unstored_stages` names): they read back as the slow path's."""
    policy = CachePolicy(code=code, params=("lr",) if code else None)
    j = jobs(store, lr=0.5, other=[1])
    for up in ups:
        j.note_value(up, up * 2)
    j.known = {"another key": None}
    j.explain = False
    s = spec(name, upstream=ups, version=version, policy=policy)
    slow = j.lookup(s, {up: up * 2 for up in ups})
    assert slow.parts is not None
    fast = j.probe_memory(s)
    assert isinstance(fast, tuple)
    assert fast[0] == slow.decision.key
    assert j.commit(s, None, "value", key=None if commit_makes_the_key else fast[0]).stored
    latest = store.latest("pipe", name)
    assert latest is not None
    assert latest.key == slow.decision.key
    assert latest.parts == slow.parts
    in_memory = j.lookup_in_memory(s)
    assert in_memory is not None
    assert in_memory.decision.key == slow.decision.key
