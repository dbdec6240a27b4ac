"""Long randomized schedule search: ``python -m tests.support.stress --examples N``.

Runs the main property (N examples, default 20,000) and the fault properties
(``--fault-examples``, default N // 4 each) under the ``stress`` Hypothesis profile
(randomized, failures saved to the example database and printed with a
``@reproduce_failure`` blob). Prints examples run, wall time and failures per
property; exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable

from hypothesis import settings

import tests.conftest  # noqa: F401 - registers the Hypothesis profiles
from tests.support.scenarios import TALLY
from tests.test_properties import FAULT_STRATEGIES, MAIN, make_property


def run_property(name: str, prop: Callable[[], None], examples: int) -> bool:
    before = TALLY.examples
    start = time.perf_counter()
    configured = settings(settings.get_profile("stress"), max_examples=examples)(prop)
    failed = False
    try:
        configured()
    except Exception:
        failed = True
        traceback.print_exc()
    elapsed = time.perf_counter() - start
    print(
        f"{name}: {TALLY.examples - before} examples run in {elapsed:.1f}s,"
        f" failures: {int(failed)}",
        flush=True,
    )
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=int, default=20_000, help="main property examples")
    parser.add_argument("--fault-examples", type=int, default=None, help="per fault property")
    args = parser.parse_args(argv)
    fault_examples = args.fault_examples if args.fault_examples is not None else args.examples // 4
    # Runs with small drain deadlines log undelivered events at ERROR by design.
    logging.getLogger("trio_pipeline").setLevel(logging.CRITICAL)
    start = time.perf_counter()
    ok = run_property("main property", make_property(MAIN), args.examples)
    for name, strategy in FAULT_STRATEGIES.items():
        ok = run_property(name, make_property(strategy), fault_examples) and ok
    print(f"total: {time.perf_counter() - start:.1f}s, {'PASS' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
