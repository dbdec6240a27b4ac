"""The harness has teeth: each deliberately broken shutdown variant must be caught.

Each test FAILS if the property harness does not find the variant's bug within the
CI budget (the derandomized search, at most `BUDGET` examples). The control (the
fan-out dispatcher of variant 3 with the bug fixed) must pass, which shows the
harness catches the bug and not the variant's design. The variants live in
`tests/support/broken.py`; `python -m tests.support.teeth --seeds N` measures how many examples each
needs over random seeds.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.teeth import CONTROL, VARIANTS, search

BUDGET = 200


@pytest.fixture(autouse=True)
def _quiet_engine_logs(caplog: pytest.LogCaptureFixture) -> None:
    # The broken engines log their lost events at ERROR; that is expected here.
    caplog.set_level(logging.CRITICAL, logger="trio_pipeline")


@pytest.mark.parametrize("key", sorted(VARIANTS))
def test_harness_catches_broken_shutdown(key: str) -> None:
    found = search(VARIANTS[key], max_examples=BUDGET)
    assert found.first_failure is not None, (
        f"the harness missed {VARIANTS[key].name!r} in {found.examples} examples"
    )


def test_control_variant_passes() -> None:
    found = search(CONTROL, max_examples=100)
    assert found.first_failure is None, found.message
