"""OpenTelemetry traces of a run: `OtelSink`. Needs the ``otel`` extra.

OpenTelemetry is imported when a sink is made, not when trio_pipeline is, so the
package works without it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._events import (
    Event,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageRetrying,
    StageStarted,
)
from ._state import RunState, StageStatus

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

_OK = frozenset({"succeeded", "skipped", "cached"})
_PREFIX = "trio_pipeline."


class OtelSink:
    """Exports each run as one trace: a span for the run, a child span per stage attempt.

    Spans (attribute names start with ``trio_pipeline.``):

    - the run, named ``pipeline <name>``: ``pipeline``, ``run_id``, ``stages``, and at
      the end ``state``, ``duration`` and ``count.<status>``. Its status is OK for a
      CLOSED run whose stages all succeeded (or were skipped), ERROR otherwise.
    - each attempt, named ``stage <name>``: ``stage``, ``attempt``, ``status`` (a
      retried attempt has ``"failed"`` and ``retry_delay``), ``error`` (span status
      ERROR), ``reason``, ``blocked_by`` and item counts where the events have them.
      `StageLog` lines are span events named ``log`` (attribute ``message``).
    - a stage that never started (blocked, skipped, cancelled, cached): a zero-length
      span at the time it was given up (or answered), with its ``reason``.

    Span times are the wall-clock time at the run's start plus the events' trio-clock
    offsets, so span durations equal the durations the events report, however late
    the sink receives them.

    Args:
        tracer_provider: Where the spans go; default: OpenTelemetry's global provider.
            The sink does not shut it down or flush it (the caller owns it); prefer a
            ``BatchSpanProcessor``, since a sink's `handle` runs on the event loop.

    Raises:
        ImportError: OpenTelemetry is not installed (``pip install 'trio-pipeline[otel]'``).
    """

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:  # pragma: no cover - the test extra installs it
            raise ImportError(
                "tp.OtelSink needs OpenTelemetry: pip install 'trio-pipeline[otel]'"
            ) from exc
        from . import __version__

        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self._tracer = provider.get_tracer("trio_pipeline", __version__)
        self._trace = trace
        self._run: Span | None = None
        self._attempts: dict[str, Span] = {}
        self._origin_ns = 0
        self._t0 = 0.0
        self._last = 0.0
        self._failed = False

    def _ns(self, t: float) -> int:
        return self._origin_ns + round((t - self._t0) * 1e9)

    async def handle(self, event: Event, /) -> None:
        self._last = event.time
        if isinstance(event, StageLog):
            span = self._attempts.get(event.stage) or self._run
            if span is not None:
                attributes = {"message": event.message, _PREFIX + "stage": event.stage}
                span.add_event("log", attributes, timestamp=self._ns(event.time))
        elif isinstance(event, StageStarted):
            self._start_attempt(event.stage, event.attempt, event.time)
        elif isinstance(event, StageRetrying):
            span = self._attempts.pop(event.stage, None)
            if span is not None:
                span.set_attributes(
                    {
                        _PREFIX + "status": StageStatus.FAILED.value,
                        _PREFIX + "error": event.error,
                        _PREFIX + "retry_delay": event.delay,
                    }
                )
                span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error))
                span.end(self._ns(event.time))
        elif isinstance(event, StageFinished):
            self._finish_stage(event)
        elif isinstance(event, RunStarted):
            self._start_run(event)
        elif isinstance(event, RunFinished):
            self._finish_run(event)

    def _start_run(self, event: RunStarted) -> None:
        wall: float | None = getattr(event, "wall_time", None)
        if wall is None:  # an event made by hand: what time it is now, minus the delay
            import trio

            wall = time.time() - (trio.current_time() - event.time)
        self._origin_ns = round(wall * 1e9)
        self._t0 = event.time
        self._run = self._tracer.start_span(
            f"pipeline {event.pipeline}",
            start_time=self._origin_ns,
            attributes={
                _PREFIX + "pipeline": event.pipeline,
                _PREFIX + "run_id": event.run_id,
                _PREFIX + "stages": len(event.stages),
            },
        )

    def _start_attempt(self, stage: str, attempt: int, t: float) -> Span:
        context = None if self._run is None else self._trace.set_span_in_context(self._run)
        span = self._tracer.start_span(
            f"stage {stage}",
            context=context,
            start_time=self._ns(t),
            attributes={_PREFIX + "stage": stage, _PREFIX + "attempt": attempt},
        )
        self._attempts[stage] = span
        return span

    def _finish_stage(self, event: StageFinished) -> None:
        span = self._attempts.pop(event.stage, None)
        reason: str | None = getattr(event, "reason", None)
        if span is None:  # never started: a zero-length span saying why
            span = self._start_attempt(event.stage, 0, event.time)
            del self._attempts[event.stage]
            if reason is None:
                reason = self._guess_reason(event)
        status = event.status.value
        attributes: dict[str, Any] = {_PREFIX + "status": status}
        optional = {
            "error": event.error,
            "blocked_by": event.blocked_by,
            "reason": reason,
            "items_in": getattr(event, "items_in", None),
            "items_out": getattr(event, "items_out", None),
            "items_failed": getattr(event, "items_failed", None),
        }
        attributes.update((_PREFIX + k, v) for k, v in optional.items() if v is not None)
        span.set_attributes(attributes)
        if event.status is StageStatus.FAILED:
            self._failed = True
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error))
        span.end(self._ns(event.time))

    def _guess_reason(self, event: StageFinished) -> str | None:
        # Until StageFinished carries its reason (issue 10), say what the events imply.
        if event.status is StageStatus.BLOCKED and event.blocked_by is not None:
            return f"upstream {event.blocked_by!r} failed"
        if event.status is StageStatus.CANCELLED:
            return "fail-fast stop" if self._failed else "run closed or cancelled"
        if str(event.status.value) == "cached":  # issue 14's status
            return "answered from the cache"
        return None

    def _finish_run(self, event: RunFinished) -> None:
        run = self._run
        if run is None:
            return
        self._end_open_attempts(event.time, "the run ended first")
        counts: Mapping[StageStatus, int] = event.counts
        run.set_attributes(
            {
                _PREFIX + "state": event.state.value,
                _PREFIX + "duration": event.duration,
                **{f"{_PREFIX}count.{k.value}": n for k, n in counts.items()},
            }
        )
        bad = {k.value: n for k, n in counts.items() if n and k.value not in _OK}
        code = self._trace.StatusCode
        if event.state is RunState.CLOSED and not bad:
            run.set_status(self._trace.Status(code.OK))
        else:
            detail = ", ".join(f"{n} {status}" for status, n in bad.items())
            if event.state is not RunState.CLOSED:
                detail = f"run {event.state.value}" + (f": {detail}" if detail else "")
            run.set_status(self._trace.Status(code.ERROR, detail))
        run.end(self._ns(event.time))
        self._run = None

    def _end_open_attempts(self, t: float, why: str) -> None:
        for span in self._attempts.values():
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, why))
            span.end(self._ns(t))
        self._attempts.clear()

    async def aclose(self) -> None:
        # Without RunFinished (draining was cut off) the spans still end, as errors.
        self._end_open_attempts(self._last, "the run's events ended first")
        if self._run is not None:
            code = self._trace.StatusCode.ERROR
            self._run.set_status(self._trace.Status(code, "the run's events ended early"))
            self._run.end(self._ns(self._last))
            self._run = None

    def __repr__(self) -> str:
        return "OtelSink()"
