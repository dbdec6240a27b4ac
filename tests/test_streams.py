"""The stream runtime (`_streams`): buffers, fan-out, workers, order, item errors, close, cancel."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import trio
import trio.testing

import trio_pipeline as tp
from tests.support.item_scenarios import make_item_property
from trio_pipeline.testing import RecordingSink, check_run


async def go(
    pipe: tp.Pipeline,
    *,
    control: Callable[[tp.RunHandle], Any] | None = None,
    at: float = 0.0,
    **options: Any,
) -> tuple[tp.RunResult, list[tp.Event]]:
    """Run `pipe`, optionally `control(handle)` at trio time `at`; check every invariant."""
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink], **options) as handle:
        if control is not None:
            await trio.sleep(at)
            control(handle)
    result = handle.result
    check_run(
        [sink],
        pipe,
        result,
        max_parallel=options.get("max_parallel"),
        keep_going=options.get("keep_going", False),
        progress_interval=options.get("progress_interval", 0.1),
    )
    return result, sink.events


def source_of(n: int, delay: float = 0.0, log: list[int] | None = None) -> Any:
    async def source(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(n):
            if delay:
                await trio.sleep(delay)
            if log is not None:
                log.append(i)
            yield i

    return source


def finished(events: list[tp.Event]) -> dict[str, tp.StageFinished]:
    return {e.stage: e for e in events if isinstance(e, tp.StageFinished)}


S = tp.StageStatus


# -- backpressure and fan-out ------------------------------------------------------------


@pytest.mark.parametrize(("buffer", "workers"), [(0, 1), (1, 1), (3, 1), (0, 3), (2, 4)])
async def test_produced_minus_slowest_finished_stays_within_buffer_workers_plus_one(
    autojump_clock: trio.testing.MockClock, buffer: int, workers: int
) -> None:
    produced: list[int] = []
    done = {"fast": 0, "slow": 0}
    worst = {"fast": 0, "slow": 0}
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(40, log=produced), name="src")

    def reader(name: str, delay: float) -> Any:
        async def fn(ctx: tp.StageContext, item: int) -> int:
            worst[name] = max(worst[name], len(produced) - done[name])
            await trio.sleep(delay)
            done[name] += 1
            worst[name] = max(worst[name], len(produced) - done[name])
            return item

        return fn

    pipe.stage(reader("fast", 0.1), name="fast", each="src", workers=workers, buffer=buffer)
    pipe.stage(reader("slow", 1.0), name="slow", each="src", workers=workers, buffer=buffer)
    result, events = await go(pipe)
    assert result.ok
    # The slower reader sets the pace; the bound holds, and is reached by one worker.
    assert worst["slow"] <= buffer + workers + 1
    assert worst["fast"] <= buffer + workers + 1
    if workers == 1:
        assert worst["slow"] == buffer + workers + 1
    ends = finished(events)
    assert ends["fast"].items_in == ends["slow"].items_in == ends["src"].items_out == 40


async def test_two_readers_each_get_every_item_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: dict[str, list[int]] = {"a": [], "b": []}
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(10), name="src")
    for name in seen:

        async def read(ctx: tp.StageContext, items: AsyncIterator[int], name: str = name) -> int:
            async for item in items:
                seen[name].append(item)
            return len(seen[name])

        pipe.stage(read, name=name, consumes="src", buffer=0)
    result, _ = await go(pipe)
    assert seen == {"a": list(range(10)), "b": list(range(10))}
    assert result.stages["a"].value == 10


# -- workers and order ---------------------------------------------------------------------


async def test_workers_bound_the_calls_in_flight_and_unordered_emits_in_completion_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running = {"now": 0, "max": 0}
    completed: list[int] = []
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(8), name="src")

    @pipe.stage(each="src", workers=3)
    async def work(ctx: tp.StageContext, item: int) -> int:
        running["now"] += 1
        running["max"] = max(running["max"], running["now"])
        await trio.sleep(10 - item)  # later items finish sooner
        running["now"] -= 1
        completed.append(item)
        return item

    @pipe.stage(after=[work])
    async def collect(ctx: tp.StageContext) -> list[int]:
        return list(ctx.inputs["work"])

    result, _ = await go(pipe)
    assert running["max"] == 3
    assert result.stages["collect"].value == completed
    assert completed[:3] == [2, 1, 0]


async def test_ordered_emits_in_input_order_with_flat_map(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(6), name="src")

    @pipe.stage(each="src", workers=3, ordered=True)
    async def expand(ctx: tp.StageContext, item: int) -> AsyncIterator[tuple[int, int]]:
        await trio.sleep(6 - item)
        for k in range(item % 3):  # 0, 1 or 2 outputs
            yield (item, k)

    @pipe.stage(each=expand, ordered=True, workers=2)
    async def again(ctx: tp.StageContext, item: tuple[int, int]) -> tuple[int, int]:
        await trio.sleep(item[1])
        return item

    @pipe.stage(after=[again])
    async def collect(ctx: tp.StageContext) -> list[tuple[int, int]]:
        return list(ctx.inputs["again"])

    result, events = await go(pipe)
    expected = [(i, k) for i in range(6) for k in range(i % 3)]
    assert result.stages["collect"].value == expected
    assert finished(events)["expand"].items_out == len(expected)


async def test_a_dynamic_map_over_an_ordinary_value(autojump_clock: trio.testing.MockClock) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def files(ctx: tp.StageContext) -> list[str]:
        return ["a", "bb", "ccc"]

    @pipe.stage(each=files, workers=4, ordered=True)
    async def size(ctx: tp.StageContext, item: str) -> int:
        await trio.sleep(len(item))
        return len(item)

    @pipe.stage(after=[size])
    async def total(ctx: tp.StageContext) -> int:
        return sum(ctx.inputs["size"])

    result, events = await go(pipe)
    assert result.stages["total"].value == 6
    starts = {e.stage: e.time for e in events if isinstance(e, tp.StageStarted)}
    assert starts["size"] >= finished(events)["files"].time


async def test_a_dynamic_map_over_a_value_that_is_not_iterable_fails_naming_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def count(ctx: tp.StageContext) -> int:
        return 3

    @pipe.stage(each=count)
    async def use(ctx: tp.StageContext, item: int) -> int:
        return item

    result, _ = await go(pipe)
    error = result.stages["use"].error
    assert isinstance(error, TypeError)
    assert "'count'" in str(error)


async def test_items_are_kept_only_for_an_ordinary_dependent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(5), name="src")

    @pipe.stage(each="src")
    async def double(ctx: tp.StageContext, item: int) -> int:
        return 2 * item

    result, _ = await go(pipe)
    assert result.stages["src"].value is None
    assert result.stages["double"].value is None
    assert result.stages["double"].items_out == 5


# -- item errors, retries, timeouts --------------------------------------------------------


class Boom(Exception):
    pass


def flaky(fail_times: dict[int, int], delay: float = 0.0) -> Any:
    """Item i raises Boom its first fail_times[i] calls."""
    calls: dict[int, int] = {}

    async def fn(ctx: tp.StageContext, item: int) -> int:
        calls[item] = calls.get(item, 0) + 1
        if delay:
            await trio.sleep(delay)
        if calls[item] <= fail_times.get(item, 0):
            raise Boom(f"item {item} call {calls[item]}")
        return item

    return fn


async def test_per_item_retries_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(3), name="src")
    pipe.stage(flaky({1: 3}), name="work", each="src", retries=3, retry_delay=1.0)
    t0 = trio.current_time()
    result, events = await go(pipe)
    assert result.ok
    assert result.stages["work"].items_out == 3
    # Delays 1, 2, 4 before retries 1, 2, 3 of item 1.
    assert finished(events)["work"].time - t0 == pytest.approx(7.0)


async def test_per_item_timeout_is_retried_then_fails_the_stage_naming_the_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(4), name="src")

    @pipe.stage(each="src", timeout=1.5, retries=1)
    async def slow(ctx: tp.StageContext, item: int) -> int:
        await trio.sleep(5.0 if item == 2 else 1.0)
        return item

    result, events = await go(pipe)
    outcome = result.stages["slow"]
    assert outcome.status is S.FAILED
    assert isinstance(outcome.error, tp.ItemError)
    assert outcome.error.index == 2
    assert isinstance(outcome.error.error, tp.StageTimeout)
    assert "item 2 of stage 'slow'" in (finished(events)["slow"].error or "")


async def test_skip_reports_item_failed_and_succeeds_without_the_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(6), name="src")
    pipe.stage(
        flaky({1: 9, 4: 9}), name="work", each="src", on_item_error="skip", ordered=True, workers=2
    )

    @pipe.stage(after=["work"])
    async def collect(ctx: tp.StageContext) -> list[int]:
        return list(ctx.inputs["work"])

    result, events = await go(pipe)
    assert result.ok
    assert result.stages["collect"].value == [0, 2, 3, 5]
    failed = [e for e in events if isinstance(e, tp.ItemFailed)]
    assert [(e.stage, e.index) for e in failed] == [("work", 1), ("work", 4)]
    assert failed[0].error == "Boom: item 1 call 1"
    end = finished(events)["work"]
    assert (end.items_in, end.items_out, end.items_failed, end.items_cancelled) == (6, 4, 2, 0)


async def test_fail_fast_cancels_the_readers_and_counts_their_items_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(20), name="src")
    pipe.stage(flaky({5: 1}, delay=1.0), name="work", each="src", workers=2)

    @pipe.stage(each="work", workers=2)
    async def after(ctx: tp.StageContext, item: int) -> int:
        await trio.sleep(10.0)
        return item

    result, events = await go(pipe)
    statuses = {name: o.status for name, o in result.stages.items()}
    assert statuses == {"src": S.CANCELLED, "work": S.FAILED, "after": S.CANCELLED}
    after_end = finished(events)["after"]
    assert after_end.items_in
    assert after_end.items_cancelled == after_end.items_in


async def test_keep_going_readers_finish_what_they_received_then_end_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(20), name="src")
    pipe.stage(flaky({5: 1}, delay=1.0), name="work", each="src", buffer=0)
    got: list[int] = []

    @pipe.stage(consumes="work", buffer=2)
    async def save(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        async for item in items:
            await trio.sleep(3.0)
            got.append(item)
        return len(got)

    @pipe.stage(each="src")
    async def other(ctx: tp.StageContext, item: int) -> int:
        return item

    @pipe.stage(after=[save])
    async def report(ctx: tp.StageContext) -> None:
        return None

    result, events = await go(pipe, keep_going=True)
    statuses = {name: o.status for name, o in result.stages.items()}
    assert statuses == {
        "src": S.SUCCEEDED,
        "work": S.FAILED,
        "save": S.BLOCKED,
        "other": S.SUCCEEDED,
        "report": S.BLOCKED,
    }
    ends = finished(events)
    assert got == [0, 1, 2, 3, 4]
    assert ends["save"].items_in == ends["work"].items_out == 5
    assert ends["save"].blocked_by == ends["report"].blocked_by == "work"
    assert ends["other"].items_in == 20  # the failed reader did not hold the source up


# -- progress ------------------------------------------------------------------------------


async def test_progress_is_throttled_and_final_counts_are_on_stage_finished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(100, delay=0.01), name="src")

    @pipe.stage(each="src")
    async def work(ctx: tp.StageContext, item: int) -> int:
        return item

    _, events = await go(pipe, progress_interval=0.25)
    progress = [e for e in events if isinstance(e, tp.StageProgress) and e.stage == "work"]
    # 100 items over 1.0 s: a handful of reports, not one per item.
    assert 2 <= len(progress) <= 5
    assert all(b.time - a.time >= 0.25 for a, b in itertools.pairwise(progress))
    end = finished(events)["work"]
    assert (end.items_in, end.items_out, end.items_failed) == (100, 100, 0)


async def test_no_progress_while_nothing_flows(autojump_clock: trio.testing.MockClock) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def src(ctx: tp.StageContext) -> AsyncIterator[int]:
        yield 1
        await trio.sleep(1000.0)
        yield 2
        await trio.sleep(1.0)

    _, events = await go(pipe)
    progress = [e for e in events if isinstance(e, tp.StageProgress)]
    assert len(progress) == 2  # one after each item, none during the long wait


# -- close and cancel ----------------------------------------------------------------------


async def test_close_stops_sources_at_their_next_yield_and_drains_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    closed: list[bool] = []
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def src(ctx: tp.StageContext) -> AsyncIterator[int]:
        try:
            for i in range(1000):
                await trio.sleep(0.1)
                yield i
        finally:
            closed.append(True)

    @pipe.stage(each=src, workers=2, buffer=3)
    async def work(ctx: tp.StageContext, item: int) -> int:
        await trio.sleep(1.0)
        return item

    @pipe.stage(consumes=work)
    async def save(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        return len([item async for item in items])

    @pipe.stage(after=[save])
    async def later(ctx: tp.StageContext) -> None:
        return None

    result, events = await go(pipe, control=tp.RunHandle.request_close, at=2.05)
    assert result.state is tp.RunState.CLOSED
    assert closed == [True]
    statuses = {name: o.status for name, o in result.stages.items()}
    assert statuses == {
        "src": S.CANCELLED,
        "work": S.SUCCEEDED,
        "save": S.SUCCEEDED,
        "later": S.CANCELLED,
    }
    ends = finished(events)
    assert ends["src"].items_out == ends["work"].items_in == ends["save"].items_in
    # At t=2.05 two items are done: produced = 2 + buffer 3 + workers 2 + 1 at the yield.
    assert result.stages["save"].value == ends["src"].items_out == 8


async def test_cancel_counts_items_in_flight_as_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(100), name="src")

    @pipe.stage(each="src", workers=4, buffer=2)
    async def work(ctx: tp.StageContext, item: int) -> int:
        await trio.sleep(1.0)
        return item

    result, events = await go(pipe, control=tp.RunHandle.cancel, at=2.5)
    assert result.state is tp.RunState.CANCELLED
    end = finished(events)["work"]
    assert end.status is S.CANCELLED
    assert (end.items_in, end.items_out, end.items_cancelled) == (12, 8, 4)


async def test_a_consumer_that_stops_early_drains_the_rest_counted_as_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(10), name="src")

    @pipe.stage(consumes="src")
    async def first_three(ctx: tp.StageContext, items: AsyncIterator[int]) -> list[int]:
        taken = []
        async for item in items:
            taken.append(item)
            if len(taken) == 3:
                break
        return taken

    result, events = await go(pipe)
    assert result.stages["first_three"].value == [0, 1, 2]
    end = finished(events)["first_three"]
    assert (end.items_in, end.items_cancelled) == (10, 7)


async def test_a_consumes_function_that_raises_counts_the_item_it_held_as_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(10), name="src")

    @pipe.stage(consumes="src")
    async def picky(ctx: tp.StageContext, items: AsyncIterator[int]) -> None:
        async for item in items:
            if item == 3:
                raise Boom("3")

    result, events = await go(pipe, keep_going=True)
    assert result.stages["picky"].status is S.FAILED
    end = finished(events)["picky"]
    assert (end.items_in, end.items_failed, end.items_cancelled) == (4, 1, 0)


async def test_a_group_takes_one_max_parallel_slot(autojump_clock: trio.testing.MockClock) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(5, delay=1.0), name="src")

    @pipe.stage(each="src", workers=2)
    async def work(ctx: tp.StageContext, item: int) -> int:
        return item

    @pipe.stage
    async def lone(ctx: tp.StageContext) -> None:
        await trio.sleep(1.0)

    _, events = await go(pipe, max_parallel=1)
    starts = {e.stage: e.time for e in events if isinstance(e, tp.StageStarted)}
    assert starts["src"] == starts["work"] == 0.0
    assert starts["lone"] == finished(events)["work"].time


async def test_per_item_sync_function_in_threads(autojump_clock: trio.testing.MockClock) -> None:
    def square(snapshot: tp.StageSnapshot, item: int) -> int:
        assert snapshot.name == "square"
        return item * item

    pipe = tp.Pipeline("p")
    pipe.stage(source_of(5), name="src")
    pipe.stage(square, each="src", workers=2, ordered=True, executor=tp.ThreadExecutor())

    @pipe.stage(after=["square"])
    async def collect(ctx: tp.StageContext) -> list[int]:
        return list(ctx.inputs["square"])

    result, _ = await go(pipe)
    assert result.stages["collect"].value == [0, 1, 4, 9, 16]


async def test_a_source_that_raises_fails_and_its_readers_end_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def src(ctx: tp.StageContext) -> AsyncIterator[int]:
        yield 1
        yield 2
        raise Boom("source broke")

    @pipe.stage(each=src)
    async def work(ctx: tp.StageContext, item: int) -> int:
        return item

    result, events = await go(pipe, keep_going=True)
    assert result.stages["src"].status is S.FAILED
    assert isinstance(result.stages["src"].error, Boom)
    end = finished(events)["work"]
    assert (end.status, end.items_in, end.blocked_by) == (S.BLOCKED, 2, "src")


async def _no_config(ctx: tp.StageContext) -> None:
    raise Boom("no config")


async def test_only_the_member_whose_outside_dependency_failed_is_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Each member's trigger rule reads its own dependencies: the source has none, so it
    # runs (with no reader left); its reader is BLOCKED by the failed config.
    pipe = tp.Pipeline("p")
    pipe.stage(_no_config, name="config")
    pipe.stage(source_of(3), name="src")

    @pipe.stage(each="src", after=["config"])
    async def work(ctx: tp.StageContext, item: int) -> int:
        return item

    result, _ = await go(pipe, keep_going=True)
    assert result.stages["src"].status is S.SUCCEEDED
    assert result.stages["src"].items_out == 3
    assert result.stages["work"].status is S.BLOCKED
    assert result.stages["work"].blocked_by == "config"


# -- trigger rules on item stages -------------------------------------------------------------


def failing_source(n: int) -> Any:
    async def source(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(n):
            yield i
        raise Boom("source broke")

    return source


async def test_an_all_done_reader_reads_what_arrived_and_reports_the_shortfall(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(failing_source(3), name="src")

    @pipe.stage(consumes="src", trigger="all_done")
    async def lenient(ctx: tp.StageContext, items: AsyncIterator[int]) -> list[int]:
        return [item async for item in items]

    @pipe.stage(consumes="src")
    async def strict(ctx: tp.StageContext, items: AsyncIterator[int]) -> list[int]:
        return [item async for item in items]

    @pipe.stage(after=[lenient])
    async def report(ctx: tp.StageContext) -> int:
        return len(ctx.inputs["lenient"])

    result, events = await go(pipe, keep_going=True)
    assert result.stages["src"].status is S.FAILED
    end = finished(events)["lenient"]
    assert (end.status, end.items_in) == (S.SUCCEEDED, 3)
    assert end.reason == "upstream 'src' failed: received 3 of its 3 items"
    assert result.stages["lenient"].value == [0, 1, 2]
    assert result.stages["report"].value == 3
    assert (result.stages["strict"].status, result.stages["strict"].blocked_by) == (
        S.BLOCKED,
        "src",
    )


async def test_an_all_done_reader_of_a_producer_that_never_ran_reads_an_empty_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_no_config, name="config")
    pipe.stage(source_of(3), name="src", after=["config"])

    @pipe.stage(each="src", trigger="all_done")
    async def cleanup(ctx: tp.StageContext, item: int) -> int:
        return item

    result, events = await go(pipe, keep_going=True)
    assert result.stages["src"].status is S.BLOCKED
    end = finished(events)["cleanup"]
    assert (end.status, end.items_in, end.items_out) == (S.SUCCEEDED, 0, 0)


async def test_none_failed_takes_a_skipped_producer_as_an_empty_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_task_ok, name="ok")
    pipe.stage(_task_ok, name="alarm", after=["ok"], trigger="one_failed")  # SKIPPED
    pipe.stage(source_of(3), name="src", after=["alarm"])

    @pipe.stage(consumes="src", trigger="none_failed")
    async def count(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        return len([item async for item in items])

    @pipe.stage(consumes="src")
    async def strict(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        return 0

    result, _ = await go(pipe)
    assert result.stages["src"].status is S.SKIPPED
    assert (result.stages["count"].status, result.stages["count"].value) == (S.SUCCEEDED, 0)
    assert result.stages["strict"].status is S.SKIPPED
    assert result.stages["strict"].reason == "trigger all_success not met: upstream 'src' skipped"


async def _task_ok(ctx: tp.StageContext) -> list[int]:
    return [1, 2, 3]


@pytest.mark.parametrize(("check_fails", "expected"), [(True, S.SUCCEEDED), (False, S.SKIPPED)])
async def test_a_dynamic_map_follows_its_trigger_rule_as_a_task_stage_does(
    autojump_clock: trio.testing.MockClock, check_fails: bool, expected: tp.StageStatus
) -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(_task_ok, name="files")

    @pipe.stage
    async def check(ctx: tp.StageContext) -> None:
        if check_fails:
            raise Boom("check failed")

    @pipe.stage(each="files", after=[check], trigger="one_failed")
    async def quarantine(ctx: tp.StageContext, item: int) -> int:
        return item

    result, _ = await go(pipe, keep_going=True)
    outcome = result.stages["quarantine"]
    assert outcome.status is expected
    if check_fails:
        assert outcome.items_out == 3


async def test_an_all_done_map_over_a_failed_stage_maps_over_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def files(ctx: tp.StageContext) -> list[int]:
        raise Boom("no listing")

    @pipe.stage(each=files, trigger="all_done")
    async def tidy(ctx: tp.StageContext, item: int) -> int:
        return item

    result, _ = await go(pipe, keep_going=True)
    assert (result.stages["tidy"].status, result.stages["tidy"].items_in) == (S.SUCCEEDED, 0)


async def test_the_group_waits_for_every_members_rule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def slow(ctx: tp.StageContext) -> None:
        await trio.sleep(2.0)
        raise Boom("slow failed")

    pipe.stage(source_of(2), name="src")

    @pipe.stage(each="src", after=[slow], trigger="all_done")
    async def work(ctx: tp.StageContext, item: int) -> int:
        return item

    result, events = await go(pipe, keep_going=True)
    starts = {e.stage: e.time for e in events if isinstance(e, tp.StageStarted)}
    assert starts["src"] == starts["work"] == pytest.approx(2.0)
    assert result.stages["work"].items_out == 2


async def test_an_exclusive_group_runs_alone_until_its_last_member_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression (check_run's replay): it let others start once the member that
    # started last (here the exclusive `fast`) ended, while `slow` still ran.
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(2), name="src")

    @pipe.stage(each="src")
    async def slow(ctx: tp.StageContext, item: int) -> int:
        await trio.sleep(1.0)
        return item

    @pipe.stage(each="src", exclusive=True)
    async def fast(ctx: tp.StageContext, item: int) -> int:
        return item

    pipe.stage(_task_ok, name="other")
    _, events = await go(pipe, max_parallel=2)
    ends, starts = (
        finished(events),
        {e.stage: e.time for e in events if isinstance(e, tp.StageStarted)},
    )
    assert ends["fast"].time < ends["slow"].time == pytest.approx(2.0)
    assert starts["other"] == pytest.approx(2.0)


# -- pools on sources and consumes= stages -------------------------------------------------------


async def test_a_source_and_a_consumer_hold_their_slots_for_the_whole_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("p", pools={"db": 2})
    pipe.stage(source_of(3, delay=1.0), name="src", uses="db")

    @pipe.stage(consumes="src", uses="db")
    async def save(ctx: tp.StageContext, items: AsyncIterator[int]) -> int:
        return len([item async for item in items])

    @pipe.stage(uses="db", priority=1)
    async def other(ctx: tp.StageContext) -> None:
        await trio.sleep(0.5)

    result, events = await go(pipe)
    assert result.stages["save"].value == 3
    starts = {e.stage: e.time for e in events if isinstance(e, tp.StageStarted)}
    ends = finished(events)
    # The group needs both slots at once: it waits (holding none) until `other` ends.
    assert starts["other"] == 0.0
    assert starts["src"] == starts["save"] == pytest.approx(0.5)
    assert ends["save"].time == pytest.approx(3.5)


# -- the property: random item pipelines keep every promise --------------------------------

test_random_item_pipelines_keep_every_promise = make_item_property()


def _cube(snapshot: tp.StageSnapshot, item: int) -> int:
    return item**3


async def test_per_item_sync_function_in_processes() -> None:
    pipe = tp.Pipeline("p")
    pipe.stage(source_of(4), name="src")
    pipe.stage(_cube, each="src", workers=2, ordered=True, executor=tp.ProcessExecutor(limit=2))

    @pipe.stage(after=["_cube"])
    async def collect(ctx: tp.StageContext) -> list[int]:
        return list(ctx.inputs["_cube"])

    result, _ = await go(pipe)
    assert result.stages["collect"].value == [0, 1, 8, 27]


async def test_pools_apply_per_item_call_shared_with_task_stages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    in_use = {"now": 0, "max": 0}
    pipe = tp.Pipeline("p", pools={"gpu": 2})
    pipe.stage(source_of(6), name="src")

    def using(seconds: float) -> Any:
        async def hold() -> None:
            in_use["now"] += 1
            in_use["max"] = max(in_use["max"], in_use["now"])
            await trio.sleep(seconds)
            in_use["now"] -= 1

        return hold

    hold_item = using(1.0)

    @pipe.stage(each="src", workers=4, uses="gpu")
    async def infer(ctx: tp.StageContext, item: int) -> int:
        await hold_item()
        return item

    hold_task = using(1.5)

    @pipe.stage(uses={"gpu": 1})
    async def train(ctx: tp.StageContext) -> None:
        await hold_task()

    result, events = await go(pipe, max_parallel=2)
    assert result.ok
    # 4 workers, but the pool has 2 slots, shared with `train`: never more than 2 at once.
    assert in_use["max"] == 2
    assert finished(events)["infer"].items_out == 6
    # train holds a slot over 0-1.5 s, so items run one at a time until then (0-1, 1-2),
    # then two at a time (1.5-2.5, 2-3, 2.5-3.5, 3-4): the stream ends at 4.0.
    assert finished(events)["infer"].time == pytest.approx(4.0)


async def test_a_pipeline_cache_skips_item_stages(
    autojump_clock: trio.testing.MockClock, tmp_path: Any
) -> None:
    calls: list[int] = []
    pipe = tp.Pipeline("p", cache=True)

    @pipe.stage
    async def files(ctx: tp.StageContext) -> list[int]:
        return [1, 2, 3]

    @pipe.stage(each=files)
    async def double(ctx: tp.StageContext, item: int) -> int:
        calls.append(item)
        return 2 * item

    for _ in range(2):
        result = await tp.run(pipe, cache_dir=tmp_path)
        assert result.stages["double"].items_out == 3
    assert calls == [1, 2, 3, 1, 2, 3]  # files was a cache hit the second time; double ran
    with pytest.raises(tp.StageDefinitionError, match="do not apply to item stages"):
        pipe.stage(double.fn, name="again", each=files, cache=True)


async def test_a_stop_that_cancels_part_of_an_unstarted_group_ends_all_of_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Regression (found by the item property): the stop cancelled `a`, whose ending
    # re-evaluated its group and tried to end `a` again; `b` stayed PENDING forever.
    pipe = tp.Pipeline("p")

    @pipe.stage
    async def seed(ctx: tp.StageContext) -> list[int]:
        await trio.sleep(1.0)
        return [1, 2]

    @pipe.stage(each=seed)
    async def a(ctx: tp.StageContext, item: int) -> int:
        return item

    pipe.stage(source_of(3), name="other", after=[seed])

    @pipe.stage(each=a, after=["other"])
    async def b(ctx: tp.StageContext, item: int) -> int:
        return item

    with trio.fail_after(10):
        result, _ = await go(pipe, control=tp.RunHandle.cancel, at=0.5, max_parallel=1)
    assert result.state is tp.RunState.CANCELLED
    assert {o.status for o in result.stages.values()} == {S.CANCELLED}
