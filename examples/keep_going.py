"""Keep-going in action: one stage fails, its downstream is blocked, the rest finish.

Run it: ``python3 examples/keep_going.py`` (or through the CLI once installed).
"""

from __future__ import annotations

import trio

import trio_pipeline as tp

pipe = tp.Pipeline("keep-going-demo")


@pipe.stage
async def fetch(ctx: tp.StageContext) -> list[int]:
    await trio.sleep(0.05)
    return [3, 1, 2]


@pipe.stage(after=[fetch])
async def parse(ctx: tp.StageContext) -> int:
    ctx.log("parsing")
    return 1 // 0  # the deliberate failure


@pipe.stage(after=[parse])
async def report(ctx: tp.StageContext) -> str:
    return f"total={ctx.inputs['parse']}"


@pipe.stage(after=[fetch], retries=2, retry_delay=0.01)
async def sort(ctx: tp.StageContext) -> list[int]:
    data: list[int] = ctx.inputs["fetch"]
    return sorted(data)


async def main() -> None:
    result = await tp.run(pipe, keep_going=True, sinks=[tp.ConsoleSink()])
    print("sorted:", result.stages["sort"].value)


if __name__ == "__main__":
    trio.run(main)
