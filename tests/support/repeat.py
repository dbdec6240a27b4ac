"""Run one async test many times without Hypothesis: ``python -m tests.support.repeat``.

Importing Hypothesis (pytest's plugin does) makes trio's scheduler deterministic, so a
test that passes under pytest may still depend on the schedule. This runs the test in
a fresh `trio.run` per repetition, on a `MockClock` passed as ``autojump_clock``, with
trio's own randomized scheduling, and prints how many repetitions failed::

    python -m tests.support.repeat tests.test_dispatch:test_name --runs 300
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import logging
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, cast

import trio
import trio.testing

TestFunction = Callable[..., Coroutine[Any, Any, None]]


def repeat(test: TestFunction, runs: int) -> Counter[str]:
    """Run `test` `runs` times; return the failures, counted by their first line."""
    wanted = set(inspect.signature(test).parameters)
    if wanted - {"autojump_clock"}:
        raise TypeError(f"only the autojump_clock fixture is supported, not {sorted(wanted)}")
    failures: Counter[str] = Counter()
    for _ in range(runs):
        clock = trio.testing.MockClock(autojump_threshold=0)
        kwargs = {"autojump_clock": clock} if wanted else {}
        try:
            trio.run(functools.partial(test, **kwargs), clock=clock)
        except Exception as exc:
            lines = traceback.format_exception_only(exc)
            failures[lines[-1].strip()[:200]] += 1
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("test", help="module:function, e.g. tests.test_dispatch:test_x")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    module_name, _, name = args.test.partition(":")
    test = cast(TestFunction, getattr(importlib.import_module(module_name), name))
    logging.getLogger("trio_pipeline").setLevel(logging.CRITICAL)
    failures = repeat(test, args.runs)
    print(
        f"{args.test}: {sum(failures.values())} of {args.runs} runs failed"
        f" (hypothesis imported: {'hypothesis' in sys.modules})"
    )
    for message, count in failures.most_common():
        print(f"  {count} x {message}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
