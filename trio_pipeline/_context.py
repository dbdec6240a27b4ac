"""What a stage function receives. Pure: no trio import."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._params import NO_PARAMS


class StageContext:
    """The argument of every stage function: who it is and what its upstream produced.

    Attributes:
        name: The stage's name.
        inputs: Read-only mapping of each direct upstream stage's name to its result.
        attempt: 1 on the first attempt, 2 on the first retry, and so on.
        run_id: The id of the run, as carried by its events.
        params: Read-only mapping of the run's parameters (``run(..., params=)``,
            ``--param`` on the command line); empty when none were given.
    """

    __slots__ = ("_emit_log", "attempt", "inputs", "name", "params", "run_id")

    def __init__(
        self,
        *,
        name: str,
        inputs: Mapping[str, Any],
        attempt: int,
        run_id: str,
        emit_log: Callable[[str, str], None],
        params: Mapping[str, Any] = NO_PARAMS,
    ) -> None:
        self.name = name
        self.inputs = inputs
        self.attempt = attempt
        self.run_id = run_id
        self._emit_log = emit_log
        self.params = params

    def log(self, message: str) -> None:
        """Emit a `StageLog` event. Never blocks.

        Raises:
            RuntimeError: if the stage has already finished.
        """
        self._emit_log(self.name, str(message))

    def __repr__(self) -> str:
        return f"<StageContext {self.name!r} attempt={self.attempt} run={self.run_id}>"
