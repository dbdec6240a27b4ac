"""`PoolTracker`: pool limits checked where the events cannot show them (item calls)."""

from __future__ import annotations

from collections.abc import Generator, Mapping
from contextlib import contextmanager


class PoolTracker:
    """Counts the slots held while stage and item functions run, and checks each pool's size.

    An each= stage's ``uses=`` is taken per item call, and item calls emit no events
    (only `ItemFailed`), so `check_run` cannot see those slots. Wrap the body of each
    function that uses pools in `holding`; a function runs inside its slots' hold
    (taken before the call, given back after it), so the count here never exceeds the
    slots really held, and a count above a pool's size is a broken limit::

        tracker = PoolTracker(pipeline.pools)

        @pipeline.stage(each=src, workers=8, uses="gpu")
        async def infer(ctx, item):
            with tracker.holding({"gpu": 1}, "infer"):
                return await model(item)

        ...  # run it
        tracker.check()

    For an async generator per-item function the slots are held per step (up to each
    ``yield``), so wrap only the work between yields. Not thread-safe: for Trio tasks.

    Attributes:
        size: ``{pool: slots}`` as given.
        peak: The most slots of each pool seen held at once.
    """

    def __init__(self, pools: Mapping[str, int]) -> None:
        self.size: dict[str, int] = dict(pools)
        self.peak: dict[str, int] = dict.fromkeys(self.size, 0)
        self._in_use: dict[str, int] = dict.fromkeys(self.size, 0)
        self._broken: list[str] = []

    @contextmanager
    def holding(self, uses: Mapping[str, int], who: str = "a call") -> Generator[None]:
        """Count `uses` as held for the ``with`` block (whatever way it ends)."""
        in_use = self._in_use
        for pool, slots in uses.items():
            if pool not in self.size:
                self._broken.append(f"{who} uses {pool!r}, not one of the pools {self.size}")
                continue
            held = in_use[pool] = in_use[pool] + slots
            self.peak[pool] = max(self.peak[pool], held)
            if held > self.size[pool]:
                self._broken.append(
                    f"{who} took {slots} of pool {pool!r}: {held} of {self.size[pool]} in use"
                )
        try:
            yield
        finally:
            for pool, slots in uses.items():
                if pool in in_use:
                    in_use[pool] -= slots

    def check(self) -> None:
        """Raise AssertionError naming the first time a pool held more than its size."""
        if self._broken:
            raise AssertionError(
                "invariant broken: pool limits are never exceeded (item calls included): "
                + self._broken[0]
            )
