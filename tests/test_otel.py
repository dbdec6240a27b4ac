"""OtelSink: the exported spans of a run, read back from the SDK's in-memory exporter."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trio_pipeline as tp
from trio_pipeline.testing import RecordingSink

pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

P = "trio_pipeline."


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def four_kinds() -> tp.Pipeline:
    """Fail-fast: a retry that succeeds, a failure, a blocked stage, cancelled ones."""
    pipe = tp.Pipeline("p")

    @pipe.stage(retries=1, retry_delay=0.5)
    async def flaky(ctx: tp.StageContext) -> None:
        await trio.sleep(0.5)
        if ctx.attempt == 1:
            raise ConnectionError("reset")

    @pipe.stage
    async def bad(ctx: tp.StageContext) -> None:
        ctx.log("going down")
        await trio.sleep(2)
        raise ValueError("boom")

    @pipe.stage(after=[bad])
    async def child(ctx: tp.StageContext) -> None:
        pass

    @pipe.stage
    async def slow(ctx: tp.StageContext) -> None:
        await trio.sleep(10)

    @pipe.stage(after=[slow])
    async def later(ctx: tp.StageContext) -> None:
        pass

    return pipe


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in sorted(spans, key=lambda s: (s.start_time or 0, s.name)):
        found.setdefault(span.name, []).append(span)
    return found


def seconds(span: ReadableSpan) -> float:
    assert span.start_time is not None
    assert span.end_time is not None
    return (span.end_time - span.start_time) / 1e9


def offset(span: ReadableSpan, root: ReadableSpan) -> float:
    assert span.start_time is not None
    assert root.start_time is not None
    return (span.start_time - root.start_time) / 1e9


async def test_span_tree_of_a_retry_a_failure_a_blocked_stage_and_a_cancel(
    autojump_clock: Any,
) -> None:
    tracer_provider, exporter = provider()
    recorder = RecordingSink()
    await tp.run(four_kinds(), sinks=[tp.OtelSink(tracer_provider), recorder])
    spans = by_name(exporter.get_finished_spans())
    assert sorted(spans) == [
        "pipeline p",
        "stage bad",
        "stage child",
        "stage flaky",
        "stage later",
        "stage slow",
    ]
    (root,) = spans.pop("pipeline p")
    assert root.parent is None
    for group in spans.values():
        for span in group:
            assert span.parent is not None
            assert span.parent.span_id == root.context.span_id
            assert span.context.trace_id == root.context.trace_id
    started, finished = recorder.events[0], recorder.events[-1]
    assert isinstance(started, tp.RunStarted)
    assert isinstance(finished, tp.RunFinished)
    assert started.wall_time is not None
    assert root.start_time == round(started.wall_time * 1e9)
    assert seconds(root) == pytest.approx(finished.duration, abs=1e-6)
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None
    assert dict(root.attributes) == {
        P + "pipeline": "p",
        P + "run_id": started.run_id,
        P + "stages": 5,
        P + "state": "closed",
        P + "duration": finished.duration,
        P + "count.succeeded": 1,
        P + "count.failed": 1,
        P + "count.blocked": 1,
        P + "count.skipped": 0,
        P + "count.cancelled": 2,
        P + "count.cached": 0,
    }

    first, second = spans["stage flaky"]
    assert dict(first.attributes or {}) == {
        P + "stage": "flaky",
        P + "attempt": 1,
        P + "status": "failed",
        P + "error": "ConnectionError: reset",
        P + "retry_delay": 0.5,
    }
    assert first.status.status_code is StatusCode.ERROR
    assert (offset(first, root), seconds(first)) == pytest.approx((0.0, 0.5))
    assert dict(second.attributes or {}) == {
        P + "stage": "flaky",
        P + "attempt": 2,
        P + "status": "succeeded",
    }
    assert second.status.status_code is StatusCode.UNSET
    assert (offset(second, root), seconds(second)) == pytest.approx((1.0, 0.5))

    (bad,) = spans["stage bad"]
    assert bad.attributes is not None
    assert bad.attributes[P + "status"] == "failed"
    assert bad.attributes[P + "error"] == "ValueError: boom"
    assert bad.status.status_code is StatusCode.ERROR
    assert bad.status.description == "ValueError: boom"
    assert seconds(bad) == pytest.approx(2.0)
    assert [(e.name, dict(e.attributes or {})) for e in bad.events] == [
        ("log", {"message": "going down", P + "stage": "bad"})
    ]
    assert bad.events[0].timestamp == bad.start_time

    (child,) = spans["stage child"]
    assert dict(child.attributes or {}) == {
        P + "stage": "child",
        P + "attempt": 0,
        P + "status": "blocked",
        P + "blocked_by": "bad",
        P + "reason": "upstream 'bad' failed",
    }
    assert seconds(child) == 0.0
    assert offset(child, root) == pytest.approx(2.0)

    (slow,) = spans["stage slow"]
    assert slow.attributes is not None
    assert (slow.attributes[P + "status"], slow.attributes[P + "attempt"]) == ("cancelled", 1)
    assert seconds(slow) == pytest.approx(2.0)
    (later,) = spans["stage later"]
    assert later.attributes is not None
    assert later.attributes[P + "status"] == "cancelled"
    assert later.attributes[P + "reason"] == "fail-fast stop"
    assert seconds(later) == 0.0


async def test_a_clean_run_is_ok(autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    tracer_provider, exporter = provider()
    # tracer_provider=None: the global provider (patched: the real one can be set only once).
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", lambda: tracer_provider)
    pipe = tp.Pipeline("ok")

    @pipe.stage
    async def only(ctx: tp.StageContext) -> None:
        await trio.sleep(1)

    await tp.run(pipe, sinks=[tp.OtelSink()])
    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["pipeline ok"]
    assert root.status.status_code is StatusCode.OK
    (only_span,) = spans["stage only"]
    assert seconds(only_span) == pytest.approx(1.0)


async def test_cancelled_run_is_an_error(autojump_clock: Any) -> None:
    tracer_provider, exporter = provider()
    pipe = tp.Pipeline("c")

    @pipe.stage
    async def forever(ctx: tp.StageContext) -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1):
        await tp.run(pipe, sinks=[tp.OtelSink(tracer_provider)])
    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["pipeline c"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "run cancelled: 1 cancelled"


async def test_events_ending_early_still_end_every_span() -> None:
    tracer_provider, exporter = provider()
    sink = tp.OtelSink(tracer_provider)
    await sink.handle(tp.RunStarted("r", 0, 10.0, "p", ("a",), wall_time=1000.0))
    await sink.handle(tp.StageStarted("r", 1, 11.0, "a", 1))
    await sink.aclose()
    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["pipeline p"]
    (a,) = spans["stage a"]
    assert root.start_time == 1000 * 10**9
    assert (a.start_time, a.end_time) == (1001 * 10**9, 1001 * 10**9)
    assert root.status.status_code is StatusCode.ERROR
    assert a.status.status_code is StatusCode.ERROR


async def test_a_cached_stage_is_a_zero_length_span_saying_so() -> None:
    tracer_provider, exporter = provider()
    sink = tp.OtelSink(tracer_provider)
    cached = tp.StageStatus.CACHED
    await sink.handle(tp.RunStarted("r", 0, 0.0, "p", ("a",), wall_time=1.0))
    await sink.handle(tp.StageFinished("r", 1, 0.5, "a", cached, 0, 0.0, None, None))
    await sink.aclose()
    (a,) = by_name(exporter.get_finished_spans())["stage a"]
    assert a.attributes is not None
    assert a.attributes[P + "reason"] == "answered from the cache"
    assert a.status.status_code is StatusCode.UNSET
    assert seconds(a) == 0.0
