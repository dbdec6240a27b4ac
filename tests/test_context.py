"""StageContext: what a stage sees and how it logs."""

from __future__ import annotations

import io

import pytest

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink


async def test_ctx_log_emits_stage_log_events() -> None:
    pipe = tp.Pipeline("p")
    kept: list[tp.StageContext] = []

    @pipe.stage
    async def talk(ctx: tp.StageContext) -> None:
        ctx.log("hello")
        ctx.log("world")
        kept.append(ctx)

    sink = RecordingSink()
    out = io.StringIO()
    await tp.run(pipe, sinks=[sink, tp.ConsoleSink(out, logs=True)])
    logs = [(e.stage, e.message) for e in sink.events if isinstance(e, tp.StageLog)]
    assert logs == [("talk", "hello"), ("talk", "world")]
    assert out.getvalue().splitlines()[:2] == ["talk | hello", "talk | world"]
    with pytest.raises(RuntimeError, match="stage 'talk' has finished"):
        kept[0].log("too late")
