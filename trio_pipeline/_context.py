"""What a stage function receives. Pure: no trio import."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class StageContext:
    """The argument of every stage function: who it is and what its upstream produced.

    Attributes:
        name: The stage's name.
        inputs: Read-only mapping of each direct upstream stage's name to its result.
        attempt: 1 on the first attempt, 2 on the first retry, and so on.
        run_id: The id of the run, as carried by its events.
    """

    __slots__ = ("_emit_log", "attempt", "inputs", "name", "run_id")

    def __init__(
        self,
        *,
        name: str,
        inputs: Mapping[str, Any],
        attempt: int,
        run_id: str,
        emit_log: Callable[[str, str], None],
    ) -> None:
        self.name = name
        self.inputs = inputs
        self.attempt = attempt
        self.run_id = run_id
        self._emit_log = emit_log

    def log(self, message: str) -> None:
        """Emit a `StageLog` event. Never blocks.

        Raises:
            RuntimeError: if the stage has already finished.
        """
        self._emit_log(self.name, str(message))

    def __repr__(self) -> str:
        return f"<StageContext {self.name!r} attempt={self.attempt} run={self.run_id}>"
