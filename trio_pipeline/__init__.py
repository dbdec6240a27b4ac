"""trio_pipeline: run a DAG of async stages on Trio, losing no event and no task."""

import contextlib as _contextlib

from ._cache import (
    CacheEntry,
    CachePolicy,
    CacheStore,
    CacheStoreError,
    Decision,
    DecisionKind,
    RunRecord,
    SQLiteStore,
    StageRecord,
)
from ._command import Command, CommandError
from ._context import StageContext
from ._delivery import SinkDelivery, SinkState, SinkTimeout, SupervisedSink, critical, supervised
from ._engine import RunHandle, open_run, run
from ._errors import (
    CycleError,
    DuplicateStageError,
    PipelineError,
    PipelineInternalError,
    StageDefinitionError,
    StageDefinitionTypeError,
    StageTimeout,
    TransitionError,
    UnknownStageError,
)
from ._events import (
    Event,
    ItemFailed,
    RunFinished,
    RunStarted,
    StageFinished,
    StageLog,
    StageProgress,
    StageRetrying,
    StageStarted,
)
from ._executors import (
    DaskExecutor,
    Executor,
    MissingExtraError,
    ProcessExecutor,
    SerializationError,
    StageSnapshot,
    SyncStageFunction,
    ThreadExecutor,
)
from ._graph import Pipeline, Stage, StageFunction
from ._items import ItemError, ItemOptions
from ._jsonl import JsonlFormatError, read_jsonl
from ._options import RetryPolicy, StageOptions, Trigger
from ._otel import OtelSink
from ._report import ReportSink, write_report
from ._result import RunResult, StageOutcome
from ._sinks import ConsoleSink, JsonlSink, Sink
from ._state import RunState, StageStatus

__version__ = "0.1.0"

__all__ = [
    "CacheEntry",
    "CachePolicy",
    "CacheStore",
    "CacheStoreError",
    "Command",
    "CommandError",
    "ConsoleSink",
    "CycleError",
    "DaskExecutor",
    "Decision",
    "DecisionKind",
    "DuplicateStageError",
    "Event",
    "Executor",
    "ItemError",
    "ItemFailed",
    "ItemOptions",
    "JsonlFormatError",
    "JsonlSink",
    "MissingExtraError",
    "OtelSink",
    "Pipeline",
    "PipelineError",
    "PipelineInternalError",
    "ProcessExecutor",
    "RetryPolicy",
    "RunFinished",
    "RunHandle",
    "RunRecord",
    "RunResult",
    "ReportSink",
    "RunStarted",
    "RunState",
    "SQLiteStore",
    "SerializationError",
    "Sink",
    "SinkDelivery",
    "SinkState",
    "SinkTimeout",
    "Stage",
    "StageContext",
    "StageDefinitionError",
    "StageDefinitionTypeError",
    "StageFinished",
    "StageFunction",
    "StageLog",
    "StageOptions",
    "StageOutcome",
    "StageProgress",
    "StageRecord",
    "StageRetrying",
    "StageSnapshot",
    "StageStarted",
    "StageStatus",
    "StageTimeout",
    "SupervisedSink",
    "SyncStageFunction",
    "ThreadExecutor",
    "TransitionError",
    "Trigger",
    "UnknownStageError",
    "critical",
    "open_run",
    "read_jsonl",
    "run",
    "supervised",
    "write_report",
]


def _claim_public_objects() -> None:
    # Objects report the public module, as trio does, so reprs and docs show tp.X.
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith("trio_pipeline._"):
            with _contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = __name__


_claim_public_objects()
del _claim_public_objects
