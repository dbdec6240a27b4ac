"""Helpers for testing pipelines, sinks and schedules in your own test suite.

- `RecordingSink` keeps what it receives; the fault sinks (`SlowSink`, `RaisingSink`,
  `HungSink`, `TornSink`) misbehave on purpose and record what they did.
- `check_run` asserts every invariant a finished run promises (lossless, ordered,
  one `StageFinished` per stage, dependency and concurrency rules, consistent
  counts); a broken invariant raises `AssertionError` naming it.
- `ChaosTape` perturbs the schedule at the engine's chaos points, from a tape of
  small ints (typically drawn by Hypothesis).
- `TaskTracker` is a trio Instrument proving that no task outlives a run.
- `PoolTracker` checks pool limits from inside stage and item functions (per-item
  ``uses=`` emits no events for `check_run` to see).

Nothing here is imported by the engine; Hypothesis is not required.
"""

from ._chaos import ChaosTape
from ._invariants import check_run
from ._items import check_items
from ._pools import PoolTracker
from ._sinks import HungSink, RaisingSink, RecordingSink, SinkFault, SlowSink, TornSink
from ._tracking import TaskTracker

__all__ = [
    "ChaosTape",
    "HungSink",
    "PoolTracker",
    "RaisingSink",
    "RecordingSink",
    "SinkFault",
    "SlowSink",
    "TaskTracker",
    "TornSink",
    "check_items",
    "check_run",
]


def _claim_public_objects() -> None:
    # Objects report the public module, as trio does, so reprs and docs show it.
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith(f"{__name__}._"):
            obj.__module__ = __name__


_claim_public_objects()
del _claim_public_objects
