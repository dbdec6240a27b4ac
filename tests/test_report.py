"""The HTML run report: from a run's events, from a JSONL log, through the CLI and in a browser."""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from tests.support.report_page import parse
from trio_pipeline._cli import load_file, main
from trio_pipeline._report import (
    ReportInputError,
    build_report,
    render_report,
    report_from_log,
    write_report,
)
from trio_pipeline.testing import RecordingSink

ROOT = Path(__file__).resolve().parent.parent


# -- scenarios ------------------------------------------------------------------------


def keep_going_pipeline() -> tp.Pipeline:
    """A retry that then succeeds, a failure with log lines, a blocked stage, an odd name."""
    pipe = tp.Pipeline("demo <&>")

    @pipe.stage
    async def fetch(ctx: tp.StageContext) -> None:
        ctx.log("fetched 3 rows")
        await trio.sleep(1)

    @pipe.stage(retries=1, retry_delay=0.5)
    async def flaky(ctx: tp.StageContext) -> None:
        await trio.sleep(0.25)
        if ctx.attempt == 1:
            raise ConnectionError("reset by peer")

    @pipe.stage(after=[fetch])
    async def bad(ctx: tp.StageContext) -> None:
        ctx.log("about to <fail> & stop")
        await trio.sleep(0.5)
        raise ValueError("<b>boom</b>")

    @pipe.stage(after=[bad])
    async def child(ctx: tp.StageContext) -> None:
        pass

    async def odd(ctx: tp.StageContext) -> None:
        await trio.sleep(0.1)

    pipe.add_stage('odd <name> "q"', odd, after=[fetch])
    return pipe


def fail_fast_pipeline() -> tp.Pipeline:
    """A running stage cancelled by a failure, and one cancelled before it started."""
    pipe = tp.Pipeline("ff")

    @pipe.stage
    async def slow(ctx: tp.StageContext) -> None:
        await trio.sleep(10)

    @pipe.stage
    async def bad(ctx: tp.StageContext) -> None:
        await trio.sleep(1)
        raise RuntimeError("x")

    @pipe.stage(after=[slow])
    async def later(ctx: tp.StageContext) -> None:
        pass

    return pipe


async def run_recorded(pipe: tp.Pipeline, **options: Any) -> list[tp.Event]:
    sink = RecordingSink()
    await tp.run(pipe, sinks=[sink], **options)
    return sink.events


def expected_bars(events: list[tp.Event]) -> dict[str, list[str]]:
    """From the events alone: per stage, one outcome per attempt."""
    bars: dict[str, list[str]] = {}
    for event in events:
        if isinstance(event, tp.StageStarted):
            bars.setdefault(event.stage, []).append("run")
        elif isinstance(event, tp.StageRetrying):
            bars[event.stage][-1] = "retry"
        elif isinstance(event, tp.StageFinished) and event.attempt:
            cls = {"succeeded": "ok", "failed": "fail", "cancelled": "cancel"}
            bars[event.stage][-1] = cls[event.status.value]
    return bars


# -- the page -------------------------------------------------------------------------


async def test_every_stage_and_attempt_has_its_bar(autojump_clock: Any) -> None:
    events = await run_recorded(keep_going_pipeline(), keep_going=True)
    page = parse(render_report(events))
    started = next(e for e in events if isinstance(e, tp.RunStarted))
    assert list(page.rows) == list(started.stages)
    bars = {name: [cls for cls, _ in row["bars"]] for name, row in page.rows.items()}
    assert bars == {**{name: [] for name in started.stages}, **expected_bars(events)}
    assert bars["flaky"] == ["retry", "ok"]
    assert page.rows["flaky"]["waits"] == 1  # the retry wait between the attempts
    assert page.rows["bad"]["status"] == "failed"
    assert page.rows["child"] == {"status": "blocked", "bars": [], "marks": ["blocked"], "waits": 0}
    finished = events[-1]
    assert isinstance(finished, tp.RunFinished)
    assert page.counts == {k.value: n for k, n in finished.counts.items() if n}


async def test_tooltips_say_stage_attempt_times_status_and_error(autojump_clock: Any) -> None:
    events = await run_recorded(keep_going_pipeline(), keep_going=True)
    page = parse(render_report(events))
    (retried, ok) = (title for _, title in page.rows["flaky"]["bars"])
    assert retried.splitlines()[0] == "flaky: attempt 1 of 2"
    assert "start +0 ms" in retried
    assert "duration 250 ms" in retried
    assert "status: failed, retried" in retried
    assert "error: ConnectionError: reset by peer" in retried
    assert "next attempt after 500 ms" in retried
    assert "start +750 ms" in ok  # 0.25 s attempt + 0.5 s wait
    assert "status: succeeded" in ok
    ((_, failed),) = page.rows["bad"]["bars"]
    assert "error: ValueError: <b>boom</b>" in failed  # escaped in the file, text here
    assert any("blocked, never started" in t and "upstream 'bad' failed" in t for t in page.titles)


async def test_failures_show_error_text_and_the_stages_log_lines(autojump_clock: Any) -> None:
    events = await run_recorded(keep_going_pipeline(), keep_going=True)
    html = render_report(events)
    failures = html[html.index('<section id="failures">') :]
    failures = failures[: failures.index("</section>")]
    assert "ValueError: &lt;b&gt;boom&lt;/b&gt;" in failures
    assert "about to &lt;fail&gt; &amp; stop" in failures
    assert "ConnectionError: reset by peer" in failures  # the retried attempt's error
    assert "blocked 1: child" in failures
    assert "fetched 3 rows" not in failures  # fetch did not fail: its log is under Logs
    assert "fetched 3 rows" in html[html.index('<section id="logs">') :]


async def test_fail_fast_marks_cancelled_running_and_unstarted_stages(autojump_clock: Any) -> None:
    events = await run_recorded(fail_fast_pipeline())
    page = parse(render_report(events))
    assert [cls for cls, _ in page.rows["slow"]["bars"]] == ["cancel"]
    assert page.rows["later"]["marks"] == ["cancelled"]
    assert page.rows["later"]["status"] == "cancelled"
    assert [cls for cls, _ in page.rows["bad"]["bars"]] == ["fail"]


async def test_the_page_needs_no_network_and_escapes_names(autojump_clock: Any) -> None:
    events = await run_recorded(keep_going_pipeline(), keep_going=True)
    html = render_report(events)
    page = parse(html)
    assert page.external == []
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "@import" not in html
    assert 'odd <name> "q"' in page.rows
    assert "<title>demo &lt;&amp;&gt;: run" in html
    assert html.count("<script>") == 1


async def test_graph_section_has_every_stage_and_edge(autojump_clock: Any) -> None:
    events = await run_recorded(keep_going_pipeline(), keep_going=True)
    html = render_report(events)
    graph = html[html.index('<section id="graph">') : html.index('<section id="failures">')]
    assert graph.count("<rect") == 5
    assert graph.count("marker-end") == 3  # fetch->bad, bad->child, fetch->odd
    assert '<g class="failed" id="n2">' in graph
    assert 'href="#r3"' in graph  # a node links to its timeline row


@pytest.mark.parametrize(
    ("span", "labels"),
    [
        (0.4, ["0", "50 ms", "100 ms", "150 ms", "200 ms", "250 ms", "300 ms", "350 ms", "400 ms"]),
        (3.0, ["0", "0.5 s", "1.0 s", "1.5 s", "2.0 s", "2.5 s", "3.0 s"]),
        (17.0, ["0", "2.5 s", "5.0 s", "7.5 s", "10.0 s", "12.5 s", "15.0 s"]),
        (400.0, ["0", "1:00", "2:00", "3:00", "4:00", "5:00", "6:00"]),
        (100_000.0, ["0", "6:00 h", "12:00 h", "18:00 h", "24:00 h"]),
    ],
)
def test_axis_ticks_are_round_and_in_the_spans_unit(span: float, labels: list[str]) -> None:
    events: list[tp.Event] = [tp.RunStarted("r", 0, 0.0, "p", ())]
    events.append(tp.RunFinished("r", 1, span, tp.RunState.CLOSED, {}, span))
    axis = render_report(events).split('<div class="axis">')[1].split("</div></div>")[0]
    assert re.findall(r'class="tick(?: end)?" style="left:[0-9.]+%">([^<]*)<', axis) == labels


def test_an_empty_or_eventless_report_renders() -> None:
    html = render_report([])
    assert "incomplete log" in html
    page = parse(html)
    assert page.rows == {}


def test_a_huge_graph_is_left_out_with_a_note() -> None:
    n = 1_600
    names = tuple(f"s{i}" for i in range(n))
    events: list[tp.Event] = [tp.RunStarted("r", 0, 0.0, "p", names)]
    events += [
        tp.StageFinished("r", i + 1, 1.0, name, tp.StageStatus.SKIPPED, 0, 0.0, None, None)
        for i, name in enumerate(names)
    ]
    html = render_report(events)
    assert "too many to draw legibly" in html
    assert len(parse(html).rows) == n


# -- from a log -----------------------------------------------------------------------


async def test_report_from_the_log_equals_report_from_the_events(
    autojump_clock: Any, tmp_path: Path
) -> None:
    log = tmp_path / "run.jsonl"
    sink = RecordingSink()
    await tp.run(keep_going_pipeline(), sinks=[sink, tp.JsonlSink(log)], keep_going=True)
    assert list(tp.read_jsonl(log)) == sink.events
    assert render_report(tp.read_jsonl(log)) == render_report(sink.events)
    assert report_from_log(str(log)) == str(tmp_path / "run.html")
    assert (tmp_path / "run.html").read_text() == render_report(sink.events)


async def test_a_torn_log_reports_running_attempts(autojump_clock: Any, tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    await tp.run(keep_going_pipeline(), sinks=[tp.JsonlSink(log)], keep_going=True)
    lines = log.read_text().splitlines(keepends=True)
    # Cut after bad's StageStarted, and tear the next line in half.
    cut = next(i for i, line in enumerate(lines) if '"StageStarted"' in line and '"bad"' in line)
    log.write_text("".join(lines[: cut + 1]) + lines[cut + 1][:20])
    with pytest.warns(UserWarning, match=rf"run.jsonl:{cut + 2}: torn last line ignored"):
        events = list(tp.read_jsonl(log))
    page = parse(render_report(events))
    assert [cls for cls, _ in page.rows["bad"]["bars"]] == ["run"]
    assert page.rows["bad"]["status"] == "running"
    assert page.rows["child"]["status"] == "pending"
    assert "incomplete log (no RunFinished)" in render_report(events)


def test_a_log_with_several_runs_reports_the_last() -> None:
    first = [tp.RunStarted("a", 0, 0.0, "one", ("x",))]
    second: list[tp.Event] = [
        tp.RunStarted("b", 0, 5.0, "two", ("y",)),
        tp.StageStarted("b", 1, 5.0, "y", 1),
    ]
    report = build_report(first + second)
    assert (report.pipeline, report.run_id, list(report.stages)) == ("two", "b", ["y"])
    assert report.stages["y"].attempts[0].start == 0.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no events"),
        ('{"type": "RunStarted"}\n{}\n', r"run.jsonl:1: row lacks the field 'run_id'"),
        ("[1]\n[2]\n", "run.jsonl:1: not an event row: not a JSON object"),
        ("nonsense\n{}\n", "run.jsonl:1: not an event row"),
    ],
)
def test_bad_logs_are_named(tmp_path: Path, content: str, message: str) -> None:
    log = tmp_path / "run.jsonl"
    log.write_text(content)
    with pytest.raises(ReportInputError, match=message):
        report_from_log(str(log))
    assert not (tmp_path / "run.html").exists()


def test_missing_log_and_overwriting_the_log_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportInputError, match="No such file"):
        report_from_log(str(tmp_path / "missing.jsonl"))
    log = tmp_path / "run.html"
    log.write_text("")
    with pytest.raises(ReportInputError, match="would overwrite the log"):
        report_from_log(str(log))


def test_a_log_without_after_and_wall_time_still_reports(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    rows = [
        {"type": "RunStarted", "run_id": "r", "seq": 0, "time": 0.0, "pipeline": "p"}
        | {"stages": ["a"], "schema": 1},
        {"type": "StageStarted", "run_id": "r", "seq": 1, "time": 0.5, "stage": "a"}
        | {"attempt": 1, "future": True},
    ]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert report_from_log(str(log)) == str(tmp_path / "run.html")
    html = (tmp_path / "run.html").read_text()
    assert "<dt>started</dt><dd>unknown</dd>" in html
    assert [cls for cls, _ in parse(html).rows["a"]["bars"]] == ["run"]


@dataclass(frozen=True, slots=True)
class LaterStageFinished(tp.StageFinished):
    """StageFinished with issue 10's reason and issue 13's item counts."""

    reason: str | None = None
    items_in: int | None = None
    items_out: int | None = None
    items_failed: int | None = None


def test_fields_from_later_issues_are_shown_when_present() -> None:
    ok, skipped = tp.StageStatus.SUCCEEDED, tp.StageStatus.SKIPPED
    later = [
        LaterStageFinished("r", 2, 1.0, "a", ok, 1, 1.0, None, None, None, 1200, 1190, 10),
        LaterStageFinished("r", 3, 1.0, "b", skipped, 0, 0.0, None, None, "trigger not met"),
    ]
    start: list[tp.Event] = [tp.RunStarted("r", 0, 0.0, "p", ("a", "b"))]
    start.append(tp.StageStarted("r", 1, 0.0, "a", 1))
    html = render_report([*start, *later])
    assert "1,200 in / 1,190 out / 10 failed items" in html
    assert "reason: trigger not met" in html
    plain = render_report([*start, *(tp.StageFinished(*vars_of(e)) for e in later)])
    assert " items" not in plain
    assert "reason:" not in plain


def test_a_cached_stage_is_marked_and_counts_as_ok() -> None:
    cached = tp.StageStatus.CACHED
    events: list[tp.Event] = [
        tp.RunStarted("r", 0, 0.0, "p", ("a",)),
        tp.StageFinished("r", 1, 0.5, "a", cached, 0, 0.0, None, None),
    ]
    html = render_report(events)
    page = parse(html)
    assert page.rows["a"] == {"status": "cached", "bars": [], "marks": ["cached"], "waits": 0}
    assert "a: cached, answered from the cache, not run\nat +500 ms" in page.titles
    assert "cached (not run)" in html  # in the legend
    assert build_report(events).stages["a"].status == "cached"


def vars_of(event: tp.StageFinished) -> tuple[Any, ...]:
    fields = ("run_id", "seq", "time", "stage", "status", "attempt", "duration", "error")
    return (*(getattr(event, f) for f in fields), event.blocked_by)


# -- at the end of a run --------------------------------------------------------------


async def test_report_sink_writes_after_an_outer_cancel(
    autojump_clock: Any, tmp_path: Path
) -> None:
    path = tmp_path / "report.html"
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def forever(ctx: tp.StageContext) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(3):
        await tp.run(pipe, sinks=[tp.ReportSink(path)])
    page = parse(path.read_text())
    assert [cls for cls, _ in page.rows["forever"]["bars"]] == ["cancel"]
    assert page.counts == {"cancelled": 1}
    assert ">cancelled</span>" in path.read_text()


def test_write_report_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "r.html"
    path.write_text("old")
    write_report([], path)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert os.listdir(tmp_path) == ["r.html"]  # no temporary left behind


# -- the command line -----------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CI", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "trio_pipeline", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_cli_run_report_and_report_command(tmp_path: Path) -> None:
    done = cli(
        "run",
        str(ROOT / "examples" / "keep_going.py"),
        "--plain",
        "-k",
        "--jsonl",
        "run.jsonl",
        "--report",
        "run-report.html",
        cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr
    assert "report written to run-report.html" in done.stderr
    from_run = parse((tmp_path / "run-report.html").read_text())
    done = cli("report", "run.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "trio-pipeline: report written to run.html\n"
    from_log = parse((tmp_path / "run.html").read_text())
    assert from_run.rows == from_log.rows
    assert set(from_run.counts) >= {"succeeded", "failed", "blocked"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "missing.jsonl"], "missing.jsonl: No such file or directory"),
        (["report", "empty.jsonl", "-o", "nodir/x.html"], "empty.jsonl: no events"),
        (["run", "p.py", "--report", "nodir/r.html"], "--report nodir/r.html: No such file"),
    ],
)
def test_cli_report_errors_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "p.py").write_text("import trio_pipeline as tp\npipe = tp.Pipeline('p')\n")
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"trio-pipeline: error: {message}")


# -- in a browser ---------------------------------------------------------------------


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium on PATH (apt-get install chromium; .ci/run installs it)",
)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--no-first-run", "--disable-extensions", "--mute-audio"]
    return subprocess.run(
        [CHROMIUM, *flags, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def browser_check(page: Path) -> dict[str, Any]:
    """Open `page` in headless Chromium and return the summary its script wrote."""
    done = chromium("--dump-dom", page.as_uri() + "#check")
    start = done.stdout.find('<pre id="tp-check">')
    assert start >= 0, f"no check summary in the DOM; chromium said: {done.stderr[-2000:]}"
    text = done.stdout[start + len('<pre id="tp-check">') : done.stdout.index("</pre>", start)]
    summary: dict[str, Any] = json.loads(unescape(text))
    return summary


def screenshot(page: Path, png: Path, *, size: tuple[int, int]) -> None:
    done = chromium(f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", page.as_uri())
    assert png.exists(), done.stderr[-2000:]


def check_against_events(summary: dict[str, Any], events: list[tp.Event]) -> None:
    names = {"run": "running", "ok": "succeeded", "fail": "failed"}
    names |= {"retry": "retried", "cancel": "cancelled"}
    bars = {name: [names[c] for c in cls] for name, cls in expected_bars(events).items()}
    started = events[0]
    assert isinstance(started, tp.RunStarted)
    assert summary["rows"] == len(started.stages)
    assert {name: s["bars"] for name, s in summary["stages"].items()} == {
        **{name: [] for name in started.stages},
        **bars,
    }
    finished = events[-1]
    assert isinstance(finished, tp.RunFinished)
    assert summary["counts"] == {k.value: n for k, n in finished.counts.items() if n}
    assert summary["state"] == finished.state.value
    assert summary["bad_widths"] == 0
    assert summary["row_width"] > 300


@needs_chromium
def test_in_chromium_every_stage_and_attempt_has_its_bar(tmp_path: Path) -> None:
    """The README's example run; TRIO_PIPELINE_SCREENSHOT=docs/report.png updates its picture."""
    pipe = load_file(str(ROOT / "examples" / "keep_going.py")).pipe
    run = functools.partial(run_recorded, pipe, keep_going=True)
    events = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    page = tmp_path / "report.html"
    write_report(events, page)
    summary = browser_check(page)
    check_against_events(summary, events)
    assert summary["stages"]["fetch_mirror"]["bars"] == ["retried", "failed"]
    assert summary["stages"]["publish"] == {"status": "blocked", "bars": [], "markers": 1}
    assert summary["graph_nodes"] == 7
    moves = summary["interactions"]  # what the page's controls did when the page drove them
    assert moves["tooltip"].startswith("checkout: attempt 1\nstart +0 ms")
    assert moves["tooltip_is_title"]
    assert moves["tooltip_hides"]
    assert 3.5 < moves["zoom"] < 4.5
    assert moves["filtered"] == 1  # "checkout"
    assert moves["problems"] == 3  # fetch_mirror, package, publish
    assert moves["after_reset"] == 7
    png = Path(os.environ.get("TRIO_PIPELINE_SCREENSHOT", tmp_path / "report.png"))
    screenshot(page, png, size=(1000, 800))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def synthetic_run(n: int, *, width: int = 100) -> list[tp.Event]:
    """`n` stages in layers of `width`; every 50th stage retried once, every 500th fails."""
    names = tuple(f"stage-{i:05d}" for i in range(n))
    after: tuple[tuple[str, ...], ...] = tuple(
        () if i < width else (names[i - width],) for i in range(n)
    )
    events: list[tp.Event] = [
        tp.RunStarted("r", 0, 0.0, "big", names, after=after, wall_time=1.7e9)
    ]
    counts = dict.fromkeys(tp.StageStatus, 0)
    failed_or_blocked: set[str] = set()
    for i, name in enumerate(names):
        t = (i // width) * 1.0 + (i % width) * 0.001
        upstream = after[i][0] if after[i] else None
        if upstream in failed_or_blocked:
            failed_or_blocked.add(name)
            status = tp.StageStatus.BLOCKED
            events.append(
                tp.StageFinished("r", len(events), t, name, status, 0, 0.0, None, upstream)
            )
            counts[status] += 1
            continue
        events.append(tp.StageStarted("r", len(events), t, name, 1))
        attempts = 1
        if i % 50 == 7:
            events.append(tp.StageRetrying("r", len(events), t + 0.2, name, 1, "OSError: x", 0.1))
            events.append(tp.StageStarted("r", len(events), t + 0.3, name, 2))
            attempts = 2
        status = tp.StageStatus.SUCCEEDED
        error = None
        if i % 500 == 499:
            status, error = tp.StageStatus.FAILED, "ValueError: bad"
            failed_or_blocked.add(name)
        events.append(
            tp.StageFinished("r", len(events), t + 0.6, name, status, attempts, 0.6, error, None)
        )
        counts[status] += 1
    end = math.ceil(n / width) + 1.0
    terminal = {k: v for k, v in counts.items() if k.is_terminal}
    events.append(tp.RunFinished("r", len(events), end, tp.RunState.CLOSED, terminal, end))
    return events


@needs_chromium
def test_in_chromium_a_large_run(tmp_path: Path) -> None:
    """2,000 stages in the default run (10,000 in benchmarks/report.py, with timings)."""
    events = synthetic_run(2_000)
    page = tmp_path / "report.html"
    write_report(events, page)
    summary = browser_check(page)
    check_against_events(summary, events)
