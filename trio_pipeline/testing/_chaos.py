"""`ChaosTape`: perturbs the schedule at the engine's chaos points from a tape of small ints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Generator, Iterable
from contextlib import contextmanager

import trio

from .. import _chaos


class ChaosTape:
    """Perturbs the schedule at the engine's chaos points, one tape value per visit.

    Values: 0 does nothing, 1-3 yield to the scheduler that many times, 4 and above
    sleep ``(value - 3) * sleep_unit`` seconds (use a `trio.testing.MockClock` with
    ``autojump_threshold=0`` so sleeps cost no wall time). Once the tape is used up
    every point does nothing. Draw the tape with Hypothesis, e.g.
    ``st.lists(st.integers(0, 6), max_size=64)``, so failures shrink and replay.

    Attributes:
        visits: How often each named point was reached.
    """

    def __init__(self, tape: Iterable[int], *, sleep_unit: float = 0.5) -> None:
        self.tape = list(tape)
        self.sleep_unit = sleep_unit
        self.visits: Counter[str] = Counter()
        self._next = 0

    async def point(self, name: str) -> None:
        """The hook the engine awaits at chaos point `name`."""
        self.visits[name] += 1
        if self._next >= len(self.tape):
            return
        value = self.tape[self._next]
        self._next += 1
        if 1 <= value <= 3:
            # Perturbation, not synchronisation: each checkpoint lets other tasks run.
            for _ in range(value):
                await trio.lowlevel.checkpoint()
        elif value >= 4:
            await trio.sleep((value - 3) * self.sleep_unit)

    @contextmanager
    def installed(self) -> Generator[ChaosTape]:
        """Make this tape the engine's chaos hook for the ``with`` block, then restore."""
        previous = _chaos.hook
        _chaos.hook = self.point
        try:
            yield self
        finally:
            _chaos.hook = previous
