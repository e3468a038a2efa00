"""What every peer shares: the workload, the limits it is told, and what it records.

Every peer module exposes the same entry point::

    LOOP: str                     # "trio" or "asyncio": the loop ``run`` needs
    async def run(base_url, api_key, requests, limits, *, concurrency=None,
                  records=None) -> list[Record]

``requests`` is any iterable of :class:`BenchRequest` (consumed as the peer
would consume it: the seed approach materialises it at once, the engine
lazily); ``limits`` is what the peer is told about the quota (a peer that
cannot use a dimension ignores it).  ``run`` returns one :class:`Record` per
request, in completion order; times are wall-clock seconds (``time.time()``) so
records from different processes share one axis.  ``records``, when given,
is the list ``run`` appends to (and returns), so a caller that cancels a run
at a deadline still has what finished.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

MODEL = "gpt-4o-mini"
#: What one benchmark request asks for: a short prompt and an output cut at
#: ``max_tokens``; the mock's reply is longer than that, so every answer uses
#: exactly ``max_tokens`` completion tokens and the server's arrival charge
#: (prompt + max_tokens) equals real usage (no refunds blur the token quota).
DEFAULT_MAX_TOKENS = 8


@attrs.frozen(slots=True)
class BenchRequest:
    """One chat completion of the workload.

    Attributes:
        id: unique per request (sent as ``x-client-request-id`` by peers that can).
        prompt: the user message.
        max_tokens: the output budget (default :data:`DEFAULT_MAX_TOKENS`).
    """

    id: str
    prompt: str
    max_tokens: int = DEFAULT_MAX_TOKENS

    def messages(self) -> list[dict[str, str]]:
        """The OpenAI ``messages`` list: one user message."""
        return [{"role": "user", "content": self.prompt}]

    def body(self) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions``."""
        return {"model": MODEL, "messages": self.messages(), "max_tokens": self.max_tokens}


@attrs.frozen
class PeerLimits:
    """The quota a peer is told (None: not told; it must cope or learn).

    Attributes:
        rpm: requests per minute (default None).
        tpm: tokens per minute (default None).
    """

    rpm: float | None = None
    tpm: float | None = None


@attrs.frozen(slots=True)
class Record:
    """What happened to one request.

    Attributes:
        id: the request's id.
        sent: wall time the first attempt was sent (None: never sent).
        last_sent: wall time the last attempt was sent (None: never sent).
        finished: wall time the request ended (answer read or given up).
        status: the final HTTP status (None: transport error or never sent).
        attempts: HTTP attempts, 429s included.
        tokens: total tokens the server reported for the final answer (0: none).
        throttled: wall times at which 429 answers arrived for this request.
            (The engine does not expose per-attempt times; its peer module
            places each 429 at the last attempt's send time.)
        error: a short error description, or None.
    """

    id: str
    sent: float | None
    last_sent: float | None
    finished: float
    status: int | None
    attempts: int
    tokens: int = 0
    throttled: tuple[float, ...] = ()
    error: str | None = None

    def to_row(self) -> list[Any]:
        """A JSON row: ``[sent, last_sent, finished, status, attempts, tokens, [429 times]]``."""
        return [
            self.sent,
            self.last_sent,
            self.finished,
            self.status,
            self.attempts,
            self.tokens,
            list(self.throttled),
        ]

    @classmethod
    def from_row(cls, row: list[Any], id: str = "") -> Record:
        """The record :meth:`to_row` wrote (the id is not kept)."""
        sent, last_sent, finished, status, attempts, tokens, throttled = row
        return cls(id, sent, last_sent, finished, status, attempts, tokens, tuple(throttled))


def workload(count: int, *, max_tokens: int = DEFAULT_MAX_TOKENS) -> Iterator[BenchRequest]:
    """``count`` requests, built lazily (a generator: 1M of them cost nothing up front)."""
    for index in range(count):
        yield BenchRequest(
            id=f"req-{index:07d}",
            prompt=f"Item {index:07d}: summarise the rate limit policy in one line.",
            max_tokens=max_tokens,
        )


def retry_after_seconds(headers: Any, default: float = 1.0) -> float:
    """Seconds a 429 asks to wait: ``retry-after-ms``, else ``retry-after``, else ``default``.

    What a careful hand-written retry loop reads (the peers that retry by hand use it).
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    return default


def total_tokens(body: Any) -> int:
    """``usage.total_tokens`` of a decoded chat completion body (0 when absent)."""
    if isinstance(body, dict):
        usage = body.get("usage")
        if isinstance(usage, dict):
            value = usage.get("total_tokens")
            if isinstance(value, int):
                return value
    return 0
