"""Property-based tests (hypothesis): the quota book, the input reader, the header parser.

Complements the example-based tests (and the properties already in
test_headers.py, test_jsonl.py, test_schema.py) with invariants that must hold
under any input: the book never grants more than a token-bucket server with the
same limits would admit, and never leaks a reservation; the input reader never
raises on any bytes and accounts for every non-blank line exactly once.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine._headers import RateLimitHeaders, parse_rate_limit_headers
from engine._quota import Cost, Limits, QuotaBook, Reservation
from engine.app._jsonl import MAX_LINE_BYTES, read_batch_input

# -- the quota book ------------------------------------------------------------

GROUP = "gpt-4o-mini"
#: Slack for float rounding in the bucket replay (requests or tokens).
EPSILON = 1e-6

# One step of a random client: ask for a permit, or finish one held permit.
_decide = st.tuples(
    st.just("decide"), st.floats(0.0, 5.0), st.integers(0, 400), st.integers(0, 1_000)
)
_finish = st.tuples(
    st.sampled_from(["settle", "release", "rate_limited"]),
    st.floats(0.0, 5.0),
    st.integers(0, 10_000),
    st.integers(0, 1_000),
)
_steps = st.lists(st.one_of(_decide, _finish), min_size=1, max_size=150)
_limits = st.tuples(st.integers(1, 120), st.integers(50, 20_000))


def _drive(
    book: QuotaBook,
    steps: list[tuple[str, float, int, int]],
    refunds: list[tuple[float, float, int]] | None = None,
) -> tuple[list[tuple[float, Cost, int]], float]:
    """Play ``steps`` against ``book``; settle what is left; return (served grants, end time).

    A *served* grant is one that reached the server: settled, not released and
    not answered 429 (the server did not admit those).  With ``refunds`` given,
    settles report real usage below the estimate and each refund a server would
    make (time, tokens, order) is appended to it; otherwise usage equals the
    estimate.  Served grants are (time, cost, order): ``order`` numbers the
    events as they happened, so events at the same moment replay in that order.
    """
    now = 0.0
    held: list[tuple[Reservation, int]] = []
    served: list[tuple[float, Cost, int]] = []
    for order, (kind, dt, a, b) in enumerate(steps):
        now += dt
        if kind == "decide":
            decision = book.decide(GROUP, Cost(tokens=a), now)
            if isinstance(decision, Reservation):
                held.append((decision, order))
            continue
        if not held:
            continue
        reservation, granted = held.pop(a % len(held))
        if kind == "settle":
            used = reservation.cost.tokens
            if refunds is not None:
                used -= b % (used + 1)
                refunds.append((now, float(reservation.cost.tokens - used), order))
            book.settle(reservation, now, used_tokens=used)
            served.append((reservation.granted_at, reservation.cost, granted))
        elif kind == "release":
            book.release(reservation, now)
        else:
            book.rate_limited(reservation, now, retry_after=b / 1000)
    for reservation, granted in held:
        now += 0.01
        book.settle(reservation, now, used_tokens=reservation.cost.tokens)
        served.append((reservation.granted_at, reservation.cost, granted))
    return served, now


def _bucket_overdraft(events: list[tuple[float, float, int]], capacity: float) -> float:
    """Most a token bucket (full at 0, refilling ``capacity`` per 60 s) would be overdrawn.

    ``events`` are (time, amount, order), replayed by time, then order.
    """
    level, last, worst = capacity, 0.0, 0.0
    for at, amount, _order in sorted(events, key=lambda event: (event[0], event[2])):
        level = min(capacity, level + (at - last) * capacity / 60.0)
        last = at
        level -= amount
        worst = max(worst, -level)
    return worst


@settings(max_examples=300, deadline=None)
@given(limits=_limits, steps=_steps)
def test_quota_book_never_grants_beyond_what_a_token_bucket_server_admits(limits, steps):
    """Under known limits, served grants never overdraw a same-limit token bucket (rpm, tpm)."""
    rpm, tpm = limits
    served, _ = _drive(QuotaBook(Limits(rpm=rpm, tpm=tpm)), steps)
    requests = [(at, float(cost.requests), order) for at, cost, order in served]
    tokens = [(at, float(cost.tokens), order) for at, cost, order in served]
    assert _bucket_overdraft(requests, rpm) <= EPSILON
    assert _bucket_overdraft(tokens, tpm) <= EPSILON


@settings(max_examples=300, deadline=None)
@given(limits=_limits, steps=_steps)
def test_quota_book_refunds_of_unused_tokens_never_let_it_overdraw_the_server(limits, steps):
    """Usage below the estimate is refunded, as the server does: still no overdraft of tpm."""
    rpm, tpm = limits
    refunds: list[tuple[float, float, int]] = []
    served, _ = _drive(QuotaBook(Limits(rpm=rpm, tpm=tpm)), steps, refunds)
    # The server charges the estimate on arrival and gives back the unused part at the end.
    tokens = [(at, float(cost.tokens), order) for at, cost, order in served]
    tokens += [(at, -n, order) for at, n, order in refunds]
    assert _bucket_overdraft(tokens, tpm) <= EPSILON


@settings(max_examples=300, deadline=None)
@given(limits=_limits, steps=_steps)
def test_quota_book_granted_count_in_any_60_s_window_stays_within_two_limits(limits, steps):
    """A bucket starts full and refills one limit a minute: no 60 s window holds more than 2x."""
    rpm, tpm = limits
    served, _ = _drive(QuotaBook(Limits(rpm=rpm, tpm=tpm)), steps)
    times = sorted(at for at, _cost, _order in served)
    start = 0
    for end, at in enumerate(times):
        while times[start] < at - 60.0:
            start += 1
        assert end - start + 1 <= 2 * rpm


@settings(max_examples=300, deadline=None)
@given(limits=_limits, steps=_steps)
def test_quota_book_leaks_no_reservation_and_refills_to_the_limit_when_idle(limits, steps):
    """Once every permit is settled or released, nothing is in flight; idle, levels refill."""
    rpm, tpm = limits
    book = QuotaBook(Limits(rpm=rpm, tpm=tpm))
    _served, end = _drive(book, steps)
    assert book.in_flight() == 0
    assert book.in_flight(GROUP) == 0
    view = book.snapshot(GROUP, end + 120.0)
    assert math.isclose(view["requests_per_minute"]["level"], rpm)
    assert math.isclose(view["tokens_per_minute"]["level"], tpm)


@settings(max_examples=200, deadline=None)
@given(steps=_steps)
def test_quota_book_settling_twice_or_after_release_changes_nothing(steps):
    """Finishing a reservation a second time is ignored: in-flight never goes negative."""
    book = QuotaBook(Limits(rpm=60, tpm=6_000))
    decision = book.decide(GROUP, Cost(tokens=10), 0.0)
    assert isinstance(decision, Reservation)
    book.release(decision, 0.5)
    before = book.snapshot(GROUP, 1.0)
    book.settle(decision, 1.0, used_tokens=10)
    book.rate_limited(decision, 1.0)
    book.release(decision, 1.0)
    assert book.in_flight() == 0
    assert book.snapshot(GROUP, 1.0) == before
    _drive(book, steps)
    assert book.in_flight() == 0


# -- the input reader ------------------------------------------------------------


def _read(data: bytes) -> list:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "in.jsonl"
        path.write_bytes(data)
        return list(read_batch_input(path))


def _non_blank_lines(data: bytes) -> list[int]:
    """Numbers (from 1) of the physical lines holding more than whitespace."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    numbered = []
    for number, line in enumerate(lines, start=1):
        if number == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if line and not line.isspace():
            numbered.append(number)
    return numbered


_line_bytes = st.one_of(
    st.binary(max_size=60).map(lambda raw: raw.replace(b"\n", b"")),
    st.sampled_from(
        [
            b'{"custom_id": "a", "url": "/v1/chat/completions", "body": {}}',
            b'{"custom_id": "b", "url": "/v1/chat/completions", "body": {"model": "m"}}',
            b'{"custom_id": "c", "url": "/v1/chat/comp',  # torn
            b'{"custom_id": "\xff\xfe", "url": "/v1/chat/completions", "body": {}}',
            b"\xef\xbb\xbf",
            b"   \r",
            b"[1, 2]",
        ]
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(_line_bytes, max_size=30), final_newline=st.booleans())
def test_input_reader_yields_one_item_per_non_blank_line_for_any_bytes(lines, final_newline):
    """Any bytes: no exception, one InputLine per non-blank physical line, in order."""
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    items = _read(data)
    assert [item.line_no for item in items] == _non_blank_lines(data)
    for item in items:
        assert (item.error is None) == (item.body is not None)
        if item.error is not None:
            assert item.error.startswith(f"line {item.line_no}: ")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=st.integers(1, 70_000),
    before=st.integers(0, 3),
    after=st.integers(0, 3),
)
def test_input_reader_reports_a_huge_line_and_keeps_the_lines_around_it(extra, before, after):
    """A line over MAX_LINE_BYTES becomes one error item; the lines before and after survive."""
    good = b'{"custom_id": "%d", "url": "/v1/chat/completions", "body": {}}'
    lines = [good % i for i in range(before)]
    lines.append(b'{"x": "' + b"y" * (MAX_LINE_BYTES + extra) + b'"}')
    lines += [good % (100 + i) for i in range(after)]
    items = _read(b"\n".join(lines) + b"\n")
    assert len(items) == before + 1 + after
    huge = items[before]
    assert huge.line_no == before + 1 and huge.error is not None and "longer than" in huge.error
    assert all(item.error is None for index, item in enumerate(items) if index != before)


# -- the header parser -------------------------------------------------------------

_HEADER_NAMES = [
    f"x-ratelimit-{what}-{kind}"
    for what in ("limit", "remaining", "reset")
    for kind in ("requests", "tokens")
]


@given(
    st.dictionaries(
        st.sampled_from(_HEADER_NAMES).flatmap(
            lambda name: st.sampled_from([name, name.upper(), name.title()])
        ),
        st.integers(-5, 10**9).map(str),
    )
)
def test_header_parser_reads_any_case_and_never_returns_a_negative_count(headers):
    """Integer headers in any case: read case-insensitively; negatives are never reported."""
    parsed = parse_rate_limit_headers(headers)
    for name, value in headers.items():
        what, kind = name.lower().split("-")[2:]
        if what == "reset":
            continue
        read = getattr(parsed, f"{what}_{kind}")
        assert read is None or read >= 0
        if int(value) > 0 and sum(1 for n in headers if n.lower() == name.lower()) == 1:
            assert read == int(value)


class _TokenBucketServer:
    """A provider enforcing ``rpm``/``tpm`` as token buckets (full at 0), honest in its headers."""

    def __init__(self, rpm: int, tpm: int) -> None:
        self.capacity = {"requests": float(rpm), "tokens": float(tpm)}
        self.level = dict(self.capacity)
        self.updated = 0.0

    def _refill(self, now: float) -> None:
        for kind, capacity in self.capacity.items():
            self.level[kind] = min(
                capacity, self.level[kind] + (now - self.updated) * capacity / 60.0
            )
        self.updated = now

    def admit(self, cost: Cost, now: float) -> bool:
        self._refill(now)
        if self.level["requests"] < cost.requests or self.level["tokens"] < cost.tokens:
            return False
        self.level["requests"] -= cost.requests
        self.level["tokens"] -= cost.tokens
        return True

    def headers(self, now: float) -> RateLimitHeaders:
        self._refill(now)
        rpm, tpm = self.capacity["requests"], self.capacity["tokens"]
        return RateLimitHeaders(
            limit_requests=int(rpm),
            limit_tokens=int(tpm),
            remaining_requests=math.floor(self.level["requests"]),
            remaining_tokens=math.floor(self.level["tokens"]),
            reset_requests=(rpm - self.level["requests"]) * 60.0 / rpm,
            reset_tokens=(tpm - self.level["tokens"]) * 60.0 / tpm,
        )


@settings(max_examples=300, deadline=None)
@given(limits=_limits, steps=_steps)
def test_quota_book_with_the_servers_own_limits_and_honest_headers_meets_no_429(limits, steps):
    """Known limits equal to a token-bucket server's, its headers read back: it never says 429."""
    rpm, tpm = limits
    book = QuotaBook(Limits(rpm=rpm, tpm=tpm))
    server = _TokenBucketServer(rpm, tpm)
    now = 0.0
    held: list[Reservation] = []
    rejected = 0
    for kind, dt, a, _b in steps:
        now += dt
        if kind == "decide":
            decision = book.decide(GROUP, Cost(tokens=a), now)
            if isinstance(decision, Reservation):
                if server.admit(decision.cost, now):
                    held.append(decision)
                else:
                    rejected += 1
                    book.rate_limited(decision, now, headers=server.headers(now))
        elif held and kind in ("settle", "rate_limited"):
            reservation = held.pop(a % len(held))
            book.settle(
                reservation, now, headers=server.headers(now), used_tokens=reservation.cost.tokens
            )
    assert rejected == 0
