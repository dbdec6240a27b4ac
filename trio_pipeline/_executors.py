"""Executors: where a sync stage function runs.

A stage defined with ``executor=`` is a plain function ``f(snapshot) -> value``. At
definition time it is wrapped in `ExecutorStage`, an async callable, so the engine
runs it like any other stage: the attempt's cancel scope (timeout, cancellation)
and the retry policy apply unchanged. The executor only decides where the function
runs and what cancelling the attempt does to it:

- `ThreadExecutor`: a worker thread; on cancel the thread is abandoned and the
  stage ends at once (the thread runs on until the function returns).
- `ProcessExecutor`: a trio-parallel worker process; on cancel the worker is killed.
- `DaskExecutor`: a task on a ``distributed`` cluster; on cancel the future is
  cancelled on the cluster.

Executors hold no task of their own: each call runs inside the stage's attempt
task, which the run's nursery owns.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import pickle
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast, runtime_checkable

import trio

from ._context import StageContext
from ._errors import StageDefinitionError, StageDefinitionTypeError
from ._events import describe_error
from ._graph import edge, is_async_callable
from ._options import check_int, check_seconds
from ._params import NO_PARAMS

logger = logging.getLogger("trio_pipeline")

if TYPE_CHECKING:
    from distributed import Client

# The parts of untyped optional dependencies this module uses, imported lazily.


class _Dumps(Protocol):
    def __call__(self, obj: object, /, protocol: int) -> bytes: ...


class _ProcessRunSync(Protocol):
    async def __call__(
        self,
        fn: Callable[[bytes], bytes],
        payload: bytes,
        /,
        *,
        kill_on_cancel: bool,
        limiter: trio.CapacityLimiter,
    ) -> bytes: ...


class _DaskFuture(Protocol):
    def add_done_callback(self, fn: Callable[[object], None], /) -> None: ...
    def cancel(self) -> object: ...
    def result(self) -> bytes: ...


class _DaskClient(Protocol):
    def submit(
        self, fn: Callable[[bytes], bytes], payload: bytes, /, *, key: str, pure: bool
    ) -> _DaskFuture: ...
    def close(self) -> object: ...


SyncStageFunction: TypeAlias = Callable[["StageSnapshot"], Any]
"""A ``def f(snapshot: StageSnapshot) -> value`` run by an executor."""


def _copied_log(message: str) -> None:
    raise RuntimeError("this StageSnapshot is a copy; only the one a stage receives can log")


@dataclass(frozen=True, slots=True)
class StageSnapshot:
    """What a sync stage function receives: a picklable copy of its `StageContext`.

    Attributes:
        name: The stage's name.
        inputs: Each direct upstream stage's name mapped to its result.
        attempt: 1 on the first attempt, 2 on the first retry, and so on.
        run_id: The id of the run.
        params: Read-only mapping of the run's parameters (see `StageContext.params`).
    """

    name: str
    inputs: Mapping[str, Any]
    attempt: int
    run_id: str
    _emit: Callable[[str], None] = field(default=_copied_log, repr=False, compare=False)
    params: Mapping[str, Any] = NO_PARAMS

    def log(self, message: str) -> None:
        """Emit a `StageLog` event for this stage.

        In a thread the call never waits: lines are handed to the Trio thread, which
        emits them in order, soon and always before the stage's `StageFinished`. In a
        worker process or on Dask, messages are collected and emitted, in order, when
        the attempt returns or raises; those of a killed or cancelled attempt are lost.

        Raises:
            RuntimeError: the stage has finished (an abandoned thread logging after
                its stage was cancelled), or this snapshot is a copy.
        """
        self._emit(str(message))

    def __reduce__(
        self,
    ) -> tuple[type[StageSnapshot], tuple[str, dict[str, Any], int, str, Any, Mapping[str, Any]]]:
        # The log callback belongs to one process; a copy cannot log.
        inputs = dict(self.inputs)
        return (
            type(self),
            (self.name, inputs, self.attempt, self.run_id, _copied_log, self.params),
        )


@runtime_checkable
class Executor(Protocol):
    """Runs a sync stage function for one attempt. `name` is shown in reprs and the CLI."""

    @property
    def name(self) -> str: ...

    async def run(self, fn: SyncStageFunction, ctx: StageContext, /) -> Any:
        """Run ``fn(snapshot)`` and return its value or raise its exception.

        Called in the stage's attempt task; when that task is cancelled the call
        must stop waiting (what happens to the work is the executor's contract).
        """
        ...


class ExecutorStage:
    """The async stage function that runs `function` in `executor` (made by `Pipeline`)."""

    __slots__ = ("__wrapped__", "executor", "function")

    def __init__(self, function: SyncStageFunction, executor: Executor) -> None:
        self.function = function
        self.executor = executor
        self.__wrapped__ = function

    async def __call__(self, ctx: StageContext) -> Any:
        return await self.executor.run(self.function, ctx)

    def __repr__(self) -> str:
        return f"<ExecutorStage {self.function!r} in {self.executor!r}>"


def _executor_stage(fn: object, executor: object, /) -> ExecutorStage:
    """The stage function for a sync `fn` with ``executor=`` (called by `Pipeline`)."""
    if not isinstance(executor, Executor):
        raise StageDefinitionTypeError(
            f"executor must have a name and async run(fn, ctx), got {executor!r}"
        )
    if not callable(fn) or is_async_callable(fn) or inspect.isasyncgenfunction(fn):
        raise StageDefinitionTypeError(
            f"with executor={executor!r} the function must be a plain"
            f" (sync) callable taking a StageSnapshot, got {fn!r}"
        )
    return ExecutorStage(fn, executor)  # pyright: ignore[reportUnknownArgumentType]


edge.sync = _executor_stage


class SerializationError(pickle.PicklingError):
    """A stage's function, inputs or result could not be pickled for another process.

    Attributes:
        stage: The stage's name.
        what: ``"function"``, ``"inputs"``, ``"params"``, ``"result"`` or ``"exception"``.
    """

    def __init__(self, stage: str, what: str, detail: str) -> None:
        super().__init__(
            f"stage {stage!r}: its {what} cannot be pickled to cross a process boundary ({detail})"
        )
        self.stage = stage
        self.what = what
        self.detail = detail

    def __reduce__(self) -> tuple[type[SerializationError], tuple[str, str, str]]:
        return (type(self), (self.stage, self.what, self.detail))


class MissingExtraError(ImportError):
    """An executor's optional dependency is not installed; the message says what to install."""


def _require_extra(module: str, extra: str, executor: str) -> None:
    """Raise at construction, not at the first attempt (which retries would repeat)."""
    loaded = cast(object, sys.modules.get(module, False))  # None there: an import is refused
    if loaded is False:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
    else:
        found = loaded is not None
    if not found:
        raise MissingExtraError(
            f"{executor} needs the {module!r} package, which is not installed:"
            f" pip install 'trio-pipeline[{extra}]'",
            name=module,
        )


class _PerRunLimiter:
    """One CapacityLimiter per Trio run, so an executor can serve many `trio.run` calls."""

    __slots__ = ("_limit", "_var")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._var: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("limiter")

    def get(self) -> trio.CapacityLimiter:
        try:
            return self._var.get()
        except LookupError:
            limiter = trio.CapacityLimiter(self._limit)
            self._var.set(limiter)
            return limiter


class ThreadExecutor:
    """Runs sync stage functions in Trio's worker threads, at most `limit` at once.

    Cancellation (timeout, fail-fast, `RunHandle.cancel`): the thread is abandoned
    and the stage ends at once; the function keeps running in its thread until it
    returns, and its result is discarded. An abandoned thread keeps its slot of
    `limit` until it returns, so functions that hang can use up the executor.
    `StageSnapshot.log` raises RuntimeError in an abandoned thread, which ends a
    function that logs as it goes. The limit is per Trio run (default 8).
    """

    name = "thread"

    def __init__(self, *, limit: int = 8) -> None:
        self.limit = check_int(limit, "limit", minimum=1)
        self._limiter = _PerRunLimiter(self.limit)

    async def run(self, fn: SyncStageFunction, ctx: StageContext, /) -> Any:
        relay = _LogRelay(ctx, trio.lowlevel.current_trio_token())
        snapshot = StageSnapshot(
            ctx.name, ctx.inputs, ctx.attempt, ctx.run_id, relay.emit, ctx.params
        )
        try:
            return await trio.to_thread.run_sync(
                fn, snapshot, abandon_on_cancel=True, limiter=self._limiter.get()
            )
        finally:
            # Before the stage's StageFinished: every line logged so far comes first.
            relay.close()

    def __repr__(self) -> str:
        return f"ThreadExecutor(limit={self.limit})"


class _LogRelay:
    """Carries `StageSnapshot.log` lines from a worker thread to the Trio thread, in order.

    The thread never waits: a line is appended to a buffer under a lock, and the first
    line of a batch asks the Trio thread (`TrioToken.run_sync_soon`) to emit the
    buffer. `close`, in the Trio thread when the attempt ends, emits what is left and
    makes later calls raise, so no line appears after the stage finished. Measured:
    about 1-2 us per line in the thread (a blocking ``trio.from_thread.run_sync`` per
    line took about 95 us).
    """

    __slots__ = ("_buffer", "_closed", "_ctx", "_lock", "_scheduled", "_token")

    def __init__(self, ctx: StageContext, token: trio.lowlevel.TrioToken) -> None:
        self._ctx = ctx
        self._token = token
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._scheduled = False
        self._closed = False

    def emit(self, message: str) -> None:
        """In the worker thread. Raises RuntimeError once the attempt has ended."""
        with self._lock:
            if self._closed:
                raise RuntimeError(
                    f"stage {self._ctx.name!r} has finished; its context no longer logs"
                )
            self._buffer.append(message)
            if self._scheduled:
                return
            self._scheduled = True
        # Outside the lock: run_sync_soon takes the run's own lock. The run cannot
        # have ended: it waits for this attempt, which closes the relay first.
        self._token.run_sync_soon(self._flush)

    def _flush(self) -> None:
        """In the Trio thread, between tasks: emit the batch (a no-op once closed)."""
        with self._lock:
            lines, self._buffer = self._buffer, []
            self._scheduled = False
            closed = self._closed
        if not closed:
            self._emit_all(lines)

    def close(self) -> None:
        """In the Trio thread, when the attempt ends: emit the rest; refuse lines from now on."""
        with self._lock:
            lines, self._buffer = self._buffer, []
            self._closed = True
        self._emit_all(lines)

    def _emit_all(self, lines: list[str]) -> None:
        log = self._ctx.log
        for line in lines:
            log(line)


# -- crossing a process boundary -------------------------------------------------------


def _dumps(obj: object) -> bytes:
    # cloudpickle (a dependency of distributed, used by trio-parallel when present)
    # also pickles lambdas and closures; imported lazily to keep `import` light.
    try:
        dumps = cast(_Dumps, importlib.import_module("cloudpickle").dumps)
    except ImportError:  # pragma: no cover - exercised only without the extras
        dumps = pickle.dumps
    return dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _pack_call(fn: SyncStageFunction, ctx: StageContext) -> bytes:
    """Pickle one call, saying which part does not pickle. Runs in the Trio thread."""
    try:
        fn_bytes = _dumps(fn)
    except Exception as exc:
        raise SerializationError(ctx.name, "function", describe_error(exc)) from exc
    try:
        inputs_bytes = _dumps(dict(ctx.inputs))
    except Exception as exc:
        raise SerializationError(ctx.name, "inputs", describe_error(exc)) from exc
    try:
        params_bytes = _dumps(ctx.params)
    except Exception as exc:
        raise SerializationError(ctx.name, "params", describe_error(exc)) from exc
    return pickle.dumps(
        (fn_bytes, inputs_bytes, params_bytes, ctx.name, ctx.attempt, ctx.run_id),
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def _call_packed(payload: bytes) -> bytes:
    """Run a packed call in a worker; return ``(logs, ok, value_or_exception)`` pickled.

    Never raises for the function's own errors, so collected logs come back too.
    """
    fn_bytes, inputs_bytes, params_bytes, name, attempt, run_id = pickle.loads(payload)
    fn: SyncStageFunction = pickle.loads(fn_bytes)
    logs: list[str] = []
    inputs, params = pickle.loads(inputs_bytes), pickle.loads(params_bytes)
    snapshot = StageSnapshot(name, inputs, attempt, run_id, logs.append, params)
    try:
        value = fn(snapshot)
    except Exception as exc:
        exc.add_note("Traceback in the worker:\n" + "".join(traceback.format_exc()))
        try:
            return _dumps((logs, False, exc))
        except Exception as pickle_exc:
            error = SerializationError(name, "exception", f"{describe_error(exc)}; {pickle_exc}")
            return _dumps((logs, False, error))
    try:
        return _dumps((logs, True, value))
    except Exception as exc:
        return _dumps((logs, False, SerializationError(name, "result", describe_error(exc))))


def _unpack_outcome(envelope: bytes, ctx: StageContext) -> Any:
    try:
        logs, ok, value = pickle.loads(envelope)
    except Exception as exc:  # e.g. an exception class whose __init__ rejects its args
        raise SerializationError(ctx.name, "result", f"unpickling failed: {exc}") from exc
    for message in logs:
        ctx.log(message)
    if not ok:
        raise value
    return value


class ProcessExecutor:
    """Runs sync, picklable stage functions in trio-parallel worker processes.

    At most `limit` run at once (default: the number of CPUs). Workers come from
    trio-parallel's default context: started on demand, reused across stages and
    runs, shut down at interpreter exit. The function, its inputs and its result
    are pickled (with cloudpickle when installed, else pickle); one that does not
    pickle fails the stage with `SerializationError` naming the stage and the part.

    Cancellation: the worker process is killed (SIGKILL) and the stage ends once it
    has exited. Needs the ``trio-pipeline[process]`` extra: without it the constructor
    raises `MissingExtraError` (an ImportError) with the pip command.
    """

    name = "process"

    def __init__(self, *, limit: int | None = None) -> None:
        _require_extra("trio_parallel", "process", "ProcessExecutor")
        self.limit = check_int(
            (os.cpu_count() or 1) if limit is None else limit, "limit", minimum=1
        )
        self._limiter = _PerRunLimiter(self.limit)

    async def run(self, fn: SyncStageFunction, ctx: StageContext, /) -> Any:
        run_sync = cast(_ProcessRunSync, importlib.import_module("trio_parallel").run_sync)
        payload = _pack_call(fn, ctx)
        envelope = await run_sync(
            _call_packed, payload, kill_on_cancel=True, limiter=self._limiter.get()
        )
        return _unpack_outcome(envelope, ctx)

    def __repr__(self) -> str:
        return f"ProcessExecutor(limit={self.limit})"


def kill_worker_processes() -> int:
    """SIGKILL this process's multiprocessing children (trio-parallel's workers); return how many.

    For the CLI's forced exit: ``os._exit`` skips trio-parallel's shutdown, and a
    worker running a stage would go on with it, orphaned.
    """
    if "multiprocessing" not in sys.modules:
        return 0  # no process stage ever ran
    import multiprocessing

    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(OSError):
            child.kill()
    return len(children)


class DaskExecutor:
    """Submits sync, picklable stage functions to a ``distributed`` cluster.

    Pass a scheduler address (the executor then opens its own synchronous
    `distributed.Client` on first use, in a worker thread, and closes it in
    `close`) or a synchronous `Client` you own. Workers need trio-pipeline
    installed. Values cross the network pickled, as with `ProcessExecutor`.

    The stage waits on the future without a thread or polling: the future's done
    callback wakes the Trio task. Cancellation (timeout, fail-fast,
    `RunHandle.cancel`): the stage sends the cancellation to the scheduler (taking at
    most `cancel_timeout` seconds) and ends; the scheduler then releases the task. A
    task already running on a worker runs to completion there (Dask does not
    interrupt running Python code) and its result is dropped. Needs the
    ``trio-pipeline[dask]`` extra: without it the constructor raises
    `MissingExtraError` (an ImportError) with the pip command.
    """

    name = "dask"

    def __init__(self, address_or_client: str | Client, *, cancel_timeout: float = 5.0) -> None:
        _require_extra("distributed", "dask", "DaskExecutor")
        self.cancel_timeout = check_seconds(cancel_timeout, "cancel_timeout", zero=False)
        if not isinstance(address_or_client, str) and not callable(
            getattr(address_or_client, "submit", None)
        ):
            raise StageDefinitionTypeError(
                "DaskExecutor needs a scheduler address (str) or a distributed.Client,"
                f" got {address_or_client!r}"
            )
        if address_or_client == "":
            raise StageDefinitionError("DaskExecutor needs a scheduler address, got ''")
        self._lock = threading.Lock()
        self.address: str | None
        if isinstance(address_or_client, str):
            self.address = address_or_client
            self._client: _DaskClient | None = None
            self._owns_client = True
        else:
            self.address = None
            self._client = cast(_DaskClient, address_or_client)
            self._owns_client = False

    def _connect(self) -> _DaskClient:
        with self._lock:
            if self._client is None:
                client_class = importlib.import_module("distributed").Client
                self._client = cast(_DaskClient, client_class(self.address, set_as_default=False))
            return self._client

    async def run(self, fn: SyncStageFunction, ctx: StageContext, /) -> Any:
        client = self._client
        if client is None:
            client = await trio.to_thread.run_sync(self._connect, abandon_on_cancel=True)
        payload = _pack_call(fn, ctx)
        key = f"{ctx.name}-{ctx.run_id}-{ctx.attempt}-{uuid.uuid4().hex[:8]}"
        future = client.submit(_call_packed, payload, key=key, pure=False)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            # Runs in a distributed thread, possibly after this Trio run has ended.
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            with trio.move_on_after(self.cancel_timeout, shield=True):
                try:
                    await trio.to_thread.run_sync(future.cancel, abandon_on_cancel=True)
                except Exception:
                    # The stage ends cancelled anyway; say why the cluster may not know.
                    logger.warning("stage %r: could not cancel %s", ctx.name, key, exc_info=True)
            raise
        envelope = await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        return _unpack_outcome(envelope, ctx)

    def close(self) -> None:
        """Close the client this executor opened (not one it was given). Blocks."""
        if not self._owns_client:
            return
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.address if self.address is not None else self._client
        return f"DaskExecutor({where!r})"
