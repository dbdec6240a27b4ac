"""Run the property harness against a broken engine variant and report when it fails.

Shared by `tests/test_teeth.py` (CI: must find each bug within the CI budget) and
`python -m tests.support.teeth --seeds N` (measures examples-to-detection over random seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from unittest import mock

import hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from tests.support import broken
from tests.support.scenarios import OpenRun, Scenario, run_scenario, scenarios
from trio_pipeline import _engine


@dataclass(frozen=True)
class Variant:
    name: str
    open_run: OpenRun
    patch: Callable[[], AbstractContextManager[Any]]
    strategy: st.SearchStrategy[Scenario]


def _patch_run(run_type: type[_engine._Run]) -> Callable[[], AbstractContextManager[Any]]:
    return lambda: mock.patch.object(_engine, "_Run", run_type)


VARIANTS = {
    "drain_race": Variant(
        "close the channel, sleep(0), cancel the nursery",
        broken.open_run_drain_race,
        nullcontext,
        # No outer cancellation: it would also expose variant 2's missing shield.
        scenarios(controls=("none", "none", "close", "cancel")),
    ),
    "unshielded_wait": Variant(
        "wait for the drained signal without a shield",
        tp.open_run,
        _patch_run(broken.UnshieldedWaitRun),
        scenarios(),
    ),
    "issue_455": Variant(
        "sink exception swallowed by `async with receive_channel`",
        tp.open_run,
        _patch_run(broken.SwallowingRun),
        scenarios(),
    ),
}
CONTROL = Variant(
    "fan-out dispatcher with plain `with receive_channel`",
    tp.open_run,
    _patch_run(broken.FanOutControlRun),
    scenarios(),
)


@dataclass
class Search:
    examples: int = 0
    first_failure: int | None = None
    message: str = ""


def search(variant: Variant, *, max_examples: int, seed: int | None = None) -> Search:
    """Run the property on `variant` until it fails (no shrinking); count examples.

    `seed=None` uses the derandomized CI search, so the CI result is fixed.
    """
    found = Search()

    @settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(sc=variant.strategy, _random=st.random_module())
    def prop(sc: Scenario, _random: Any) -> None:
        found.examples += 1
        try:
            run_scenario(sc, variant.open_run)
        except Exception as exc:  # a broken invariant or a crash: either is a catch
            if found.first_failure is None:
                found.first_failure = found.examples
                found.message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise

    if seed is not None:
        prop = hypothesis.seed(seed)(prop)
    with variant.patch():
        try:
            prop()
        except Exception:
            if found.first_failure is None:  # Hypothesis itself complained: a defect here
                raise
    return found


@contextmanager
def _quiet() -> Iterator[None]:
    # The broken engines log lost events at ERROR; keep the measurement readable.
    import logging

    logger = logging.getLogger("trio_pipeline")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--max-examples", type=int, default=2000)
    parser.add_argument("--no-tape", action="store_true", help="chaos tape off (comparison)")
    args = parser.parse_args(argv)
    with _quiet():
        for key, variant in VARIANTS.items():
            if args.no_tape:
                untaped = variant.strategy.map(lambda sc: dataclasses.replace(sc, tape=()))
                variant = dataclasses.replace(variant, strategy=untaped)
            counts: list[int] = []
            missed = 0
            messages: set[str] = set()
            for seed in range(args.seeds):
                found = search(variant, max_examples=args.max_examples, seed=seed)
                if found.first_failure is None:
                    missed += 1
                else:
                    counts.append(found.first_failure)
                    messages.add(found.message[:90])
            median = statistics.median(counts) if counts else None
            print(
                f"{key}: found {len(counts)}/{args.seeds}, median {median} examples,"
                f" range {min(counts, default=None)}-{max(counts, default=None)}",
                flush=True,
            )
            for message in sorted(messages):
                print(f"    {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
