"""Named await sites where tests may perturb the schedule, scoped to one run.

A hook is installed in a context (`installed`, or `trio_pipeline.testing.ChaosTape`);
a run reads it once, when it starts, with `current`, and awaits it at each chaos
point of that run only. So a hook installed in one task does not touch a run
started elsewhere, and two runs in one process never share a tape. In production
no hook is installed: a chaos point costs one attribute test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from contextvars import ContextVar

Hook = Callable[[str], Awaitable[None]]

_hook: ContextVar[Hook | None] = ContextVar("trio_pipeline_chaos_hook", default=None)


def current() -> Hook | None:
    """The hook installed in the calling context, or None; a run calls this once at start."""
    return _hook.get()


@contextmanager
def installed(hook: Hook) -> Generator[None]:
    """Install `hook` for runs started in this context inside the ``with`` block.

    Tasks spawned inside the block (and `trio.run` called inside it) inherit it.
    """
    token = _hook.set(hook)
    try:
        yield
    finally:
        _hook.reset(token)
