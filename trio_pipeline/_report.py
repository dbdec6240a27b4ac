"""The HTML run report: one self-contained file from a run's events. Edge; no trio.

The report is built from the typed events, so the same code serves a finished run
(`ReportSink`, the CLI's ``run --report``) and a JSONL log read back later
(``trio-pipeline report run.jsonl``). A log that ends early (a killed process) still
gives a report: attempts still open at its end are drawn as running and the header
says the log is incomplete.

The page needs no network: CSS and a small script are inline, the graph is inline
SVG. Everything is in the HTML itself (bars, markers, tooltips as ``title``), so the
page reads without JavaScript; the script adds instant tooltips, a filter and zoom.
At 10,000 stages the file is a few MB and the rows are grouped in blocks the
browser skips while off-screen (``content-visibility``), which keeps the first render
well under two seconds.
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape
from importlib import resources

from ._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageRetrying,
    StageStarted,
)
from ._graph_svg import render_svg
from ._jsonl import read_jsonl
from ._state import RunState

GRAPH_LIMIT = 1500
"""Above this many stages the report leaves the graph out (it would not be readable)."""
LOG_LIMIT = 200
"""Log lines kept per stage (the last ones); earlier lines are counted, not shown."""
OTHER_LOGS_LIMIT = 2000
"""Log lines shown in total for stages that did not fail."""
BLOCK = 250
"""Timeline rows per block the browser may skip rendering while off-screen."""
ROW_HEIGHT = 20

_OK_STATUSES = frozenset({"succeeded", "skipped", "cached"})


@dataclass(slots=True)
class Attempt:
    """One attempt of a stage, times in seconds from the run's start.

    `outcome` is the attempt's own ending: ``"retried"`` for a failed attempt that
    was followed by another, else the stage's final status, or ``"running"`` when
    the log ends before the attempt did (then `end` is None).
    """

    number: int
    start: float
    end: float | None = None
    outcome: str = "running"
    error: str | None = None
    retry_delay: float | None = None


@dataclass(slots=True)
class StageRow:
    """Everything the report shows about one stage."""

    index: int
    name: str
    after: tuple[str, ...] = ()
    status: str | None = None  # None: the log ends before the stage finished
    finished_at: float | None = None
    error: str | None = None
    blocked_by: str | None = None
    reason: str | None = None
    items: dict[str, int] = field(default_factory=dict[str, int])
    attempts: list[Attempt] = field(default_factory=list[Attempt])
    logs: list[tuple[float, str]] = field(default_factory=list[tuple[float, str]])
    logs_dropped: int = 0


@dataclass(slots=True)
class RunReport:
    """A run as the report sees it: the header facts and one `StageRow` per stage."""

    pipeline: str = "?"
    run_id: str = "?"
    state: str | None = None  # None: no RunFinished in the log
    wall_time: float | None = None
    duration: float = 0.0
    counts: dict[str, int] = field(default_factory=dict[str, int])
    stages: dict[str, StageRow] = field(default_factory=dict[str, StageRow])
    events: int = 0
    origin: float | None = None  # the trio clock at RunStarted
    last: float = 0.0  # offset of the last event seen

    @property
    def complete(self) -> bool:
        return self.state is not None

    @property
    def ok(self) -> bool:
        """CLOSED with every stage ok (succeeded, skipped or cached)."""
        return self.state == RunState.CLOSED.value and all(
            row.status in _OK_STATUSES for row in self.stages.values()
        )


class ReportBuilder:
    """Builds a `RunReport` one event at a time (memory: the report, not the events)."""

    def __init__(self) -> None:
        self.report = RunReport()

    def add(self, event: Event) -> None:
        """Take one event; events of types the report does not know are counted, not shown.

        A second `RunStarted` (a log appended to by several runs) starts over: the
        report shows the last run.
        """
        if isinstance(event, RunStarted) and self.report.events:
            self.report = RunReport()
        report = self.report
        report.events += 1
        if report.origin is None:
            report.origin = event.time
        t = event.time - report.origin
        report.last = max(report.last, t)
        if isinstance(event, StageLog):
            row = self._row(event.stage)
            row.logs.append((t, event.message))
            if len(row.logs) > 2 * LOG_LIMIT:  # trim in batches: amortised O(1)
                row.logs_dropped += len(row.logs) - LOG_LIMIT
                del row.logs[:-LOG_LIMIT]
        elif isinstance(event, StageStarted):
            self._row(event.stage).attempts.append(Attempt(event.attempt, t))
        elif isinstance(event, StageRetrying):
            attempt = self._open_attempt(self._row(event.stage), t)
            attempt.end = t
            attempt.outcome = "retried"
            attempt.error = event.error
            attempt.retry_delay = event.delay
        elif isinstance(event, StageFinished):
            self._finish(event, t)
        elif isinstance(event, RunStarted):
            report.pipeline = event.pipeline
            report.run_id = event.run_id
            report.wall_time = getattr(event, "wall_time", None)
            after: tuple[tuple[str, ...], ...] = getattr(event, "after", ())
            for i, name in enumerate(event.stages):
                row = self._row(name)
                if i < len(after):
                    row.after = tuple(after[i])
        elif isinstance(event, RunFinished):
            report.state = str(event.state.value)
            report.duration = event.duration
            report.counts = {str(k.value): v for k, v in event.counts.items()}

    def _row(self, name: str) -> StageRow:
        rows = self.report.stages
        row = rows.get(name)
        if row is None:
            row = rows[name] = StageRow(len(rows), name)
        return row

    def _open_attempt(self, row: StageRow, t: float) -> Attempt:
        if row.attempts and row.attempts[-1].end is None:
            return row.attempts[-1]
        # A log missing the StageStarted (it should not happen): a zero-length attempt.
        attempt = Attempt(len(row.attempts) + 1, t)
        row.attempts.append(attempt)
        return attempt

    def _finish(self, event: StageFinished, t: float) -> None:
        row = self._row(event.stage)
        status = str(event.status.value)
        row.status = status
        row.finished_at = t
        row.error = event.error
        row.blocked_by = event.blocked_by
        row.reason = getattr(event, "reason", None)
        for key in ("items_in", "items_out", "items_failed"):
            value = getattr(event, key, None)
            if isinstance(value, int):
                row.items[key] = value
        if row.attempts and row.attempts[-1].end is None:
            attempt = row.attempts[-1]
            attempt.end = t
            attempt.outcome = status
            attempt.error = event.error


def build_report(events: Iterable[Event]) -> RunReport:
    """The `RunReport` of a run's events (in `seq` order, as a sink receives them)."""
    builder = ReportBuilder()
    for event in events:
        builder.add(event)
    return builder.report


def render_report(events: Iterable[Event] | RunReport) -> str:
    """The run report as one self-contained HTML document."""
    report = events if isinstance(events, RunReport) else build_report(events)
    return _Page(report).render()


def write_report(events: Iterable[Event] | RunReport, path: str | os.PathLike[str]) -> None:
    """Write `render_report` to `path` (UTF-8), replacing the file in one rename.

    A reader never sees half a report, and a failure leaves an existing file as it was.
    """
    text = render_report(events)
    target = os.fspath(path)
    temporary = f"{target}.tmp-{os.getpid()}"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class ReportSink:
    """A sink that writes the HTML run report to `path` when the run's events end.

    It keeps the report's model, not the events. The file is written in `aclose`,
    which the dispatcher awaits after the last event, also when the run was
    cancelled (Ctrl-C) or draining was cut off (then the report says the log is
    incomplete). `write()` writes what has arrived so far, at any time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._builder = ReportBuilder()

    @property
    def report(self) -> RunReport:
        return self._builder.report

    async def handle(self, event: Event, /) -> None:
        self._builder.add(event)

    async def aclose(self) -> None:
        self.write()

    def write(self) -> None:
        """Write the report of the events received so far (synchronous, no checkpoint)."""
        write_report(self._builder.report, self.path)

    def __repr__(self) -> str:
        return f"ReportSink({self.path!r})"


# -- reading a JSONL log -------------------------------------------------------------


class ReportInputError(ValueError):
    """A log that cannot be reported on, or a report that cannot be written; names the file."""


def report_from_log(log: str, output: str | None = None) -> str:
    """Write the report of the JSONL log `log` to `output` (default: `log` with ``.html``).

    Returns the path written.

    Raises:
        ReportInputError: `log` is missing, empty or not a log, or `output` is not writable.
    """
    if output is None:
        output = os.path.splitext(log)[0] + ".html"
    if os.path.abspath(output) == os.path.abspath(log):
        raise ReportInputError(f"{log}: the report would overwrite the log; pass -o PATH")
    try:
        events = list(read_jsonl(log))
    except OSError as exc:
        raise ReportInputError(f"{log}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ReportInputError(str(exc)) from None
    if not events:
        raise ReportInputError(f"{log}: no events (is it a log written by run --jsonl?)")
    try:
        write_report(events, output)
    except OSError as exc:
        raise ReportInputError(f"{output}: {exc.strerror or exc}") from None
    return output


# -- rendering ----------------------------------------------------------------------

_OUTCOME_CLASS = {
    "succeeded": "ok",
    "failed": "fail",
    "retried": "retry",
    "cancelled": "cancel",
    "running": "run",
    "cached": "cached",
}
_LEGEND = (
    ("succeeded", "succeeded"),
    ("cached", "cached"),
    ("retried", "failed, retried"),
    ("failed", "failed"),
    ("cancelled", "cancelled"),
    ("running", "running at the log's end"),
)
_MARK_LEGEND = (
    ("blocked", "blocked"),
    ("skipped", "skipped"),
    ("cancelled", "cancelled before it started"),
    ("cached", "cached (not run)"),
)
_MARK_TEXT = {
    "blocked": "blocked",
    "skipped": "skipped",
    "cancelled": "not started",
    "cached": "cached",
}


def _asset(name: str) -> str:
    return resources.files("trio_pipeline").joinpath("_report_assets", name).read_text("utf-8")


def _seconds(value: float) -> str:
    """A duration for people: ``850 ms``, ``1.25 s``, ``2 m 05 s``."""
    if value < 1:
        return f"{value * 1000:.0f} ms" if value >= 0.001 or not value else f"{value * 1000:.2f} ms"
    if value < 60:
        return f"{value:.2f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} m {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} m"


_CLOCK_STEPS = (60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _nice_step(span: float, target: int = 8) -> float:
    """A tick step giving about `target` ticks: 1-2-2.5-5 decimal steps, clock steps from 1 min."""
    raw = span / target
    if raw > 40:
        return float(next((c for c in _CLOCK_STEPS if c >= raw), 86400 * math.ceil(raw / 86400)))
    power = 10.0 ** math.floor(math.log10(raw))
    return next(f * power for f in (1.0, 2.0, 2.5, 5.0, 10.0) if f * power >= raw * 0.999)


def _tick_label(value: float, step: float, span: float) -> str:
    """``0``, then milliseconds under a second, seconds under a minute, else m:ss or h:mm."""
    if not value:
        return "0"
    if span < 1 or step < 0.001:
        return f"{value * 1000:.{_decimals(step * 1000)}f} ms"
    if span < 60 or step < 60:
        return f"{value:.{_decimals(step)}f} s"
    minutes, seconds = divmod(round(value), 60)
    if span < 3600:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d} h"


def _decimals(step: float) -> int:
    """Decimal places that show every multiple of `step` exactly (2.5 -> 1, 0.25 -> 2)."""
    digits = 0
    while digits < 9 and abs(step * 10**digits - round(step * 10**digits)) > 1e-6:
        digits += 1
    return digits


class _Page:
    def __init__(self, report: RunReport) -> None:
        self.report = report
        self.rows = list(report.stages.values())
        ends = [report.duration, report.last]
        for row in self.rows:
            for attempt in row.attempts:
                ends.append(attempt.end if attempt.end is not None else report.last)
                if attempt.retry_delay is not None and attempt.end is not None:
                    ends.append(attempt.end + attempt.retry_delay)
        self.span = max(max(ends), 1e-6)

    def pct(self, t: float) -> str:
        return f"{min(max(t / self.span * 100, 0.0), 100.0):.3f}".rstrip("0").rstrip(".")

    def wall(self, offset: float) -> str | None:
        if self.report.wall_time is None:
            return None
        moment = datetime.datetime.fromtimestamp(self.report.wall_time + offset, datetime.UTC)
        return moment.strftime("%H:%M:%S.%f")[:-3]

    def render(self) -> str:
        report = self.report
        title = f"{report.pipeline}: run {report.run_id}"
        return "".join(
            [
                '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width, initial-scale=1">',
                '<meta name="generator" content="trio-pipeline">',
                f"<title>{escape(title)}</title><style>{_asset('report.css')}</style></head>",
                '<body><main id="tp-report">',
                self.header(),
                self.timeline(),
                self.graph(),
                self.failures(),
                self.other_logs(),
                '</main><div id="tp-tip" hidden></div>',
                f"<script>{_asset('report.js')}</script></body></html>\n",
            ]
        )

    # -- header ---------------------------------------------------------------------

    def header(self) -> str:
        report = self.report
        if report.state is None:
            state, state_class = "incomplete log (no RunFinished)", "bad"
        else:
            state, state_class = report.state, "good" if report.ok else "bad"
        started = "unknown"
        if report.wall_time is not None:
            moment = datetime.datetime.fromtimestamp(report.wall_time, datetime.UTC)
            started = (
                f'<time datetime="{moment.isoformat()}">'
                f"{moment.strftime('%Y-%m-%d %H:%M:%S')} UTC</time>"
            )
        duration = report.duration if report.complete else report.last
        attempts = sum(len(row.attempts) for row in self.rows)
        retries = sum(1 for row in self.rows for a in row.attempts if a.outcome == "retried")
        counts = report.counts or self._counted()
        chips = "".join(
            f'<span class="chip st-{escape(status)}" data-status="{escape(status)}">'
            f"<b>{n:,}</b> {escape(status)}</span>"
            for status, n in counts.items()
            if n
        )
        unfinished = sum(1 for row in self.rows if row.status is None)
        if unfinished:
            chips += (
                f'<span class="chip st-running" data-status="unfinished"><b>{unfinished:,}</b>'
                " unfinished</span>"
            )
        facts = [
            ("run id", f"<code>{escape(report.run_id)}</code>"),
            ("started", started),
            ("duration", _seconds(duration)),
            ("stages", f"{len(self.rows):,}"),
            ("attempts", f"{attempts:,}" + (f" ({retries:,} retried)" if retries else "")),
            ("events", f"{report.events:,}"),
        ]
        dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
        return (
            f'<header><h1>{escape(report.pipeline)} <span class="state {state_class}"'
            f' id="tp-state">{escape(state)}</span></h1><dl class="facts">{dl}</dl>'
            f'<div class="chips" id="tp-counts">{chips}</div></header>'
        )

    def _counted(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            if row.status is not None:
                counts[row.status] = counts.get(row.status, 0) + 1
        return counts

    # -- timeline -------------------------------------------------------------------

    def timeline(self) -> str:
        step = _nice_step(self.span)
        ticks: list[str] = []
        value = 0.0
        n = 0
        while value <= self.span * 1.0001:
            left = self.pct(value)
            cls = "tick end" if value > self.span * 0.95 else "tick"
            label = _tick_label(value, step, self.span)
            ticks.append(f'<span class="{cls}" style="left:{left}%">{label}</span>')
            n += 1
            value = n * step
        grid = "".join(
            f'<i style="left:{self.pct(k * step)}%"></i>'
            for k in range(1, n)
            if k * step < self.span
        )
        blocks: list[str] = []
        for start in range(0, len(self.rows), BLOCK):
            chunk = self.rows[start : start + BLOCK]
            blocks.append(
                f'<div class="blk" style="contain-intrinsic-size:auto {len(chunk) * ROW_HEIGHT}px">'
                + "".join(self.row(row) for row in chunk)
                + "</div>"
            )
        # The legend lists what this run shows, so a small report stays small.
        outcomes = {a.outcome for row in self.rows for a in row.attempts}
        marks = {row.status for row in self.rows if not row.attempts}
        legend = "".join(
            f'<span><i class="b {_OUTCOME_CLASS[outcome]}"></i>{label}</span>'
            for outcome, label in _LEGEND
            if outcome in outcomes
        )
        if "retried" in outcomes:
            legend += '<span><i class="w"></i>retry wait</span>'
        legend += "".join(
            f'<span><b class="m {status}"></b>{label}</span>'
            for status, label in _MARK_LEGEND
            if status in marks
        )
        tools = (
            '<div class="tools"><input id="tp-filter" type="search" placeholder="filter stages"'
            ' aria-label="filter stages"><label><input id="tp-problems" type="checkbox">'
            " only problems</label>"
            '<span class="zoom">zoom <button data-zoom="1">1x</button><button data-zoom="4">4x'
            '</button><button data-zoom="16">16x</button></span></div>'
        )
        return (
            f'<section id="timeline"><h2>Timeline</h2>{tools}<div class="legend">{legend}</div>'
            '<div class="tl" id="tp-tl"><div class="tli">'
            f'<div class="axis"><div class="l"></div><div class="k">{"".join(ticks)}</div></div>'
            f'<div class="rows"><div class="grid">{grid}</div>{"".join(blocks)}</div>'
            "</div></div></section>"
        )

    def row(self, row: StageRow) -> str:
        status = row.status or ("running" if row.attempts else "pending")
        parts: list[str] = []
        for k, attempt in enumerate(row.attempts):
            parts.append(self.bar(row, attempt, len(row.attempts)))
            if attempt.outcome == "retried" and attempt.end is not None:
                nxt = row.attempts[k + 1].start if k + 1 < len(row.attempts) else None
                wait_end = nxt if nxt is not None else attempt.end + (attempt.retry_delay or 0)
                tip = f"{row.name}: retry wait {_seconds(wait_end - attempt.end)}"
                parts.append(
                    f'<i class="w" style="left:{self.pct(attempt.end)}%;'
                    f'width:{self.pct(wait_end - attempt.end)}%" title="{escape(tip)}"></i>'
                )
        if not row.attempts and row.status in _MARK_TEXT:
            parts.append(self.marker(row))
        extra = ""
        if len(row.attempts) > 1:
            extra = f"<small>\u00d7{len(row.attempts)}</small>"
        if row.items:
            extra += f"<small>{escape(self.items_text(row))}</small>"
        label_tip = row.name + (f"\nafter: {', '.join(row.after)}" if row.after else "")
        return (
            f'<div class="r st-{status}" id="r{row.index}" data-status="{status}">'
            f'<div class="l" title="{escape(label_tip)}"><span>{escape(row.name)}</span>{extra}'
            f'</div><div class="k">{"".join(parts)}</div></div>'
        )

    def items_text(self, row: StageRow) -> str:
        items = row.items
        parts = [
            f"{items[k]:,} {k[6:]}" for k in ("items_in", "items_out", "items_failed") if k in items
        ]
        return " / ".join(parts) + " items"

    def bar(self, row: StageRow, attempt: Attempt, total: int) -> str:
        end = attempt.end if attempt.end is not None else self.report.last
        lines = [f"{row.name}: attempt {attempt.number}" + (f" of {total}" if total > 1 else "")]
        start = f"start +{_seconds(attempt.start)}"
        wall = self.wall(attempt.start)
        if wall is not None:
            start += f" ({wall} UTC)"
        lines.append(start)
        if attempt.end is None:
            lines.append(f"still running at the log's end ({_seconds(end - attempt.start)} so far)")
        else:
            lines.append(f"duration {_seconds(end - attempt.start)}")
        outcome = {"retried": "failed, retried"}.get(attempt.outcome, attempt.outcome)
        lines.append(f"status: {outcome}")
        if attempt.error:
            lines.append(f"error: {_clip(attempt.error, 300)}")
        if attempt.retry_delay is not None:
            lines.append(f"next attempt after {_seconds(attempt.retry_delay)}")
        if attempt.end is not None and attempt is row.attempts[-1]:
            if row.reason:
                lines.append(f"reason: {row.reason}")
            if row.items:
                lines.append(self.items_text(row))
        cls = _OUTCOME_CLASS.get(attempt.outcome, "other")
        return (
            f'<i class="b {cls}" style="left:{self.pct(attempt.start)}%;'
            f'width:{self.pct(end - attempt.start)}%" title="{escape(chr(10).join(lines))}"></i>'
        )

    def marker(self, row: StageRow) -> str:
        status = row.status or "pending"
        at = row.finished_at or 0.0
        reason = row.reason
        if reason is None and status == "blocked" and row.blocked_by is not None:
            reason = f"upstream {row.blocked_by!r} failed"
        label = _MARK_TEXT.get(status, status)
        if status == "blocked" and row.blocked_by is not None:
            label = f"blocked by {row.blocked_by}"
        how = "answered from the cache, not run" if status == "cached" else "never started"
        tip = f"{row.name}: {status}, {how}"
        if reason:
            tip += f"\nreason: {reason}"
        tip += f"\nat +{_seconds(at)}"
        side = " end" if at / self.span > 0.6 else ""
        return (
            f'<b class="m {status}{side}" style="left:{self.pct(at)}%" title="{escape(tip)}">'
            f"<span>{escape(_clip(label, 60))}</span></b>"
        )

    # -- graph ----------------------------------------------------------------------

    def graph(self) -> str:
        n = len(self.rows)
        if n > GRAPH_LIMIT:
            return (
                '<section id="graph"><h2>Dependency graph</h2><p class="note">'
                f"{n:,} stages: too many to draw legibly (the limit is {GRAPH_LIMIT:,}). Each"
                " stage's dependencies are in its row's tooltip; <code>trio-pipeline graph FILE"
                " --format svg</code> draws the whole graph.</p></section>"
            )
        index = {row.name: row.index for row in self.rows}
        if not any(row.after for row in self.rows) and n > 1:
            note = '<p class="note">The log lists no dependencies (no stage waits for another).</p>'
        else:
            note = ""
        upstream = [[index[d] for d in row.after if d in index] for row in self.rows]
        svg = render_svg(
            [row.name for row in self.rows],
            upstream,
            classes={row.index: row.status or "running" for row in self.rows},
            titles={row.index: f"{row.name}: {row.status or 'unfinished'}" for row in self.rows},
            links={row.index: f"#r{row.index}" for row in self.rows},
            standalone=False,
        )
        return (
            f'<section id="graph"><h2>Dependency graph</h2>{note}'
            f'<div class="graph">{svg}</div></section>'
        )

    # -- failures and logs ----------------------------------------------------------

    def failures(self) -> str:
        failed = [
            row
            for row in self.rows
            if row.status == "failed" or any(a.outcome == "retried" for a in row.attempts)
        ]
        if not failed:
            return '<section id="failures"><h2>Failures</h2><p class="note">None.</p></section>'
        items: list[str] = []
        for row in failed:
            head = f'<a href="#r{row.index}">{escape(row.name)}</a>'
            tries = len(row.attempts)
            summary = f"{row.status or 'unfinished'} after {tries} attempt{'s' * (tries != 1)}"
            errors = "".join(
                f'<div class="att"><span>attempt {a.number} at +{_seconds(a.start)}:</span>'
                f'<pre class="err">{escape(a.error or "")}</pre></div>'
                for a in row.attempts
                if a.error and a.outcome in ("retried", "failed")
            )
            if row.status == "failed" and row.error and not row.attempts:
                errors += f'<pre class="err">{escape(row.error)}</pre>'
            if row.reason:
                errors += f'<p class="reason">reason: {escape(row.reason)}</p>'
            blocked = [r.name for r in self.rows if r.blocked_by == row.name]
            if blocked:
                shown = ", ".join(blocked[:20]) + (" ..." if len(blocked) > 20 else "")
                errors += f'<p class="reason">blocked {len(blocked):,}: {escape(shown)}</p>'
            items.append(
                f'<article class="failure st-{row.status or "running"}" id="f{row.index}">'
                f"<h3>{head} <small>{summary}</small></h3>{errors}{self.log_block(row)}</article>"
            )
        return f'<section id="failures"><h2>Failures</h2>{"".join(items)}</section>'

    def log_block(self, row: StageRow) -> str:
        if not row.logs:
            return '<p class="note">No log lines.</p>'
        lines = "\n".join(
            f'<span class="t">+{t:.3f}s</span> {escape(message)}' for t, message in row.logs
        )
        dropped = (
            f'<p class="note">{row.logs_dropped:,} earlier lines not shown.</p>'
            if row.logs_dropped
            else ""
        )
        return f'{dropped}<pre class="log">{lines}</pre>'

    def other_logs(self) -> str:
        budget = OTHER_LOGS_LIMIT
        parts: list[str] = []
        hidden = 0
        for row in self.rows:
            if not row.logs or row.status == "failed":
                continue
            if any(a.outcome == "retried" for a in row.attempts):
                continue  # shown with the failures
            if budget <= 0:
                hidden += 1
                continue
            budget -= len(row.logs)
            parts.append(
                f'<details><summary><a href="#r{row.index}">{escape(row.name)}</a>'
                f" <small>{len(row.logs) + row.logs_dropped:,} lines</small></summary>"
                f"{self.log_block(row)}</details>"
            )
        if not parts:
            return ""
        more = f'<p class="note">Logs of {hidden:,} more stages not shown.</p>' if hidden else ""
        return f'<section id="logs"><h2>Logs</h2>{"".join(parts)}{more}</section>'


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
