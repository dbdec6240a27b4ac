"""Text renderings of a validated pipeline: start order, Mermaid, Graphviz dot, SVG. Pure.

All three take a `Plan` (so the graph was validated) and return text with a trailing
newline; the CLI only prints it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from ._dryrun import count_line
from ._graph import Plan
from ._graph_svg import render_plan_svg

_NONE: Mapping[str, str] = MappingProxyType({})

FORMATS = ("mermaid", "dot", "svg")


def render_order(plan: Plan, order: list[str], skipped: Mapping[str, str] = _NONE) -> str:
    """The stages in start order, one per line, each with the stages it waits for.

    Then the `skipped` ones (`Pipeline.skipped_stages`: a run in which nothing fails
    skips them), marked ``-`` and with the reason. Example::

        pipeline 'demo': 2 stages in start order, 1 skipped if nothing fails
          1. fetch
          2. parse  after fetch
          -  alert  after parse; skipped (trigger one_failed not met: no upstream failed)
    """
    deps = {stage.name: stage.after for stage in plan.stages}
    lines = [f"pipeline {plan.name!r}: {count_line(order, skipped)}"]
    width = max((len(name) for name in [*order, *skipped]), default=0)
    digits = len(str(len(order)))
    rows = [(f"{n:>{digits}}.", name) for n, name in enumerate(order, 1)]
    for mark, name in [*rows, *((f"{'-':>{digits}} ", name) for name in skipped)]:
        after = deps[name]
        line = f"  {mark} {name:<{width}}"
        if after:
            line += "  after " + ", ".join(after)
        if name in skipped:
            line += ("; " if after else "  ") + f"skipped ({skipped[name]})"
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def render_graph(plan: Plan, fmt: str) -> str:
    """The graph as Mermaid (``flowchart TD``), Graphviz ``digraph`` text or an SVG document."""
    if fmt == "mermaid":
        return render_mermaid(plan)
    if fmt == "dot":
        return render_dot(plan)
    if fmt == "svg":
        return render_plan_svg(plan)
    raise ValueError(f"unknown graph format {fmt!r}; choose one of {', '.join(FORMATS)}")


def render_mermaid(plan: Plan) -> str:
    """Mermaid flowchart. Node ids are ``s0, s1, ...`` (definition order); labels are quoted.

    Stage names may hold any character, so the label escapes what Mermaid would
    parse (quotes and angle brackets as HTML entities, which Mermaid renders back).
    """
    lines = ["flowchart TD"]
    lines += [f'    s{i}["{_mermaid_label(stage.name)}"]' for i, stage in enumerate(plan.stages)]
    lines += [f"    s{j} --> s{i}" for i, ups in enumerate(plan.upstream) for j in ups]
    return "\n".join(lines) + "\n"


def render_dot(plan: Plan) -> str:
    """Graphviz digraph, edges pointing downstream (from a stage to those that wait for it)."""
    lines = [f"digraph {_dot_id(plan.name)} {{", "    rankdir=TB;"]
    lines += [f"    {_dot_id(stage.name)};" for stage in plan.stages]
    names = [stage.name for stage in plan.stages]
    lines += [
        f"    {_dot_id(names[j])} -> {_dot_id(names[i])};"
        for i, ups in enumerate(plan.upstream)
        for j in ups
    ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_label(name: str) -> str:
    table = {"&": "#amp;", '"': "#quot;", "<": "#lt;", ">": "#gt;"}
    return "".join(table.get(ch, ch) for ch in name)


def _dot_id(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
