"""What each sink was given, and how it is supervised. Pure: no trio import.

A run hands every event to one feed per sink (see `_feeds`). `SinkDelivery` is the
frozen record of how that went, one per sink in `RunResult.deliveries`
(trio's `MemoryChannelStatistics` is the model). `supervised` and `critical` wrap
a sink to give its feed options; the `Sink` protocol itself has none.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import PipelineError, StageDefinitionError, StageDefinitionTypeError

if TYPE_CHECKING:
    from ._events import Event
    from ._sinks import Sink


class SinkState(enum.StrEnum):
    """How a sink's feed ended."""

    CLOSED = "closed"
    """It received every event and its `aclose` returned."""
    DISABLED = "disabled"
    """It raised, or took longer than its `handle_timeout`; it got no event after that."""
    CUT_OFF = "cut_off"
    """The drain deadline passed before it had received every event or had closed."""


@dataclass(frozen=True, slots=True)
class SinkDelivery:
    """Statistics of one sink's feed over a run.

    Attributes:
        delivered: Events whose `handle` returned.
        peak_backlog: The most events at once that the run had emitted and the sink
            had not yet handled (the one in `handle` included).
        state: How the feed ended.
        error: What disabled the sink (its exception, or a `SinkTimeout`); else None.
        undelivered: Events the run emitted that a CUT_OFF sink never received
            (also in `RunResult.undelivered`); 0 otherwise.
    """

    delivered: int
    peak_backlog: int
    state: SinkState
    error: BaseException | None = None
    undelivered: int = 0


class SinkTimeout(PipelineError, TimeoutError):
    """A supervised sink's `handle` (or `aclose`) took longer than its `handle_timeout`."""

    def __init__(self, sink: str, timeout: float, what: str) -> None:
        super().__init__(f"sink {sink} took longer than {timeout:g}s {what}")
        self.sink = sink
        self.timeout = timeout


@dataclass(frozen=True, slots=True, eq=False)
class SupervisedSink:
    """A sink with feed options; made by `supervised` or `critical`.

    It is a sink itself (it delegates), but a run unwraps it: results are keyed by
    the wrapped `sink`, and that is the object a run hands events to.
    """

    sink: Sink
    handle_timeout: float | None = None
    critical: bool = False

    async def handle(self, event: Event, /) -> None:
        await self.sink.handle(event)

    async def aclose(self) -> None:
        await self.sink.aclose()

    def __repr__(self) -> str:
        options = [] if self.handle_timeout is None else [f"handle_timeout={self.handle_timeout:g}"]
        if self.critical:
            return f"critical({', '.join([repr(self.sink), *options])})"
        return f"supervised({', '.join([repr(self.sink), *options])})"


def supervised(
    sink: Sink, *, handle_timeout: float | None = None, critical: bool = False
) -> SupervisedSink:
    """`sink` with per-sink feed options; pass the result in a run's `sinks`.

    Args:
        sink: Any sink (wrapping a wrapped sink merges the options).
        handle_timeout: Seconds one `handle` call (and `aclose`) may take. A call
            that takes longer is cancelled and the sink disabled, reported in
            `RunResult.sink_errors` with a `SinkTimeout`, like a sink that raised;
            the other sinks are unaffected. None: no limit.
        critical: When the sink raises or times out, the run is cancelled (see
            `critical`).

    Raises:
        StageDefinitionTypeError: (a TypeError) `sink` is not a sink.
        StageDefinitionError: (a ValueError) `handle_timeout` is not a number > 0.
    """
    if isinstance(sink, SupervisedSink):
        if handle_timeout is None:
            handle_timeout = sink.handle_timeout
        critical = critical or sink.critical
        sink = sink.sink
    # What `isinstance(sink, Sink)` checks, without importing the (edge) sinks module.
    if not all(callable(getattr(sink, name, None)) for name in ("handle", "aclose")):
        raise StageDefinitionTypeError(
            f"{sink!r} is not a Sink: it needs async handle(event) and aclose()"
        )
    if handle_timeout is not None and (
        isinstance(handle_timeout, bool)
        or not isinstance(handle_timeout, int | float)
        or math.isnan(handle_timeout)
        or handle_timeout <= 0
    ):
        raise StageDefinitionError(
            f"handle_timeout must be a number > 0 or None, got {handle_timeout!r}"
        )
    return SupervisedSink(sink, handle_timeout, critical)


def critical(sink: Sink, *, handle_timeout: float | None = None) -> SupervisedSink:
    """Mark `sink` critical: when it raises (or times out) the run ends CANCELLED.

    Running stages are cancelled and no new one starts, as with `RunHandle.cancel`;
    the other sinks still receive every event; the exception is in
    `RunResult.sink_errors`. For sinks whose record must be complete (an audit log).
    """
    return supervised(sink, handle_timeout=handle_timeout, critical=True)


def unwrap(sink: Sink) -> tuple[Sink, float | None, bool]:
    """``(sink, handle_timeout, critical)`` for a sink as passed to a run."""
    if isinstance(sink, SupervisedSink):
        return sink.sink, sink.handle_timeout, sink.critical
    return sink, None, False


def sink_name(sink: object) -> str:
    """A readable name: the sink's own repr if its class defines one, else its class name."""
    if isinstance(sink, SupervisedSink):
        sink = sink.sink
    if type(sink).__repr__ is object.__repr__:
        return type(sink).__qualname__
    return repr(sink)


def cut_off_warnings(deliveries: Mapping[Sink, SinkDelivery]) -> list[str]:
    """One line per sink the drain deadline cut off, naming it readably."""
    lines: list[str] = []
    for sink, record in deliveries.items():
        if record.state is not SinkState.CUT_OFF:
            continue
        total = record.delivered + record.undelivered
        what = (
            f"did not receive {record.undelivered:,} of {total:,} events"
            if record.undelivered
            else "received every event but did not finish closing"
        )
        lines.append(f"event sink {sink_name(sink)} was cut off at the drain deadline: {what}")
    return lines
