"""`ChaosTape`: perturbs the schedule at the engine's chaos points from a tape of small ints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Generator, Iterable
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

    Points: "stage.start" (an attempt's task, before the stage function runs),
    "stage.end" (after it returned, shielded), "retry.wake" (a retry delay elapsed),
    "dispatch" (before each event is delivered), "sink.aclose" (before each sink is
    closed).

    Args:
        tape: The values, consumed one per visit, in visit order.
        sleep_unit: Seconds per step of a sleeping value.
        points: Only visits to these points consume the tape (None: every point), so
            a test can delay exactly one kind of step, e.g. ``points={"stage.start"}``.

    Attributes:
        visits: How often each named point was reached (counted for every point).
    """

    def __init__(
        self,
        tape: Iterable[int],
        *,
        sleep_unit: float = 0.5,
        points: Collection[str] | None = None,
    ) -> None:
        self.tape = list(tape)
        self.sleep_unit = sleep_unit
        self.points = None if points is None else frozenset(points)
        self.visits: Counter[str] = Counter()
        self._next = 0

    async def point(self, name: str) -> None:
        """The hook the engine awaits at chaos point `name`."""
        self.visits[name] += 1
        if self._next >= len(self.tape) or (self.points is not None and name not in self.points):
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
        """Make this tape the chaos hook of runs started in this context inside the block.

        The hook is a context variable, not a global: runs started by other tasks (or
        started before the block) never see the tape. Tasks spawned inside the block,
        and `trio.run` called inside it, inherit it.
        """
        with _chaos.installed(self.point):
            yield self
