"""dask's synchronous scheduler on the same graph (a peer; it emits no events)."""

from __future__ import annotations

from typing import Any

from .graphs import Graph


def _noop(*_: object) -> None:
    return None


def available() -> bool:
    try:
        import dask  # noqa: F401
    except ImportError:
        return False
    return True


def run(parents: Graph) -> int:
    """Compute every node with ``dask.get`` (the synchronous scheduler); return N."""
    from dask.local import get_sync

    graph: dict[Any, Any] = {
        ("s", i): (_noop, *[("s", j) for j in ups]) for i, ups in enumerate(parents)
    }
    get_sync(graph, list(graph))
    return len(parents)
