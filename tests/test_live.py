"""The rich live view, in-process on a fake terminal (a StringIO console with force_terminal)."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing
from rich.console import Console

import trio_pipeline as tp
from tests.support.terminal import assert_display_ended, screen
from trio_pipeline import _live
from trio_pipeline._live import LiveSink, RunTracker, open_live_sink


def fake_terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=80, color_system=None), buffer


def demo_pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("demo")

    @pipe.stage
    async def first(ctx: tp.StageContext) -> int:
        await trio.sleep(1)
        ctx.log("[bold]literal[/bold]")
        return 1

    @pipe.stage(after=first)
    async def slow(ctx: tp.StageContext) -> int:
        await trio.sleep(2)
        return 2

    @pipe.stage(after=first)
    async def broken(ctx: tp.StageContext) -> int:
        await trio.sleep(0.5)
        raise ValueError("[red]no markup[/red]")

    @pipe.stage(after=broken)
    async def downstream(ctx: tp.StageContext) -> None:
        pass

    return pipe


async def test_live_view_prints_stage_lines_and_erases_its_area(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console, buffer = fake_terminal()
    async with open_live_sink(console) as sink:
        result = await tp.run(demo_pipeline(), sinks=[sink], keep_going=True)
    assert result.counts[tp.StageStatus.FAILED] == 1
    raw = buffer.getvalue()
    # While it ran, the area showed the running stages with their elapsed time and counts.
    assert "slow 1.0s" in raw
    assert "3/4 pending 0 · running 1 · done 3" in raw
    assert assert_display_ended(raw) == [
        "Running 'demo': 4 stages",
        "  first | [bold]literal[/bold]",
        "✓ first: succeeded (1.00s)",
        "✗ broken: failed (ValueError: [red]no markup[/red])",
        "⊘ downstream: blocked (upstream 'broken' failed)",
        "✓ slow: succeeded (2.00s)",
        "Summary: 2 succeeded, 1 failed, 1 blocked in 3.00s",
    ]


async def test_live_view_ends_cleanly_when_the_block_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console, buffer = fake_terminal()
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="boom"), flatten_subgroups=True):
        async with (
            open_live_sink(console) as sink,
            tp.open_run(demo_pipeline(), sinks=[sink]),
        ):
            await trio.sleep(1.25)  # "slow" and "broken" are running
            raise RuntimeError("boom")
    raw = buffer.getvalue()
    assert "pending 1 · running 2 · done 1" in raw
    lines = assert_display_ended(raw)
    assert lines[-1] == "Summary: 1 succeeded, 3 cancelled in 1.25s"


async def test_live_view_ends_cleanly_when_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console, buffer = fake_terminal()
    with trio.move_on_after(1.25):
        async with open_live_sink(console) as sink:
            await tp.run(demo_pipeline(), sinks=[sink])
    lines = assert_display_ended(buffer.getvalue())
    assert lines[-1] == "Summary: 1 succeeded, 3 cancelled in 1.25s"


async def test_tracker_counts_and_partial_summary(autojump_clock: trio.testing.MockClock) -> None:
    tracker = RunTracker()
    seen: list[tuple[int, int, int]] = []

    class Probe:
        # One sink: each sink has a feed of its own, so two sinks' views are not in step.
        async def handle(self, event: tp.Event, /) -> None:
            await tracker.handle(event)
            seen.append((tracker.pending, len(tracker.running), len(tracker.done)))

        async def aclose(self) -> None:
            await tracker.aclose()

    async with tp.open_run(demo_pipeline(), sinks=[Probe()], keep_going=True) as handle:
        await trio.sleep(1.75)
        assert tracker.running.keys() == {"slow"}
        assert tracker.partial_summary(trio.current_time()) == (
            "Summary: 1 succeeded, 1 failed, 1 blocked, 1 still running in 1.75s (forced exit)"
        )
        await handle.wait_finished()
    assert seen[0] == (4, 0, 0)
    assert seen[-1] == (0, 0, 4)  # at RunFinished
    assert tracker.finished is not None


def test_screen_emulator_applies_erase_and_cursor_up() -> None:
    # The test helper itself: a bar drawn, erased and overwritten leaves only the text.
    raw = "a\nbar\r\x1b[2K\x1b[1A\x1b[2Kb\nc\x1b[1A\rd"
    assert screen(raw) == ["d", "c"]


async def test_live_area_is_erased_even_if_no_run_closes_the_sink(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console, buffer = fake_terminal()
    with pytest.RaisesGroup(KeyError, flatten_subgroups=True):
        async with open_live_sink(console) as sink:
            await sink.handle(tp.RunStarted("r", 0, 0.0, "p", ("a", "b")))
            await sink.handle(tp.StageStarted("r", 1, 0.0, "a", 1))
            await trio.sleep(1)
            raise KeyError("escaped")
    raw = buffer.getvalue()
    assert "a 0.9s" in raw
    assert assert_display_ended(raw) == ["Running 'p': 2 stages"]


async def test_events_are_rendered_in_batches_not_one_by_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A render per event made a 5,000-stage run take minutes: handle() only records.
    console, buffer = fake_terminal()
    names = tuple(f"s{i}" for i in range(1000))
    async with open_live_sink(console) as sink:
        before = len(buffer.getvalue())
        await sink.handle(tp.RunStarted("r", 0, 0.0, "p", names))
        for i, name in enumerate(names):
            await sink.handle(tp.StageStarted("r", 1 + i, 0.0, name, 1))
        assert len(buffer.getvalue()) == before
        sink.refresh()
        shown = buffer.getvalue()[before:]
        assert shown.count("Running 'p': 1000 stages") == 1
        assert "... and 988 more" in shown
        assert "0/1000 pending 0 · running 1000 · done 0" in shown
    assert assert_display_ended(buffer.getvalue()) == ["Running 'p': 1000 stages"]


async def test_handle_only_queues_formatting_waits_for_the_repaint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, buffer = fake_terminal()
    sink = LiveSink(console)

    def no_formatting(self: LiveSink, item: object) -> str:
        raise AssertionError("handle formatted a line")

    monkeypatch.setattr(LiveSink, "_line", no_formatting)
    await sink.handle(tp.RunStarted("r", 0, 0.0, "p", ("a",)))
    for seq in range(1, 10_001):
        await sink.handle(tp.StageLog("r", seq, 0.0, "a", "x"))
    assert buffer.getvalue() == ""
    assert sink.tracker.total == 1


async def test_a_repaint_formats_at_most_its_budget_of_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console, _ = fake_terminal()
    sink = LiveSink(console)
    await sink.handle(tp.RunStarted("r", 0, 0.0, "p", ("a",)))
    await sink.handle(tp.StageStarted("r", 1, 0.0, "a", 1))
    n = 10_000
    for i in range(n):
        await sink.handle(tp.StageLog("r", 2 + i, 0.0, "a", f"line {i}"))
    ticks = iter(range(10**9))
    # A clock that advances 1 ms per look: the budget (3 ms) allows a few chunks only.
    monkeypatch.setattr(_live, "_budget_clock", lambda: next(ticks) / 1000)
    frames = []
    while sink._pending:
        frames.append(sink._frame(budget=_live.FRAME_BUDGET))
    assert len(frames) > 5
    assert all(frame.count("  a | line ") <= 4 * 256 for frame in frames)
    printed = [line for frame in frames for line in screen(frame) if "| line" in line]
    assert printed == [f"  a | line {i}" for i in range(n)]  # each once, in order


async def test_output_written_during_the_display_appears_above_the_area(
    autojump_clock: trio.testing.MockClock,
) -> None:
    import sys

    console, buffer = fake_terminal()
    real = sys.stdout
    async with open_live_sink(console) as sink:
        await sink.handle(tp.RunStarted("r", 0, 0.0, "p", ("a",)))
        await sink.handle(tp.StageStarted("r", 1, 0.0, "a", 1))
        print("a notice")
        sys.stderr.write("partial ")
        sys.stderr.write("line\n")
        await trio.sleep(1)
        raw = buffer.getvalue()
        assert screen(raw)[:3] == ["Running 'p': 1 stage", "a notice", "partial line"]
        assert "pending 0 · running 1 · done 0" in screen(raw)[-1]
    assert sys.stdout is real
    assert assert_display_ended(buffer.getvalue())[1:] == ["a notice", "partial line"]


async def test_the_summary_shows_how_long_the_user_waited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    console, buffer = fake_terminal()
    sink = LiveSink(console)
    sink.start()
    await sink.handle(tp.RunStarted("r", 0, 0.0, "p", ()))
    await trio.sleep(3)  # the view lagged 2 s behind the run's end, at 1 s
    counts = {status: 0 for status in tp.StageStatus if status.is_terminal}
    await sink.handle(tp.RunFinished("r", 1, 1.0, tp.RunState.CLOSED, counts, 1.0))
    await sink.aclose()
    assert assert_display_ended(buffer.getvalue())[-1] == "Summary: no stages in 3.00s"


async def test_live_view_shows_item_counts_and_rates_while_items_flow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pipe = tp.Pipeline("stream")

    @pipe.stage
    async def src(ctx: tp.StageContext) -> AsyncIterator[int]:
        for i in range(50):
            await trio.sleep(0.1)
            yield i

    @pipe.stage(each=src)
    async def work(ctx: tp.StageContext, item: int) -> int:
        return item

    console, buffer = fake_terminal()
    async with open_live_sink(console) as sink:
        await tp.run(pipe, sinks=[sink], progress_interval=1.0)
    raw = buffer.getvalue()
    # The running rows carry each item stage's counts and rate so far.
    assert re.search(r"work \d+\.\ds · 10 in, 10 out, 10/s", raw)
    assert re.search(r"src +\d+\.\ds · 0 in, 19 out, 10/s", raw)
    assert assert_display_ended(raw)[-3:] == [
        "✓ src: succeeded [0 in, 50 out, 10/s] (5.00s)",
        "✓ work: succeeded [50 in, 50 out, 10/s] (5.00s)",
        "Summary: 2 succeeded in 5.00s",
    ]
