"""Peer: quota-engine, told the limits (``limits`` given) or learning them from headers.

``run`` takes the limits it is told; :func:`run_learned` ignores them (the
engine reads ``x-ratelimit-*`` headers instead).  Requests go to
``client.map`` lazily; ``concurrency=None`` lets the engine size its workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import engine
from benchmarks.peers._common import MODEL, BenchRequest, PeerLimits, Record

LOOP = "trio"


def _chat_requests(requests: Iterable[BenchRequest]) -> Iterable[engine.ChatRequest]:
    for request in requests:
        yield engine.ChatRequest(
            messages=request.prompt,
            model=MODEL,
            id=request.id,
            params={"max_tokens": request.max_tokens},
        )


async def run(
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    learn: bool = False,
    records: list[Record] | None = None,
) -> list[Record]:
    """Run every request through ``engine.open_client(...).map``; checkpoints.

    ``learn=True`` passes ``limits=None`` so the engine learns them from headers.
    ``concurrency`` (default None) is passed through: None sizes it automatically.
    """
    known = None if learn else engine.Limits(rpm=limits.rpm, tpm=limits.tpm)
    records = [] if records is None else records
    async with engine.open_client(
        base_url=base_url, api_key=api_key, limits=known, concurrency=concurrency
    ) as client:
        async for result in client.map(_chat_requests(requests)):
            timings = result.timings
            sent = timings.sent_at
            # Results time only the last attempt, so any 429s before it are
            # placed at that moment (the mock's own count is authoritative).
            throttled = (sent,) * max(0, result.attempts - 1) if sent is not None else ()
            records.append(
                Record(
                    id=result.id,
                    sent=sent,
                    last_sent=sent,
                    finished=timings.finished_at or time.time(),
                    status=result.status_code,
                    attempts=result.attempts,
                    tokens=result.usage.total_tokens if result.usage else 0,
                    throttled=throttled if result.status_code == 200 else (),
                    error=result.error.code if result.error else None,
                )
            )
    return records


async def run_learned(
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    records: list[Record] | None = None,
) -> list[Record]:
    """:func:`run` with ``limits=None``: the engine learns the quota from headers."""
    return await run(
        base_url, api_key, requests, limits, concurrency=concurrency, learn=True, records=records
    )
