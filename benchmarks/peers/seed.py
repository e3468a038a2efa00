"""Peer: the seed approach (``/work/shared/seed-approach.md``), reimplemented from its description.

asyncio + aiohttp; an ``asyncio.Semaphore(25)`` caps calls in flight and every
call opens its own ``aiohttp.ClientSession`` (no connection reuse); one
coroutine per input, all started at once with ``asyncio.gather(...,
return_exceptions=True)``.  A global limiter keeps remaining requests/tokens and
two reset deadlines (initially now + 60 s): before a call it waits while the
budget is spent (resetting a counter whose deadline passed, sleeping
``min(time to the nearer deadline, 120 s)`` but at least 1 s), then charges the
estimate (tiktoken count of each message's values + 3 per message + 3, no
completion allowance); after a successful response it overwrites the counters
with ``x-ratelimit-remaining-*`` and the deadlines with ``x-ratelimit-reset-*``
parsed by a regex over integer ``<number><unit>`` pairs (so ``1.5s`` reads as
``5s``; nothing parseable: 60 s).  A 429 waits for availability once more and
calls again, recursively and without a bound; other error statuses raise.

One reading had to be chosen: the description does not say whether the retry
happens inside the semaphore; doing so would deadlock once 25 calls recurse at
the same time, so the retry here runs after the semaphore is released.
``concurrency`` and ``limits`` are honoured as the tutorial's constants
(semaphore size 25 unless given; ``max_requests`` / ``max_tokens`` from the
limits, a huge number when unknown).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable

import aiohttp

from benchmarks.peers._common import BenchRequest, PeerLimits, Record, total_tokens
from engine._tokens import count_tokens

LOOP = "asyncio"
DEFAULT_CONCURRENCY = 25
_UNKNOWN = 10**12
_DURATION_PAIR = re.compile(r"(\d+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(value: str | None) -> float:
    """The seed's reading of a reset header: integer pairs only; nothing parseable: 60 s."""
    pairs = _DURATION_PAIR.findall(value or "")
    if not pairs:
        return 60.0
    return sum(int(number) * _UNIT_SECONDS[unit] for number, unit in pairs)


def estimate(messages: list[dict[str, str]], model: str) -> int:
    """Tokens of each message's values + 3 per message + 3; no completion allowance."""
    total = 3
    for message in messages:
        total += 3 + sum(count_tokens(value, model) for value in message.values())
    return total


class _SeedLimiter:
    """The seed's global rate limiter (mutable; one per run)."""

    def __init__(self, max_requests: float, max_tokens: float) -> None:
        now = time.monotonic()
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self.remaining_requests = max_requests
        self.remaining_tokens = max_tokens
        self.requests_reset = now + 60.0
        self.tokens_reset = now + 60.0

    async def wait(self, tokens: int) -> None:
        while self.remaining_requests <= 0 or self.remaining_tokens < tokens:
            now = time.monotonic()
            if now >= self.requests_reset:
                self.remaining_requests = self.max_requests
                self.requests_reset = now + 60.0
            if now >= self.tokens_reset:
                self.remaining_tokens = self.max_tokens
                self.tokens_reset = now + 60.0
            if self.remaining_requests > 0 and self.remaining_tokens >= tokens:
                break
            nearer = min(self.requests_reset, self.tokens_reset) - now
            await asyncio.sleep(max(1.0, min(nearer, 120.0)))
        self.remaining_requests -= 1
        self.remaining_tokens -= tokens

    def update(self, headers: aiohttp.typedefs.LooseHeaders) -> None:
        now = time.monotonic()
        remaining = headers.get("x-ratelimit-remaining-requests")
        if remaining is not None:
            self.remaining_requests = int(remaining)
            self.requests_reset = now + parse_reset(headers.get("x-ratelimit-reset-requests"))
        remaining = headers.get("x-ratelimit-remaining-tokens")
        if remaining is not None:
            self.remaining_tokens = int(remaining)
            self.tokens_reset = now + parse_reset(headers.get("x-ratelimit-reset-tokens"))


async def run(
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    records: list[Record] | None = None,
) -> list[Record]:
    """Run every request the seed's way; returns one record per request."""
    semaphore = asyncio.Semaphore(concurrency or DEFAULT_CONCURRENCY)
    limiter = _SeedLimiter(limits.rpm or _UNKNOWN, limits.tpm or _UNKNOWN)
    url = base_url.rstrip("/") + "/chat/completions"
    auth = {"authorization": f"Bearer {api_key}"}
    records = [] if records is None else records
    # Per request: (sent, answered, status) of every attempt.
    log: dict[str, list[tuple[float, float, int]]] = {}

    async def call(request: BenchRequest) -> dict:
        messages = request.messages()
        body = request.body()
        async with semaphore:
            await limiter.wait(estimate(messages, body["model"]))
            sent = time.time()
            async with aiohttp.ClientSession(headers=auth) as session:
                async with session.post(
                    url, json=body, headers={"x-client-request-id": request.id}
                ) as response:
                    status = response.status
                    log.setdefault(request.id, []).append((sent, time.time(), status))
                    if status == 200:
                        limiter.update(response.headers)
                        return await response.json()
                    if status != 429:
                        response.raise_for_status()
        await limiter.wait(estimate(messages, body["model"]))
        return await call(request)

    async def one(request: BenchRequest) -> dict:
        result = None
        error = None
        try:
            result = await call(request)
        except asyncio.CancelledError:
            raise  # cut off by the caller: not a result
        except Exception as exc:
            error = exc
        attempts = log.pop(request.id, [])
        records.append(
            Record(
                id=request.id,
                sent=attempts[0][0] if attempts else None,
                last_sent=attempts[-1][0] if attempts else None,
                finished=time.time(),
                status=attempts[-1][2] if attempts else None,
                attempts=len(attempts),
                tokens=total_tokens(result),
                throttled=tuple(at for _, at, code in attempts if code == 429),
                error=type(error).__name__ if error is not None else None,
            )
        )
        if error is not None:
            raise error  # gathered with return_exceptions=True, as the seed does
        return result

    outcomes = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    del outcomes  # the seed splits results from exceptions here; the records hold both
    return records
