"""Peer: ``aiometer`` (``max_at_once`` + ``max_per_second``) with httpx, under trio.

``aiometer.amap`` runs one call per request with at most ``concurrency`` in
flight and starts at most ``max_per_second`` per second — the binding quota
divided by 60 (requests per minute, or tokens per minute over the tokens one
request costs, whichever is tighter).  Evenly paced: it never uses a burst the
server grants.  A 429 is retried after the server's ``retry-after-ms`` (a
careful hand-written loop).  Without known limits it cannot pace at all and
runs at ``concurrency`` alone.  ``amap`` needs a sequence (it sizes its
result channel by ``len``), so the requests are materialised as a list first.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable

import aiometer
import httpx
import trio

from benchmarks.peers._common import (
    BenchRequest,
    PeerLimits,
    Record,
    retry_after_seconds,
    total_tokens,
)
from engine._tokens import estimate_chat_tokens

LOOP = "trio"
DEFAULT_CONCURRENCY = 64
MAX_ATTEMPTS = 20


def per_second(limits: PeerLimits, tokens_per_request: int) -> float | None:
    """The pace that keeps under every known per-minute limit (None: no limit known)."""
    rates = []
    if limits.rpm:
        rates.append(limits.rpm / 60.0)
    if limits.tpm:
        rates.append(limits.tpm / 60.0 / max(1, tokens_per_request))
    return min(rates) if rates else None


async def _call(http: httpx.AsyncClient, request: BenchRequest) -> Record:
    body = request.body()
    headers = {"x-client-request-id": request.id}
    throttled: list[float] = []
    first = last = None
    attempts = 0
    while True:
        attempts += 1
        last = time.time()
        first = first or last
        try:
            response = await http.post("/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            if attempts >= MAX_ATTEMPTS:
                return Record(
                    request.id, first, last, time.time(), None, attempts, error=type(exc).__name__
                )
            await trio.sleep(1.0)
            continue
        if response.status_code == 429 and attempts < MAX_ATTEMPTS:
            throttled.append(time.time())
            await trio.sleep(retry_after_seconds(response.headers))
            continue
        ok = response.status_code == 200
        return Record(
            request.id,
            first,
            last,
            time.time(),
            response.status_code,
            attempts,
            tokens=total_tokens(response.json()) if ok else 0,
            throttled=tuple(throttled),
            error=None if ok else f"http_{response.status_code}",
        )


async def run(
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    records: list[Record] | None = None,
) -> list[Record]:
    """Run every request through ``aiometer.amap``; checkpoints.

    ``concurrency`` is ``max_at_once`` (default :data:`DEFAULT_CONCURRENCY`).
    """
    limit = concurrency or DEFAULT_CONCURRENCY
    # amap sizes its result channel with len(args): it needs a sequence.
    work = list(requests)
    if not work:
        return []
    pace = per_second(limits, estimate_chat_tokens(work[0].body()))
    records = [] if records is None else records
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"authorization": f"Bearer {api_key}"},
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=httpx.Timeout(600.0, connect=10.0),
    ) as http:
        async with aiometer.amap(
            functools.partial(_call, http),
            work,
            max_at_once=limit,
            max_per_second=pace,
        ) as results:
            async for record in results:
                records.append(record)
    return records
