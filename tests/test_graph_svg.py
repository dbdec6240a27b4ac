"""The SVG graph: its layout's invariants, the markup, and `graph --format svg`."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_pipeline as tp
from trio_pipeline._cli import main
from trio_pipeline._graph_svg import NODE_HEIGHT, layout, render_plan_svg, render_svg

SVG = "{http://www.w3.org/2000/svg}"


@st.composite
def dags(draw: st.DrawFn) -> list[list[int]]:
    """Random DAGs: stage i may wait for any stage before it, in any order."""
    n = draw(st.integers(0, 25))
    return [
        draw(st.lists(st.integers(0, i - 1), unique=True, max_size=4)) if i else []
        for i in range(n)
    ]


@settings(max_examples=60)
@given(dags(), st.data())
def test_layout_flows_left_to_right_without_overlaps(
    upstream: list[list[int]], data: st.DataObject
) -> None:
    widths = [data.draw(st.floats(20, 300)) for _ in upstream]
    placed = layout(upstream, widths)
    width, height = placed.size
    for i, ups in enumerate(upstream):
        for j in ups:  # every edge points right, from a box's right side to one's left
            assert placed.x[j] + placed.width[j] < placed.x[i]
    boxes = [
        (placed.x[i], placed.y[i], placed.x[i] + placed.width[i], placed.y[i] + NODE_HEIGHT)
        for i in range(len(upstream))
    ]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert placed.width[i] >= widths[i]
        assert x0 >= 0
        assert y0 >= 0
        assert x1 <= width
        assert y1 <= height
        for u0, v0, u1, v1 in boxes[i + 1 :]:
            assert x1 <= u0 or u1 <= x0 or y1 <= v0 or v1 <= y0, "boxes overlap"
    for (j, i), points in placed.routes.items():
        assert j in upstream[i]
        assert len(points) % 2 == 0
        for (a, y), (b, y2) in zip(points[::2], points[1::2], strict=True):
            assert y == y2
            assert placed.x[j] < a <= b < placed.x[i]
            for x0, y0, x1, y1 in boxes:  # a long edge's lane crosses no box
                assert b <= x0 or x1 <= a or not y0 <= y <= y1


def test_a_side_input_sits_next_to_its_user() -> None:
    # fetch -> parse -> join <- users: users goes in join's left neighbour column.
    placed = layout([[], [0], [1, 3], []], [50.0] * 4)
    assert placed.x[3] == placed.x[1]
    assert placed.x[0] < placed.x[1] < placed.x[2]


def test_stages_are_ordered_to_avoid_crossings() -> None:
    # a, b sources; c waits for b and d for a: definition order (c above d) would cross.
    placed = layout([[], [], [1], [0]], [50.0] * 4)
    assert placed.y[0] < placed.y[1]
    assert placed.y[3] < placed.y[2]


def test_a_long_edge_runs_in_a_lane_of_its_own() -> None:
    # a -> b -> c and a -> c: the edge a -> c passes b's column beside b.
    placed = layout([[], [0], [1, 0]], [50.0] * 3)
    ((a, y), (b, y2)) = placed.routes[(0, 2)]
    assert (a, b) == (placed.x[1], placed.x[1] + placed.width[1])
    assert y == y2
    assert abs(y - (placed.y[1] + NODE_HEIGHT / 2)) >= NODE_HEIGHT
    assert placed.routes[(0, 1)] == ()


def test_a_cycle_does_not_hang_the_layout() -> None:
    placed = layout([[1], [0], [0]], [10.0] * 3)
    assert len(placed.x) == 3


def pipeline() -> tp.Pipeline:
    pipe = tp.Pipeline("p")

    async def f(ctx: tp.StageContext) -> None:
        pass

    pipe.add_stage("fetch", f)
    pipe.add_stage('a<b>&"c"', f, after=["fetch"])
    pipe.add_stage("x" * 60, f, after=["fetch", 'a<b>&"c"'])
    return pipe


def test_svg_is_well_formed_with_a_box_per_stage_and_a_path_per_edge() -> None:
    text = render_plan_svg(pipeline().compile())
    assert text.endswith("</svg>\n")
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    assert root.find(f"{SVG}style") is not None
    nodes = root.findall(f"{SVG}g[@id]")
    assert len(nodes) == 3
    titles = [node.findtext(f"{SVG}title") for node in nodes]
    assert titles == ["fetch", 'a<b>&"c"', "x" * 60]
    labels = [node.findtext(f"{SVG}text") for node in nodes]
    assert labels[2] == "x" * 39 + "\u2026"  # long names are cut; the title has it whole
    assert len(root.findall(f"{SVG}g/{SVG}path")) == 3


def test_svg_classes_titles_and_links_for_the_report() -> None:
    text = render_svg(
        ["a", "b"],
        [[], [0]],
        classes={1: "failed"},
        titles={0: "a: succeeded"},
        links={0: "#r0", 1: "#r1"},
        standalone=False,
    )
    assert "xmlns" not in text
    assert "<style>" not in text
    assert '<a href="#r1"><g class="failed" id="n1"><title>b</title>' in text
    assert "<title>a: succeeded</title>" in text


def test_cli_graph_format_svg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.py"
    source = """\
        import trio_pipeline as tp
        pipe = tp.Pipeline("demo")

        @pipe.stage
        async def first(ctx):
            pass

        @pipe.stage(after=[first])
        async def second(ctx):
            pass
        """
    path.write_text(textwrap.dedent(source))
    assert main(["graph", str(path), "--format", "svg"]) == 0
    root = ET.fromstring(capsys.readouterr().out)
    assert [n.findtext(f"{SVG}text") for n in root.findall(f"{SVG}g[@id]")] == ["first", "second"]
