"""Keep going after a failure: only what depends on the failed stage is given up.

    trio-pipeline run examples/keep_going.py --keep-going
        4 stages succeed, fetch_mirror fails (after one retry), package and publish are
        blocked; exit code 1.
    trio-pipeline run examples/keep_going.py
        fail-fast: the failure cancels the stages still running or waiting; exit code 1.

No network is used: the failing stage fails on purpose.
"""

import trio

import trio_pipeline as tp

pipe = tp.Pipeline("release")


@pipe.stage
async def checkout(ctx: tp.StageContext) -> str:
    await trio.sleep(0.05)
    ctx.log("at commit 3f2a9c1")
    return "3f2a9c1"


@pipe.stage(after=checkout)
async def lint(ctx: tp.StageContext) -> int:
    await trio.sleep(0.15)
    return 0


@pipe.stage(after=checkout)
async def unit_tests(ctx: tp.StageContext) -> int:
    await trio.sleep(0.3)
    ctx.log("128 passed")
    return 128


@pipe.stage(after=checkout, retries=1, retry_delay=0.05)
async def fetch_mirror(ctx: tp.StageContext) -> bytes:
    await trio.sleep(0.01)
    raise ConnectionError(f"mirror.invalid is unreachable (attempt {ctx.attempt}; on purpose)")


@pipe.stage(after=fetch_mirror)
async def package(ctx: tp.StageContext) -> str:
    return f"release-{ctx.inputs['fetch_mirror']!r}.tar.gz"


@pipe.stage(after=package)
async def publish(ctx: tp.StageContext) -> None:
    ctx.log(f"publishing {ctx.inputs['package']}")


@pipe.stage(after=[lint, unit_tests])
async def docs(ctx: tp.StageContext) -> str:
    await trio.sleep(0.05)
    return "site/index.html"
