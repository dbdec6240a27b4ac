"""The built-in console sink and the text lines it shares with the live view."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import trio
import trio.testing

import trio_pipeline as tp
from trio_pipeline._result import count_statuses
from trio_pipeline._sinks import format_summary

S = tp.StageStatus


def test_the_summary_duration_includes_the_lag_behind_the_run() -> None:
    event = tp.RunFinished("r", 9, 10.0, tp.RunState.CLOSED, count_statuses([S.SUCCEEDED]), 4.0)
    assert format_summary(event) == "Summary: 1 succeeded in 4.00s"
    assert format_summary(event, now=12.5) == "Summary: 1 succeeded in 6.50s"
    assert format_summary(event, now=9.0) == "Summary: 1 succeeded in 4.00s"  # never less


async def test_console_sink_shows_the_time_the_user_waited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    out = io.StringIO()

    class Late:
        """Holds the console sink's feed back by 2 s, as a slow terminal would."""

        def __init__(self) -> None:
            self.console = tp.ConsoleSink(out)

        async def handle(self, event: tp.Event, /) -> None:
            if isinstance(event, tp.RunFinished):
                await trio.sleep(2)
            await self.console.handle(event)

        async def aclose(self) -> None:
            await self.console.aclose()

    pipe = tp.Pipeline("p")

    @pipe.stage
    async def a(ctx: tp.StageContext) -> None:
        await trio.sleep(1)

    result = await tp.run(pipe, sinks=[Late()])
    assert out.getvalue().splitlines()[-1] == "Summary: 1 succeeded in 3.00s"
    assert result.duration == 3.0


def test_console_sink_has_a_readable_name(tmp_path: Path) -> None:
    with open(tmp_path / "out.txt", "w") as file:
        assert repr(tp.ConsoleSink(file)) == f"ConsoleSink({str(tmp_path / 'out.txt')!r})"
    assert repr(tp.ConsoleSink(io.StringIO())) == "ConsoleSink('StringIO')"


def test_console_lines_of_item_stages_carry_their_counts_and_rate() -> None:
    from trio_pipeline._sinks import format_stage_line

    def finished(
        status: tp.StageStatus, *counts: int, error: str | None = None, reason: str | None = None
    ) -> Any:
        n_in, n_out, n_failed, n_cancelled = counts or (None, None, None, None)
        return tp.StageFinished(
            "r",
            1,
            2.0,
            "fetch",
            status,
            1,
            2.0,
            error,
            None,
            reason,
            items_in=n_in,
            items_out=n_out,
            items_failed=n_failed,
            items_cancelled=n_cancelled,
        )

    assert (
        format_stage_line(finished(tp.StageStatus.SUCCEEDED, 40, 120, 0, 0))
        == "fetch: succeeded [40 in, 120 out, 20/s] (2.00s)"
    )
    assert (
        format_stage_line(finished(tp.StageStatus.FAILED, 9, 7, 1, 1, error="ItemError: item 8"))
        == "fetch: failed [9 in, 7 out, 1 failed, 1 cancelled, 4/s] (ItemError: item 8)"
    )
    assert format_stage_line(finished(tp.StageStatus.SUCCEEDED)) == "fetch: succeeded (2.00s)"
    short = "upstream 'src' failed: received 3 of its 5 items"
    assert (
        format_stage_line(finished(tp.StageStatus.SUCCEEDED, 3, 3, 0, 0, reason=short))
        == f"fetch: succeeded [3 in, 3 out, 2/s] (2.00s; {short})"
    )
