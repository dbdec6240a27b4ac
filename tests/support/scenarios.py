"""Randomized run scenarios for the property tests, the teeth and `tests.support.stress`.

A `Scenario` is plain data drawn by Hypothesis: a DAG (edges i -> j with i < j, so
acyclic), per-stage behaviour for each attempt (succeed, fail, hang) with retries and
timeouts, sinks (some faulty), options, a control action (request_close, cancel, or
outer cancellation) at a drawn time, and a chaos tape. `run_scenario` runs it in a
fresh `trio.run` on a MockClock and checks every invariant with `check_run`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal

import trio
import trio.testing
from hypothesis import event
from hypothesis import strategies as st

import trio_pipeline as tp
from trio_pipeline.testing import (
    ChaosTape,
    HungSink,
    RaisingSink,
    RecordingSink,
    SlowSink,
    TaskTracker,
    TornSink,
    check_run,
)

# Mock-clock seconds. A drain deadline this long is never legitimately reached,
# so runs with it must deliver every event.
LONG_DRAIN = 10_000.0
# "Hang" for a stage without a timeout: long, but finite, so the run still ends.
LONG_HANG = 600.0
# A deadlock jumps straight to this deadline instead of hanging the test.
FAIL_AFTER = 1_000_000.0

Behaviour = Literal["ok", "fail", "other", "hang", "fatal"]
Control = Literal["none", "close", "cancel", "outer"]
SinkKind = Literal["record", "slow", "raise", "hung", "torn"]
FAULTY_SINKS: tuple[SinkKind, ...] = ("slow", "raise", "hung", "torn")
OpenRun = Callable[..., AbstractAsyncContextManager[tp.RunHandle]]


class StageBoom(Exception):
    """What a failing stage raises."""


class OtherBoom(Exception):
    """What a failing stage raises when its spec says "other" (`retry_on` may reject it)."""


class StageFatal(BaseException):
    """What a "fatal" attempt raises: like KeyboardInterrupt, not an Exception."""


def _retry_on_boom(exc: BaseException) -> bool:
    return isinstance(exc, StageBoom)


# retry_on values a stage may draw (None: every Exception, timeouts included).
RETRY_ON: tuple[Any, ...] = (None, StageBoom, (StageBoom, tp.StageTimeout), _retry_on_boom)


@dataclass(frozen=True)
class StageSpec:
    attempts: tuple[tuple[Behaviour, float], ...]  # the last one repeats
    retries: int
    retry_delay: float
    timeout: float | None
    logs: int
    # Waits in a child task of a nursery of its own, so cancelling it raises a
    # group of Cancelled rather than a bare Cancelled.
    nested: bool = False
    # Scheduling rules (issue 10); the defaults are a plain stage's.
    trigger: tp.Trigger = tp.Trigger.ALL_SUCCESS
    priority: int = 0
    exclusive: bool = False
    uses: tuple[tuple[str, int], ...] = ()
    retry_backoff: float = 2.0
    retry_max_delay: float | None = None
    retry_jitter: float = 0.0
    retry_on: Any = None

    def behaviour(self, attempt: int) -> tuple[Behaviour, float]:
        return self.attempts[min(attempt, len(self.attempts)) - 1]


@dataclass(frozen=True)
class SinkSpec:
    kind: SinkKind
    param: float
    handle_timeout: float | None = None  # passed as tp.supervised(sink, handle_timeout=...)


@dataclass(frozen=True)
class Scenario:
    stages: tuple[StageSpec, ...]
    edges: tuple[tuple[int, int], ...]
    max_parallel: int | None
    keep_going: bool
    sinks: tuple[SinkSpec, ...]
    drain_timeout: float
    control: Control
    control_at: float
    tape: tuple[int, ...]
    max_backlog: int | None = None
    pools: tuple[tuple[str, int], ...] = ()
    teardown_timeout: float = 30.0

    @property
    def fatal(self) -> bool:
        """Whether some attempt may raise `StageFatal`."""
        return any(b == "fatal" for spec in self.stages for b, _ in spec.attempts)

    @property
    def lossless(self) -> bool:
        """Whether every healthy sink must receive every event."""
        return self.drain_timeout >= LONG_DRAIN and all(s.kind != "hung" for s in self.sinks)


# -- strategies -------------------------------------------------------------------------

_DURATIONS = st.sampled_from([0.0, 0.0, 0.5, 1.0, 2.0])


_TRIGGERS = [tp.Trigger.ALL_SUCCESS] * 4 + list(tp.Trigger)


@st.composite
def stage_specs(
    draw: st.DrawFn,
    *,
    hangs: bool = True,
    rules: bool = False,
    pools: tuple[tuple[str, int], ...] = (),
) -> StageSpec:
    kinds: list[Behaviour] = ["ok", "ok", "ok", "fail"]
    if hangs:
        kinds.append("hang")
    if rules:
        kinds.append("other")
    attempts = draw(st.lists(st.tuples(st.sampled_from(kinds), _DURATIONS), min_size=1, max_size=3))
    spec = StageSpec(
        attempts=tuple(attempts),
        retries=draw(st.integers(0, 3)),
        retry_delay=draw(st.sampled_from([0.0, 0.5, 1.0])),
        timeout=draw(st.sampled_from([None, None, 1.5, 3.0])),
        logs=draw(st.integers(0, 2)),
        nested=draw(st.booleans()),
    )
    if not rules:
        return spec
    if draw(st.integers(0, 19)) == 0:  # now and then an attempt raises StageFatal
        k = draw(st.integers(0, len(attempts) - 1))
        attempts[k] = ("fatal", attempts[k][1])
    uses: dict[str, int] = {}
    for pool, size in pools:
        if draw(st.booleans()):
            uses[pool] = draw(st.integers(1, size))
    return dataclasses.replace(
        spec,
        attempts=tuple(attempts),
        trigger=draw(st.sampled_from(_TRIGGERS)),
        priority=draw(st.sampled_from([0, 0, 0, 1, -1, 5])),
        exclusive=draw(st.integers(0, 7)) == 0,
        uses=tuple(uses.items()),
        retry_backoff=draw(st.sampled_from([2.0, 1.0, 3.0])),
        retry_max_delay=draw(st.sampled_from([None, None, 1.0])),
        retry_jitter=draw(st.sampled_from([0.0, 0.0, 0.25])),
        retry_on=draw(st.sampled_from(RETRY_ON)),
    )


def sink_specs(kinds: Sequence[SinkKind]) -> st.SearchStrategy[SinkSpec]:
    def param(kind: SinkKind) -> st.SearchStrategy[float]:
        if kind in ("slow", "torn"):
            return st.sampled_from([0.25, 1.0, 3.0])
        if kind in ("raise", "hung"):
            # -1: fail or hang in aclose instead of at an event.
            return st.integers(-1, 12).map(float)
        return st.just(0.0)

    timeouts = st.sampled_from([None, None, 0.5, 2.0])
    return st.sampled_from(list(kinds)).flatmap(
        lambda kind: st.tuples(param(kind), timeouts).map(lambda pt: SinkSpec(kind, *pt))
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
    *,
    max_stages: int = 6,
    sink_kinds: Sequence[SinkKind] = ("record", "record", "record", *FAULTY_SINKS),
    drain_timeouts: Sequence[float] = (LONG_DRAIN, LONG_DRAIN, LONG_DRAIN, 0.0, 0.5, 3.0),
    controls: Sequence[Control] = ("none", "none", "close", "cancel", "outer"),
    hangs: bool = True,
    tape_size: int = 48,
    rules: bool = False,
) -> Scenario:
    """A random scenario; with `rules`, stages also draw triggers, priorities,
    exclusive runs, pool slots, retry policies and fatal attempts, and the run draws
    pools and a teardown timeout."""
    k = draw(st.integers(1, max_stages))
    max_backlog = draw(st.sampled_from([None, None, 0, 1, 5]))
    sinks = tuple(draw(st.lists(sink_specs(sink_kinds), min_size=1, max_size=3)))
    if max_backlog is not None:
        # Backpressure is real: a hung sink nobody supervises would hold back the
        # stages not yet started forever. Supervised, it is disabled and they go on.
        sinks = tuple(
            SinkSpec(s.kind, s.param, s.handle_timeout or 2.0) if s.kind == "hung" else s
            for s in sinks
        )
    pairs = [(i, j) for j in range(k) for i in range(j)]
    chosen = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    pools: tuple[tuple[str, int], ...] = ()
    if rules:
        pools = draw(st.sampled_from([(), (("gpu", 1),), (("gpu", 2), ("io", 1))]))
    return Scenario(
        stages=tuple(draw(stage_specs(hangs=hangs, rules=rules, pools=pools)) for _ in range(k)),
        edges=tuple(pair for pair, on in zip(pairs, chosen, strict=True) if on),
        max_parallel=draw(st.sampled_from([None, None, 1, 2, 3])),
        keep_going=draw(st.booleans()),
        sinks=sinks,
        drain_timeout=draw(st.sampled_from(list(drain_timeouts))),
        control=draw(st.sampled_from(list(controls))),
        control_at=draw(st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0])),
        tape=tuple(draw(st.lists(st.integers(0, 6), max_size=tape_size))),
        max_backlog=max_backlog,
        pools=pools,
        teardown_timeout=draw(st.sampled_from([30.0, 0.0, 1.0, 4.0])) if rules else 30.0,
    )


# -- running ----------------------------------------------------------------------------


def _value(name: str, attempt: int) -> str:
    return f"{name}#{attempt}"


def build_pipeline(
    sc: Scenario, problems: list[str], inputs: list[tuple[str, int, frozenset[str]]] | None = None
) -> tp.Pipeline:
    """The scenario's pipeline; stages append to `problems` what they saw go wrong,
    and to `inputs` (stage, attempt, input names) what they were given."""
    pipe = tp.Pipeline("scenario", pools=dict(sc.pools))
    upstream: dict[int, list[int]] = {j: [] for j in range(len(sc.stages))}
    for i, j in sc.edges:
        upstream[j].append(i)
    for j, spec in enumerate(sc.stages):
        name = f"s{j}"
        after = [f"s{i}" for i in upstream[j]]

        async def fn(ctx: tp.StageContext, spec: StageSpec = spec, after: list[str] = after) -> str:
            if inputs is not None:
                inputs.append((ctx.name, ctx.attempt, frozenset(ctx.inputs)))
            if spec.trigger is tp.Trigger.ALL_SUCCESS and set(ctx.inputs) != set(after):
                problems.append(f"{ctx.name}: inputs {sorted(ctx.inputs)} != {after}")
            if not set(ctx.inputs) <= set(after):
                problems.append(f"{ctx.name}: inputs {sorted(ctx.inputs)} not in {after}")
            for up, value in ctx.inputs.items():
                if not (isinstance(value, str) and value.startswith(f"{up}#")):
                    problems.append(f"{ctx.name}: input {up}={value!r}")
            behaviour, duration = spec.behaviour(ctx.attempt)
            if spec.logs:
                ctx.log("begin")

            async def wait() -> None:
                if behaviour == "hang":
                    if spec.timeout is not None:
                        await trio.sleep_forever()
                    await trio.sleep(LONG_HANG)
                elif duration:
                    await trio.sleep(duration)

            if spec.nested:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(wait)
            else:
                await wait()
            if spec.logs > 1:
                ctx.log("end")
            if behaviour == "ok":
                return _value(ctx.name, ctx.attempt)
            if behaviour == "fatal":
                raise StageFatal(f"{ctx.name} attempt {ctx.attempt}")
            if behaviour == "other":
                raise OtherBoom(f"{ctx.name} attempt {ctx.attempt}")
            raise StageBoom(f"{ctx.name} attempt {ctx.attempt}")

        pipe.add_stage(
            name,
            fn,
            after=after,
            retries=spec.retries,
            retry_delay=spec.retry_delay,
            timeout=spec.timeout,
            trigger=spec.trigger,
            priority=spec.priority,
            exclusive=spec.exclusive,
            uses=dict(spec.uses),
            retry_backoff=spec.retry_backoff,
            retry_max_delay=spec.retry_max_delay,
            retry_jitter=spec.retry_jitter,
            retry_on=spec.retry_on,
        )
    return pipe


def build_sink(spec: SinkSpec) -> RecordingSink:
    if spec.kind == "slow":
        return SlowSink(spec.param)
    if spec.kind == "torn":
        return TornSink(spec.param)
    k = None if spec.param < 0 else int(spec.param)
    if spec.kind == "raise":
        return RaisingSink(k)
    if spec.kind == "hung":
        return HungSink(k)
    return RecordingSink()


class ScenarioFailure(AssertionError):
    """An invariant broke (or the run deadlocked) in a scenario."""


@dataclass
class Tally:
    """Examples run so far in this process (`tests.support.stress` reports it)."""

    examples: int = 0


TALLY = Tally()


async def apply_control(handle: tp.RunHandle, control: str, at: float) -> None:
    """Close or cancel the run `at` seconds in, as a scenario's `control` says.

    ``"outer"`` (a deadline around the run) and ``"none"`` do nothing here.
    """
    if control in ("close", "cancel"):
        await trio.sleep(at)
        if control == "close":
            handle.request_close()
        else:
            handle.cancel()


def run_scenario(sc: Scenario, open_run: OpenRun = tp.open_run) -> None:
    """Run `sc` in its own `trio.run` on a MockClock and assert every invariant."""
    TALLY.examples += 1
    problems: list[str] = []
    inputs: list[tuple[str, int, frozenset[str]]] = []
    pipeline = build_pipeline(sc, problems, inputs)
    sinks = [build_sink(spec) for spec in sc.sinks]
    passed: list[tp.Sink] = [
        sink
        if spec.handle_timeout is None
        else tp.supervised(sink, handle_timeout=spec.handle_timeout)
        for sink, spec in zip(sinks, sc.sinks, strict=True)
    ]
    tape = ChaosTape(sc.tape)
    tracker = TaskTracker()
    handles: list[tp.RunHandle] = []

    async def main() -> None:
        with trio.fail_after(FAIL_AFTER):
            with tracker.installed():
                deadline = sc.control_at if sc.control == "outer" else math.inf
                with trio.move_on_after(deadline):
                    async with open_run(
                        pipeline,
                        sinks=passed,
                        keep_going=sc.keep_going,
                        max_parallel=sc.max_parallel,
                        drain_timeout=sc.drain_timeout,
                        max_backlog=sc.max_backlog,
                        teardown_timeout=sc.teardown_timeout,
                    ) as handle:
                        handles.append(handle)
                        await apply_control(handle, sc.control, sc.control_at)
            tracker.check_all_exited()

    fatal: StageFatal | None = None
    try:
        with tape.installed():
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except trio.TooSlowError as exc:
        raise ScenarioFailure("invariant broken: every run finishes: it deadlocked") from exc
    except StageFatal as exc:  # as itself, not in a group
        fatal = exc
    result = handles[0].result
    note_statistics(sc, result, tape)
    if fatal is not None:
        event("a stage raised StageFatal")
    check_scenario(sc, pipeline, sinks, result, problems, fatal=fatal, inputs=inputs)


def note_statistics(sc: Scenario, result: tp.RunResult, tape: ChaosTape) -> None:
    """What the example exercised (`pytest --hypothesis-show-statistics`)."""
    event(f"run {result.state}, control {sc.control}")
    event("events undelivered" if result.undelivered else "all delivered")
    if result.sink_errors:
        event("sink errors")
    for status, n in result.counts.items():
        if n:
            event(f"some stage {status}")
    for name in tape.visits:
        event(f"chaos point {name}")


def check_scenario(
    sc: Scenario,
    pipeline: tp.Pipeline,
    sinks: list[RecordingSink],
    result: tp.RunResult,
    problems: list[str],
    *,
    fatal: BaseException | None = None,
    inputs: list[tuple[str, int, frozenset[str]]] = (),  # type: ignore[assignment]
) -> None:
    """`check_run`, plus what this scenario's spec says about the outcome."""
    crashed = [
        name for name, outcome in result.stages.items() if outcome.reason == "raised StageFatal"
    ]
    if (fatal is not None) != bool(crashed):
        raise ScenarioFailure(
            "invariant broken: a stage's fatal exception propagates from open_run as itself:"
            f" raised {fatal!r}, stages that raised it: {crashed}"
        )
    check_run(
        sinks,
        pipeline,
        result,
        # A backlog pause holds ready stages back, which no event shows: the rule
        # "a ready stage that fits starts at once" (checked with max_parallel) would
        # misfire, so runs with max_backlog are checked without it.
        max_parallel=sc.max_parallel if sc.max_backlog is None else None,
        keep_going=sc.keep_going,
        lossless=sc.lossless,
        stopped=sc.control != "none" or fatal is not None,
    )
    statuses = {name: outcome.status for name, outcome in result.stages.items()}
    failed = tp.StageStatus.FAILED in statuses.values()
    stopped = sc.control != "none" or (failed and not sc.keep_going) or fatal is not None
    ok = (tp.StageStatus.SUCCEEDED,)
    for name, _attempt, given in inputs:
        # Every upstream is terminal when a stage starts, but for a one_failed stage,
        # which may start at the first failure: its inputs are those that succeeded.
        succeeded = {u for u in pipeline.stages[name].after if statuses[u] in ok}
        exact = pipeline.stages[name].options.trigger is not tp.Trigger.ONE_FAILED
        if (given != succeeded) if exact else not given <= succeeded:
            problems.append(
                f"{name}: inputs {sorted(given)}, succeeded upstream {sorted(succeeded)}"
            )
    if problems:
        raise ScenarioFailure(f"invariant broken: stages get their upstream values: {problems}")
    if tp.StageStatus.CANCELLED in statuses.values() and not stopped:
        raise ScenarioFailure(
            f"invariant broken: stages end CANCELLED only when the run is stopped: {statuses}"
        )
    if (
        sc.control in ("none", "close")
        and fatal is None
        and sc.lossless
        and result.state is not tp.RunState.CLOSED
    ):
        # `lossless` rules out hung sinks, so nothing may overrun the drain deadline.
        raise ScenarioFailure(
            f"invariant broken: a run nobody cancelled ends CLOSED: {result.state}"
        )
    for j, spec in enumerate(sc.stages):
        outcome = result.stages[f"s{j}"]
        if outcome.status is tp.StageStatus.SUCCEEDED:
            expected: Any = _value(f"s{j}", outcome.attempts)
            if spec.behaviour(outcome.attempts)[0] != "ok" or outcome.value != expected:
                raise ScenarioFailure(
                    f"invariant broken: SUCCEEDED only from a succeeding attempt: s{j} {outcome}"
                )
        if outcome.status is tp.StageStatus.FAILED:
            behaviour = spec.behaviour(outcome.attempts)[0]
            timed_out = isinstance(outcome.error, tp.StageTimeout)
            if not (
                (behaviour == "fail" and isinstance(outcome.error, StageBoom))
                or (behaviour == "other" and isinstance(outcome.error, OtherBoom))
                or (behaviour == "hang" and isinstance(outcome.error, StageBoom))
                or (timed_out and spec.timeout is not None)
            ):
                raise ScenarioFailure(
                    f"invariant broken: FAILED only from a failing attempt: s{j} {outcome}"
                )
