"""Named await sites where tests may perturb the schedule.

In production `hook` is None and a chaos point costs one global lookup. Tests
(see `trio_pipeline.testing`) install an async hook that checkpoints or sleeps
according to a tape drawn by Hypothesis, so the same code runs under many task
orderings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Hook = Callable[[str], Awaitable[None]]

hook: Hook | None = None
