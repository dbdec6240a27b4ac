"""Executors against the real thing: threads, worker processes, subprocesses, a Dask cluster.

The Dask cluster is a `distributed.LocalCluster` with in-process workers talking TCP
on 127.0.0.1, so every task and result really is serialized; one per module.
Waiting on other processes uses their own signals (a socket, a log line, a
threading.Event), never a sleep.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_parallel  # type: ignore[import-untyped]

import trio_pipeline as tp
from tests.support.runs import check_complete, logs_of
from trio_pipeline.testing import RecordingSink

distributed = pytest.importorskip("distributed")
pytest.importorskip("trio_parallel")

PY = sys.executable


# -- helpers -------------------------------------------------------------------------------


def pipeline_with_input(value: object) -> tuple[tp.Pipeline, tp.Stage]:
    pipe = tp.Pipeline("executors")

    async def load(ctx: tp.StageContext) -> object:
        return value

    return pipe, pipe.add_stage("load", load)


# Module-level stage functions: picklable by reference for processes and Dask.


def add_one(snap: tp.StageSnapshot) -> int:
    snap.log(f"got {snap.inputs['load']}")
    snap.log(f"attempt {snap.attempt} of {snap.name}")
    return int(snap.inputs["load"]) + 1


def fail(snap: tp.StageSnapshot) -> None:
    snap.log("about to fail")
    raise ValueError(f"bad input {snap.inputs['load']!r}")


def fail_first_attempt(snap: tp.StageSnapshot) -> int:
    if snap.attempt == 1:
        raise RuntimeError("first attempt fails")
    return snap.attempt


class PickyError(Exception):
    """Pickles, but does not unpickle: its args are the message, its __init__ wants two."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_picky(snap: tp.StageSnapshot) -> None:
    raise PickyError(1, 2)


def return_lock(snap: tp.StageSnapshot) -> object:
    return threading.Lock()


def report_pid_then_hang(snap: tp.StageSnapshot) -> None:
    """Tells the test its pid over a loopback socket, then blocks until killed."""
    with socket.create_connection(("127.0.0.1", snap.inputs["load"])) as conn:
        conn.sendall(f"{os.getpid()}\n".encode())
        time.sleep(60)


def sleep_long(snap: tp.StageSnapshot) -> None:
    time.sleep(60)


# Dask workers run in this process, so these module globals are the ones the tasks see.
dask_started = threading.Event()
dask_release = threading.Event()


def dask_block(snap: tp.StageSnapshot) -> str:
    dask_started.set()
    dask_release.wait(30)
    return "released"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        # The scheduler serves HTTP even without a dashboard; a free loopback port keeps
        # it from warning (an error here) when another cluster holds the default 8787.
        dashboard_address="127.0.0.1:0",
    ) as local:
        yield local


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    with distributed.Client(cluster, set_as_default=False) as dask_client:
        yield dask_client


# -- definition ----------------------------------------------------------------------------


def test_sync_function_needs_an_executor_and_async_one_must_not_have_it() -> None:
    pipe = tp.Pipeline("p")

    async def coro(ctx: tp.StageContext) -> None: ...

    with pytest.raises(tp.StageDefinitionError, match="sync function with executor="):
        pipe.add_stage("a", add_one)
    with pytest.raises(tp.StageDefinitionError, match=r"plain \(sync\) callable"):
        pipe.add_stage("b", coro, executor=tp.ThreadExecutor())
    with pytest.raises(tp.StageDefinitionError, match="executor must have"):
        pipe.add_stage("c", add_one, executor=object())  # type: ignore[arg-type]
    assert len(pipe) == 0


def test_executor_is_recorded_and_sync_function_resolves_in_after() -> None:
    pipe = tp.Pipeline("p")
    threads = tp.ThreadExecutor(limit=2)
    stage = pipe.stage(executor=threads)(add_one)
    later = pipe.add_stage("later", fail, after=[add_one], executor=threads)
    assert stage.name == "add_one"
    assert stage.executor is threads
    assert later.after == ("add_one",)
    assert "executor=ThreadExecutor(limit=2)" in repr(stage)
    assert isinstance(threads, tp.Executor)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_executor_limit_must_be_a_positive_int(limit: Any) -> None:
    with pytest.raises(ValueError, match="limit must be a positive int"):
        tp.ThreadExecutor(limit=limit)
    with pytest.raises(ValueError, match="limit must be a positive int"):
        tp.ProcessExecutor(limit=limit)


def test_import_stays_light() -> None:
    code = (
        "import sys, trio_pipeline\n"
        "heavy = {'distributed', 'dask', 'trio_parallel', 'cloudpickle'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([PY, "-c", code], check=True, cwd=Path(__file__).parent.parent)


def test_snapshot_copies_pickle_but_cannot_log() -> None:
    import pickle

    snap = tp.StageSnapshot("s", {"a": 1}, 2, "run", lambda message: None)
    copy = pickle.loads(pickle.dumps(snap))
    assert copy == snap
    with pytest.raises(RuntimeError, match="is a copy"):
        copy.log("x")


# -- every executor: inputs, logs, failures, retries ----------------------------------------


ExecutorFactory = Callable[[Any], tp.Executor]

EXECUTORS: dict[str, ExecutorFactory] = {
    "thread": lambda client: tp.ThreadExecutor(limit=2),
    "process": lambda client: tp.ProcessExecutor(limit=2),
    "dask": lambda client: tp.DaskExecutor(client),
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest) -> tp.Executor:
    name: str = request.param
    dask_client = request.getfixturevalue("client") if name == "dask" else None
    return EXECUTORS[name](dask_client)


async def test_inputs_flow_in_and_logs_come_out(executor: tp.Executor) -> None:
    pipe, load = pipeline_with_input(41)
    pipe.add_stage("add", add_one, after=[load], executor=executor)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.state is tp.RunState.CLOSED
    assert result.stages["add"].value == 42
    assert logs_of(sink, "add") == ["got 41", "attempt 1 of add"]
    # The logs belong to the attempt: between its start and its finish.
    kinds = [type(e).__name__ for e in sink.events if getattr(e, "stage", None) == "add"]
    assert kinds == ["StageStarted", "StageLog", "StageLog", "StageFinished"]
    check_complete(sink, result)


async def test_exception_is_the_stage_error(executor: tp.Executor) -> None:
    pipe, load = pipeline_with_input("x")
    pipe.add_stage("bad", fail, after=[load], executor=executor)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    error = result.stages["bad"].error
    assert result.stages["bad"].status is tp.StageStatus.FAILED
    assert isinstance(error, ValueError)
    assert str(error) == "bad input 'x'"
    assert logs_of(sink, "bad") == ["about to fail"]
    if executor.name != "thread":
        assert "Traceback in the worker" in "".join(getattr(error, "__notes__", []))
    check_complete(sink, result)


async def test_retries_get_a_new_attempt_number(executor: tp.Executor) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("flaky", fail_first_attempt, retries=1, executor=executor)
    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.stages["flaky"].value == 2
    assert result.stages["flaky"].attempts == 2
    retrying = [e for e in sink.events if isinstance(e, tp.StageRetrying)]
    assert [e.error for e in retrying] == ["RuntimeError: first attempt fails"]
    check_complete(sink, result)


async def test_calling_the_stage_runs_it_in_its_executor(executor: tp.Executor) -> None:
    pipe = tp.Pipeline("p")
    stage = pipe.add_stage("add", add_one, executor=executor)
    logged: list[str] = []
    ctx = tp.StageContext(
        name="add",
        inputs={"load": 1},
        attempt=1,
        run_id="r",
        emit_log=lambda stage, message: logged.append(message),
    )
    assert await stage(ctx) == 2
    assert logged == ["got 1", "attempt 1 of add"]


@pytest.mark.parametrize("kind", ["process", "dask"])
async def test_unpicklable_inputs_and_results_name_the_stage(kind: str, client: Any) -> None:
    executor = EXECUTORS[kind](client)
    pipe, load = pipeline_with_input(threading.Lock())
    pipe.add_stage("takes_lock", add_one, after=[load], executor=executor)
    pipe.add_stage("returns_lock", return_lock, executor=executor)
    lock = threading.Lock()
    pipe.add_stage("closes_over_lock", lambda snap: lock.locked(), executor=executor)
    result = await tp.run(pipe, keep_going=True)
    for stage, what in [
        ("takes_lock", "inputs"),
        ("returns_lock", "result"),
        ("closes_over_lock", "function"),
    ]:
        error = result.stages[stage].error
        assert isinstance(error, tp.SerializationError), (stage, error)
        assert (error.stage, error.what) == (stage, what)
        assert f"stage {stage!r}: its {what} cannot be pickled" in str(error)


@pytest.mark.parametrize("kind", ["process", "dask"])
async def test_an_outcome_that_does_not_unpickle_names_the_stage(kind: str, client: Any) -> None:
    pipe = tp.Pipeline("p")
    pipe.add_stage("picky", raise_picky, executor=EXECUTORS[kind](client))
    result = await tp.run(pipe)
    error = result.stages["picky"].error
    assert isinstance(error, tp.SerializationError)
    assert (error.stage, error.what) == ("picky", "result")
    assert "unpickling failed" in str(error)


# -- threads -------------------------------------------------------------------------------


async def test_thread_cancel_abandons_the_thread_and_its_log_then_raises() -> None:
    started = trio.Event()
    release = threading.Event()
    after_release: list[BaseException] = []
    done = threading.Event()

    def blocking(snap: tp.StageSnapshot) -> None:
        trio.from_thread.run_sync(started.set)
        release.wait(30)
        try:
            snap.log("too late")
        except RuntimeError as exc:
            after_release.append(exc)
        finally:
            done.set()

    pipe = tp.Pipeline("p")
    pipe.add_stage("blocking", blocking, executor=tp.ThreadExecutor())
    sink = RecordingSink()
    try:
        async with tp.open_run(pipe, sinks=[sink]) as handle:
            with trio.fail_after(20):
                await started.wait()
            handle.cancel()
        result = handle.result
        # The stage ended while its thread still runs.
        assert not done.is_set()
    finally:
        release.set()
    assert result.state is tp.RunState.CANCELLED
    assert result.stages["blocking"].status is tp.StageStatus.CANCELLED
    check_complete(sink, result)
    assert await trio.to_thread.run_sync(done.wait, 10)
    assert [str(e) for e in after_release] == [
        "stage 'blocking' has finished; its context no longer logs"
    ]
    assert logs_of(sink, "blocking") == []


async def test_thread_timeout_is_retried_like_any_failure() -> None:
    release = threading.Event()

    def hang(snap: tp.StageSnapshot) -> None:
        release.wait(30)

    pipe = tp.Pipeline("p")
    pipe.add_stage("hang", hang, timeout=0.05, retries=1, executor=tp.ThreadExecutor())
    sink = RecordingSink()
    try:
        result = await tp.run(pipe, sinks=[sink])
    finally:
        release.set()
    outcome = result.stages["hang"]
    assert outcome.status is tp.StageStatus.FAILED
    assert isinstance(outcome.error, tp.StageTimeout)
    assert outcome.attempts == 2
    check_complete(sink, result)


@pytest.mark.parametrize("how", ["raise", "cancel", "timeout"])
async def test_thread_slot_comes_back_after_a_stage_raises_is_cancelled_or_times_out(
    how: str,
) -> None:
    # limit=1: a slot kept on the error path would leave the second run waiting forever.
    one = tp.ThreadExecutor(limit=1)
    started = trio.Event()
    release = threading.Event()  # lets an abandoned thread return (it keeps the slot till then)

    def first(snap: tp.StageSnapshot) -> None:
        trio.from_thread.run_sync(started.set)
        if how == "raise":
            raise ValueError("first fails")
        release.wait(30)

    pipe = tp.Pipeline("first")
    pipe.add_stage("first", first, executor=one, timeout=0.05 if how == "timeout" else None)
    try:
        async with tp.open_run(pipe) as handle:
            if how == "cancel":
                with trio.fail_after(20):
                    await started.wait()
                handle.cancel()
    finally:
        release.set()
    outcome = handle.result.stages["first"]
    expected = {"raise": ValueError, "timeout": tp.StageTimeout}.get(how)
    if expected is None:
        assert outcome.status is tp.StageStatus.CANCELLED
    else:
        assert isinstance(outcome.error, expected)

    later = tp.Pipeline("later")
    later.add_stage("later", lambda snap: "ran", executor=one)
    with trio.fail_after(10):
        result = await tp.run(later)
    assert result.stages["later"].value == "ran"


async def test_thread_limit_bounds_concurrency() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    both_in = threading.Barrier(2)

    def count(snap: tp.StageSnapshot) -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            # Two at once would meet here; one at a time times out waiting.
            both_in.wait(0.2)
        except threading.BrokenBarrierError:
            return False
        finally:
            with lock:
                running -= 1
        return True

    pipe = tp.Pipeline("p")
    one = tp.ThreadExecutor(limit=1)
    pipe.add_stage("a", count, executor=one)
    pipe.add_stage("b", count, executor=one)
    result = await tp.run(pipe)
    assert peak == 1
    assert [o.value for o in result.stages.values()] == [False, False]

    both_in.reset()
    peak = 0
    two = tp.ThreadExecutor(limit=2)
    pipe2 = tp.Pipeline("p2")
    pipe2.add_stage("a", count, executor=two)
    pipe2.add_stage("b", count, executor=two)
    result = await tp.run(pipe2)
    assert peak == 2  # the same test can fail: the limit is what made the difference
    assert [o.value for o in result.stages.values()] == [True, True]


# -- worker processes ------------------------------------------------------------------------


async def open_pid_listener() -> trio.SocketListener:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listener


async def receive_pid(listener: trio.SocketListener) -> int:
    """The pid a worker sent; it keeps the connection open while it hangs."""
    stream = await listener.accept()
    async with stream:
        data = b""
        while not data.endswith(b"\n"):
            data += await stream.receive_some()
    return int(data)


def process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_process_cancel_and_timeout_kill_the_worker(how: str) -> None:
    listener = await open_pid_listener()
    port = listener.socket.getsockname()[1]
    pipe, load = pipeline_with_input(port)
    timeout = 30.0 if how == "cancel" else 1.5
    # Spawning a worker can take longer than the timeout on a loaded machine: warm
    # trio-parallel's worker cache first, so the timeout only covers the stage itself.
    await trio_parallel.run_sync(int)
    pipe.add_stage(
        "hang", report_pid_then_hang, after=[load], timeout=timeout, executor=tp.ProcessExecutor()
    )
    sink = RecordingSink()
    async with listener, tp.open_run(pipe, sinks=[sink]) as handle:
        with trio.fail_after(20):
            pid = await receive_pid(listener)
        assert not process_is_gone(pid)
        if how == "cancel":
            handle.cancel()
    result = handle.result
    outcome = result.stages["hang"]
    if how == "cancel":
        assert result.state is tp.RunState.CANCELLED
        assert outcome.status is tp.StageStatus.CANCELLED
    else:
        assert result.state is tp.RunState.CLOSED
        assert isinstance(outcome.error, tp.StageTimeout)
    # trio-parallel kills and reaps the worker before the stage ends.
    assert process_is_gone(pid)
    check_complete(sink, result)


# -- Dask ------------------------------------------------------------------------------------


def scheduler_keys(client: Any, run_id: str) -> list[str]:
    def keys(dask_scheduler: Any) -> list[str]:
        return [str(key) for key in dask_scheduler.tasks]

    return [key for key in client.run_on_scheduler(keys) if run_id in key]


async def wait_until_forgotten(client: Any, run_id: str) -> None:
    """Wait until the scheduler has dropped the run's tasks.

    Cancelling sends a message on the client's stream without an answer, and the
    scheduler offers no event for a key being forgotten: poll, within a deadline.
    """
    with trio.fail_after(10):
        while True:
            if not await trio.to_thread.run_sync(scheduler_keys, client, run_id):
                return
            await trio.sleep(0.01)


@pytest.fixture
def dask_gate() -> Iterator[None]:
    dask_started.clear()
    dask_release.clear()
    try:
        yield
    finally:
        dask_release.set()


@pytest.mark.usefixtures("dask_gate")
@pytest.mark.parametrize("how", ["cancel", "timeout"])
async def test_dask_cancel_and_timeout_cancel_the_future_on_the_cluster(
    client: Any, how: str
) -> None:
    pipe = tp.Pipeline("p")
    timeout = 30.0 if how == "cancel" else 0.5
    pipe.add_stage("block", dask_block, timeout=timeout, executor=tp.DaskExecutor(client))
    sink = RecordingSink()
    async with tp.open_run(pipe, sinks=[sink]) as handle:
        assert await trio.to_thread.run_sync(dask_started.wait, 10)
        # The task is on the cluster.
        assert await trio.to_thread.run_sync(scheduler_keys, client, handle.run_id)
        if how == "cancel":
            handle.cancel()
    result = handle.result
    outcome = result.stages["block"]
    if how == "cancel":
        assert outcome.status is tp.StageStatus.CANCELLED
    else:
        assert isinstance(outcome.error, tp.StageTimeout)
    await wait_until_forgotten(client, result.run_id)
    check_complete(sink, result)


async def test_dask_executor_from_an_address_owns_its_client(cluster: Any) -> None:
    executor = tp.DaskExecutor(cluster.scheduler_address)
    try:
        pipe, load = pipeline_with_input(1)
        pipe.add_stage("add", add_one, after=[load], executor=executor)
        pipe.add_stage("again", add_one, after=[load], executor=executor)
        result = await tp.run(pipe)
        assert [o.value for o in result.stages.values()] == [1, 2, 2]
        assert executor._client is not None
    finally:
        await trio.to_thread.run_sync(executor.close)
    assert executor._client is None
    assert "DaskExecutor('tcp://127.0.0.1:" in repr(executor)


# -- all five together -----------------------------------------------------------------------


async def test_one_pipeline_mixes_all_five_kinds_of_stage(client: Any) -> None:
    pipe = tp.Pipeline("mixed")

    @pipe.stage
    async def load(ctx: tp.StageContext) -> int:
        ctx.log("loaded")
        return 41

    pipe.add_stage("thread", add_one, after=[load], executor=tp.ThreadExecutor())
    pipe.add_stage("process", add_one, after=[load], executor=tp.ProcessExecutor(limit=1))
    pipe.add_stage("dask", add_one, after=[load], executor=tp.DaskExecutor(client))
    pipe.add_command(
        "command",
        [PY, "-c", "import sys; print(sum(int(a) for a in sys.argv[1:]))", "1", "2"],
        after=["thread", "process", "dask"],
    )

    @pipe.stage(after=["command", "thread", "process", "dask"])
    async def report(ctx: tp.StageContext) -> str:
        parts = [ctx.inputs[name] for name in ("thread", "process", "dask")]
        return f"{parts} {ctx.inputs['command'].strip()}"

    sink = RecordingSink()
    result = await tp.run(pipe, sinks=[sink])
    assert result.state is tp.RunState.CLOSED
    assert result.stages["report"].value == "[42, 42, 42] 3"
    for stage in ("thread", "process", "dask"):
        assert logs_of(sink, stage) == ["got 41", f"attempt 1 of {stage}"]
    assert logs_of(sink, "command") == ["3"]
    check_complete(sink, result)


async def test_cancelling_a_mixed_run_ends_every_kind_cancelled(client: Any) -> None:
    started = trio.Event()
    release = threading.Event()

    def hang_thread(snap: tp.StageSnapshot) -> None:
        release.wait(30)

    async def hang_task(ctx: tp.StageContext) -> None:
        started.set()
        await trio.sleep_forever()

    pipe = tp.Pipeline("mixed")
    pipe.add_stage("task", hang_task)
    pipe.add_stage("thread", hang_thread, executor=tp.ThreadExecutor())
    pipe.add_stage("process", sleep_long, executor=tp.ProcessExecutor(limit=1))
    pipe.add_stage("dask", dask_block, executor=tp.DaskExecutor(client))
    pipe.add_command("command", [PY, "-c", "import time; time.sleep(60)"])
    sink = RecordingSink()
    dask_started.clear()
    dask_release.clear()
    try:
        async with tp.open_run(pipe, sinks=[sink]) as handle:
            with trio.fail_after(20):
                await started.wait()
            assert await trio.to_thread.run_sync(dask_started.wait, 10)
            await trio.testing.wait_all_tasks_blocked()
            handle.cancel()
    finally:
        release.set()
        dask_release.set()
    result = handle.result
    assert result.state is tp.RunState.CANCELLED
    assert {o.status for o in result.stages.values()} == {tp.StageStatus.CANCELLED}
    check_complete(sink, result)


# -- executor options: the stage options' error classes and messages --------------------------

TYPE = tp.StageDefinitionTypeError
VALUE = tp.StageDefinitionError


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: tp.ThreadExecutor(limit=0), VALUE, "limit must be a positive int, got 0"),
        (lambda: tp.ThreadExecutor(limit=True), TYPE, "limit must be a positive int, got True"),
        (
            lambda: tp.ProcessExecutor(limit=1.5),  # type: ignore[arg-type]
            TYPE,
            "limit must be a positive int, got 1.5",
        ),
        (lambda: tp.ProcessExecutor(limit=-2), VALUE, "limit must be a positive int, got -2"),
        (
            lambda: tp.DaskExecutor("tcp://x:1", cancel_timeout=True),
            TYPE,
            "cancel_timeout must be a finite number > 0, got True",
        ),
        (
            lambda: tp.DaskExecutor("tcp://x:1", cancel_timeout=0),
            VALUE,
            "cancel_timeout must be a finite number > 0, got 0",
        ),
        (
            lambda: tp.DaskExecutor("tcp://x:1", cancel_timeout=math.inf),
            VALUE,
            "cancel_timeout must be a finite number > 0, got inf",
        ),
        (lambda: tp.DaskExecutor(""), VALUE, "DaskExecutor needs a scheduler address, got ''"),
        (
            lambda: tp.DaskExecutor(42),  # type: ignore[arg-type]
            TYPE,
            "DaskExecutor needs a scheduler address .str. or a distributed.Client, got 42",
        ),
    ],
)
def test_executor_options(make: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match="^" + message) as info:
        make()
    assert type(info.value) is error


def test_executor_stage_errors_name_the_stage() -> None:
    pipe = tp.Pipeline("p")

    async def coro(ctx: tp.StageContext) -> None: ...

    with pytest.raises(TYPE, match=r"^stage 'b': with executor=ThreadExecutor\(limit=8\) the"):
        pipe.add_stage("b", coro, executor=tp.ThreadExecutor())
    with pytest.raises(TYPE, match=r"^stage 'c': executor must have a name and async run"):
        pipe.add_stage("c", add_one, executor=object())  # type: ignore[arg-type]
    with pytest.raises(TYPE, match=r"^stage 'd': function must be an async function"):
        pipe.add_stage("d", add_one)
    assert len(pipe) == 0


# -- missing extras, thread log hand-off -------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "make", "extra"),
    [
        ("trio_parallel", lambda: tp.ProcessExecutor(), "process"),
        ("distributed", lambda: tp.DaskExecutor("tcp://127.0.0.1:1"), "dask"),
    ],
)
def test_missing_extra_raises_at_construction_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, module: str, make: Callable[[], object], extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an uninstalled package looks like
    with pytest.raises(ImportError, match=rf"pip install 'trio-pipeline\[{extra}\]'") as info:
        make()
    assert isinstance(info.value, tp.MissingExtraError)
    assert info.value.name == module


async def test_thread_log_lines_keep_their_order_and_precede_the_finish() -> None:
    lines = 20_000

    def chatty(snap: tp.StageSnapshot) -> int:
        for i in range(lines):
            snap.log(str(i))
        return lines

    pipe = tp.Pipeline("p")
    pipe.add_stage("chatty", chatty, executor=tp.ThreadExecutor())
    sink = RecordingSink()
    started = time.perf_counter()
    result = await tp.run(pipe, sinks=[sink])
    elapsed = time.perf_counter() - started
    assert logs_of(sink, "chatty") == [str(i) for i in range(lines)]
    kinds = [type(e).__name__ for e in sink.events]
    assert kinds[-2:] == ["StageFinished", "RunFinished"]  # no line after the finish
    check_complete(sink, result)
    # A blocking round-trip per line took ~50-95 us (1-2 s here); the hand-off ~1-2 us.
    assert elapsed < 0.5, f"{elapsed / lines * 1e6:.1f} us per line"


def test_log_relay_batches_and_close_emits_the_rest_then_refuses() -> None:
    from trio_pipeline._executors import _LogRelay

    emitted: list[str] = []
    queued: list[Callable[[], object]] = []

    class Token:  # run_sync_soon queues; the test plays the Trio thread
        def run_sync_soon(self, fn: Callable[[], object]) -> None:
            queued.append(fn)

    class Ctx:
        name = "s"

        def log(self, message: str) -> None:
            emitted.append(message)

    relay = _LogRelay(Ctx(), Token())  # type: ignore[arg-type]
    relay.emit("a")
    relay.emit("b")
    assert (emitted, len(queued)) == ([], 1)  # one hand-off per batch, nothing waited
    queued.pop()()
    assert emitted == ["a", "b"]
    relay.emit("c")
    relay.emit("d")
    assert len(queued) == 1
    relay.close()  # the attempt ended before the Trio thread ran the batch
    assert emitted == ["a", "b", "c", "d"]
    queued.pop()()  # the late batch finds nothing: no line twice, none after the end
    assert emitted == ["a", "b", "c", "d"]
    with pytest.raises(RuntimeError, match="has finished"):
        relay.emit("e")
    assert not queued
