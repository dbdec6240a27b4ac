"""Runs with the cache: CACHED stages, value-based keys, commits before StageFinished, options."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_pipeline as tp
from tests.support.runs import finished, statuses
from trio_pipeline._cache._run import RunCache
from trio_pipeline._events import describe_error
from trio_pipeline.testing import RecordingSink, check_run

S = tp.StageStatus


def chain(counter: dict[str, int]) -> tp.Pipeline:
    """a -> b -> c, each counting its calls; c is not cached."""
    pipe = tp.Pipeline("chain", cache=True)

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        counter["a"] = counter.get("a", 0) + 1
        return 1

    @pipe.stage(after=[a])
    async def b(ctx: tp.StageContext) -> int:
        counter["b"] = counter.get("b", 0) + 1
        return int(ctx.inputs["a"]) + 1

    @pipe.stage(after=[b], cache=False)
    async def c(ctx: tp.StageContext) -> int:
        counter["c"] = counter.get("c", 0) + 1
        return int(ctx.inputs["b"]) * 10

    return pipe


async def run(
    pipe: tp.Pipeline, tmp_path: Path, **options: Any
) -> tuple[tp.RunResult, RecordingSink]:
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink], cache_dir=tmp_path / "cache", **options)
    check_run(sink.events, pipe, result)
    return result, sink


async def test_a_second_run_hits(tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    pipe = chain(calls)
    first, _ = await run(pipe, tmp_path)
    assert statuses(first) == {"a": S.SUCCEEDED, "b": S.SUCCEEDED, "c": S.SUCCEEDED}
    second, sink = await run(pipe, tmp_path)
    assert statuses(second) == {"a": S.CACHED, "b": S.CACHED, "c": S.SUCCEEDED}
    assert calls == {"a": 1, "b": 1, "c": 2}
    assert {k: v.value for k, v in second.stages.items()} == {"a": 1, "b": 2, "c": 20}
    assert second.ok
    assert second.counts[S.CACHED] == 2
    done = finished(sink)
    assert done["a"].attempt == 0
    assert done["a"].reason is not None
    assert done["a"].reason.startswith("cache hit: stored")
    assert first.run_id in done["a"].reason
    assert not any(isinstance(e, tp.StageStarted) and e.stage in "ab" for e in sink.events)


async def test_value_based_an_equal_upstream_value_keeps_downstream_hits(tmp_path: Path) -> None:
    runs: list[int] = []
    pipe = tp.Pipeline("v")

    @pipe.stage(cache=False)
    async def source(ctx: tp.StageContext) -> list[int]:
        return [1, 2, 3]  # rebuilt every run, equal every time

    @pipe.stage(after=[source], cache=True)
    async def total(ctx: tp.StageContext) -> int:
        runs.append(1)
        return sum(ctx.inputs["source"])

    await run(pipe, tmp_path)
    second, _ = await run(pipe, tmp_path)
    assert statuses(second) == {"source": S.SUCCEEDED, "total": S.CACHED}
    assert len(runs) == 1


async def test_every_upstream_value_enters_the_key(tmp_path: Path) -> None:
    values = {"first": 1, "second": 2, "third": 3}
    pipe = tp.Pipeline("v")

    async def source(ctx: tp.StageContext) -> int:
        return values[ctx.name]

    for name in values:
        pipe.add_stage(name, source, cache=False)

    @pipe.stage(after=list(values), cache=True)
    async def total(ctx: tp.StageContext) -> int:
        return sum(ctx.inputs.values())

    for changed in ["first", "second", "third"]:
        await run(pipe, tmp_path)
        values[changed] += 10  # each upstream in turn: the next run must see it
        again, _ = await run(pipe, tmp_path)
        assert again.stages["total"].value == sum(values.values())
        assert statuses(again)["total"] is S.SUCCEEDED, changed


async def test_the_entry_is_committed_before_stage_finished(tmp_path: Path) -> None:
    seen: list[int] = []

    class Probe:
        async def handle(self, event: tp.Event, /) -> None:
            if isinstance(event, tp.StageFinished) and event.stage == "a":
                seen.append(await trio.to_thread.run_sync(self.entries))

        def entries(self) -> int:
            with tp.SQLiteStore(tmp_path / "cache") as store:
                return store.stats().entries

        async def aclose(self) -> None:
            pass

    pipe = tp.Pipeline("p", cache=True)

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    await tp.run(pipe, sinks=[Probe()], cache_dir=tmp_path / "cache")
    assert seen == [1]


async def test_lookups_take_no_slot(tmp_path: Path) -> None:
    """With max_parallel=1 held by a running stage, a cached stage still ends CACHED."""
    pipe = tp.Pipeline("p")
    hit = trio.Event()
    second_run = [False]

    @pipe.stage
    async def slow(ctx: tp.StageContext) -> None:
        if second_run[0]:
            await hit.wait()  # needs `quick` to hit while this holds the only slot

    @pipe.stage(cache=True)
    async def quick(ctx: tp.StageContext) -> int:
        return 5

    class SetOnHit:
        async def handle(self, event: tp.Event, /) -> None:
            if isinstance(event, tp.StageFinished) and event.status is S.CACHED:
                hit.set()

        async def aclose(self) -> None:
            pass

    await tp.run(pipe, cache_dir=tmp_path / "c", max_parallel=1)
    second_run[0] = True
    with trio.fail_after(10):
        result = await tp.run(pipe, sinks=[SetOnHit()], cache_dir=tmp_path / "c", max_parallel=1)
    assert statuses(result) == {"slow": S.SUCCEEDED, "quick": S.CACHED}


async def test_unpicklable_input_runs_uncached_and_says_why(tmp_path: Path) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def make(ctx: tp.StageContext) -> Any:
        return lambda: 1

    @pipe.stage(after=[make], cache=True)
    async def use(ctx: tp.StageContext) -> int:
        return 2

    for _ in range(2):
        result, sink = await run(pipe, tmp_path)
        assert statuses(result) == {"make": S.SUCCEEDED, "use": S.SUCCEEDED}
        logs = [e.message for e in sink.events if isinstance(e, tp.StageLog)]
        assert any("not cached: its input from 'make' cannot be pickled" in m for m in logs)


async def test_unpicklable_value_is_not_stored_and_says_why(tmp_path: Path) -> None:
    pipe = tp.Pipeline("p", cache=True)

    @pipe.stage
    async def make(ctx: tp.StageContext) -> Any:
        return lambda: 1

    for _ in range(2):
        result, sink = await run(pipe, tmp_path)
        assert statuses(result) == {"make": S.SUCCEEDED}
        logs = [e.message for e in sink.events if isinstance(e, tp.StageLog)]
        assert any("its value cannot be pickled" in m for m in logs), logs


async def test_force(tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    pipe = chain(calls)
    await run(pipe, tmp_path)
    result, _ = await run(pipe, tmp_path, force=True)
    assert statuses(result)["a"] is S.SUCCEEDED
    assert statuses(result)["b"] is S.SUCCEEDED
    result, _ = await run(pipe, tmp_path, force=["b"])  # b and its downstream
    assert statuses(result) == {"a": S.CACHED, "b": S.SUCCEEDED, "c": S.SUCCEEDED}
    with pytest.raises(tp.UnknownStageError, match="'bb'"):
        await run(pipe, tmp_path, force=["bb"])


async def test_force_reruns_the_downstream_even_when_its_key_is_unchanged(tmp_path: Path) -> None:
    pipe = tp.Pipeline("f", cache=True)

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(after=[a])
    async def b(ctx: tp.StageContext) -> int:
        return 2  # the same value every time: d's key does not change

    @pipe.stage(after=[b])
    async def d(ctx: tp.StageContext) -> int:
        return 3

    await run(pipe, tmp_path)
    result, _ = await run(pipe, tmp_path, force=["b"])
    assert statuses(result) == {"a": S.CACHED, "b": S.SUCCEEDED, "d": S.SUCCEEDED}


async def test_no_cache_run_reads_and_writes_nothing_but_is_recorded(tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    pipe = chain(calls)
    result, _ = await run(pipe, tmp_path, cache=False)
    assert S.CACHED not in set(statuses(result).values())
    with tp.SQLiteStore(tmp_path / "cache") as store:
        assert store.stats().entries == 0
        assert [r.run_id for r in store.runs()] == [result.run_id]


async def test_stage_cache_false_overrides_the_pipeline(tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    pipe = chain(calls)
    await run(pipe, tmp_path)
    result, _ = await run(pipe, tmp_path)
    assert statuses(result)["c"] is S.SUCCEEDED  # cache=False on c


async def test_a_corrupt_store_fails_before_anything_runs(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "cache.sqlite").write_bytes(b"not a database" * 100)
    calls: dict[str, int] = {}
    sink = RecordingSink()
    with pytest.raises(tp.CacheStoreError, match="cache clear"):
        await tp.run(chain(calls), sinks=[sink], cache_dir=folder)
    assert calls == {}
    assert sink.events == []


async def test_history_is_recorded(tmp_path: Path) -> None:
    pipe = tp.Pipeline("h", cache=True)

    @pipe.stage
    async def good(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(cache=False)
    async def bad(ctx: tp.StageContext) -> None:
        raise ValueError("boom")

    @pipe.stage(after=[bad])
    async def after_bad(ctx: tp.StageContext) -> None:
        pass

    result, _ = await run(pipe, tmp_path, keep_going=True)
    with tp.SQLiteStore(tmp_path / "cache") as store:
        record = store.run(result.run_id)
    assert record is not None
    assert record.pipeline == "h"
    assert not record.ok
    assert record.counts["failed"] == 1
    by_name = {s.name: s for s in record.stages}
    assert by_name["bad"].error == "ValueError: boom"
    assert by_name["after_bad"].reason == "upstream 'bad' failed"
    assert by_name["good"].status == "succeeded"
    assert by_name["good"].reason == "cache miss"  # the cache's decision, recorded
    assert by_name["bad"].reason is None  # not cached: no decision
    again, _ = await run(pipe, tmp_path, keep_going=True)
    with tp.SQLiteStore(tmp_path / "cache") as store:
        second = store.run(again.run_id)
    assert second is not None
    hit = next(s for s in second.stages if s.name == "good")
    assert hit.status == "cached"
    assert hit.reason is not None
    assert result.run_id in hit.reason  # "stored by run ..."


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


async def test_history_records_an_error_whose_str_raises(tmp_path: Path) -> None:
    # Regression: str() of the error raised while building the record, so the run
    # was missing from the history.
    pipe = tp.Pipeline("h", cache=True)

    @pipe.stage(cache=False)
    async def bad(ctx: tp.StageContext) -> None:
        raise _Unprintable

    result, _ = await run(pipe, tmp_path, keep_going=True)
    with tp.SQLiteStore(tmp_path / "cache") as store:
        record = store.run(result.run_id)
    assert record is not None
    assert record.stages[0].error == "_Unprintable: <exception str() failed>"


class MemoryStore:
    """Another `CacheStore`: proves `store=` takes any implementation."""

    def __init__(self) -> None:
        self.entries: dict[str, tp.CacheEntry] = {}
        self.history: list[tp.RunRecord] = []

    def get(self, key: str) -> tp.CacheEntry | None:
        return self.entries.get(key)

    def put(self, entry: tp.CacheEntry) -> None:
        self.entries[entry.key] = entry

    def latest(self, pipeline: str, stage: str) -> tp.CacheEntry | None:
        found = [e for e in self.entries.values() if (e.pipeline, e.stage) == (pipeline, stage)]
        return max(found, key=lambda e: e.created, default=None)

    def delete(self, key: str) -> None:
        self.entries.pop(key, None)

    def snapshot(self, pipeline: str, max_bytes: int) -> dict[str, tp.CacheEntry | None]:
        return {k: None for k, e in self.entries.items() if e.pipeline == pipeline}

    def file_memo(self, path: str) -> Any:
        return None

    def put_file_memo(self, path: str, memo: Any) -> None:
        pass

    def record_run(self, record: tp.RunRecord) -> None:
        self.history.append(record)

    def runs(self, *, limit: int = 20, file: str | None = None) -> list[tp.RunRecord]:
        return self.history[-limit:]

    def run(self, run_id: str) -> tp.RunRecord | None:
        return next((r for r in self.history if r.run_id == run_id), None)

    def stats(self) -> Any:
        raise NotImplementedError

    def prune(self, older_than: float) -> int:
        return 0

    @contextlib.contextmanager
    def batch(self) -> Generator[None]:
        yield

    def close(self) -> None:
        raise AssertionError("the run must not close a store it was given")


async def test_a_store_of_our_own(tmp_path: Path) -> None:
    store = MemoryStore()
    assert isinstance(store, tp.CacheStore)
    calls: dict[str, int] = {}
    pipe = chain(calls)
    await tp.run(pipe, store=store)
    result = await tp.run(pipe, store=store)
    assert statuses(result)["b"] is S.CACHED
    assert len(store.history) == 2
    assert not (tmp_path / ".trio-pipeline").exists()


# -- the history record: columns straight from the run, the same records as before --


def reference_stages(cache: RunCache, result: tp.RunResult) -> tuple[tp.StageRecord, ...]:
    """A run's history stages as `RunCache.run_record` built them before columns."""
    stages: list[tp.StageRecord] = []
    for i, (name, out) in enumerate(result.stages.items()):
        reason = cache.reason(i, name, out.attempts)
        if out.blocked_by is not None:
            reason = f"upstream {out.blocked_by!r} failed"
        error = None if out.error is None else describe_error(out.error)
        stages.append(
            tp.StageRecord(name, out.status.value, out.attempts, out.duration, reason, error)
        )
    return tuple(stages)


@pytest.fixture
def finishes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[RunCache, tp.RunResult]]:
    """Each run's `RunCache` and `RunResult` as it records the run."""
    seen: list[tuple[RunCache, tp.RunResult]] = []
    original = RunCache._finish_sync

    def spy(cache: RunCache, result: tp.RunResult | None, *args: Any) -> None:
        assert result is not None
        seen.append((cache, result))
        original(cache, result, *args)

    monkeypatch.setattr(RunCache, "_finish_sync", spy)
    return seen


def mixed() -> tp.Pipeline:
    """Every way a kept-going stage can end: succeeded (cached next time), failed after
    a retry, blocked, skipped, an error whose str() raises, a teardown stage."""
    pipe = tp.Pipeline("mixed", cache=True)

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(cache=False, retries=1)
    async def flaky(ctx: tp.StageContext) -> None:
        raise ValueError('boom "q"\n\u00e9')

    @pipe.stage(after=[flaky])
    async def blocked(ctx: tp.StageContext) -> None:
        pass

    @pipe.stage(after=[a], trigger=tp.Trigger.ONE_FAILED)
    async def skipped(ctx: tp.StageContext) -> None:
        pass

    @pipe.stage(cache=False)
    async def unprintable(ctx: tp.StageContext) -> None:
        raise _Unprintable

    async def teardown(ctx: tp.StageContext) -> None:
        pass

    pipe.add_stage('t\u00fc "x"\\', teardown, after=[blocked], trigger=tp.Trigger.ALWAYS)
    return pipe


async def test_the_history_records_every_stage_as_the_run_ended(
    tmp_path: Path,
    finishes: list[tuple[RunCache, tp.RunResult]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from trio_pipeline._cache._commands import format_run
    from trio_pipeline._cli import main

    pipe = mixed()
    await run(pipe, tmp_path, keep_going=True)
    await run(pipe, tmp_path, keep_going=True)
    assert [statuses(result)["a"] for _, result in finishes] == [S.SUCCEEDED, S.CACHED]
    assert set(statuses(finishes[1][1]).values()) == {
        S.CACHED,
        S.FAILED,
        S.BLOCKED,
        S.SKIPPED,
        S.SUCCEEDED,
    }
    for cache, result in finishes:
        expected = reference_stages(cache, result)
        with tp.SQLiteStore(tmp_path / "cache") as store:
            recorded = store.run(result.run_id)
        assert recorded is not None
        assert recorded.stages == expected
        assert [type(s.status) for s in recorded.stages] == [str] * len(expected)
        # `show` prints what it printed from the records built the former way.
        assert main(["show", result.run_id, "--cache-dir", str(tmp_path / "cache")]) == 0
        shown = capsys.readouterr().out
        assert shown == format_run(dataclasses.replace(recorded, stages=expected))
        assert "flaky: failed after 2 attempts: ValueError: boom" in shown
        assert "unprintable: failed: _Unprintable: <exception str() failed>" in shown
        assert "blocked: blocked: upstream 'flaky' failed" in shown
    assert "cached: a" in shown
    assert main(["history", "--cache-dir", str(tmp_path / "cache")]) == 0
    listed = capsys.readouterr().out
    assert all(result.run_id in listed for _, result in finishes)


async def test_a_cancelled_stage_is_recorded_as_the_run_ended(
    tmp_path: Path, finishes: list[tuple[RunCache, tp.RunResult]]
) -> None:
    pipe = tp.Pipeline("stop", cache=True)

    @pipe.stage
    async def slow(ctx: tp.StageContext) -> None:
        await trio.sleep_forever()

    @pipe.stage(cache=False)
    async def bad(ctx: tp.StageContext) -> None:
        raise ValueError("boom")

    @pipe.stage(after=[slow])
    async def never(ctx: tp.StageContext) -> None:
        pass

    await run(pipe, tmp_path)  # fail-fast: `slow` is cancelled
    [(cache, result)] = finishes
    assert statuses(result)["slow"] is S.CANCELLED
    with tp.SQLiteStore(tmp_path / "cache") as store:
        recorded = store.run(result.run_id)
    assert recorded is not None
    assert recorded.stages == reference_stages(cache, result)


async def test_another_store_and_a_result_made_by_hand_get_the_same_records(
    finishes: list[tuple[RunCache, tp.RunResult]],
) -> None:
    store = MemoryStore()
    await tp.run(mixed(), store=store, keep_going=True)
    [(cache, result)] = finishes
    expected = reference_stages(cache, result)
    assert store.history[-1].stages == expected  # through `record_run(RunRecord)`
    assert [type(s.status) for s in store.history[-1].stages] == [str] * len(expected)
    # A `RunResult` whose stages are a plain mapping (not the scheduler's view).
    by_hand = dataclasses.replace(result, stages=dict(result.stages.items()))
    assert cache.stage_columns(by_hand).records() == expected
    assert cache.run_record(by_hand, "mixed", None, {}).stages == expected


async def test_explain_says_what_changed(tmp_path: Path) -> None:
    version = ["1"]

    def build() -> tp.Pipeline:
        pipe = tp.Pipeline("e", cache=True)

        @pipe.stage(version=version[0])
        async def a(ctx: tp.StageContext) -> int:
            return 1

        return pipe

    await run(build(), tmp_path)
    version[0] = "2"
    _, sink = await run(build(), tmp_path, explain=True)
    assert finished(sink)["a"].reason == "cache miss: version changed: '1' -> '2'"


async def test_a_stage_answered_from_memory_stores_its_key_parts(tmp_path: Path) -> None:
    # `b` is looked up from memory (its upstream's hash and the parameters' are known):
    # its entry's parts are made at the commit, and must be the real ones.
    version = ["1"]

    def build() -> tp.Pipeline:
        pipe = tp.Pipeline("m", cache=True)

        @pipe.stage
        async def a(ctx: tp.StageContext) -> int:
            return 1

        @pipe.stage(after=[a], version=version[0])
        async def b(ctx: tp.StageContext) -> int:
            return 2

        return pipe

    await run(build(), tmp_path)
    with tp.SQLiteStore(tmp_path / "cache") as store:
        a_entry, b_entry = store.latest("m", "a"), store.latest("m", "b")
    assert a_entry is not None
    assert b_entry is not None
    assert b_entry.parts["inputs"] == {"a": a_entry.value_digest}
    version[0] = "2"
    _, sink = await run(build(), tmp_path, explain=True)
    assert finished(sink)["b"].reason == "cache miss: version changed: '1' -> '2'"


async def test_an_expired_entry_found_in_memory_is_stored_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    pipe = tp.Pipeline("x", cache=True)

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(after=[a], cache=tp.CachePolicy(expire=60.0))
    async def b(ctx: tp.StageContext) -> int:
        return 2

    await run(pipe, tmp_path)
    now = time.time() + 3600.0
    monkeypatch.setattr(time, "time", lambda: now)
    second, _ = await run(pipe, tmp_path)
    assert statuses(second)["b"] is S.SUCCEEDED  # expired: it ran, and was stored again
    third, _ = await run(pipe, tmp_path)
    assert statuses(third)["b"] is S.CACHED


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def read(path: str) -> str:
    return Path(path).read_text()


def remove(path: str) -> None:
    Path(path).unlink()


async def test_deps_and_outs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write("in.txt", "one")
    runs: list[str] = []
    pipe = tp.Pipeline("files")

    @pipe.stage(deps=["in.txt"], outs=["out.txt"], cache=tp.CachePolicy(restore_outs=True))
    async def copy(ctx: tp.StageContext) -> str:
        text = read("in.txt")
        write("out.txt", text.upper())
        runs.append(text)
        return text

    await run(pipe, tmp_path)
    result, _ = await run(pipe, tmp_path)
    assert statuses(result) == {"copy": S.CACHED}
    remove("out.txt")
    result, _ = await run(pipe, tmp_path)
    assert statuses(result) == {"copy": S.CACHED}  # restored, not re-run
    assert read("out.txt") == "ONE"
    write("in.txt", "two")
    result, _ = await run(pipe, tmp_path)
    assert statuses(result) == {"copy": S.SUCCEEDED}
    assert runs == ["one", "two"]


async def test_a_teardown_stage_is_never_cached(tmp_path: Path) -> None:
    pipe = tp.Pipeline("t", cache=True)

    @pipe.stage
    async def work(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(after=[work], trigger=tp.Trigger.ALWAYS)
    async def cleanup(ctx: tp.StageContext) -> None:
        pass

    await run(pipe, tmp_path)
    result, _ = await run(pipe, tmp_path)
    assert statuses(result) == {"work": S.CACHED, "cleanup": S.SUCCEEDED}


async def test_a_retried_stage_is_stored_once_it_succeeds(tmp_path: Path) -> None:
    attempts: list[int] = []
    pipe = tp.Pipeline("r", cache=True)

    @pipe.stage(retries=1)
    async def flaky(ctx: tp.StageContext) -> int:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("first time")
        return 7

    await run(pipe, tmp_path)
    result, _ = await run(pipe, tmp_path)
    assert statuses(result) == {"flaky": S.CACHED}
    assert result.stages["flaky"].value == 7
    assert attempts == [1, 2]


# -- property: the second run's CACHED set is exactly the stages whose key did not change --

import textwrap  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from trio_pipeline._cli import load_file  # noqa: E402


def _combine(
    name: str, k: int, inputs: dict[str, Any], dep: str | None, coarse: bool, used: Any
) -> Any:
    text = repr((name, k, sorted(inputs.items()), dep, used))
    return len(text) % 3 if coarse else text


_MODULE = """
import trio_pipeline as tp

def combine(name, k, inputs, dep, coarse, used):
    text = repr((name, k, sorted(inputs.items()), dep, used))
    return len(text) % 3 if coarse else text

pipe = tp.Pipeline("prop")
"""

_STAGE = """
K{i} = {k}

async def s{i}(ctx):
    dep = None
    if {has_dep}:
        with open({dep_path!r}) as f:
            dep = f.read()
    used = tuple(ctx.params.get(name) for name in {uses!r})
    return combine("s{i}", K{i}, dict(ctx.inputs), dep, {coarse}, used)

pipe.add_stage("s{i}", s{i}, after={after!r}, cache={cache}, deps={deps!r})
"""


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    # Each change is drawn rarely (a quarter of the time): with every stage changed for
    # some reason, nothing hits, and a key that missed one component would go unseen.
    changes = st.sampled_from([False, False, False, True])
    n = draw(st.integers(2, 7))
    stages = []
    for i in range(n):
        ups = sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else []
        k1, dep1 = draw(st.integers(0, 2)), draw(st.sampled_from(["x", "y"]))
        stages.append(
            {
                "ups": ups,
                "cached": not draw(changes) or i == n - 1,
                "coarse": draw(st.booleans()),
                "has_dep": draw(st.booleans()),
                "k1": k1,
                "k2": (k1 + 1) % 3 if draw(changes) else k1,  # a code change
                "dep1": dep1,
                "dep2": draw(st.sampled_from(["x", "y"])) if draw(changes) else dep1,
                # The parameters the stage reads, and those its key covers: all of them
                # (None: ``cache=True``) or a CachePolicy(params=...) naming at least
                # those it reads (naming fewer is the user's error: a stale value).
                "uses": sorted(draw(st.sets(st.sampled_from(_PARAM_NAMES)))),
                "extra": draw(st.none() | st.sets(st.sampled_from(_PARAM_NAMES))),
            }
        )
    force = draw(st.sets(st.integers(0, n - 1), max_size=2)) if draw(changes) else set()
    # A parameter's value in each run; None: not passed at all.
    value = st.none() | st.integers(0, 1)
    params1 = {name: draw(value) for name in _PARAM_NAMES}
    params2 = {name: draw(value) if draw(changes) else v for name, v in params1.items()}
    return {"stages": stages, "force": sorted(force), "params1": params1, "params2": params2}


_PARAM_NAMES = ("a", "b")


def _key_params(s: dict[str, Any]) -> list[str] | None:
    return None if s["extra"] is None else sorted(set(s["uses"]) | s["extra"])


def _run_params(scenario: dict[str, Any], version: int) -> dict[str, int]:
    return {k: v for k, v in scenario[f"params{version}"].items() if v is not None}


def _write_version(folder: Path, scenario: dict[str, Any], version: int, name: str) -> Path:
    parts = [_MODULE]
    for i, s in enumerate(scenario["stages"]):
        dep_path = str(folder / f"dep{i}.txt")
        (folder / f"dep{i}.txt").write_text(s[f"dep{version}"])
        parts.append(
            _STAGE.format(
                i=i,
                k=s[f"k{version}"],
                has_dep=s["has_dep"],
                dep_path=dep_path,
                coarse=s["coarse"],
                after=[f"s{u}" for u in s["ups"]],
                uses=s["uses"],
                cache=(
                    "False"
                    if not s["cached"]
                    else "True"
                    if _key_params(s) is None
                    else f"tp.CachePolicy(params={_key_params(s)!r})"
                ),
                deps=[dep_path] if s["has_dep"] else [],
            )
        )
    path = folder / name
    path.write_text(textwrap.dedent("\n".join(parts)))
    return path


def _model_values(scenario: dict[str, Any], version: int) -> list[Any]:
    values: list[Any] = []
    for i, s in enumerate(scenario["stages"]):
        inputs = {f"s{u}": values[u] for u in s["ups"]}
        dep = s[f"dep{version}"] if s["has_dep"] else None
        params = _run_params(scenario, version)
        used = tuple(params.get(name) for name in s["uses"])
        values.append(_combine(f"s{i}", s[f"k{version}"], inputs, dep, s["coarse"], used))
    return values


def _params_changed(scenario: dict[str, Any], s: dict[str, Any]) -> bool:
    one, two = _run_params(scenario, 1), _run_params(scenario, 2)
    names = _key_params(s)
    if names is None:
        return one != two
    return any((n in one, one.get(n)) != (n in two, two.get(n)) for n in names)


def _expected_cached(scenario: dict[str, Any]) -> set[str]:
    stages = scenario["stages"]
    forced: set[int] = set()
    stack = list(scenario["force"])
    while stack:
        i = stack.pop()
        if i not in forced:
            forced.add(i)
            stack.extend(j for j, s in enumerate(stages) if i in s["ups"])
    one, two = _model_values(scenario, 1), _model_values(scenario, 2)
    return {
        f"s{i}"
        for i, s in enumerate(stages)
        if s["cached"]
        and i not in forced
        and s["k1"] == s["k2"]
        and (not s["has_dep"] or s["dep1"] == s["dep2"])
        and all(one[u] == two[u] for u in s["ups"])
        and not _params_changed(scenario, s)
    }


@settings(max_examples=25)
@given(scenarios())
def test_cached_set_is_exactly_the_unchanged_keys(tmp_path_factory: Any, scenario: Any) -> None:
    folder = tmp_path_factory.mktemp("prop")
    cache_dir = folder / "cache"

    async def main() -> None:
        first = load_file(str(_write_version(folder, scenario, 1, "pipe.py")))
        await tp.run(first.pipe, cache_dir=cache_dir, params=_run_params(scenario, 1))
        second = load_file(str(_write_version(folder, scenario, 2, "pipe.py")))
        force = [f"s{i}" for i in scenario["force"]]
        sink = RecordingSink()
        params = _run_params(scenario, 2)
        result = await tp.run(
            second.pipe, sinks=[sink], cache_dir=cache_dir, force=force, params=params
        )
        check_run(sink.events, second.pipe, result)
        cached = {name for name, out in result.stages.items() if out.status is S.CACHED}
        assert cached == _expected_cached(scenario)
        # The values are those of a run without a cache.
        plain = await tp.run(second.pipe, cache=False, cache_dir=folder / "none", params=params)
        assert {k: v.value for k, v in result.stages.items()} == {
            k: v.value for k, v in plain.stages.items()
        }
        assert [v.value for v in plain.stages.values()] == _model_values(scenario, 2)

    trio.run(main)


async def test_a_commit_after_the_worker_closed_is_reported_not_stored(tmp_path: Path) -> None:
    from trio_pipeline._cache._run import open_run_cache

    plan = chain({}).compile()
    run_cache = await open_run_cache(
        plan, run_id="r1", pipeline_cache=True, cache_dir=tmp_path / "cache"
    )
    assert run_cache is not None
    looked_up = trio.Event()
    messages: list[str | None] = []
    done = trio.Event()

    def record(i: int, value: object, message: str | None, now: float) -> None:
        assert (i, value) == (0, 1)
        messages.append(message)
        done.set()

    run_cache.committed = record
    async with trio.open_nursery() as nursery:
        await nursery.start(run_cache.serve)
        # The first lookup of a run goes to the worker (the parameters are not hashed yet).
        assert run_cache.lookup(0, lambda i: {}, lambda i, result: looked_up.set()) is None
        await looked_up.wait()
        assert run_cache.wants_commit(0)
        run_cache.close()
        run_cache.commit_soon(0, 1)
        await done.wait()
    await run_cache.finish(None, pipeline=plan.name)
    assert len(messages) == 1
    assert messages[0] is not None
    assert "not cached: the store failed" in messages[0]


async def test_a_cold_run_commits_without_lookups(
    tmp_path: Path, finishes: list[tuple[RunCache, tp.RunResult]]
) -> None:
    """The store holds nothing of the pipeline: no lookup is made but where one must
    be (deps to hash first, a forced stage, an uncached upstream's value to hash)."""
    dep = tmp_path / "dep.txt"
    dep.write_text("x")
    pipe = tp.Pipeline("cold", cache=True)

    @pipe.stage
    async def a(ctx: tp.StageContext) -> int:
        return 1

    @pipe.stage(after=[a])
    async def b(ctx: tp.StageContext) -> int:
        return 2

    @pipe.stage(cache=False)
    async def plain(ctx: tp.StageContext) -> int:
        return 3

    @pipe.stage(after=[plain])
    async def c(ctx: tp.StageContext) -> int:
        return 4

    @pipe.stage(deps=[str(dep)])
    async def d(ctx: tp.StageContext) -> int:
        return 5

    @pipe.stage
    async def e(ctx: tp.StageContext) -> int:
        return 6

    first, _ = await run(pipe, tmp_path, force=["e"])
    cold_cache, _ = finishes[0]
    looked_up = {pipe.compile().stages[i].name for i in cold_cache.lookups}
    assert looked_up == {"c", "d", "e"}
    assert first.ok
    second, _ = await run(pipe, tmp_path)
    assert statuses(second) == {
        "a": S.CACHED,
        "b": S.CACHED,
        "plain": S.SUCCEEDED,
        "c": S.CACHED,
        "d": S.CACHED,
        "e": S.CACHED,
    }
    with tp.SQLiteStore(tmp_path / "cache") as store:
        recorded = store.run(first.run_id)
    assert recorded is not None
    reasons = {s.name: s.reason for s in recorded.stages}
    assert reasons == {
        "a": "cache miss",
        "b": "cache miss",
        "plain": None,
        "c": "cache miss",
        "d": "cache miss",
        "e": "forced",
    }


async def test_a_cold_run_says_why_a_stage_is_not_stored(tmp_path: Path) -> None:
    pipe = tp.Pipeline("cold", cache=True)

    @pipe.stage(cache=tp.CachePolicy(params=[]))
    async def make(ctx: tp.StageContext) -> Any:
        return lambda: 1

    @pipe.stage(after=[make], cache=tp.CachePolicy(params=[]))  # no parameter in its key
    async def use(ctx: tp.StageContext) -> int:
        return 2

    @pipe.stage(cache=tp.CachePolicy(params=["bad"]))
    async def tuned(ctx: tp.StageContext) -> int:
        return 3

    result, sink = await run(pipe, tmp_path, params={"bad": lambda: 0})
    assert result.ok
    logs = {(e.stage, e.message) for e in sink.events if isinstance(e, tp.StageLog)}
    assert any(
        s == "use" and m.startswith("not cached: its input from 'make' cannot be pickled")
        for s, m in logs
    ), logs
    assert any(
        s == "tuned" and m.startswith("not cached: a parameter cannot be pickled") for s, m in logs
    ), logs
    second, _ = await run(pipe, tmp_path, params={"bad": lambda: 0})
    assert statuses(second) == {"make": S.SUCCEEDED, "use": S.SUCCEEDED, "tuned": S.SUCCEEDED}
