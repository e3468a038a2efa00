"""Header formats of the mock: Go durations, x-ratelimit-*, retry-after."""

from __future__ import annotations

import pytest

from engine.mock._headers import format_go_duration, rate_limit_headers, retry_after_headers
from engine.mock._quotas import ServerSnapshot


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.02, "20ms"),
        (0.999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (360.0, "6m0s"),
        (179.56, "2m59.56s"),
        (977.764, "16m17.764s"),
        (3723.0, "1h2m3s"),
        (86_400.0, "24h0m0s"),
    ],
)
def test_go_duration_matches_go_formatting(seconds, text):
    """Durations are written as Go's time.Duration.String() writes them."""
    assert format_go_duration(seconds) == text


def test_go_duration_rounds_up_to_the_millisecond():
    """A reset is never announced early: 0.4 ms is 1ms, 1.0001 s is 1.001s."""
    assert format_go_duration(0.0004) == "1ms"
    assert format_go_duration(1.0001) == "1.001s"


def test_go_duration_of_negative_is_zero():
    """A reset already past is 0s."""
    assert format_go_duration(-3.0) == "0s"


FULL = ServerSnapshot(
    limit_requests=600,
    remaining_requests=599,
    reset_requests=0.1,
    limit_tokens=150_000,
    remaining_tokens=149_000,
    reset_tokens=0.4,
)


def test_rate_limit_headers_have_all_six():
    """A snapshot with both dimensions gives the six x-ratelimit-* headers."""
    assert dict(rate_limit_headers(FULL)) == {
        b"x-ratelimit-limit-requests": b"600",
        b"x-ratelimit-remaining-requests": b"599",
        b"x-ratelimit-reset-requests": b"100ms",
        b"x-ratelimit-limit-tokens": b"150000",
        b"x-ratelimit-remaining-tokens": b"149000",
        b"x-ratelimit-reset-tokens": b"400ms",
    }


def test_rate_limit_headers_without_limits_as_azure():
    """include_limits=False drops only the limit-* pair."""
    names = {name for name, _ in rate_limit_headers(FULL, include_limits=False)}
    assert names == {
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
        b"x-ratelimit-remaining-tokens",
        b"x-ratelimit-reset-tokens",
    }


def test_rate_limit_headers_leave_out_unlimited_dimensions():
    """Only the limited dimension is reported."""
    snapshot = ServerSnapshot(limit_requests=10, remaining_requests=3, reset_requests=2.0)
    assert [name for name, _ in rate_limit_headers(snapshot)] == [
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
    ]


def test_retry_after_is_whole_seconds_rounded_up_and_ms_exact():
    """1.2 s gives retry-after 2 and retry-after-ms 1200."""
    assert retry_after_headers(1.2) == [(b"retry-after", b"2"), (b"retry-after-ms", b"1200")]


def test_retry_after_is_at_least_one_second():
    """OpenAPI says retry-after >= 1; a 20 ms wait still says 1."""
    assert dict(retry_after_headers(0.02))[b"retry-after"] == b"1"


def test_retry_after_headers_switch_off():
    """Each of the two headers can be left out."""
    assert retry_after_headers(3.0, retry_after=False) == [(b"retry-after-ms", b"3000")]
    assert retry_after_headers(3.0, retry_after_ms=False) == [(b"retry-after", b"3")]
