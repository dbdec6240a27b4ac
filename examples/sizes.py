"""A dynamic map: an ordinary stage's list, fanned out at run time once it succeeded.

trio-pipeline run examples/sizes.py
    `files` lists this directory; `size` runs once per file, 4 at a time, in a
    thread each (a sync per-item function with executor=); `total` receives the
    sizes as a list, in input order.
"""

import os

import trio

import trio_pipeline as tp

pipe = tp.Pipeline("sizes")


HERE = os.path.dirname(os.path.abspath(__file__))


@pipe.stage
async def files(ctx: tp.StageContext) -> list[str]:
    names = await trio.to_thread.run_sync(os.listdir, HERE)
    return sorted(os.path.join(HERE, name) for name in names if name.endswith(".py"))


def size(snapshot: tp.StageSnapshot, item: str) -> int:
    return os.path.getsize(item)  # runs in a worker thread


pipe.stage(size, each=files, workers=4, ordered=True, executor=tp.ThreadExecutor(limit=4))


@pipe.stage(after=["size"])
async def total(ctx: tp.StageContext) -> str:
    sizes = ctx.inputs["size"]  # the list of size's items, in input order
    return f"{len(sizes)} files, {sum(sizes):,} bytes"
