"""What a run would do, stage by stage, as text or JSON: ``trio-pipeline run --dry-run``. Pure.

For each stage in start order: its dependencies, trigger, pools, retries, timeout and
where it runs; then the stages a run in which nothing fails skips, with the reason it
gives (`Pipeline.skipped_stages`). Options are read from ``stage.options``
(`StageOptions`); the run's parameters and the pipeline's pools are shown too.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

from ._graph import Plan, Stage

_ARGV_WIDTH = 40
_NONE: Mapping[str, str] = MappingProxyType({})


def describe_stage(stage: Stage) -> dict[str, Any]:
    """One stage's plan as JSON-ready data (see `dry_run_json` for the keys)."""
    options = stage.options
    retry = options.retry
    delay = retry.delay
    return {
        "name": stage.name,
        "after": list(stage.after),
        "trigger": options.trigger.value,
        "uses": dict(options.uses),
        "exclusive": options.exclusive,
        "priority": options.priority,
        "retries": retry.retries,
        "retry_delay": list(delay) if isinstance(delay, tuple) else delay,
        "retry_backoff": retry.backoff,
        "retry_max_delay": retry.max_delay,
        "retry_jitter": retry.jitter,
        "retry_on": None if retry.retry_on is None else _describe_retry_on(retry.retry_on),
        "timeout": options.timeout,
        **_where(stage),
    }


def _describe_retry_on(retry_on: object) -> str | list[str]:
    if isinstance(retry_on, type):
        return retry_on.__name__
    if isinstance(retry_on, tuple):
        return [
            getattr(kind, "__name__", repr(kind)) for kind in cast(tuple[object, ...], retry_on)
        ]
    return getattr(retry_on, "__qualname__", None) or repr(retry_on)


def _where(stage: Stage) -> dict[str, Any]:
    """``executor``: task, thread, process, dask or command (and the executor's repr or argv)."""
    executor = stage.executor
    if executor is not None:
        return {"executor": executor.name, "executor_repr": repr(executor), "argv": None}
    argv: object = getattr(stage.fn, "argv", None)  # a Command (duck-typed: no edge import)
    if isinstance(argv, tuple):
        words = [str(word) for word in cast(tuple[object, ...], argv)]
        return {"executor": "command", "executor_repr": None, "argv": words}
    return {"executor": "task", "executor_repr": None, "argv": None}


def dry_run_json(
    plan: Plan,
    order: Sequence[str],
    *,
    params: Mapping[str, Any],
    pools: Mapping[str, int],
    skipped: Mapping[str, str] = _NONE,
) -> str:
    """``{"pipeline", "params", "pools", "stages": [...]}``: started stages in start order,
    then the `skipped` ones.

    Each stage: ``name, after, trigger, uses, exclusive, priority, retries,
    retry_delay, retry_backoff, retry_max_delay, retry_jitter, retry_on, timeout, executor``
    (``task``, ``thread``, ``process``, ``dask`` or ``command``), ``executor_repr``,
    ``argv`` (a command's) and ``skipped`` (None, or the reason a run in which nothing
    fails skips it). Values that are not JSON are shown as their repr.
    """
    by_name = {stage.name: stage for stage in plan.stages}
    stages = [{**describe_stage(by_name[name]), "skipped": None} for name in order]
    stages += [
        {**describe_stage(by_name[name]), "skipped": reason} for name, reason in skipped.items()
    ]
    data = {
        "pipeline": plan.name,
        "params": dict(params),
        "pools": dict(pools),
        "stages": stages,
    }
    return json.dumps(data, indent=2, default=repr)


def render_dry_run(
    plan: Plan,
    order: Sequence[str],
    *,
    params: Mapping[str, Any],
    pools: Mapping[str, int],
    skipped: Mapping[str, str] = _NONE,
) -> str:
    """A table of what would run, one stage per row, in start order; then `skipped`.

    Example::

        dry run of pipeline 'demo': 2 stages in start order, 1 skipped if nothing fails; ...
          #  stage  after  runs in                  retries        timeout  trigger      pools
          1  fetch  -      task                     0              -        all_success  -
          2  parse  fetch  ThreadExecutor(limit=4)  2 (delay 0.5s) 60s      all_success  gpu=1
          -  alert  parse  task                     0              -        one_failed   -      skipped (trigger one_failed not met: no upstream failed)
    """  # noqa: E501 - the example's last row
    by_name = {stage.name: stage for stage in plan.stages}
    lines = [f"dry run of pipeline {plan.name!r}: {count_line(order, skipped)}; nothing runs"]
    if params:
        shown = ", ".join(
            f"{key}={json.dumps(value, default=repr)}" for key, value in params.items()
        )
        lines.append(f"  params: {shown}")
    if pools:
        lines.append("  pools: " + ", ".join(f"{pool}={n}" for pool, n in pools.items()))
    header = ("#", "stage", "after", "runs in", "retries", "timeout", "trigger", "pools", "")
    rows: list[tuple[str, ...]] = [header]
    numbered = [(str(n), name) for n, name in enumerate(order, 1)]
    for n, name in [*numbered, *(("-", name) for name in skipped)]:
        info = describe_stage(by_name[name])
        rows.append(
            (
                n,
                name,
                ", ".join(info["after"]) or "-",
                _runs_in(info),
                _retries(info),
                "-" if info["timeout"] is None else f"{info['timeout']:g}s",
                str(info["trigger"]),
                _pools(info),
                f"skipped ({skipped[name]})" if n == "-" else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        cells = [
            cell.rjust(widths[0]) if i == 0 else cell.ljust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(lines) + "\n"


def count_line(order: Sequence[str], skipped: Mapping[str, str]) -> str:
    """``"3 stages in start order"``, and ``", 1 skipped if nothing fails"`` when some are."""
    noun = "stage" if len(order) == 1 else "stages"
    text = f"{len(order)} {noun} in start order"
    return text + (f", {len(skipped)} skipped if nothing fails" if skipped else "")


def _runs_in(info: Mapping[str, Any]) -> str:
    if info["executor"] == "command":
        text = "command: " + shlex.join(info["argv"])
        return text if len(text) <= _ARGV_WIDTH else text[: _ARGV_WIDTH - 3] + "..."
    if info["executor_repr"] is not None:
        return str(info["executor_repr"])
    return "task"


def _retries(info: Mapping[str, Any]) -> str:
    retries: int = info["retries"]
    delay = info["retry_delay"]
    if not retries or not delay:
        return str(retries)
    if isinstance(delay, list):
        shown = ", ".join(f"{d:g}s" for d in cast(list[float], delay))
    else:
        shown = f"{delay:g}s"
    return f"{retries} (delay {shown})"


def _pools(info: Mapping[str, Any]) -> str:
    uses: dict[str, int] = info["uses"]
    text = ", ".join(f"{pool}={n}" for pool, n in uses.items()) or "-"
    return text + (" exclusive" if info["exclusive"] else "")
