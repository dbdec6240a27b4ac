"""A crawler-like stream: a source of URLs, fetched 8 at a time, parsed into links, saved.

    trio-pipeline run examples/crawl.py
        every page is "fetched" (a short sleep; one page fails once and is retried),
        its links are parsed and counted; `report` runs once the stream has ended.
    trio-pipeline run examples/crawl.py --keep-going
        the same; a page that still fails after its retries fails `fetch` and the
        readers of its stream finish what they received, then end BLOCKED.

Press Ctrl-C once while it runs: `urls` stops at its next yield and every page already
produced is still fetched, parsed and saved (the run ends CLOSED). No network is used.
"""

from collections.abc import AsyncIterator

import trio

import trio_pipeline as tp

SEEDS = [f"https://example.org/page/{i}" for i in range(40)]
pipe = tp.Pipeline("crawl")
_calls: dict[str, int] = {}


@pipe.stage
async def urls(ctx: tp.StageContext) -> AsyncIterator[str]:
    for url in SEEDS:
        yield url  # waits while fetch's buffer is full (backpressure)


@pipe.stage(each=urls, workers=8, buffer=16, retries=2, retry_delay=0.05, timeout=10.0)
async def fetch(ctx: tp.StageContext, item: str) -> str:
    _calls[item] = _calls.get(item, 0) + 1
    await trio.sleep(0.05 + 0.01 * (len(item) % 5))
    if item.endswith("/13") and _calls[item] == 1:
        raise ConnectionError(f"{item}: connection reset")  # retried per item
    number = int(item.rsplit("/", 1)[1])
    return " ".join(f"/page/{(number * k) % 97}" for k in range(1, 4))


@pipe.stage(each=fetch, ordered=True)
async def links(ctx: tp.StageContext, item: str) -> AsyncIterator[str]:
    for link in item.split():  # a flat map: 0..n items out per page
        yield link


@pipe.stage(consumes=links)
async def save(ctx: tp.StageContext, items: AsyncIterator[str]) -> int:
    seen: set[str] = set()
    async for link in items:
        seen.add(link)
    ctx.log(f"{len(seen)} distinct links")
    return len(seen)


@pipe.stage(after=[save])
async def report(ctx: tp.StageContext) -> str:
    return f"{ctx.inputs['save']} distinct links from {len(SEEDS)} pages"
