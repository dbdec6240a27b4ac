"""The benchmark graph shapes, as one edge list every runner builds from.

A graph is a list of parent tuples: ``parents[i]`` are the stages that stage ``i``
waits for, and every parent index is smaller than ``i`` (definition order is a
topological order).
"""

from __future__ import annotations

import math
import random

Graph = list[tuple[int, ...]]

SHAPES = ("wide", "chain", "layered")
SEED = 20261125


def wide(n: int) -> Graph:
    """No edges: every stage is ready at once (all N tasks alive together)."""
    return [() for _ in range(n)]


def chain(n: int) -> Graph:
    """Each stage waits for the previous one: one task alive at a time."""
    return [(i - 1,) if i else () for i in range(n)]


def layered(n: int, *, seed: int = SEED) -> Graph:
    """About sqrt(n) layers of sqrt(n) stages; 1-3 random parents from the previous layer."""
    rng = random.Random(seed)
    width = max(1, math.isqrt(n))
    parents: Graph = []
    for i in range(n):
        layer = i // width
        if layer == 0:
            parents.append(())
            continue
        lo = (layer - 1) * width
        previous = range(lo, lo + width)
        parents.append(tuple(sorted(rng.sample(previous, min(width, rng.randint(1, 3))))))
    return parents


def make(shape: str, n: int) -> Graph:
    if shape == "wide":
        return wide(n)
    if shape == "chain":
        return chain(n)
    if shape == "layered":
        return layered(n)
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")
