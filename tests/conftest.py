"""Shared test configuration: Hypothesis profiles.

`ci` (the default) is derandomized so CI is repeatable; `stress` is selected by
`nox -s stress`. Select one with HYPOTHESIS_PROFILE=name.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "stress",
    max_examples=20_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Runs with a cached stage (and every CLI run, which records its history) write to
# the cache folder: never into the working tree. Child processes inherit it.
os.environ.setdefault(
    "TRIO_PIPELINE_CACHE_DIR", tempfile.mkdtemp(prefix="trio-pipeline-tests-cache-")
)
