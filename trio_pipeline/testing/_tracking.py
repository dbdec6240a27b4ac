"""`TaskTracker`: a trio Instrument proving that no task outlives a run."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager

import trio


class TaskTracker(trio.abc.Instrument):
    """Counts tasks spawned and exited while installed, to prove none outlives a run.

    Usage, inside `trio.run`::

        tracker = TaskTracker()
        with tracker.installed():
            result = await trio_pipeline.run(pipeline)
        tracker.check_all_exited()
    """

    def __init__(self) -> None:
        self.spawned = 0
        self.exited = 0
        self.alive: set[trio.lowlevel.Task] = set()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.spawned += 1
        self.alive.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        # Tasks spawned before installation exit uncounted.
        if task in self.alive:
            self.exited += 1
            self.alive.discard(task)

    @contextmanager
    def installed(self) -> Generator[TaskTracker]:
        """Add this instrument to the current trio run for the ``with`` block."""
        trio.lowlevel.add_instrument(self)
        try:
            yield self
        finally:
            trio.lowlevel.remove_instrument(self)

    def check_all_exited(self) -> None:
        """Raise AssertionError naming the tasks spawned while installed that are alive."""
        names = sorted(task.name for task in self.alive)
        assert not self.alive, (
            f"no task outlives the run: {len(names)} of {self.spawned} still alive: {names}"
        )
