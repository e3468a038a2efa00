"""A discrete-event simulation of the engine's quota book against simulated servers.

The servers here are written from the providers' documented behaviour, not
from the engine's code: they share nothing with ``engine/_quota.py`` or
``engine.mock`` (see docs/design.md, "The mock is not the world").  The client
side follows what the limiter task and the client's request loop do with the
book: one FIFO queue per group, an in-flight bound, the response's headers
parsed by ``engine._headers``, its status and body classified by
``engine._retry``, a 429's request queued again at the back.

Pure and synchronous: a run of a thousand requests takes tens of
milliseconds, so tests and property tests can sweep server kinds, latencies
and seeds.  Nothing here checkpoints or reads a clock.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque

import attrs
import orjson

from engine._headers import parse_rate_limit_headers
from engine._quota import Cost, Limits, QuotaBook, Reservation, TooLarge, Wait
from engine._retry import Action, classify_response

__all__ = ["Run", "Server", "simulate"]

MINUTE = 60.0


@attrs.define
class Server:
    """A simulated rate-limited server: one request limit per minute.

    Attributes:
        limit: requests per minute.
        kind: ``token_bucket`` (capacity ``limit``, continuous refill, starts
            full), ``fixed_window`` (windows aligned on the first request) or
            ``clock_minute`` (windows aligned on multiples of 60 s of the
            simulated clock plus ``phase``).
        subwindow: None, or seconds: each aligned sub-window of that length
            also admits at most ``limit * subwindow / 60`` (undeclared: the
            headers keep describing the minute).
        headers: ``full`` (limit, remaining, reset), ``no_reset`` (limit and
            remaining) or ``none``.
        headers_on_429: whether 429s carry the rate-limit headers.
        body: 429 body shape: ``openai``, ``azure``, ``generic``, ``bare``, ``none``.
        retry_after: whether 429s carry ``retry-after`` and ``retry-after-ms``.
        phase: clock offset of ``clock_minute`` windows (default 0).
    """

    limit: int
    kind: str = "token_bucket"
    subwindow: float | None = None
    headers: str = "full"
    headers_on_429: bool = True
    body: str = "openai"
    retry_after: bool = True
    phase: float = 0.0
    level: float = attrs.field(init=False, default=0.0)
    updated: float = attrs.field(init=False, default=0.0)
    window_start: float | None = attrs.field(init=False, default=None)
    used: int = attrs.field(init=False, default=0)
    sub_start: float | None = attrs.field(init=False, default=None)
    sub_used: int = attrs.field(init=False, default=0)
    admitted_at: list[float] = attrs.field(init=False, factory=list)
    refused_at: list[float] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self.level = float(self.limit)

    @property
    def rate(self) -> float:
        return self.limit / MINUTE

    def _minute_state(self, now: float) -> tuple[float, float]:
        """(remaining, seconds until the minute-level quota is full again)."""
        if self.kind == "token_bucket":
            self.level = min(self.limit, self.level + (now - self.updated) * self.rate)
            self.updated = now
            return self.level, (self.limit - self.level) / self.rate
        if self.kind == "clock_minute":
            start = math.floor((now - self.phase) / MINUTE) * MINUTE + self.phase
        else:
            start = self.window_start if self.window_start is not None else now
            if now >= start + MINUTE:
                start += MINUTE * math.floor((now - start) / MINUTE)
        if start != self.window_start:
            self.window_start = start
            self.used = 0
        return self.limit - self.used, start + MINUTE - now

    def _sub_state(self, now: float) -> tuple[float, float]:
        assert self.subwindow is not None
        share = self.limit * self.subwindow / MINUTE
        if self.sub_start is None:
            self.sub_start = now
        if now >= self.sub_start + self.subwindow:
            self.sub_start += self.subwindow * math.floor((now - self.sub_start) / self.subwindow)
            self.sub_used = 0
        return share - self.sub_used, self.sub_start + self.subwindow - now

    def handle(self, now: float) -> tuple[int, dict[str, str], bytes]:
        """Admit or refuse one request arriving at ``now``: (status, headers, body)."""
        remaining, reset = self._minute_state(now)
        wait = reset if self.kind != "token_bucket" else (1 - remaining) / self.rate
        ok = remaining >= 1
        if ok and self.subwindow is not None:
            sub_left, sub_reset = self._sub_state(now)
            if sub_left < 1:
                ok = False
                wait = sub_reset
        if ok:
            if self.kind == "token_bucket":
                self.level -= 1
            else:
                self.used += 1
            if self.subwindow is not None:
                self.sub_used += 1
            self.admitted_at.append(now)
            remaining, reset = self._minute_state(now)
        else:
            self.refused_at.append(now)
        headers: dict[str, str] = {}
        if self.headers != "none" and (ok or self.headers_on_429):
            headers["x-ratelimit-limit-requests"] = str(self.limit)
            headers["x-ratelimit-remaining-requests"] = str(max(0, math.floor(remaining)))
            if self.headers == "full":
                headers["x-ratelimit-reset-requests"] = f"{max(reset, 0.001):.3f}s"
        if ok:
            return 200, headers, b"{}"
        wait = max(wait, 0.001)
        if self.retry_after:
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(round(wait * 1000))
        return 429, headers, self._body(wait)

    def _body(self, wait: float) -> bytes:
        if self.body == "openai":
            error = {
                "message": f"Rate limit reached for m on requests per min (RPM): Limit "
                f"{self.limit}, Used {self.limit}, Requested 1. Please try again in {wait:.3f}s.",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        elif self.body == "azure":
            error = {
                "code": "429",
                "message": "Requests have exceeded call rate limit. "
                f"Please retry after {math.ceil(wait)} seconds.",
            }
        elif self.body == "generic":
            error = {
                "message": f"Rate limit exceeded, try again in {wait:.1f}s",
                "type": "rate_limit_error",
                "code": "too_many_requests",
            }
        elif self.body == "bare":
            return b'{"error": "Too Many Requests"}'
        else:
            return b""
        return orjson.dumps({"error": error})


@attrs.define
class Run:
    """What one simulated run did."""

    sent: int
    rate_limited: int
    admitted_at: list[float]
    finished_at: float
    lost: int

    @property
    def ratio(self) -> float:
        """429s per request sent."""
        return self.rate_limited / self.sent if self.sent else 0.0


def simulate(
    server: Server,
    *,
    items: int,
    limits: Limits | None = None,
    latency: float = 0.15,
    sigma: float = 0.4,
    refusal_latency: float = 0.003,
    uplink: float = 0.001,
    uplink_jitter: float = 0.0,
    max_in_flight: int = 512,
    seed: int = 0,
    start: float = 1000.0,
    book: QuotaBook | None = None,
) -> Run:
    """Send ``items`` one-request permits through a quota book to ``server``.

    Admitted requests answer after a lognormal latency (median ``latency``,
    ``sigma``), refusals after ``refusal_latency``; every request reaches the
    server ``uplink`` seconds after its grant.  Returns the :class:`Run`.
    """
    rng = random.Random(seed)
    book = book if book is not None else QuotaBook(limits)
    group = "m"
    cost = Cost(tokens=0)
    queue: deque[int] = deque(range(items))
    events: list[tuple[float, int, str, object]] = []
    order = 0
    in_flight = 0
    sent = 0
    rate_limited = 0
    done: set[int] = set()
    wake = math.inf
    now = start

    def push(at: float, kind: str, payload: object) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (at, order, kind, payload))

    def pump() -> None:
        nonlocal in_flight, sent, wake
        while queue and in_flight < max_in_flight:
            decision = book.decide(group, cost, now)
            if isinstance(decision, Wait):
                if decision.until is not None and decision.until < wake:
                    wake = decision.until
                    push(decision.until, "wake", None)
                return
            item = queue.popleft()
            if isinstance(decision, TooLarge):
                continue
            in_flight += 1
            sent += 1
            delay = uplink + (rng.expovariate(1 / uplink_jitter) if uplink_jitter else 0.0)
            push(now + delay, "arrive", (item, decision))

    pump()
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "wake":
            if now >= wake:
                wake = math.inf
            pump()
            continue
        if kind == "arrive":
            item, reservation = payload  # type: ignore[misc]
            status, headers, body = server.handle(now)
            delay = (
                rng.lognormvariate(math.log(latency), sigma) if status == 200 else refusal_latency
            )
            push(now + delay, "answer", (item, reservation, status, headers, body))
            continue
        item, reservation, status, headers, body = payload  # type: ignore[misc]
        assert isinstance(reservation, Reservation)
        in_flight -= 1
        parsed = parse_rate_limit_headers(headers)
        snapshot = None if parsed.is_empty else parsed
        verdict = classify_response(status, headers, body)
        if verdict.action is Action.SUCCESS:
            book.settle(reservation, now, headers=snapshot)
            done.add(item)
        else:
            assert verdict.action is Action.RATE_LIMITED, verdict
            rate_limited += 1
            book.rate_limited(
                reservation,
                now,
                headers=snapshot,
                retry_after=verdict.retry_after,
                limit_type=verdict.limit_type,
            )
            queue.append(item)
        pump()
    return Run(
        sent=sent,
        rate_limited=rate_limited,
        admitted_at=[t - start for t in server.admitted_at],
        finished_at=now - start,
        lost=items - len(done),
    )
