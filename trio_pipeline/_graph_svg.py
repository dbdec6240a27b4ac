"""The dependency graph as SVG, laid out here (no Graphviz). Pure: no trio import.

Layout: a stage's column is the length of the longest dependency path leading to it
(sources in column 0, data flowing left to right); within a column, stages are
ordered by a few barycentre sweeps so that edges cross less; edges are curves from
a stage to those that wait for it. Labels use a monospace font so their width is
known without measuring text.

`trio-pipeline graph --format svg` and the HTML run report share this renderer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from ._graph import Plan

CHAR_WIDTH = 7.2
"""Width of one character of the 12px monospace label font (a conservative average)."""
MAX_LABEL = 40
"""Characters shown of a stage name; the full name is the node's tooltip."""
NODE_HEIGHT = 24
ROW_GAP = 10
COLUMN_GAP = 48
PAD_X = 8
MARGIN = 12

GRAPH_CSS = """\
.tpg text{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;fill:#1f2328;\
dominant-baseline:central}
.tpg rect{fill:#f6f8fa;stroke:#8c959f;stroke-width:1;rx:4}
.tpg path{fill:none;stroke:#8c959f;stroke-width:1.2}
.tpg .succeeded rect{fill:#dafbe1;stroke:#1a7f37}
.tpg .failed rect{fill:#ffebe9;stroke:#cf222e;stroke-width:2}
.tpg .blocked rect{fill:#fff8c5;stroke:#9a6700;stroke-dasharray:4 2}
.tpg .skipped rect{fill:#f6f8fa;stroke:#8c959f;stroke-dasharray:2 2}
.tpg .cancelled rect{fill:#eaeef2;stroke:#57606a;stroke-dasharray:4 2}
.tpg .cached rect{fill:#ddf4ff;stroke:#0969da}
.tpg .running rect{fill:#ddf4ff;stroke:#0969da;stroke-dasharray:1 2}
.tpg a:hover rect{stroke-width:2.5}
"""


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each stage goes: `x`, `y` of its box's top-left corner and its `width`.

    `routes[(j, i)]` lists the points an edge from `j` to `i` passes between the
    boxes, one pair per column it crosses (empty for neighbouring columns).
    """

    x: tuple[float, ...]
    y: tuple[float, ...]
    width: tuple[float, ...]
    size: tuple[float, float]
    routes: Mapping[tuple[int, int], tuple[tuple[float, float], ...]]


def layout(upstream: Sequence[Sequence[int]], box_widths: Sequence[float]) -> Layout:
    """Place the stages of a DAG given each stage's upstream indices and box width.

    An edge spanning several columns gets a placeholder in each column between (as
    in Sugiyama's method), ordered with the stages, so it runs in a lane of its own
    instead of across boxes. A cycle (which a validated plan never has) does not
    hang it: the stages on it go to column 0.
    """
    n = len(upstream)
    downstream: list[list[int]] = [[] for _ in range(n)]
    for i, ups in enumerate(upstream):
        for j in ups:
            downstream[j].append(i)
    column = [0] * n
    waiting = [len(ups) for ups in upstream]
    ready = [i for i in range(n) if waiting[i] == 0]
    order: list[int] = []
    while ready:
        i = ready.pop()
        order.append(i)
        for j in downstream[i]:
            column[j] = max(column[j], column[i] + 1)
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    # Then as late as the downstream allows, so a side input sits next to its user
    # instead of sending a long edge across the graph.
    for i in reversed(order):
        if downstream[i]:
            column[i] = max(column[i], min(column[j] for j in downstream[i]) - 1)
    # Placeholders (indices n, n+1, ...) for edges spanning columns.
    ups_all: list[list[int]] = [[] for _ in range(n)]
    chains: dict[tuple[int, int], list[int]] = {}
    budget = 4 * n + 1000  # placeholders; past it, long edges are drawn straight across
    for i, ups in enumerate(upstream):
        for j in ups:
            previous = j
            chain: list[int] = []
            span = column[i] - column[j] - 1
            if span > budget:
                span = 0
            budget -= span
            for c in range(column[j] + 1, column[j] + 1 + span):
                ups_all.append([previous])
                column.append(c)
                previous = len(ups_all) - 1
                chain.append(previous)
            ups_all[i].append(previous)
            chains[(j, i)] = chain
    total = len(ups_all)
    downs_all: list[list[int]] = [[] for _ in range(total)]
    for i, ups in enumerate(ups_all):
        for j in ups:
            downs_all[j].append(i)
    columns: list[list[int]] = [[] for _ in range(max(column, default=-1) + 1)]
    for i in range(total):
        columns[column[i]].append(i)
    rank = [0.0] * total
    for members in columns:
        for r, i in enumerate(members):
            rank[i] = r
    # Barycentre sweeps, forward (by upstream) then backward (by downstream).
    for _ in range(2):
        for neighbours, sweep in ((ups_all, columns[1:]), (downs_all, columns[-2::-1])):
            for members in sweep:
                keys = {
                    i: (sum(rank[j] for j in neighbours[i]) / len(neighbours[i]))
                    if neighbours[i]
                    else rank[i]
                    for i in members
                }
                members.sort(key=keys.__getitem__)
                for r, i in enumerate(members):
                    rank[i] = r
    return _place(columns, [*box_widths, *[0.0] * (total - n)], n, chains)


def _place(
    columns: list[list[int]],
    box_widths: Sequence[float],
    n: int,
    chains: Mapping[tuple[int, int], list[int]],
) -> Layout:
    total = len(box_widths)
    xs = [0.0] * total
    ys = [0.0] * total
    widths = [0.0] * total
    step = NODE_HEIGHT + ROW_GAP
    tallest = max((len(members) for members in columns), default=0)
    x = float(MARGIN)
    for members in columns:
        width = max((box_widths[i] for i in members), default=0.0)
        offset = MARGIN + (tallest - len(members)) * step / 2
        for r, i in enumerate(members):
            xs[i], ys[i], widths[i] = x, offset + r * step, width
        x += width + COLUMN_GAP
    height = 2 * MARGIN + max(tallest * step - ROW_GAP, 0)
    width_total = x - COLUMN_GAP + MARGIN if columns else 2 * MARGIN
    half = NODE_HEIGHT / 2
    routes = {
        edge: tuple(
            point
            for d in chain
            for point in ((xs[d], ys[d] + half), (xs[d] + widths[d], ys[d] + half))
        )
        for edge, chain in chains.items()
    }
    return Layout(tuple(xs[:n]), tuple(ys[:n]), tuple(widths[:n]), (width_total, height), routes)


def _edge_path(points: Sequence[tuple[float, float]]) -> str:
    """Curves between columns, straight lines across the columns a long edge passes."""
    (x, y), rest = points[0], points[1:]
    path = [f"M{x:.1f},{y:.1f}"]
    for k, (x2, y2) in enumerate(rest):
        if k % 2 == 0:  # between columns: a curve with horizontal ends
            bend = max((x2 - x) / 2, 16.0)
            path.append(f"C{x + bend:.1f},{y:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}")
        else:  # through a column's lane
            path.append(f"L{x2:.1f},{y2:.1f}")
        x, y = x2, y2
    return "".join(path)


def render_svg(
    names: Sequence[str],
    upstream: Sequence[Sequence[int]],
    *,
    classes: Mapping[int, str] | None = None,
    titles: Mapping[int, str] | None = None,
    links: Mapping[int, str] | None = None,
    standalone: bool = True,
) -> str:
    """The graph as an ``<svg>`` element.

    Args:
        names: Stage names; `upstream[i]` the indices stage `i` waits for.
        classes: A CSS class per stage (the report passes its status).
        titles: Tooltip text per stage (default: its name).
        links: An ``href`` per stage (the report links a stage to its timeline row).
        standalone: Add the XML namespace and the styles, for a file of its own.
    """
    placed = layout(
        upstream, [min(len(name), MAX_LABEL) * CHAR_WIDTH + 2 * PAD_X for name in names]
    )
    classes = classes or {}
    titles = titles or {}
    links = links or {}
    width, height = placed.size
    head = f'<svg class="tpg" width="{width:.0f}" height="{height:.0f}"'
    head += f' viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
    if standalone:  # opaque, so a dark viewer does not swallow the dark labels
        head += ' xmlns="http://www.w3.org/2000/svg" style="background:#fff"'
    parts = [head + ">"]
    if standalone:
        parts.append(f"<style>{GRAPH_CSS}</style>")
    parts.append(
        '<defs><marker id="tpg-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7"'
        ' markerHeight="7" orient="auto"><path d="M0,0L8,4L0,8z" fill="#8c959f"/></marker></defs>'
    )
    half = NODE_HEIGHT / 2
    edges: list[str] = []
    for i, ups in enumerate(upstream):
        end = (placed.x[i], placed.y[i] + half)
        for j in ups:
            start = (placed.x[j] + placed.width[j], placed.y[j] + half)
            points = [start, *placed.routes.get((j, i), ()), end]
            edges.append(f'<path d="{_edge_path(points)}" marker-end="url(#tpg-arrow)"/>')
    parts.append("<g>" + "".join(edges) + "</g>")
    for i, name in enumerate(names):
        label = name if len(name) <= MAX_LABEL else name[: MAX_LABEL - 1] + "\u2026"
        title = titles.get(i, name)
        cls = classes.get(i)
        attrs = f' class="{escape(cls)}"' if cls else ""
        node = (
            f'<g{attrs} id="n{i}"><title>{escape(title)}</title>'
            f'<rect x="{placed.x[i]:.1f}" y="{placed.y[i]:.1f}" width="{placed.width[i]:.1f}"'
            f' height="{NODE_HEIGHT}"/><text x="{placed.x[i] + PAD_X:.1f}"'
            f' y="{placed.y[i] + half:.1f}">{escape(label)}</text></g>'
        )
        href = links.get(i)
        parts.append(f'<a href="{escape(href)}">{node}</a>' if href else node)
    parts.append("</svg>")
    return "".join(parts)


def render_plan_svg(plan: Plan) -> str:
    """`render_svg` of a validated plan, as a standalone SVG document with a trailing newline."""
    names = [stage.name for stage in plan.stages]
    return render_svg(names, plan.upstream) + "\n"
