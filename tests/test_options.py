"""Stage options: `RetryPolicy`, `StageOptions`, `check_pools` and the shared checkers."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from trio_pipeline._options import DEFAULT_OPTIONS, StageKeywords, build_options, check_pools
from trio_pipeline.testing import RecordingSink


async def noop(ctx: tp.StageContext) -> None:
    pass


# -- RetryPolicy.delay_before ----------------------------------------------------------------


def test_scalar_delay_grows_by_the_backoff_through_many_retries() -> None:
    policy = tp.RetryPolicy(retries=5, delay=0.5)
    assert [policy.delay_before(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    tripled = tp.RetryPolicy(retries=4, delay=1, backoff=3)
    assert [tripled.delay_before(n) for n in range(1, 5)] == [1.0, 3.0, 9.0, 27.0]


def test_backoff_one_is_a_fixed_delay() -> None:
    policy = tp.RetryPolicy(retries=4, delay=2.5, backoff=1.0)
    assert [policy.delay_before(n) for n in range(1, 5)] == [2.5] * 4


def test_sequence_delay_repeats_its_last_entry_and_ignores_backoff() -> None:
    policy = tp.RetryPolicy(retries=5, delay=(1, 5, 30), backoff=10)
    assert policy.delay == (1.0, 5.0, 30.0)
    assert [policy.delay_before(n) for n in range(1, 6)] == [1.0, 5.0, 30.0, 30.0, 30.0]


def test_max_delay_caps_scalar_and_sequence_delays() -> None:
    policy = tp.RetryPolicy(retries=6, delay=1, max_delay=5)
    assert [policy.delay_before(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    seq = tp.RetryPolicy(retries=3, delay=(1, 60), max_delay=10)
    assert [seq.delay_before(n) for n in range(1, 4)] == [1.0, 10.0, 10.0]


def test_a_huge_retry_number_does_not_overflow() -> None:
    policy = tp.RetryPolicy(retries=10_000, delay=1, max_delay=60)
    assert policy.delay_before(5_000) == 60.0
    assert tp.RetryPolicy(retries=10_000, delay=1).delay_before(5_000) == math.inf


def test_zero_delay_stays_zero_and_draws_nothing() -> None:
    policy = tp.RetryPolicy(retries=3, delay=0, jitter=0.5)
    state = random.getstate()
    assert policy.delay_before(3) == 0.0
    assert random.getstate() == state


def test_jitter_stays_in_bounds_and_a_seeded_random_reproduces_it() -> None:
    policy = tp.RetryPolicy(retries=3, delay=10, backoff=1, jitter=0.2)
    random.seed(1234)
    first = [policy.delay_before(1) for _ in range(200)]
    random.seed(1234)
    again = [policy.delay_before(1) for _ in range(200)]
    assert first == again
    assert all(8.0 <= d <= 12.0 for d in first)
    assert min(first) < 9.0  # spread on both sides
    assert max(first) > 11.0
    assert len(set(first)) == len(first)


def test_jitter_applies_after_the_cap() -> None:
    policy = tp.RetryPolicy(retries=9, delay=1, max_delay=4, jitter=0.5)
    random.seed(7)
    delays = [policy.delay_before(9) for _ in range(100)]
    assert all(2.0 <= d <= 6.0 for d in delays)
    assert max(delays) > 4.0


def test_without_jitter_no_random_number_is_drawn() -> None:
    policy = tp.RetryPolicy(retries=3, delay=1)
    state = random.getstate()
    policy.delay_before(2)
    assert random.getstate() == state


def test_delay_before_counts_retries_from_one() -> None:
    with pytest.raises(ValueError, match="retry counts from 1, got 0"):
        tp.RetryPolicy(retries=1).delay_before(0)


# -- RetryPolicy.should_retry ------------------------------------------------------------------


def test_should_retry_stops_once_the_retries_are_used_up() -> None:
    policy = tp.RetryPolicy(retries=2)
    error = RuntimeError("boom")
    assert [policy.should_retry(error, n) for n in (1, 2, 3)] == [True, True, False]
    assert not tp.RetryPolicy().should_retry(error, 1)


def test_without_retry_on_every_exception_and_timeouts_are_retried() -> None:
    policy = tp.RetryPolicy(retries=1)
    assert policy.should_retry(tp.StageTimeout("s", 1.0, 1), 1)
    assert policy.should_retry(KeyError("k"), 1)
    assert not policy.should_retry(KeyboardInterrupt(), 1)


def test_retry_on_a_class_or_tuple_matches_subclasses_only() -> None:
    policy = tp.RetryPolicy(retries=3, retry_on=ConnectionError)
    assert policy.should_retry(ConnectionResetError(), 1)
    assert not policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(tp.StageTimeout("s", 1.0, 1), 1)
    both = tp.RetryPolicy(retries=3, retry_on=(ConnectionError, TimeoutError))
    assert both.should_retry(tp.StageTimeout("s", 1.0, 1), 1)
    assert both.should_retry(ConnectionRefusedError(), 2)
    assert not both.should_retry(ConnectionRefusedError(), 4)


def test_retry_on_a_predicate() -> None:
    policy = tp.RetryPolicy(retries=2, retry_on=lambda exc: "flaky" in str(exc))
    assert policy.should_retry(RuntimeError("flaky network"), 1)
    assert not policy.should_retry(RuntimeError("bad input"), 1)
    assert not policy.should_retry(RuntimeError("flaky"), 3)


def test_a_raising_predicate_means_no_retry_and_says_why() -> None:
    def broken(exc: BaseException) -> bool:
        raise LookupError("oops")

    error = RuntimeError("boom")
    assert not tp.RetryPolicy(retries=2, retry_on=broken).should_retry(error, 1)
    assert error.__notes__ == [
        f"not retried: retry_on predicate {broken!r} raised LookupError('oops')"
    ]


# -- validation ---------------------------------------------------------------------------------

TYPE = tp.StageDefinitionTypeError
VALUE = tp.StageDefinitionError


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"retries": -1}, VALUE, "retries must be a non-negative int, got -1"),
        ({"retries": 1.0}, TYPE, "retries must be a non-negative int, got 1.0"),
        ({"retries": True}, TYPE, "retries must be a non-negative int, got True"),
        ({"retry_delay": -1}, VALUE, "retry_delay must be a finite number >= 0, got -1"),
        ({"retry_delay": math.nan}, VALUE, "retry_delay must be a finite number >= 0, got nan"),
        ({"retry_delay": "1"}, TYPE, "retry_delay must be a finite number >= 0 or a sequence"),
        ({"retry_delay": []}, VALUE, "retry_delay must not be an empty sequence"),
        ({"retry_delay": [1, -2]}, VALUE, r"retry_delay\[1\] must be a finite number >= 0, got -2"),
        ({"retry_delay": [1, None]}, TYPE, r"retry_delay\[1\] must be a finite number >= 0"),
        ({"retry_delay": (1, math.inf)}, VALUE, r"retry_delay\[1\] must be a finite number"),
        ({"retry_backoff": 0.5}, VALUE, "retry_backoff must be a finite number >= 1"),
        ({"retry_backoff": math.inf}, VALUE, "retry_backoff must be a finite number >= 0, got inf"),
        ({"retry_backoff": None}, TYPE, "retry_backoff must be a finite number"),
        (
            {"retry_max_delay": 0},
            VALUE,
            "retry_max_delay must be a finite number > 0 or None, got 0",
        ),
        ({"retry_max_delay": "5"}, TYPE, "retry_max_delay must be a finite number > 0 or None"),
        ({"retry_jitter": 1.0}, VALUE, r"retry_jitter must be a fraction in \[0, 1\), got 1.0"),
        ({"retry_jitter": -0.1}, VALUE, "retry_jitter must be a finite number >= 0, got -0.1"),
        ({"retry_jitter": False}, TYPE, "retry_jitter must be a finite number >= 0, got False"),
        ({"retry_on": 3}, TYPE, "retry_on must be an exception class, a tuple of them, or a pred"),
        ({"retry_on": int}, TYPE, "retry_on must name exception classes, got <class 'int'>"),
        ({"retry_on": ()}, VALUE, "retry_on must not be an empty tuple"),
        ({"retry_on": (ValueError, "x")}, TYPE, "retry_on must name exception classes, got 'x'"),
        ({"retry_on": KeyboardInterrupt}, VALUE, "retry_on: KeyboardInterrupt is never retried"),
        ({"timeout": 0}, VALUE, "timeout must be a number > 0 or None, got 0"),
        ({"timeout": math.nan}, VALUE, "timeout must be a number > 0 or None, got nan"),
        ({"timeout": "5"}, TYPE, "timeout must be a number > 0 or None, got '5'"),
        ({"trigger": "sometimes"}, VALUE, "trigger must be one of 'all_success', 'all_done'"),
        ({"trigger": 1}, TYPE, "trigger must be a tp.Trigger, got 1"),
        ({"uses": ["gpu"]}, TYPE, r"uses must be a mapping of pool name to slots, got \['gpu'\]"),
        ({"uses": {"gpu": 0}}, VALUE, r"uses\['gpu'\] must be a positive int, got 0"),
        ({"uses": {"gpu": 1.0}}, TYPE, r"uses\['gpu'\] must be a positive int, got 1.0"),
        ({"uses": {"": 1}}, TYPE, "uses: pool names must be non-empty strings, got ''"),
        ({"uses": ""}, TYPE, "uses: pool names must be non-empty strings, got ''"),
        ({"exclusive": 1}, TYPE, "exclusive must be a bool, got 1"),
        ({"priority": 1.5}, TYPE, "priority must be an int, got 1.5"),
        ({"priority": None}, TYPE, "priority must be an int, got None"),
        ({"retrys": 2}, TYPE, r"unknown option retrys=2 \(did you mean retries=\?\)"),
        ({"zzz": 2}, TYPE, "unknown option zzz=2; options: exclusive, priority, retries"),
    ],
)
def test_every_option_is_checked_with_a_message_naming_stage_and_option(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    pipe = tp.Pipeline("p")
    with pytest.raises(error, match="^stage 's': " + message) as info:
        pipe.add_stage("s", noop, **kwargs)
    assert type(info.value) is error  # exactly: a TypeError only for a wrong type
    assert info.value.stage == "s"  # type: ignore[attr-defined]
    assert "s" not in pipe
    # The same check, the same class, wherever the option is given.
    with pytest.raises(error, match="^stage 'c': " + message):
        pipe.add_command("c", ["true"], **kwargs)
    with pytest.raises(error, match="^stage 'd': " + message):
        pipe.stage(name="d", **kwargs)(noop)
    with pytest.raises(error, match="^" + message):
        build_options(kwargs)


def test_definition_errors_are_also_the_builtin_they_resemble() -> None:
    with pytest.raises(ValueError, match="retries"):
        tp.Pipeline("p").add_stage("s", noop, retries=-1)
    with pytest.raises(TypeError, match="retries"):
        tp.Pipeline("p").add_stage("s", noop, retries="2")  # type: ignore[arg-type]


def test_options_objects_check_themselves_and_are_frozen() -> None:
    with pytest.raises(tp.StageDefinitionError, match=r"^retries must be a non-negative int"):
        tp.RetryPolicy(retries=-1)
    with pytest.raises(tp.StageDefinitionTypeError, match=r"^retry must be a RetryPolicy, got 3"):
        tp.StageOptions(retry=3)  # type: ignore[arg-type]
    with pytest.raises(tp.StageDefinitionError, match=r"^priority must be an int"):
        tp.StageOptions(priority="high")  # type: ignore[arg-type]
    options = tp.StageOptions(uses="gpu", trigger="always")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.priority = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        options.uses["gpu"] = 2  # type: ignore[index]
    assert options.trigger is tp.Trigger.ALWAYS
    assert dict(options.uses) == {"gpu": 1}


def test_values_are_normalised() -> None:
    policy = tp.RetryPolicy(retries=2, delay=1, backoff=3, max_delay=10, jitter=0)
    assert (policy.delay, policy.backoff, policy.max_delay, policy.jitter) == (1.0, 3.0, 10.0, 0.0)
    assert all(type(v) is float for v in (policy.delay, policy.backoff, policy.max_delay))
    uses = {"gpu": 2}
    options = tp.StageOptions(timeout=3, uses=uses)
    uses["gpu"] = 99  # the options keep their own copy
    assert options.uses == {"gpu": 2}
    assert type(options.timeout) is float
    assert tp.StageOptions(timeout=math.inf).timeout == math.inf


def test_pipeline_keywords_land_in_stage_options() -> None:
    pipe = tp.Pipeline("p", pools={"gpu": 2})

    def transient(exc: BaseException) -> bool:
        return True

    stage = pipe.add_stage(
        "s",
        noop,
        retries=3,
        retry_delay=[1, 2],
        retry_backoff=1.5,
        retry_max_delay=30,
        retry_jitter=0.1,
        retry_on=transient,
        timeout=9,
        trigger=tp.Trigger.ALL_DONE,
        uses="gpu",
        exclusive=True,
        priority=-2,
    )
    assert stage.options == tp.StageOptions(
        retry=tp.RetryPolicy(3, (1.0, 2.0), 1.5, 30.0, 0.1, transient),
        timeout=9.0,
        trigger=tp.Trigger.ALL_DONE,
        uses={"gpu": 1},
        exclusive=True,
        priority=-2,
    )
    assert (stage.retries, stage.retry_delay, stage.timeout) == (3, (1.0, 2.0), 9.0)
    assert pipe.pools == {"gpu": 2}


def test_a_stage_without_options_shares_the_default_options() -> None:
    pipe = tp.Pipeline("p")
    assert pipe.add_stage("a", noop).options is DEFAULT_OPTIONS
    assert pipe.stage(noop, name="b").options is DEFAULT_OPTIONS
    assert pipe.add_stage("c", noop, priority=1).options.retry is DEFAULT_OPTIONS.retry
    assert tp.StageOptions() == DEFAULT_OPTIONS


def test_stages_with_the_same_keywords_share_checked_options() -> None:
    pipe = tp.Pipeline("p")
    a = pipe.add_stage("a", noop, retries=1, timeout=2.0)
    b = pipe.add_stage("b", noop, retries=1, timeout=2.0)
    assert a.options is b.options
    # Equal but differently typed values are checked on their own, never shared.
    with pytest.raises(tp.StageDefinitionTypeError, match="retries must be a non-negative int"):
        pipe.add_stage("c", noop, retries=True, timeout=2.0)
    assert pipe.add_stage("d", noop, retries=1, timeout=2).options.timeout == 2.0
    with pytest.raises(tp.StageDefinitionError, match=r"retry_delay\[0\] must be"):
        pipe.add_stage("e", noop, retries=1, retry_delay=[-1])  # unhashable: checked every time
    with pytest.raises(tp.StageDefinitionError, match=r"retry_delay\[0\] must be"):
        pipe.add_stage("f", noop, retries=1, retry_delay=[-1])


def test_reprs_show_what_differs_from_the_defaults() -> None:
    assert repr(tp.StageOptions()) == "StageOptions()"
    options = tp.StageOptions(tp.RetryPolicy(retries=2, delay=0.5), timeout=3, uses={"gpu": 1})
    assert repr(options) == (
        "StageOptions(retry=RetryPolicy(retries=2, delay=0.5), timeout=3.0, uses={'gpu': 1})"
    )


def test_trigger_is_a_str_enum() -> None:
    assert [t.value for t in tp.Trigger] == [
        "all_success",
        "all_done",
        "one_failed",
        "none_failed",
        "always",
    ]
    assert tp.Trigger("one_failed") == "one_failed"


# -- pools ---------------------------------------------------------------------------------------


def _plan(**uses: Any) -> Any:
    return SimpleNamespace(
        stages=[SimpleNamespace(name=n, options=tp.StageOptions(uses=u)) for n, u in uses.items()]
    )


def test_check_pools_accepts_stages_within_their_pools() -> None:
    pools = check_pools(_plan(a="gpu", b={"gpu": 2, "db": 1}, c={}), {"gpu": 2, "db": 1})
    assert pools == {"gpu": 2, "db": 1}
    assert check_pools(_plan(a={}), None) == {}


@pytest.mark.parametrize(
    ("uses", "pools", "error", "message"),
    [
        ("gpu", None, VALUE, "stage 'x': uses unknown pool 'gpu' \\(pools: none\\)"),
        ({"gpu": 1}, {"db": 1}, VALUE, "stage 'x': uses unknown pool 'gpu' \\(pools: 'db'\\)"),
        ({"gpu": 3}, {"gpu": 2}, VALUE, "stage 'x': uses 3 slots of pool 'gpu', which has 2"),
        ({}, {"gpu": 0}, VALUE, r"pools\['gpu'\] must be a positive int, got 0"),
        ({}, {"gpu": "2"}, TYPE, r"pools\['gpu'\] must be a positive int, got '2'"),
        ({}, {3: 1}, TYPE, "pools: pool names must be non-empty strings, got 3"),
        ({}, [("gpu", 1)], TYPE, "pools must be a mapping of pool name to slots"),
    ],
)
def test_check_pools_names_stage_and_pool(
    uses: Any, pools: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match="^" + message) as info:
        check_pools(_plan(x=uses), pools)
    assert type(info.value) is error


def test_pipeline_pools_are_checked_and_read_only() -> None:
    with pytest.raises(tp.StageDefinitionError, match=r"pools\['gpu'\] must be a positive int"):
        tp.Pipeline("p", pools={"gpu": -1})
    pipe = tp.Pipeline("p", pools={"gpu": 1})
    with pytest.raises(TypeError):
        pipe.pools["gpu"] = 5  # type: ignore[index]
    assert tp.Pipeline("q").pools == {}


# -- the policy in a run ---------------------------------------------------------------------------


def _flaky(errors: Sequence[Exception], times: list[float]) -> Any:
    """A stage raising `errors` in turn (then succeeding), recording when each attempt starts."""

    async def stage(ctx: tp.StageContext) -> int:
        times.append(trio.current_time())
        if ctx.attempt <= len(errors):
            raise errors[ctx.attempt - 1]
        return ctx.attempt

    return stage


def _retrying(sink: RecordingSink) -> list[tuple[int, float]]:
    return [(e.attempt, e.delay) for e in sink.events if isinstance(e, tp.StageRetrying)]


async def test_a_run_waits_the_policys_delays_with_four_retries(autojump_clock: Any) -> None:
    times: list[float] = []
    pipe = tp.Pipeline("p")
    pipe.add_stage("s", _flaky([OSError()] * 4, times), retries=4, retry_delay=1, retry_backoff=3)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.stages["s"].value == 5
    assert _retrying(sink) == [(1, 1.0), (2, 3.0), (3, 9.0), (4, 27.0)]
    assert times == [0.0, 1.0, 4.0, 13.0, 40.0]


async def test_a_run_follows_a_delay_sequence_and_the_cap(autojump_clock: Any) -> None:
    times: list[float] = []
    pipe = tp.Pipeline("p")
    pipe.add_stage(
        "s", _flaky([OSError()] * 4, times), retries=5, retry_delay=[2, 7, 50], retry_max_delay=20
    )
    sink = RecordingSink()
    await tp.run(pipe, sinks=[sink])
    assert _retrying(sink) == [(1, 2.0), (2, 7.0), (3, 20.0), (4, 20.0)]
    assert times == [0.0, 2.0, 9.0, 29.0, 49.0]


async def test_seeded_jitter_reproduces_a_runs_delays(autojump_clock: Any) -> None:
    async def once(seed: int) -> list[tuple[int, float]]:
        pipe = tp.Pipeline("p")
        pipe.add_stage("s", _flaky([OSError()] * 3, []), retries=3, retry_delay=4, retry_jitter=0.5)
        sink = RecordingSink()
        random.seed(seed)
        await tp.run(pipe, sinks=[sink])
        return _retrying(sink)

    first, again, other = await once(5), await once(5), await once(6)
    assert first == again
    assert first != other
    bases = [4.0, 8.0, 16.0]
    assert all(b * 0.5 <= d <= b * 1.5 for (_, d), b in zip(first, bases, strict=True))
    assert [d for _, d in first] != bases


async def test_retry_on_fails_other_errors_at_once(autojump_clock: Any) -> None:
    times: list[float] = []
    pipe = tp.Pipeline("p")
    pipe.add_stage(
        "s",
        _flaky([ConnectionResetError("reset"), KeyError("bug")], times),
        retries=5,
        retry_delay=1,
        retry_on=ConnectionError,
    )
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    outcome = result.stages["s"]
    assert (outcome.status, outcome.attempts) == (tp.StageStatus.FAILED, 2)
    assert isinstance(outcome.error, KeyError)
    assert _retrying(sink) == [(1, 1.0)]
    assert times == [0.0, 1.0]


async def test_retry_on_a_predicate_in_a_run(autojump_clock: Any) -> None:
    pipe = tp.Pipeline("p")
    errors = [RuntimeError("flaky 1"), RuntimeError("flaky 2"), RuntimeError("fatal")]
    pipe.add_stage("s", _flaky(errors, []), retries=5, retry_on=lambda exc: "flaky" in str(exc))
    result = await tp.run(pipe)
    assert result.stages["s"].attempts == 3
    assert str(result.stages["s"].error) == "fatal"


async def _run_slow(autojump: Any, **options: Any) -> tp.StageOutcome:
    async def slow(ctx: tp.StageContext) -> None:
        await trio.sleep(10)

    pipe = tp.Pipeline("p")
    pipe.add_stage("s", slow, timeout=1, retries=2, **options)
    return (await tp.run(pipe)).stages["s"]


async def test_timeouts_are_retried_without_retry_on(autojump_clock: Any) -> None:
    outcome = await _run_slow(autojump_clock)
    assert outcome.attempts == 3
    assert isinstance(outcome.error, tp.StageTimeout)


async def test_with_retry_on_timeouts_are_retried_only_if_it_matches(autojump_clock: Any) -> None:
    assert (await _run_slow(autojump_clock, retry_on=ConnectionError)).attempts == 1
    assert (await _run_slow(autojump_clock, retry_on=(ConnectionError, TimeoutError))).attempts == 3
    assert (await _run_slow(autojump_clock, retry_on=tp.StageTimeout)).attempts == 3


# -- properties ----------------------------------------------------------------------------------

_ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.lists(st.one_of(st.integers(-3, 3), st.floats(), st.text(max_size=1)), max_size=3),
    st.tuples(st.sampled_from([ValueError, int, KeyboardInterrupt, "x"])),
    st.dictionaries(st.text(max_size=2), st.one_of(st.integers(-2, 3), st.floats()), max_size=2),
    st.sampled_from([ValueError, object(), lambda exc: True, tp.Trigger.ALWAYS, "always"]),
)


@settings(max_examples=100)
@given(st.dictionaries(st.sampled_from([*StageKeywords.__annotations__]), _ANYTHING, max_size=4))
def test_any_option_value_is_accepted_or_refused_with_a_definition_error(
    keywords: dict[str, Any],
) -> None:
    error: tp.StageDefinitionError | None = None
    try:
        options = build_options(keywords)
    except tp.StageDefinitionError as exc:  # and never any other exception
        error = exc
    if error is not None:
        culprit = error.detail.split()[0].rstrip(":").split("[")[0]
        assert culprit in {*keywords, "unknown"}, error
    else:
        assert isinstance(options, tp.StageOptions)  # and then it is usable:
        options.retry.delay_before(1)
        options.retry.should_retry(RuntimeError(), 1)


@settings(max_examples=100)
@given(
    retries=st.integers(0, 50),
    delay=st.one_of(
        st.floats(0, 100), st.lists(st.floats(0, 100), min_size=1, max_size=4).map(tuple)
    ),
    backoff=st.floats(1, 10),
    max_delay=st.none() | st.floats(0.001, 1000),
    jitter=st.floats(0, 0.99),
    seed=st.integers(0, 2**32),
)
def test_delays_stay_within_the_policys_bounds(
    retries: int,
    delay: float | tuple[float, ...],
    backoff: float,
    max_delay: float | None,
    jitter: float,
    seed: int,
) -> None:
    policy = tp.RetryPolicy(retries, delay, backoff, max_delay, jitter)
    random.seed(seed)
    for k in range(1, retries + 2):
        if isinstance(delay, tuple):
            base = float(delay[min(k, len(delay)) - 1])
        else:
            try:
                base = delay * backoff ** (k - 1)
            except OverflowError:
                base = math.inf
        capped = base if max_delay is None else min(base, max_delay)
        got = policy.delay_before(k)
        assert capped * (1 - jitter) <= got * (1 + 1e-12) or got == capped
        assert got <= capped * (1 + jitter) * (1 + 1e-12) or got == capped
    assert [policy.should_retry(OSError(), k) for k in range(1, retries + 2)] == [
        True
    ] * retries + [False]
