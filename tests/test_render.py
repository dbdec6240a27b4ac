"""The text renderings of a plan: start order, Mermaid and DOT graphs."""

from __future__ import annotations

import pytest

import trio_pipeline as tp
from trio_pipeline._render import render_dot, render_graph, render_mermaid, render_order


def test_renderings_of_an_empty_and_a_small_plan() -> None:
    empty = tp.Pipeline("empty").compile()
    assert render_order(empty, []) == "pipeline 'empty': 0 stages in start order\n"
    assert render_mermaid(empty) == "flowchart TD\n"
    assert render_dot(empty) == 'digraph "empty" {\n    rankdir=TB;\n}\n'
    pipe = tp.Pipeline("p")

    async def f(ctx: tp.StageContext) -> None:
        pass

    pipe.add_stage("a<b>&", f)
    pipe.add_stage("back\\slash", f, after="a<b>&")
    plan = pipe.compile()
    assert render_graph(plan, "mermaid") == (
        'flowchart TD\n    s0["a#lt;b#gt;#amp;"]\n    s1["back\\slash"]\n    s0 --> s1\n'
    )
    assert '"back\\\\slash";' in render_graph(plan, "dot")
    with pytest.raises(ValueError, match="unknown graph format 'png'"):
        render_graph(plan, "png")
