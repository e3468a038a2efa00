"""Rate control on servers the engine was not tuned for (issue #13; docs/design.md).

Two layers.  The quota book driven by simulated servers (tests/ratesim.py:
written from the providers' documented behaviour, sharing no code with the
engine or its mock), swept over server kinds, latencies and seeds, with a
property test that no server keeps the book in a steady 429 rate.  Then the
whole client against the in-process mock playing each of those servers, on
trio's virtual clock.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from ratesim import Server, simulate

import engine
from engine._quota import Limits, QuotaBook
from engine.mock import MockConfig, create_app

# -- the book against simulated servers ----------------------------------------

LATENCIES = [(0.15, 0.4), (1.0, 0.6), (3.0, 0.8)]
#: (server semantics, undeclared sub-window): the issue's matrix rows.
SERVERS = [
    ("token_bucket", None),
    ("fixed_window", None),
    ("token_bucket", 1.0),
    ("token_bucket", 10.0),
    ("fixed_window", 1.0),
    ("fixed_window", 10.0),
]


def allowed_429s(subwindow: float | None, known: bool, headers: str = "full") -> float:
    """The issue's bound on 429s per request sent for one kind of server."""
    if headers == "none":
        return 0.05
    return 0.01 if known and subwindow is None else 0.02


@pytest.mark.parametrize("latency, sigma", LATENCIES)
@pytest.mark.parametrize("kind, subwindow", SERVERS)
@pytest.mark.parametrize("known", [True, False], ids=["known", "learned"])
@pytest.mark.parametrize("body", ["openai", "azure", "generic", "bare"])
def test_simulated_servers_draw_few_429s_and_lose_nothing(
    kind, subwindow, latency, sigma, known, body
):
    """Each server kind x latency x 429 shape x limits stays within the issue's 429 bound."""
    # As `engine bench robustness` plays them: a bare 429 carries no retry hint
    # and no rate-limit headers.
    bare = body == "bare"
    server = Server(
        600,
        kind=kind,
        subwindow=subwindow,
        body=body,
        retry_after=not bare,
        headers_on_429=not bare,
    )
    run = simulate(
        server,
        items=900,
        limits=Limits(rpm=600) if known else None,
        latency=latency,
        sigma=sigma,
        uplink_jitter=0.01,
        seed=7,
    )
    assert run.lost == 0
    assert run.ratio <= allowed_429s(subwindow, known), run


@pytest.mark.parametrize("latency, sigma", LATENCIES)
def test_a_server_without_rate_limit_headers_draws_few_429s(latency, sigma):
    """No x-ratelimit-* at all (429s keep retry-after-ms): the adaptive control stays under 5%."""
    run = simulate(
        Server(600, headers="none"), items=900, latency=latency, sigma=sigma, uplink_jitter=0.01
    )
    assert run.lost == 0 and run.ratio <= 0.05, run


@pytest.mark.parametrize("phase", [0.0, 20.0, 45.0])
def test_a_clock_minute_gateway_without_reset_headers_ends_with_its_windows(phase):
    """120 RPM counted per clock minute, remaining only, bare 429s: <= 3% 429s, ends on time."""
    start = 1000.0  # the simulation's clock; the run starts ``phase`` s into a minute
    server = Server(
        120,
        kind="clock_minute",
        headers="no_reset",
        retry_after=False,
        body="bare",
        phase=start - phase,
    )
    book = QuotaBook(None, wall_offset=phase - start)
    run = simulate(server, items=360, latency=0.15, sigma=0.4, uplink_jitter=0.005, book=book)
    earliest = (60.0 - phase) + 60.0 if phase else 120.0  # the third window's start
    assert run.lost == 0 and run.ratio <= 0.03, run
    assert max(run.admitted_at) <= earliest + 8.0


_server_kinds = st.sampled_from(
    [
        ("token_bucket", None, "full"),
        ("fixed_window", None, "full"),
        ("token_bucket", 1.0, "full"),
        ("token_bucket", 10.0, "full"),
        ("fixed_window", 1.0, "full"),
        ("token_bucket", None, "no_reset"),
        ("token_bucket", None, "none"),
    ]
)


@settings(max_examples=25, deadline=None)
@given(
    server_kind=_server_kinds,
    limit=st.sampled_from([120, 600, 1200]),
    latency=st.floats(0.05, 3.0),
    sigma=st.floats(0.0, 1.0),
    body=st.sampled_from(["openai", "azure", "generic", "bare", "none"]),
    retry_after=st.booleans(),
    known=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_no_simulated_server_keeps_the_book_in_a_steady_429_rate(
    server_kind, limit, latency, sigma, body, retry_after, known, seed
):
    """Any server, answers out of order: the second half of a run is (almost) free of 429s."""
    kind, subwindow, headers = server_kind
    server = Server(
        limit, kind=kind, subwindow=subwindow, headers=headers, body=body, retry_after=retry_after
    )
    items = limit * 2
    run = simulate(
        server,
        items=items,
        limits=Limits(rpm=limit) if known and headers != "none" else None,
        latency=latency,
        sigma=sigma,
        uplink_jitter=0.005,
        seed=seed,
    )
    assert run.lost == 0
    start = 1000.0
    half = start + run.finished_at / 2
    late_429s = sum(1 for t in server.refused_at if t >= half)
    late_sends = sum(1 for t in server.admitted_at if t >= half) + late_429s
    assert late_429s <= 0.05 * late_sends + 3, (late_429s, late_sends, run.ratio)


# -- the client against the in-process mock playing those servers ---------------

MODEL = "gpt-4o-mini"


@asynccontextmanager
async def mock_client(config: MockConfig, **options):
    app = create_app(config)
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key="sk-test",
        transport=httpx.ASGITransport(app),
        retry_base_delay=0.01,
        **options,
    ) as client:
        yield client, app


def chats(n: int) -> list[engine.ChatRequest]:
    return [
        engine.ChatRequest(id=f"r{i}", messages=f"q {i}", model=MODEL, params={"max_tokens": 8})
        for i in range(n)
    ]


async def run_all(config: MockConfig, n: int, **options):
    async with mock_client(config, **options) as (client, app):
        results = [result async for result in client.map(chats(n))]
        statistics = client.statistics()
    assert sorted(r.id for r in results) == sorted(f"r{i}" for i in range(n))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    sent = statistics.sent
    return statistics, app.stats.status_counts.get(429, 0) / sent


@pytest.mark.parametrize("latency_ms, sigma", [(150, 0.4), (1000, 0.6)])
async def test_token_bucket_with_known_limits_at_real_latencies(autojump_clock, latency_ms, sigma):
    """A full bucket of 300 RPM, answers out of order: at most 1% 429s."""
    config = MockConfig(rpm=300, latency_ms=latency_ms, latency_sigma=sigma, seed=3)
    _statistics, ratio = await run_all(config, 450, limits=engine.Limits(rpm=300))
    assert ratio <= 0.01


async def test_undeclared_ten_second_windows_with_azure_bodies(autojump_clock):
    """Azure-style: 1,200 RPM checked over 10 s, Azure's 429 body, known limits: at most 2%."""
    config = MockConfig(
        rpm=1200, subwindow_seconds=10, rate_limit_body="azure", latency_ms=150, latency_sigma=0.4
    )
    _statistics, ratio = await run_all(config, 600, limits=engine.Limits(rpm=1200))
    assert ratio <= 0.02


async def test_quantized_per_second_limits_behind_minute_headers(autojump_clock):
    """OpenAI's quantized limits (20 per second, headers report the minute), learned: at most 2%."""
    config = MockConfig(
        rpm=1200,
        quota_semantics="fixed_window",
        subwindow_seconds=1,
        latency_ms=150,
        latency_sigma=0.4,
    )
    _statistics, ratio = await run_all(config, 600)
    assert ratio <= 0.02


@pytest.mark.parametrize("body", ["openai", "azure", "generic", "bare", "none"])
async def test_no_rate_limit_headers_at_all(autojump_clock, body):
    """No x-ratelimit-* on any answer, any 429 body: at most 5%, and the adaptive rate is shown."""
    config = MockConfig(
        rpm=300, rate_limit_headers=False, rate_limit_body=body, latency_ms=150, latency_sigma=0.4
    )
    statistics, ratio = await run_all(config, 450)
    assert ratio <= 0.05
    (group,) = statistics.limiter.groups
    assert group.adaptive_rate is not None or group.window is not None


class _WallClock:
    """The ``time`` module as engine._client sees it, with a wall clock the test sets."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return self.offset + trio.current_time()

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.mark.parametrize("phase", [0.5, 20.0, 44.0, 58.0])
@pytest.mark.parametrize("skew", [0.0, -0.5], ids=["same-clock", "server-0.5s-behind"])
async def test_a_clock_minute_gateway_without_reset_or_retry_headers(
    autojump_clock, monkeypatch, phase, skew
):
    """Windows on the clock minute, remaining only, bare 429s: <= 3% 429s, on time."""
    start = trio.current_time()
    wall_offset = 1_800_000_000.0 + phase - start  # the run starts ``phase`` s into a minute
    monkeypatch.setattr("engine._client.time", _WallClock(wall_offset))
    config = MockConfig(
        rpm=60,
        quota_semantics="clock_minute",
        wall_clock_offset=wall_offset + skew,
        reset_headers=False,
        retry_after_header=False,
        retry_after_ms_header=False,
        retry_hint_header="x-ratelimit-retry-after-seconds",
        rate_limit_body="bare",
        latency_ms=150,
        latency_sigma=0.4,
    )
    statistics, ratio = await run_all(config, 180)
    # 60 a window: the burst fits the rest of this minute unless under 4 s are
    # left (16 a second), then it needs the next three.
    windows_before_the_last = 2 if 60 - phase > 4 else 3
    last_window = start + (60 - phase) + 60 * (windows_before_the_last - 1)
    assert ratio <= 0.03
    assert trio.current_time() <= last_window + 8.0
    (group,) = statistics.limiter.groups
    assert group.dimensions["requests_per_minute"].mode == "step"
