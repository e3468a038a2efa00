"""Peer: ``aiolimiter`` leaky buckets (requests and tokens) with ``aiohttp``, on asyncio.

The popular asyncio recipe: one ``aiohttp.ClientSession``, an
``asyncio.Semaphore(concurrency)``, and two ``AsyncLimiter`` buckets — one for
requests per minute, one for tokens per minute, each acquired with the
request's cost (tiktoken prompt count plus ``max_tokens``) before sending.
``AsyncLimiter`` starts empty and lets a full bucket's worth through at once,
so it uses the burst a token-bucket server grants.  A 429 is retried after the
server's ``retry-after-ms``.  Work is fed through a bounded queue to
``concurrency`` worker coroutines (no coroutine per request up front).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import aiohttp
from aiolimiter import AsyncLimiter

from benchmarks.peers._common import (
    BenchRequest,
    PeerLimits,
    Record,
    retry_after_seconds,
    total_tokens,
)
from engine._tokens import estimate_chat_tokens

LOOP = "asyncio"
DEFAULT_CONCURRENCY = 64
MAX_ATTEMPTS = 20


async def run(
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    records: list[Record] | None = None,
) -> list[Record]:
    """Run every request with ``concurrency`` workers (default 64) under both buckets."""
    limit = concurrency or DEFAULT_CONCURRENCY
    request_bucket = AsyncLimiter(limits.rpm, 60.0) if limits.rpm else None
    token_bucket = AsyncLimiter(limits.tpm, 60.0) if limits.tpm else None
    url = base_url.rstrip("/") + "/chat/completions"
    records = [] if records is None else records
    queue: asyncio.Queue[BenchRequest | None] = asyncio.Queue(maxsize=limit)

    async def call(session: aiohttp.ClientSession, request: BenchRequest) -> Record:
        body = request.body()
        cost = estimate_chat_tokens(body)
        headers = {"x-client-request-id": request.id}
        throttled: list[float] = []
        first = last = None
        attempts = 0
        while True:
            if request_bucket is not None:
                await request_bucket.acquire()
            if token_bucket is not None:
                await token_bucket.acquire(min(cost, limits.tpm or cost))
            attempts += 1
            last = time.time()
            first = first or last
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    status = response.status
                    retry_after = retry_after_seconds(response.headers)
                    payload = await response.json() if status == 200 else None
            except aiohttp.ClientError as exc:
                if attempts >= MAX_ATTEMPTS:
                    return Record(
                        request.id,
                        first,
                        last,
                        time.time(),
                        None,
                        attempts,
                        error=type(exc).__name__,
                    )
                await asyncio.sleep(1.0)
                continue
            if status == 429 and attempts < MAX_ATTEMPTS:
                throttled.append(time.time())
                await asyncio.sleep(retry_after)
                continue
            return Record(
                request.id,
                first,
                last,
                time.time(),
                status,
                attempts,
                tokens=total_tokens(payload),
                throttled=tuple(throttled),
                error=None if status == 200 else f"http_{status}",
            )

    async def worker(session: aiohttp.ClientSession) -> None:
        while (request := await queue.get()) is not None:
            records.append(await call(session, request))

    connector = aiohttp.TCPConnector(limit=limit)
    async with aiohttp.ClientSession(
        connector=connector, headers={"authorization": f"Bearer {api_key}"}
    ) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(limit)]
        try:
            for request in requests:
                await queue.put(request)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for task in workers:  # cancelled from outside: stop them before the session closes
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return records
