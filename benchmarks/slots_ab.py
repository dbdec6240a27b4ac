"""``python -m benchmarks.slots_ab [N ...]``: is `trio_pipeline._slots` still worth keeping?

Runs the engine with the events' and outcomes' fast ``__init__`` (from `_slots`) and
with the dataclass-generated one put back, alternating in one process (which goes
first alternates too), and prints the medians per shape and size. The hand-written
Trio baseline runs in the same loop as a reference. Keep `_slots` while removing it
costs more than 3%.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Callable
from typing import Any

import trio_pipeline._events as events_module
import trio_pipeline._result as result_module

from . import __main__ as bench
from . import baseline_trio, engine, graphs


def _fast_classes() -> list[type[Any]]:
    found: dict[str, type[Any]] = {}
    for module in (events_module, result_module):
        for obj in vars(module).values():
            code = getattr(getattr(obj, "__init__", None), "__code__", None)
            fast = code is not None and any(n.startswith("_set_") for n in code.co_names)
            if dataclasses.is_dataclass(obj) and fast:
                found[obj.__qualname__] = obj  # type: ignore[assignment]
    return list(found.values())


def _generated_init(cls: type[Any]) -> Callable[..., None]:
    fields: list[Any] = [
        (f.name, f.type)
        if f.default is dataclasses.MISSING
        else (f.name, f.type, dataclasses.field(default=f.default))
        for f in dataclasses.fields(cls)
    ]
    twin = dataclasses.make_dataclass(cls.__name__, fields, frozen=True, slots=True)
    return twin.__init__  # type: ignore[no-any-return]


def main(sizes: list[int]) -> None:
    classes = _fast_classes()
    fast = {cls: cls.__init__ for cls in classes}
    generated = {cls: _generated_init(cls) for cls in classes}

    def use(table: dict[type[Any], Callable[..., None]]) -> None:
        for cls, init in table.items():
            type.__setattr__(cls, "__init__", init)

    print("fast __init__ on:", ", ".join(sorted(c.__name__ for c in classes)))
    for shape in ("wide", "chain", "layered"):
        for n in sizes:
            parents = graphs.make(shape, n)
            pipeline = engine.build(parents)
            samples: dict[str, list[float]] = {"fast": [], "generated": [], "baseline": []}

            async def run_engine(pipeline: Any = pipeline) -> None:
                await engine.run(pipeline)

            async def run_baseline(parents: Any = parents) -> None:
                await baseline_trio.run(parents)

            for rep in range(9 if n <= 1_000 else 7 if n <= 10_000 else 3):
                order = [("fast", fast), ("generated", generated)]
                for name, table in order if rep % 2 == 0 else order[::-1]:
                    use(table)
                    samples[name].append(bench._time_trio(run_engine))
                samples["baseline"].append(bench._time_trio(run_baseline))
            use(fast)
            us = {k: statistics.median(v) / n * 1e6 for k, v in samples.items()}
            print(
                f"{shape:8} {n:>7}  with _slots {us['fast']:6.2f} us/stage"
                f"  without {us['generated']:6.2f}"
                f"  removing costs {100 * (us['generated'] / us['fast'] - 1):+5.1f}%"
                f"  (baseline {us['baseline']:.2f})",
                flush=True,
            )


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [1_000, 10_000])
