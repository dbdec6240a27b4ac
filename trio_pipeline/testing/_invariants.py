"""The invariants a finished run promises, checked from its events: `check_run`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .._delivery import SinkState
from .._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageRetrying,
    StageStarted,
)
from .._graph import Pipeline, Stage
from .._logcheck import LogChecker
from .._result import RunResult, count_statuses
from .._state import RunState, StageStatus
from .._targets import select_stages, subpipeline
from ._items import check_items, stream_units
from ._rules import Schedule
from ._sinks import RecordingSink


def _fail(invariant: str, detail: str) -> AssertionError:
    return AssertionError(f"invariant broken: {invariant}: {detail}")


def check_run(
    events: Sequence[Event] | Sequence[RecordingSink],
    pipeline: Pipeline,
    result: RunResult,
    *,
    max_parallel: int | None = None,
    keep_going: bool | None = None,
    lossless: bool = True,
    pools: Mapping[str, int] | None = None,
    stopped: bool | None = None,
    progress_interval: float = 0.1,
    targets: Iterable[str | Stage] | None = None,
    only: bool = False,
) -> None:
    """Assert every invariant of a finished run; AssertionError names the broken one.

    Args:
        events: The events one sink received, or the `RecordingSink` objects
            passed as the run's sinks (then each is checked: healthy ones, those not
            in `result.sink_errors`, must have received identical sequences; a sink
            that raised must appear in `sink_errors`; every sink closed once).
        pipeline: The pipeline that ran.
        result: What `run` returned (or `RunHandle.result`).
        max_parallel: The run's limit, checked against the stages running at each
            point of the event sequence; and no ready stage that fits may wait while
            time passes with a slot free (None: neither is checked; for an unlimited
            run pass ``len(pipeline.stages)``; not with ``max_backlog`` pauses: a
            sink falling behind, or more than ``max_backlog`` stages ready at once).
        keep_going: The run's option; with False, a failure is a fail-fast stop:
            afterwards only ALWAYS, ALL_DONE and ONE_FAILED stages may start (None:
            a fail-fast stop is seen only through the cancelled stages' reasons).
        pools: The run's ``pools=`` (None: the pipeline's `Pipeline.pools`).
        stopped: Whether the run was stopped from outside (`request_close`,
            `cancel`, an outer cancellation). False also checks what only holds for
            a run nobody stopped: stages end CANCELLED only after a fail-fast stop,
            and a failed attempt with retries left is retried unless `retry_on`
            rejects its error (None: those are not checked).
        lossless: Require every healthy sink to have received every event, and a
            run whose `RunFinished` says CLOSED to end CLOSED (no drain overrun). Pass
            False only when a sink may legitimately stall past ``drain_timeout``;
            then each healthy sink must have a prefix of the run's events, its
            shortfall must equal `result.undelivered`, and a shortfall requires the
            run to end CANCELLED.
        targets: The run's ``targets=`` (and `only`, its ``only=``): the run is
            checked against the stages it selected, as `run` selects them.

    Invariants: `seq` contiguous from 0; one run id; times never go backwards;
    `RunStarted` first and `RunFinished` last, exactly once each; exactly one
    `StageFinished` per stage; attempts numbered 1, 2, ... with `StageRetrying`
    between them and at most ``retries + 1``; logs only from a running stage;
    BLOCKED only downstream of a FAILED stage named by `blocked_by`; at most
    `max_parallel` attempts running; the scheduling rules (trigger rules, SKIPPED
    reasons, stops, teardown stages, pool and exclusive limits, priorities, retry
    counts and delays; see `trio_pipeline.testing._rules`); the counts
    in `RunFinished`, in `result.counts` and in the events agree; `result.stages`
    matches the events; `undelivered` is empty when the run is CLOSED; the result's
    state agrees with `RunFinished.state` (CANCELLED stays CANCELLED; CLOSED stays
    CLOSED unless the drain overran).
    """
    if targets is not None:
        pipeline = subpipeline(pipeline, select_stages(pipeline, targets, only=only))
    sinks: list[RecordingSink] = [r for r in events if isinstance(r, RecordingSink)]
    if sinks and len(sinks) != len(events):
        raise TypeError("pass either a sequence of events or a sequence of RecordingSinks")
    if sinks:
        healthy_events = _check_sinks(sinks, result, lossless=lossless)
        if healthy_events is None:  # every sink raised: only the result is left to check
            _check_result([], pipeline, result, complete=False, lossless=lossless)
            return
        events = healthy_events
    else:
        events = [e for e in events if not isinstance(e, RecordingSink)]
    complete = bool(events) and isinstance(events[-1], RunFinished)
    schedule = Schedule(
        pipeline,
        result,
        keep_going=keep_going,
        pools=pools,
        stopped=stopped,
        max_parallel=max_parallel,
    )
    _check_sequence(
        events,
        pipeline,
        result,
        max_parallel=max_parallel,
        schedule=schedule,
        finished=lossless or complete,
    )
    _check_result(events, pipeline, result, complete=complete, lossless=lossless)
    if any(stage.items is not None for stage in pipeline.stages.values()):
        # Item stages: accounting, stream edges, progress (see `check_items`).
        check_items(
            events, pipeline, max_parallel=max_parallel, progress_interval=progress_interval
        )


def _check_sinks(
    sinks: list[RecordingSink], result: RunResult, *, lossless: bool
) -> list[Event] | None:
    """Check the sinks against each other; return the longest healthy sequence."""
    for sink in sinks:
        if sink.raised is not None and sink not in result.sink_errors:
            raise _fail("a sink that raised is reported", f"{sink!r} raised {sink.raised!r}")
        if (
            sink in result.sink_errors
            and sink.raised is not None
            and result.sink_errors[sink] is not sink.raised
        ):
            raise _fail(
                "sink_errors holds the sink's own exception",
                f"{sink!r}: {result.sink_errors[sink]!r} is not {sink.raised!r}",
            )
    healthy = [sink for sink in sinks if sink not in result.sink_errors]
    for stalled in result.undelivered:
        if stalled not in healthy:
            raise _fail("undelivered names only healthy sinks", repr(stalled))
    longest = _check_healthy(healthy, result, lossless=lossless)
    _check_deliveries(sinks, result)
    # Checked last: a dropped event says more about what went wrong than a missing aclose.
    for sink in sinks:
        if sink.aclose_calls != 1:
            raise _fail("every sink is closed exactly once", f"{sink!r}: {sink.aclose_calls}")
    return longest


def _check_deliveries(sinks: list[RecordingSink], result: RunResult) -> None:
    """`result.deliveries` agrees with what each sink recorded and with the other fields."""
    if not result.deliveries:
        return  # a result built by hand
    for sink in sinks:
        record = result.deliveries.get(sink)
        if record is None:
            raise _fail("deliveries has a record per sink", repr(sink))
        if record.delivered != len(sink.events):
            raise _fail(
                "deliveries counts the events each sink handled",
                f"{sink!r}: {record.delivered} vs {len(sink.events)}",
            )
        if (record.state is SinkState.DISABLED) != (sink in result.sink_errors):
            raise _fail("DISABLED exactly for the sinks in sink_errors", f"{sink!r}: {record}")
        if record.undelivered != result.undelivered.get(sink, 0):
            raise _fail("deliveries and undelivered agree", f"{sink!r}: {record}")
        cut_in_aclose = record.state is SinkState.CUT_OFF and not record.undelivered
        if cut_in_aclose and result.state is not RunState.CANCELLED:
            raise _fail("a run with a sink cut off ends CANCELLED", f"{sink!r}: {result.state}")
        if record.peak_backlog < (0 if record.state is SinkState.DISABLED else 1):
            raise _fail("peak_backlog counts at least the event in hand", f"{sink!r}: {record}")


def _check_healthy(
    healthy: list[RecordingSink], result: RunResult, *, lossless: bool
) -> list[Event] | None:
    if not healthy:
        return None
    longest = max(healthy, key=lambda sink: len(sink.events)).events
    totals: set[int] = set()
    for sink in healthy:
        got = sink.events
        if got != longest[: len(got)]:
            raise _fail(
                "every healthy sink received the identical sequence",
                f"{sink!r} differs from the longest healthy sequence",
            )
        missing = result.undelivered.get(sink, 0)
        if lossless and missing:
            raise _fail("no event is lost", f"{sink!r} missed {missing} events")
        if lossless and len(got) != len(longest):
            raise _fail(
                "every healthy sink received the identical sequence",
                f"{sink!r} got {len(got)} of {len(longest)} events",
            )
        totals.add(len(got) + missing)
    if len(totals) > 1:
        raise _fail("received + undelivered is the same total for every healthy sink", str(totals))
    if (not longest or not isinstance(longest[-1], RunFinished)) and totals == {len(longest)}:
        raise _fail(
            "lost events are reported in undelivered",
            f"no healthy sink got RunFinished, yet none reports a shortfall ({len(longest)})",
        )
    if longest and isinstance(longest[-1], RunFinished) and totals != {longest[-1].seq + 1}:
        raise _fail(
            "received + undelivered counts every event",
            f"totals {totals}, RunFinished.seq={longest[-1].seq}",
        )
    return longest


def _check_sequence(
    events: Sequence[Event],
    pipeline: Pipeline,
    result: RunResult,
    *,
    max_parallel: int | None,
    schedule: Schedule,
    finished: bool,
) -> None:
    """The pipeline-free invariants (`LogChecker`), then what needs the pipeline."""
    if not events and not finished:
        return
    stages = pipeline.stages
    # A stream group is one scheduling unit; its readers start with what they read.
    units, stream_inputs = stream_units(pipeline)
    checker = LogChecker(events, finished=finished, stream_readers=stream_inputs)
    if events[0].run_id != result.run_id:
        raise _fail("one run id", f"{events[0]!r} vs result.run_id={result.run_id}")
    running = checker.running
    last_time = checker.last_time
    for index, event in enumerate(checker):
        if last_time < event.time and index:
            schedule.time_passes(event.time)
        last_time = event.time
        if isinstance(event, RunStarted):
            if event.stages != tuple(stages):
                raise _fail("RunStarted lists the stages", f"{event.stages} vs {tuple(stages)}")
        elif isinstance(event, StageStarted):
            if event.attempt > stages[event.stage].retries + 1:
                raise _fail("at most retries + 1 attempts", repr(event))
            schedule.started_attempt(event)
            if max_parallel is not None and len({units.get(n, n) for n in running}) > max_parallel:
                raise _fail(
                    "running stages never exceed max_parallel",
                    f"{len(running)} > {max_parallel} at seq={event.seq}: {sorted(running)}",
                )
        elif isinstance(event, StageRetrying):
            schedule.retrying(event)
        elif isinstance(event, StageFinished):
            if event.status is StageStatus.BLOCKED:
                _check_blocked_downstream(event, pipeline, units)
            schedule.finished(event)


def _check_blocked_downstream(
    event: StageFinished, pipeline: Pipeline, units: dict[str, str]
) -> None:
    name, culprit = event.stage, event.blocked_by
    assert culprit is not None  # LogChecker saw to it
    unit = units.get(name)
    members = [n for n, u in units.items() if u == unit] if unit is not None else [name]
    # A stream group starts as one, so it is blocked as one.
    if not any(culprit in _upstream_closure(pipeline, m) for m in members):
        raise _fail("BLOCKED only downstream of a FAILED stage", f"{culprit!r} -> {name!r}")


def _upstream_closure(pipeline: Pipeline, name: str) -> set[str]:
    stages = pipeline.stages
    seen: set[str] = set()
    stack = list(stages[name].after)
    while stack:
        up = stack.pop()
        if up not in seen:
            seen.add(up)
            stack.extend(stages[up].after)
    return seen


def _check_result(
    events: Sequence[Event],
    pipeline: Pipeline,
    result: RunResult,
    *,
    complete: bool,
    lossless: bool,
) -> None:
    if list(result.stages) != list(pipeline.stages):
        raise _fail("result.stages lists every stage in order", str(list(result.stages)))
    if result.state not in (RunState.CLOSED, RunState.CANCELLED):
        raise _fail("a finished run is CLOSED or CANCELLED", str(result.state))
    if result.state is RunState.CLOSED and result.undelivered:
        raise _fail("undelivered is empty when the run is CLOSED", str(dict(result.undelivered)))
    for sink, missing in result.undelivered.items():
        if missing <= 0:
            raise _fail("undelivered counts are positive", f"{sink!r}: {missing}")
    expected = count_statuses(outcome.status for outcome in result.stages.values())
    if dict(result.counts) != expected:
        raise _fail("result.counts matches result.stages", f"{result.counts} vs {expected}")
    finished = {e.stage: e for e in events if isinstance(e, StageFinished)}
    for name, event in finished.items():
        outcome = result.stages[name]
        got = (outcome.status, outcome.attempts, outcome.blocked_by)
        want = (event.status, event.attempt, event.blocked_by)
        if got != want:
            raise _fail("result.stages matches the StageFinished events", f"{name}: {got} {want}")
        if (outcome.error is not None) != (outcome.status is StageStatus.FAILED):
            raise _fail("StageOutcome.error is set exactly for FAILED", f"{name}: {outcome}")
    if not complete:
        return
    last = events[-1]
    assert isinstance(last, RunFinished)
    from_events = count_statuses(e.status for e in finished.values())  # RunFinished's: LogChecker
    if dict(result.counts) != from_events:
        raise _fail("result.counts matches the events", f"{result.counts} vs {from_events}")
    if last.state not in (RunState.CLOSED, RunState.CANCELLED):
        raise _fail("RunFinished.state is CLOSED or CANCELLED", str(last.state))
    if last.state is RunState.CANCELLED and result.state is not RunState.CANCELLED:
        raise _fail("a run reported CANCELLED in RunFinished ends CANCELLED", str(result.state))
    # Once RunFinished says CLOSED only a drain overrun may end the run CANCELLED (a
    # cancel or an outer cancellation while draining changes nothing), and a lossless
    # run has no overrun.
    if last.state is RunState.CLOSED and result.state is not RunState.CLOSED and lossless:
        raise _fail(
            "a run reported CLOSED in RunFinished ends CLOSED unless the drain overran",
            f"{result.state}, undelivered {dict(result.undelivered)}",
        )
