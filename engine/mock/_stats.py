"""What the mock has served, for ``GET /_mock/stats``.  Pure; nothing checkpoints."""

from __future__ import annotations

import collections
import math
from typing import Any

__all__ = ["RATE_LIMIT_CAUSES", "SlidingWindowMax", "Stats"]

#: Why a 429 was sent, as ``GET /_mock/stats`` counts them in ``rate_limited_by``:
#: ``per_minute`` a per-minute meter (RPM or TPM) the headers report was full;
#: ``per_day`` the same for RPD or TPD; ``undeclared_subwindow`` every reported
#: meter had room but a sub-window the headers do not reveal was full
#: (``subwindow_seconds``); ``request_too_large`` one request above a token
#: limit; ``insufficient_quota`` the ``insufficient_quota_after`` fault.
RATE_LIMIT_CAUSES = (
    "per_minute",
    "per_day",
    "undeclared_subwindow",
    "request_too_large",
    "insufficient_quota",
)


class SlidingWindowMax:
    """Largest sum of requests and of tokens over any window of ``width`` seconds.

    Amounts are kept in buckets of ``resolution`` seconds (default 1 ms, over a
    default ``width`` of 60 s), so the memory is bounded by ``width / resolution``
    buckets whatever the rate; a window is the buckets numbered
    ``b - width/resolution + 1`` to ``b``.  :meth:`add` is O(1) amortized: an
    amount landing in the newest bucket touches nothing else, and each bucket is
    evicted once.
    """

    def __init__(self, width: float = 60.0, resolution: float = 0.001) -> None:
        self._resolution = resolution
        self._span = round(width / resolution)
        self._buckets: collections.deque[list[float]] = collections.deque()
        self._newest: list[float] | None = None
        self._requests = 0.0
        self._tokens = 0.0
        self.max_requests = 0
        self.max_tokens = 0

    def add(self, now: float, requests: float, tokens: float, correction: float = 0.0) -> None:
        """Count ``requests`` and ``tokens`` (either may be negative: a refund) at ``now``.

        A non-zero ``correction`` (default 0) is added to the tokens after the
        maxima are updated: the same as a second call ``add(now, 0, correction)``.
        """
        bucket = math.floor(now / self._resolution)
        newest = self._newest
        if newest is not None and newest[0] >= bucket:
            # The common case at high rates: the same millisecond as the last call.
            newest[1] += requests
            newest[2] += tokens
        else:
            newest = self._newest = [bucket, requests, tokens]
            buckets = self._buckets
            buckets.append(newest)
            oldest = bucket - self._span
            while buckets[0][0] <= oldest:
                _, old_requests, old_tokens = buckets.popleft()
                self._requests -= old_requests
                self._tokens -= old_tokens
        self._requests += requests
        self._tokens += tokens
        if self._requests > self.max_requests:
            self.max_requests = round(self._requests)
        if self._tokens > self.max_tokens:
            self.max_tokens = round(self._tokens)
        if correction:
            newest[2] += correction
            self._tokens += correction
            if self._tokens > self.max_tokens:
                self.max_tokens = round(self._tokens)


class Stats:
    """Counters of one mock app since it started or was last reset.

    Attributes:
        status_counts: responses sent per status code.
        admitted: requests the quota admitted (answered or faulted).
        tokens_charged: tokens charged to quotas, after corrections to real usage.
        window: the most requests / tokens admitted in any sliding 60 s window.
        client_request_ids: requests seen per ``X-Client-Request-Id`` value.
        rate_limited_by: 429s per cause (:data:`RATE_LIMIT_CAUSES`): they add up
            to the 429s in ``status_counts``.
    """

    def __init__(self) -> None:
        self.status_counts: collections.Counter[int] = collections.Counter()
        self.admitted = 0
        self.tokens_charged = 0
        self.window = SlidingWindowMax()
        self.client_request_ids: collections.Counter[str] = collections.Counter()
        self.rate_limited_by: collections.Counter[str] = collections.Counter()

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of ``GET /_mock/stats``."""
        return {
            "requests": sum(self.status_counts.values()),
            "status_counts": {str(code): n for code, n in sorted(self.status_counts.items())},
            "admitted": self.admitted,
            "tokens_charged": self.tokens_charged,
            "max_requests_per_60s": self.window.max_requests,
            "max_tokens_per_60s": self.window.max_tokens,
            "client_request_ids": dict(self.client_request_ids),
            "rate_limited_by": {cause: self.rate_limited_by[cause] for cause in RATE_LIMIT_CAUSES},
        }
