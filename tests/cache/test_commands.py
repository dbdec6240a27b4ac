"""`trio-pipeline cache stats|clear|prune`, `history [FILE]`, `show RUN_ID`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    monkeypatch.delenv("TRIO_PIPELINE_CACHE_DIR")  # the default: .trio-pipeline/ here
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
    monkeypatch.delenv("TRIO_PIPELINE_CACHE_DIR")
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


# -- `run` with the cache, for real in subprocesses ----------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent

PIPELINE = textwrap.dedent(
    """
    import os, random, signal
    import trio
    import trio_pipeline as tp

    pipe = tp.Pipeline("layers", cache=True)
    MARKS = os.environ["MARKS"]

    def stage(i, ups):
        async def fn(ctx):
            # KILL_AT: a stage that kills the process as it starts (read here: a module
            # constant would enter the code fingerprint, and every stage would miss).
            if ctx.name == os.environ.get("KILL_AT"):
                os.kill(os.getpid(), signal.SIGKILL)
            await trio.sleep(random.random() * 0.02)
            value = (i, sorted(ctx.inputs), os.urandom(0) + b"x" * 50_000)
            with open(MARKS, "a") as f:  # the function has returned its value
                f.write(f"s{i}\\n")
            return value
        pipe.add_stage(f"s{i}", fn, after=[f"s{u}" for u in ups])

    for i in range(24):
        stage(i, [j for j in range(max(0, i - 4), i) if (i + j) % 3 == 0])
    """
)


def run_cli(
    folder: Path, *args: str, popen: bool = False, **env: str
) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "MARKS": str(folder / "marks"), **env}
    argv = [sys.executable, "-m", "trio_pipeline", *args]
    if popen:
        return subprocess.Popen(
            argv,
            cwd=folder,
            env=full_env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    return subprocess.run(
        argv, cwd=folder, env=full_env, text=True, capture_output=True, timeout=60, check=False
    )


def jsonl_rows(path: Path) -> list[dict[str, object]]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line the kill cut short
            break
    return rows


def finished_as(rows: list[dict[str, object]], status: str) -> set[str]:
    return {str(r["stage"]) for r in rows if r["type"] == "StageFinished" and r["status"] == status}


def test_sigkill_then_rerun_hits_what_had_finished(tmp_path: Path) -> None:
    """The issue's crash test at random moments, with stages running concurrently: the next
    run hits every stage whose StageFinished(SUCCEEDED) reached the log, and only stages
    whose function had returned; the store is never torn.

    Why not "exactly the stages whose StageFinished was emitted" here: the set emitted
    before the kill is not observable from outside. The log lags it (an event reaches the
    JSON lines file only after the dispatcher hands it to the sink), and the entry is
    committed before StageFinished is emitted, so a kill between a commit and its
    StageFinished leaves an entry for a stage whose StageFinished was never emitted. Both
    gaps hold only stages whose function had returned (written to MARKS), so
    ``logged <= emitted <= hits <= returned``, and the difference ``hits - logged`` is
    bounded by the stages in flight at the kill. The exact form is
    `test_a_kill_with_one_slot_hits_exactly_the_stages_whose_stage_finished_was_emitted`.
    """
    (tmp_path / "pipe.py").write_text(PIPELINE)
    rnd = random.Random(7)
    kills = int(os.environ.get("TRIO_PIPELINE_KILLS", "3"))
    for i in range(kills):
        cache = tmp_path / f"cache{i}"
        marks = tmp_path / "marks"
        marks.write_text("")
        proc = run_cli(
            tmp_path,
            "run",
            "pipe.py",
            "--plain",
            "--jsonl",
            f"killed{i}.jsonl",
            "--cache-dir",
            str(cache),
            popen=True,
        )
        assert isinstance(proc, subprocess.Popen)
        assert proc.stdout is not None
        proc.stdout.readline()  # a first stage line: the run is under way
        import time

        time.sleep(rnd.uniform(0.0, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        succeeded = finished_as(jsonl_rows(tmp_path / f"killed{i}.jsonl"), "succeeded")
        returned = set(marks.read_text().split())
        again = run_cli(
            tmp_path,
            "run",
            "pipe.py",
            "--plain",
            "--jsonl",
            f"again{i}.jsonl",
            "--cache-dir",
            str(cache),
        )
        assert isinstance(again, subprocess.CompletedProcess)
        assert again.returncode == 0, again.stderr
        rows = jsonl_rows(tmp_path / f"again{i}.jsonl")
        hits = finished_as(rows, "cached")
        assert succeeded <= hits <= returned, (succeeded, hits, returned)
        assert hits | finished_as(rows, "succeeded") == {f"s{k}" for k in range(24)}


def test_a_kill_with_one_slot_hits_exactly_the_stages_whose_stage_finished_was_emitted(
    tmp_path: Path,
) -> None:
    """The crash property, exact: a stage picked at random kills the process as it starts,
    under ``--jobs 1``.

    With one slot, a stage starts only once the previous stage's slot is released, and the
    slot is released by the same fact that emits its StageFinished, after its entry is
    committed; while the killing stage runs, nothing else is in flight. So at the kill the
    stages whose StageFinished(SUCCEEDED) was emitted are exactly those whose function
    returned (MARKS): the next run must hit exactly those, with their values intact.
    """
    (tmp_path / "pipe.py").write_text(PIPELINE)
    rnd = random.Random(11)
    kills = int(os.environ.get("TRIO_PIPELINE_KILLS", "3"))
    every = {f"s{k}" for k in range(24)}
    for i in range(kills):
        cache = str(tmp_path / f"cache{i}")
        marks = tmp_path / "marks"
        marks.write_text("")
        victim = f"s{rnd.randrange(24)}"
        argv = ["run", "pipe.py", "--plain", "--jobs", "1", "--cache-dir", cache]
        killed = run_cli(tmp_path, *argv, "--jsonl", f"killed{i}.jsonl", KILL_AT=victim)
        assert isinstance(killed, subprocess.CompletedProcess)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        returned = set(marks.read_text().split())
        assert victim not in returned
        assert finished_as(jsonl_rows(tmp_path / f"killed{i}.jsonl"), "succeeded") <= returned
        again = run_cli(tmp_path, *argv, "--jsonl", f"again{i}.jsonl")
        assert isinstance(again, subprocess.CompletedProcess)
        assert again.returncode == 0, again.stderr
        rows = jsonl_rows(tmp_path / f"again{i}.jsonl")
        assert finished_as(rows, "cached") == returned, (victim, returned)
        assert finished_as(rows, "succeeded") == every - returned


def test_two_processes_run_the_same_pipeline_on_one_store(tmp_path: Path) -> None:
    (tmp_path / "pipe.py").write_text(PIPELINE)
    cache = str(tmp_path / "cache")
    procs = [
        run_cli(tmp_path, "run", "pipe.py", "--plain", "--cache-dir", cache, popen=True)
        for _ in range(2)
    ]
    for proc in procs:
        assert isinstance(proc, subprocess.Popen)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "locked" not in err
        assert "Summary:" in out
    third = run_cli(tmp_path, "run", "pipe.py", "--plain", "--cache-dir", cache)
    assert isinstance(third, subprocess.CompletedProcess)
    assert "Summary: 24 cached" in third.stdout
    hist = run_cli(tmp_path, "history", "pipe.py", "--cache-dir", cache)
    assert isinstance(hist, subprocess.CompletedProcess)
    assert len(hist.stdout.splitlines()) == 4  # header + 3 runs


SMALL = textwrap.dedent(
    """
    import trio_pipeline as tp
    import helper

    pipe = tp.Pipeline("small")

    @pipe.stage(deps=["data.txt"])
    async def load(ctx):
        with open("data.txt") as f:
            return f.read()

    @pipe.stage(after=[load], cache=True)
    async def shout(ctx):
        return helper.loud(ctx.inputs["load"])

    @pipe.stage(after=[load], cache=True)
    async def size(ctx):
        return len(ctx.inputs["load"])
    """
)


def small_project(folder: Path) -> None:
    (folder / "pipe.py").write_text(SMALL)
    (folder / "helper.py").write_text("def loud(text):\n    return text.upper()\n")
    (folder / "data.txt").write_text("hello")


def test_run_force_no_cache_explain_and_dry_run(tmp_path: Path) -> None:
    small_project(tmp_path)
    cache = ["--cache-dir", str(tmp_path / "c")]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = run_cli(tmp_path, *args, *cache)
        assert isinstance(done, subprocess.CompletedProcess)
        return done

    first = cli("run", "pipe.py", "--plain")
    assert first.returncode == 0, first.stderr
    assert "Summary: 3 succeeded" in first.stdout
    second = cli("run", "pipe.py", "--plain")
    assert "load: cached" in second.stdout
    assert "Summary: 3 cached" in second.stdout
    forced = cli("run", "pipe.py", "--plain", "--force", "shout")
    assert "Summary: 1 succeeded, 2 cached" in forced.stdout
    assert "shout: succeeded" in forced.stdout
    everything = cli("run", "pipe.py", "--plain", "--force")
    assert "Summary: 3 succeeded" in everything.stdout
    plain = cli("run", "pipe.py", "--no-cache", "--plain")
    assert "Summary: 3 succeeded" in plain.stdout
    (tmp_path / "helper.py").write_text("def loud(text):\n    return text.upper() + '!'\n")
    dry = cli("run", "pipe.py", "--dry-run", "--explain")
    assert dry.returncode == 0, dry.stderr
    lines = {line.split()[0]: line for line in dry.stdout.splitlines()[1:]}
    assert lines["load"].split()[1] == "cached"
    assert "code changed: function 'helper.py:loud'" in lines["shout"]
    assert lines["size"].split()[1] == "cached"
    explained = cli("run", "pipe.py", "--explain")
    assert "shout | why succeeded: cache miss: code changed: function 'helper.py:loud'" in (
        explained.stdout
    )
    assert "size | why cached: cache hit" in explained.stdout
    (tmp_path / "data.txt").write_text("HELLO")
    explained = cli("run", "pipe.py", "--explain")
    assert "load | why succeeded: cache miss: dep changed: file 'data.txt'" in explained.stdout
    # Value-based: load's new value differs, so both re-run; shout's value is equal.
    assert "shout: succeeded" in explained.stdout
    unknown = cli("run", "pipe.py", "--force", "nope")
    assert unknown.returncode == 2
    assert "'nope'" in unknown.stderr


def test_a_corrupt_store_is_one_message_for_run(tmp_path: Path) -> None:
    small_project(tmp_path)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cache.sqlite").write_bytes(b"junk" * 1000)
    done = run_cli(tmp_path, "run", "pipe.py", "--plain", "--cache-dir", "c")
    assert isinstance(done, subprocess.CompletedProcess)
    assert done.returncode == 2
    assert done.stderr.startswith("trio-pipeline: error: cache store c/cache.sqlite")
    assert "cache clear --cache-dir c" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_watch_reruns_only_what_changed(tmp_path: Path) -> None:
    small_project(tmp_path)
    proc = run_cli(
        tmp_path, "run", "pipe.py", "--watch", "--debounce", "20", "--cache-dir", "c", popen=True
    )
    assert isinstance(proc, subprocess.Popen)
    assert proc.stdout is not None
    assert proc.stderr is not None

    def until(text: str, stream: Any) -> list[str]:
        lines: list[str] = []
        while True:
            line = stream.readline()
            assert line, f"the watcher ended before {text!r}: {lines}"
            lines.append(line)
            if text in line:
                return lines

    try:
        assert any("Summary: 3 succeeded" in x for x in until("Summary:", proc.stdout))
        until("watching", proc.stderr)
        (tmp_path / "helper.py").write_text("def loud(text):\n    return text + '!!'\n")
        until("re-running", proc.stderr)
        lines = until("Summary:", proc.stdout)
        assert "shout: succeeded" in "".join(lines)
        assert "Summary: 1 succeeded, 2 cached" in lines[-1]
        until("watching", proc.stderr)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert proc.returncode == 130
    finally:
        if proc.returncode is None:
            proc.kill()
        proc.communicate()  # reaps it and closes the pipes


EXPLAINED = textwrap.dedent(
    """\
    import trio_pipeline as tp

    pipe = tp.Pipeline("x", cache=True)

    @pipe.stage
    async def load(ctx):
        return [1, 2]

    @pipe.stage(each=load)
    async def sq(ctx, item):
        return item * item

    @pipe.stage(after=[load], cache=False)
    async def plain(ctx):
        pass

    @pipe.stage(after=[load], trigger="one_failed")
    async def alert(ctx):
        pass

    @pipe.stage(after=[alert])
    async def page(ctx):
        pass

    @pipe.stage(after=[load], trigger="always")
    async def cleanup(ctx):
        pass
    """
)


def test_dry_run_explain_says_why_a_stage_is_not_cached_and_lists_skipped_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pipe.py").write_text(EXPLAINED)
    assert main(["run", "pipe.py", "--dry-run", "--explain", "--cache-dir", "c"]) == 0
    rows = {line.split()[0]: line.split(None, 2) for line in capsys.readouterr().out.splitlines()}
    assert rows["load"][1:] == ["run", "no entry"]
    assert rows["sq"][2] == "not cached: an item stage (its items flow while it runs)"
    assert rows["plain"][2] == "not cached: no cache policy (cache= on the stage or the pipeline)"
    assert rows["cleanup"][2] == "not cached: a teardown stage (trigger always) always runs"
    # As in a failure-free run: the alert is skipped, and so is what waits for it.
    assert rows["alert"][1:] == ["skipped", "trigger one_failed not met: no upstream failed"]
    assert rows["page"][1] == "skipped"
    assert set(rows) == {"STAGE", "load", "sq", "plain", "alert", "page", "cleanup"}
