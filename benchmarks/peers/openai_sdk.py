"""Peer: the official ``openai`` SDK's ``AsyncOpenAI`` under a trio ``CapacityLimiter``.

What many users write: one ``AsyncOpenAI`` client, a task per request in a
nursery, a ``CapacityLimiter(concurrency)`` around each call, and the SDK's own
retries (it honours ``retry-after-ms`` / ``retry-after`` on 429 and backs off
exponentially otherwise).  ``max_retries`` is raised from the SDK's 2 to 10 so a
throttled request is not dropped — the best reasonable configuration.  The SDK
knows nothing of the quota; ``limits`` is ignored.  Attempts and 429s are
counted with an httpx response hook on the SDK's HTTP client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import httpx
import openai
import trio

from benchmarks.peers._common import MODEL, BenchRequest, PeerLimits, Record

LOOP = "trio"
#: In-flight bound when the caller gives none.
DEFAULT_CONCURRENCY = 64
MAX_RETRIES = 10


async def run(
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    records: list[Record] | None = None,
) -> list[Record]:
    """Run every request through ``AsyncOpenAI.chat.completions.create``; checkpoints.

    ``concurrency`` bounds calls in flight (default :data:`DEFAULT_CONCURRENCY`).
    """
    limit = concurrency or DEFAULT_CONCURRENCY
    capacity = trio.CapacityLimiter(limit)
    records = [] if records is None else records
    # Per-request attempt log, keyed by the x-client-request-id header we set.
    attempts: dict[str, list[tuple[float, int]]] = {}
    first_sent: dict[str, float] = {}
    last_sent: dict[str, float] = {}

    async def on_response(response: httpx.Response) -> None:
        request_id = response.request.headers.get("x-client-request-id", "")
        attempts.setdefault(request_id, []).append((time.time(), response.status_code))

    async def on_request(request: httpx.Request) -> None:
        request_id = request.headers.get("x-client-request-id", "")
        now = time.time()
        first_sent.setdefault(request_id, now)
        last_sent[request_id] = now

    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=httpx.Timeout(600.0, connect=10.0),
        event_hooks={"request": [on_request], "response": [on_response]},
    )
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key=api_key, max_retries=MAX_RETRIES, http_client=http
    )

    async def one(request: BenchRequest) -> None:
        async with capacity:
            status: int | None = 200
            tokens = 0
            error = None
            try:
                completion = await client.chat.completions.create(
                    model=MODEL,
                    messages=request.messages(),
                    max_tokens=request.max_tokens,
                    extra_headers={"x-client-request-id": request.id},
                )
                tokens = completion.usage.total_tokens if completion.usage else 0
            except openai.APIStatusError as exc:
                status, error = exc.status_code, type(exc).__name__
            except openai.APIError as exc:
                status, error = None, type(exc).__name__
        log = attempts.pop(request.id, [])
        sent = first_sent.pop(request.id, None)
        records.append(
            Record(
                id=request.id,
                sent=sent,
                last_sent=last_sent.pop(request.id, sent),
                finished=time.time(),
                status=status,
                attempts=len(log),
                tokens=tokens,
                throttled=tuple(at for at, code in log if code == 429),
                error=error,
            )
        )

    async with client:
        async with trio.open_nursery() as nursery:
            # One task per request, all started at once, parked on the limiter.
            for request in requests:
                nursery.start_soon(one, request)
    return records
