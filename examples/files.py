"""Process a folder of text files through dependent stages, some of them concurrent.

    trio-pipeline run examples/files.py

The first stage writes sample input to ``$TRIO_PIPELINE_DEMO_DIR`` (default: a
``trio-pipeline-demo`` folder in the temporary directory), so it runs anywhere,
offline. The graph (``trio-pipeline graph examples/files.py``)::

    make_inputs -+-> word_counts --+-> index ---+-> report
                 +-> checksums ----+            |
                 +-> normalise ----> archive ---+

word_counts, checksums and normalise run at the same time, and each works on the
files concurrently: checksums and archive are subprocesses (``trio.run_process``),
the rest use ``trio.Path``.
"""

import json
import os
import random
import sys
import tempfile

import trio

import trio_pipeline as tp

FILES = 12
_DIR = os.environ.get("TRIO_PIPELINE_DEMO_DIR")
ROOT = trio.Path(_DIR) if _DIR else trio.Path(tempfile.gettempdir(), "trio-pipeline-demo")
INPUT = ROOT / "input"
OUTPUT = ROOT / "output"
WORDS = ["trio", "nursery", "cancel", "scope", "channel", "stage", "pipeline", "event", "sink"]
SHA256 = "import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest())"

pipe = tp.Pipeline("files")


@pipe.stage
async def make_inputs(ctx: tp.StageContext) -> list[trio.Path]:
    await INPUT.mkdir(parents=True, exist_ok=True)
    rng = random.Random(42)
    paths = []
    for i in range(FILES):
        lines = (" ".join(rng.choices(WORDS, k=rng.randint(5, 15))) for _ in range(40))
        path = INPUT / f"doc{i:02d}.txt"
        await path.write_text("\n".join(lines).title() + "\n")
        paths.append(path)
    ctx.log(f"wrote {FILES} files to {INPUT}")
    return paths


@pipe.stage(after=make_inputs)
async def word_counts(ctx: tp.StageContext) -> dict[str, int]:
    counts: dict[str, int] = {}

    async def count(path: trio.Path) -> None:
        counts[path.name] = len((await path.read_text()).split())

    async with trio.open_nursery() as nursery:
        for path in ctx.inputs["make_inputs"]:
            nursery.start_soon(count, path)
    ctx.log(f"{sum(counts.values())} words")
    return dict(sorted(counts.items()))


@pipe.stage(after=make_inputs)
async def checksums(ctx: tp.StageContext) -> dict[str, str]:
    digests: dict[str, str] = {}
    limiter = trio.CapacityLimiter(4)  # at most 4 child processes at a time

    async def digest(path: trio.Path) -> None:
        async with limiter:
            done = await trio.run_process(
                [sys.executable, "-c", SHA256, os.fspath(path)], capture_stdout=True
            )
        digests[path.name] = done.stdout.decode().strip()

    async with trio.open_nursery() as nursery:
        for path in ctx.inputs["make_inputs"]:
            nursery.start_soon(digest, path)
    return dict(sorted(digests.items()))


@pipe.stage(after=make_inputs)
async def normalise(ctx: tp.StageContext) -> trio.Path:
    folder = OUTPUT / "normalised"
    await folder.mkdir(parents=True, exist_ok=True)

    async def rewrite(path: trio.Path) -> None:
        text = await path.read_text()
        await (folder / path.name).write_text(" ".join(text.lower().split()) + "\n")

    async with trio.open_nursery() as nursery:
        for path in ctx.inputs["make_inputs"]:
            nursery.start_soon(rewrite, path)
    return folder


@pipe.stage(after=normalise)
async def archive(ctx: tp.StageContext) -> trio.Path:
    folder = ctx.inputs["normalise"]
    target = OUTPUT / "normalised.zip"
    await trio.run_process([sys.executable, "-m", "zipfile", "-c", target, folder])
    ctx.log(f"{target} ({(await target.stat()).st_size} bytes)")
    return target


@pipe.stage(after=[word_counts, checksums])
async def index(ctx: tp.StageContext) -> trio.Path:
    counts, digests = ctx.inputs["word_counts"], ctx.inputs["checksums"]
    rows = {name: {"words": counts[name], "sha256": digests[name]} for name in counts}
    target = OUTPUT / "index.json"
    await target.write_text(json.dumps(rows, indent=2) + "\n")
    return target


@pipe.stage(after=[index, archive])
async def report(ctx: tp.StageContext) -> str:
    rows = json.loads(await ctx.inputs["index"].read_text())
    total = sum(row["words"] for row in rows.values())
    message = f"{len(rows)} files, {total} words; see {OUTPUT}"
    ctx.log(message)
    return message
