"""Definition-time signature checks: a wrong stage callable fails where it is defined."""

from __future__ import annotations

import functools
import gc
import inspect
import weakref
from typing import Any

import pytest

import trio_pipeline as tp
from trio_pipeline._signature import StageSignatureError, check_stage_callable


async def no_ctx() -> None: ...


async def two_required(ctx: tp.StageContext, extra: int) -> None: ...


async def ok_async(ctx: tp.StageContext) -> None: ...


async def ok_varargs(*args: Any) -> None: ...


async def ok_default(ctx: tp.StageContext, extra: int = 1) -> None: ...


def sync_no_arg() -> None: ...


def sync_ok(snap: tp.StageSnapshot) -> None: ...


@pytest.mark.parametrize(
    ("fn", "executor", "match"),
    [
        (
            no_ctx,
            None,
            r"stage 'a': no_ctx\(\) must accept one positional argument, e\.g\. no_ctx\(ctx\)",
        ),
        (two_required, None, r"two_required\(ctx, extra\) must accept one positional"),
        (
            sync_no_arg,
            tp.ThreadExecutor(),
            r"sync_no_arg\(\) must accept .* sync_no_arg\(snapshot\)",
        ),
        (lambda: None, tp.ThreadExecutor(), r"<lambda>\(\) must accept one positional"),
        (sync_ok, tp.ThreadExecutor, r"executor=ThreadExecutor is a class; pass an instance"),
        (sync_ok, tp.ProcessExecutor, r"e\.g\. executor=ProcessExecutor\(\)"),
    ],
)
def test_wrong_signature_fails_at_definition_naming_the_stage(
    fn: Any, executor: Any, match: str
) -> None:
    pipe = tp.Pipeline("p")
    with pytest.raises(tp.StageDefinitionError, match=match) as info:
        pipe.add_stage("a", fn, executor=executor)
    assert isinstance(info.value, TypeError)  # and a TypeError, as the mistake is one
    assert "stage 'a'" in str(info.value)
    assert len(pipe) == 0


def test_decorator_form_is_checked_too() -> None:
    pipe = tp.Pipeline("p")
    with pytest.raises(StageSignatureError, match="stage 'no_ctx'"):
        pipe.stage(no_ctx)  # type: ignore[arg-type]
    with pytest.raises(StageSignatureError, match="stage 'b': executor=ThreadExecutor"):
        pipe.stage(name="b", executor=tp.ThreadExecutor)(sync_ok)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "fn",
    [ok_async, ok_varargs, ok_default, functools.partial(two_required, extra=2), print],
)
def test_accepted_callables(fn: Any) -> None:
    check_stage_callable("a", fn, None)


def test_callable_instances_and_commands_pass() -> None:
    class Stage:
        async def __call__(self, ctx: tp.StageContext) -> None: ...

    pipe = tp.Pipeline("p")
    pipe.add_stage("obj", Stage())
    pipe.add_command("cmd", ["true"])
    pipe.add_stage("sync", sync_ok, executor=tp.ThreadExecutor())
    assert list(pipe.stages) == ["obj", "cmd", "sync"]


def test_per_item_arity() -> None:
    async def per_item(ctx: tp.StageContext, item: object) -> None: ...

    check_stage_callable("s", per_item, None, arity=2)
    with pytest.raises(StageSignatureError, match=r"must accept 2 positional arguments"):
        check_stage_callable("s", ok_async, None, arity=2)


# The verdict is memoised per function (see `_signature._BINDS`): these pin what the key is.


def test_memo_skips_reading_the_signature_again(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fn(ctx: tp.StageContext) -> None: ...

    calls: list[object] = []
    real = inspect.signature

    def counting(obj: Any, **kwargs: Any) -> inspect.Signature:
        calls.append(obj)
        return real(obj, **kwargs)

    monkeypatch.setattr(inspect, "signature", counting)
    pipe = tp.Pipeline("p")
    for i in range(3):
        pipe.add_stage(f"s{i}", fn)
    assert calls == [fn]


def test_memo_is_per_arity_both_ways() -> None:
    async def one(ctx: tp.StageContext) -> None: ...

    async def two(ctx: tp.StageContext, item: object) -> None: ...

    check_stage_callable("a", one, None)
    with pytest.raises(StageSignatureError, match=r"stage 'b'.*2 positional"):
        check_stage_callable("b", one, None, arity=2)
    check_stage_callable("c", two, None, arity=2)
    with pytest.raises(StageSignatureError, match=r"stage 'd'.*one positional"):
        check_stage_callable("d", two, None)


def test_memo_keeps_no_failure_and_checks_the_executor_each_time() -> None:
    def sync_none() -> None: ...

    for executor, what in [(tp.ThreadExecutor(), "snapshot"), (None, "ctx"), (None, "ctx")]:
        with pytest.raises(StageSignatureError, match=rf"sync_none\({what}\)"):
            check_stage_callable("a", sync_none, executor)
    check_stage_callable("b", sync_ok, tp.ThreadExecutor())
    with pytest.raises(StageSignatureError, match="is a class"):
        check_stage_callable("c", sync_ok, tp.ThreadExecutor)


def test_memo_holds_functions_weakly() -> None:
    def make() -> Any:
        async def fn(ctx: tp.StageContext) -> None: ...

        return fn

    fn = make()
    check_stage_callable("a", fn, None)
    ref = weakref.ref(fn)
    del fn
    gc.collect()
    assert ref() is None


def test_bound_methods_partials_and_instances_are_checked_each_for_itself() -> None:
    class Job:
        async def run(self, ctx: tp.StageContext) -> None: ...

        async def __call__(self, ctx: tp.StageContext) -> None: ...

    job = Job()
    for _ in range(2):  # the second time from the memo
        check_stage_callable("m", job.run, None)
    # The same function unbound needs (self, ctx): the method's verdict must not leak.
    with pytest.raises(StageSignatureError, match=r"Job\.run\(self, ctx\) must accept one"):
        check_stage_callable("f", Job.run, None)
    check_stage_callable("f2", Job.run, None, arity=2)
    with pytest.raises(StageSignatureError, match="2 positional"):
        check_stage_callable("m2", job.run, None, arity=2)
    part = functools.partial(two_required, extra=2)
    for _ in range(2):
        check_stage_callable("p", part, None)
    with pytest.raises(StageSignatureError, match="stage 'p2'"):
        check_stage_callable("p2", functools.partial(two_required), None)
    for _ in range(2):
        check_stage_callable("i", job, None)
    with pytest.raises(StageSignatureError, match="stage 'i2'"):
        check_stage_callable("i2", job, None, arity=2)
