"""Why a stage runs or hits: decisions and their reasons. Pure: no trio import.

A miss is explained by comparing the key's components with those of the stage's most
recent entry: what differs is the reason (``code changed: function 'p.py:f'``,
``input changed: upstream 'a'``, ``dep changed: file 'data.csv'``, ``params changed:
key 'lr'``, ``version changed``). Without any entry it is ``no entry``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class DecisionKind(enum.StrEnum):
    """What the cache decided for a stage (the first is a hit)."""

    HIT = "hit"
    NO_ENTRY = "no entry"
    CHANGED = "changed"  # a component of the key differs from the latest entry
    EXPIRED = "expired"
    OUTS = "outs changed"
    FORCED = "forced"
    UNCACHEABLE = "not cacheable"  # an input, a parameter or the value does not pickle
    UNREADABLE = "unreadable"  # the stored value does not load
    DISABLED = "not cached"  # the stage has no cache policy, or --no-cache


@dataclass(frozen=True, slots=True)
class Decision:
    """One stage's cache decision.

    Attributes:
        stage: The stage's name.
        kind: What was decided.
        reason: The explanation, for people (``StageFinished.reason`` of a hit, ``--explain``).
        key: The stage's key, when it could be computed.
    """

    stage: str
    kind: DecisionKind
    reason: str
    key: str | None = None

    @property
    def hit(self) -> bool:
        return self.kind is DecisionKind.HIT

    @property
    def verb(self) -> str:
        """``"cached"`` for a hit, ``"run"`` otherwise (``"skip"`` is never a cache decision)."""
        return "cached" if self.hit else "run"


_COMMAND = "command "  # a command stage's argv, as `_keys` names it among the code items


def _quote_all(noun: str, names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
    plural = "s" if len(names) > 1 else ""
    return f"{noun}{plural} {shown}"


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    names = [n for n in new if old.get(n) != new[n]]
    names.extend(n for n in old if n not in new)
    return sorted(set(names), key=lambda n: (n not in new, n))


def explain_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The differences between two key-component records (see `_keys.key_parts`), in words."""
    reasons: list[str] = []
    if old.get("format") != new.get("format"):
        return ["cache format changed (a new trio_pipeline)"]
    if old.get("version") != new.get("version"):
        reasons.append(f"version changed: {old.get('version')!r} -> {new.get('version')!r}")
    if old.get("code") != new.get("code"):
        functions = _changed(old.get("functions", {}), new.get("functions", {}))
        commands = [f for f in functions if f.startswith(_COMMAND)]
        items = [f for f in functions if ":" in f and f not in commands]  # own code first
        libraries = [f for f in functions if ":" not in f and f not in commands]
        if items:
            reasons.append("code changed: " + _quote_all("function", items))
        if commands:
            now = [f[len(_COMMAND) :] for f in commands if f in new.get("functions", {})]
            reasons.append("code changed: the command" + (f", now {now[0]}" if now else ""))
        if libraries:
            reasons.append("code changed: " + _quote_all("package", libraries))
        if not functions:
            reasons.append("code changed")
    inputs = _changed(old.get("inputs", {}), new.get("inputs", {}))
    if inputs:
        reasons.append("input changed: " + _quote_all("upstream", inputs))
    params = _changed(old.get("params", {}), new.get("params", {}))
    if params:
        reasons.append("params changed: " + _quote_all("key", params))
    deps = _changed(old.get("deps", {}), new.get("deps", {}))
    if deps:
        reasons.append("dep changed: " + _quote_all("file", deps))
    return reasons


def miss_reason(latest_parts: Mapping[str, Any] | None, parts: Mapping[str, Any]) -> Decision:
    """The decision for a key with no entry, given the stage's latest entry's components."""
    stage = str(parts["stage"])
    if latest_parts is None:
        return Decision(stage, DecisionKind.NO_ENTRY, "no entry")
    reasons = explain_changes(latest_parts, parts)
    if not reasons:
        # Same components, no entry: the entry was pruned, expired and replaced, or
        # is held by an entry of another pipeline with a stage of the same name.
        return Decision(stage, DecisionKind.NO_ENTRY, "no entry")
    return Decision(stage, DecisionKind.CHANGED, "; ".join(reasons))


def format_age(seconds: float) -> str:
    """``"42s"``, ``"3.5 min"``, ``"2.0 h"``, ``"4.1 days"``."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def hit_reason(run_id: str, created: float, *, now: float | None = None) -> str:
    """The reason of a hit: which run stored it and how long ago."""
    age = (time.time() if now is None else now) - created
    return f"cache hit: stored {format_age(max(age, 0.0))} ago by run {run_id}"
