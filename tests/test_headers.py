"""Tests for engine._headers: Go durations, x-ratelimit-*, retry-after, try-again-in."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine._headers import (
    RateLimitHeaders,
    parse_go_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    parse_should_retry,
    parse_try_again_in,
)
from engine.mock._headers import format_go_duration as mock_go_duration

# ---------------------------------------------------------------- Go durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("2m59.56s", 179.56),
        ("16m17.764s", 977.764),
        ("1h2m3s", 3723.0),
        ("1h0m0s", 3600.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),  # Go's micro sign, U+00B5
        ("500μs", 0.0005),  # Greek small mu, U+03BC
        ("250ns", 250e-9),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        ("1.s", 1.0),
        ("1m1ms", 60.001),
        ("+2s", 2.0),
        ("-1.5s", -1.5),
    ],
)
def test_parse_go_duration_reads_every_unit_and_form(text: str, seconds: float) -> None:
    """Each Go duration form gives its value in seconds."""
    assert parse_go_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("text", "seconds"), [("20", 20.0), ("1.5", 1.5), (".25", 0.25)])
def test_parse_go_duration_reads_a_bare_number_as_seconds(text: str, seconds: float) -> None:
    """A number without a unit is a count of seconds."""
    assert parse_go_duration(text) == seconds


def test_parse_go_duration_ignores_surrounding_whitespace() -> None:
    """Whitespace around the value (as in sloppy headers) is ignored."""
    assert parse_go_duration("  6m0s\t") == 360.0


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "s",
        "ms",
        ".s",
        ".",
        "1x",
        "1.5 s",
        "1 s",
        "1S",
        "1d",
        "nan",
        "inf",
        "1e3",
        "--1s",
        "1h-2m",
        "1s2",
        "abc",
        "1,5s",
        "٣s",
    ],
)
def test_parse_go_duration_rejects_malformed_text(text: str) -> None:
    """Anything outside the grammar raises ValueError naming the bad value."""
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_parse_go_duration_rejects_values_too_large_for_a_float() -> None:
    """A number that overflows to infinity is invalid, not infinite."""
    with pytest.raises(ValueError, match="out of range"):
        parse_go_duration("9" * 400 + "h")


def test_parse_go_duration_error_message_is_bounded() -> None:
    """A huge bad value is shortened in the error message."""
    with pytest.raises(ValueError) as info:
        parse_go_duration("x" * 10_000)
    assert len(str(info.value)) < 100


@given(st.text())
def test_parse_go_duration_raises_only_value_error_on_any_text(text: str) -> None:
    """Arbitrary text either parses to a finite number or raises ValueError."""
    try:
        value = parse_go_duration(text)
    except ValueError:
        return
    assert math.isfinite(value)


@given(st.text(alphabet="0123456789.hmsunµμ+- ", max_size=20))
def test_parse_go_duration_raises_only_value_error_on_near_miss_text(text: str) -> None:
    """Text made of duration characters either parses finitely or raises ValueError."""
    try:
        value = parse_go_duration(text)
    except ValueError:
        return
    assert math.isfinite(value)


@given(st.integers(min_value=0, max_value=10**10))
def test_parse_go_duration_reads_what_the_mock_writes(milliseconds: int) -> None:
    """Every whole-millisecond duration the mock server sends parses back to its value."""
    text = mock_go_duration(milliseconds / 1000)
    assert parse_go_duration(text) == pytest.approx(milliseconds / 1000, rel=1e-12, abs=1e-12)


@given(
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=0, max_value=59),
    st.integers(min_value=0, max_value=59_999),
)
def test_parse_go_duration_sums_hours_minutes_and_fractional_seconds(
    hours: int, minutes: int, milliseconds: int
) -> None:
    """An "XhYmZ.ZZZs" string is the sum of its parts."""
    text = f"{hours}h{minutes}m{milliseconds / 1000:.3f}s"
    expected = hours * 3600 + minutes * 60 + milliseconds / 1000
    assert parse_go_duration(text) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- x-ratelimit-*

FULL_OPENAI_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-remaining-tokens": "29999990",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-reset-tokens": "2m59.56s",
}


def test_parse_rate_limit_headers_reads_all_six() -> None:
    """A full OpenAI header set gives every field."""
    assert parse_rate_limit_headers(FULL_OPENAI_HEADERS) == RateLimitHeaders(
        limit_requests=10000,
        limit_tokens=30000000,
        remaining_requests=9999,
        remaining_tokens=29999990,
        reset_requests=pytest.approx(0.006),
        reset_tokens=pytest.approx(179.56),
    )


def test_parse_rate_limit_headers_is_case_insensitive_through_httpx_headers() -> None:
    """httpx.Headers with mixed-case names are read."""
    headers = httpx.Headers({"X-RateLimit-Limit-Requests": "500", "X-RATELIMIT-RESET-TOKENS": "1s"})
    parsed = parse_rate_limit_headers(headers)
    assert (parsed.limit_requests, parsed.reset_tokens) == (500, 1.0)


def test_parse_rate_limit_headers_reads_a_mixed_case_plain_dict() -> None:
    """A plain dict with capitalised names is read too."""
    parsed = parse_rate_limit_headers({"X-RateLimit-Remaining-Tokens": "7"})
    assert parsed.remaining_tokens == 7


def test_parse_rate_limit_headers_reads_utf8_micro_sign_from_httpx_headers() -> None:
    """A reset written with Go's UTF-8 "µs" in raw header bytes is read."""
    headers = httpx.Headers([(b"x-ratelimit-reset-requests", "250µs".encode())])
    assert parse_rate_limit_headers(headers).reset_requests == pytest.approx(0.00025)


def test_parse_rate_limit_headers_ignores_other_headers() -> None:
    """Headers that merely resemble x-ratelimit-* are not read."""
    parsed = parse_rate_limit_headers(
        {
            "x-ratelimit-limit-requests-day": "5",
            "ratelimit-limit-requests": "5",
            "x-ratelimit-": "5",
        }
    )
    assert parsed.is_empty


def test_parse_rate_limit_headers_of_no_headers_is_empty() -> None:
    """Without any x-ratelimit header every field is None and is_empty is true."""
    parsed = parse_rate_limit_headers({"content-type": "application/json"})
    assert parsed == RateLimitHeaders()
    assert parsed.is_empty


def test_parse_rate_limit_headers_handles_azure_remaining_only() -> None:
    """Azure's remaining-only headers give the remainders and None elsewhere."""
    parsed = parse_rate_limit_headers(
        {"x-ratelimit-remaining-requests": "99", "x-ratelimit-remaining-tokens": "119000"}
    )
    assert parsed == RateLimitHeaders(remaining_requests=99, remaining_tokens=119000)
    assert not parsed.is_empty


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("x-ratelimit-limit-requests", "limit_requests"),
        ("x-ratelimit-limit-tokens", "limit_tokens"),
        ("x-ratelimit-remaining-requests", "remaining_requests"),
        ("x-ratelimit-remaining-tokens", "remaining_tokens"),
        ("x-ratelimit-reset-requests", "reset_requests"),
        ("x-ratelimit-reset-tokens", "reset_tokens"),
    ],
)
@pytest.mark.parametrize("bad", ["", "abc", "1e5", "NaN", "12 tokens", "1.5.5", "٣"])
def test_parse_rate_limit_headers_treats_a_malformed_value_as_absent(
    name: str, field: str, bad: str
) -> None:
    """One malformed header gives None for its field and leaves the others intact."""
    headers = dict(FULL_OPENAI_HEADERS, **{name: bad})
    parsed = parse_rate_limit_headers(headers)
    assert getattr(parsed, field) is None
    expected = parse_rate_limit_headers(FULL_OPENAI_HEADERS)
    assert attrs_without(parsed, field) == attrs_without(expected, field)


def attrs_without(parsed: RateLimitHeaders, field: str) -> dict[str, object]:
    """The fields of ``parsed`` except ``field``."""
    values = {a.name: getattr(parsed, a.name) for a in type(parsed).__attrs_attrs__}
    del values[field]
    return values


def test_parse_rate_limit_headers_treats_fractional_counts_as_absent() -> None:
    """A count with a fractional part is not a count."""
    assert parse_rate_limit_headers({"x-ratelimit-limit-tokens": "100.5"}).limit_tokens is None


def test_parse_rate_limit_headers_accepts_whole_float_counts() -> None:
    """Gateways that write "100.0" give 100."""
    assert parse_rate_limit_headers({"x-ratelimit-limit-tokens": "100.0"}).limit_tokens == 100


@pytest.mark.parametrize("value", ["0", "-5"])
def test_parse_rate_limit_headers_ignores_non_positive_limits(value: str) -> None:
    """A limit of zero or less is noise and reads as absent."""
    assert parse_rate_limit_headers({"x-ratelimit-limit-requests": value}).limit_requests is None


def test_parse_rate_limit_headers_clamps_negative_remaining_to_zero() -> None:
    """A negative remainder (server overshoot) means nothing is left."""
    parsed = parse_rate_limit_headers({"x-ratelimit-remaining-tokens": "-250"})
    assert parsed.remaining_tokens == 0


def test_parse_rate_limit_headers_clamps_negative_reset_to_zero() -> None:
    """A negative reset duration means the window has already refilled."""
    assert parse_rate_limit_headers({"x-ratelimit-reset-requests": "-1s"}).reset_requests == 0.0


def test_parse_rate_limit_headers_reads_bare_second_resets() -> None:
    """A reset written as plain seconds is read as seconds."""
    assert parse_rate_limit_headers({"x-ratelimit-reset-tokens": "7.5"}).reset_tokens == 7.5


def test_parse_rate_limit_headers_uses_the_first_of_repeated_headers() -> None:
    """A repeated header joined with ", " by httpx gives its first value."""
    headers = httpx.Headers(
        [
            ("x-ratelimit-remaining-requests", "42"),
            ("x-ratelimit-remaining-requests", "41"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-requests", "2s"),
        ]
    )
    parsed = parse_rate_limit_headers(headers)
    assert (parsed.remaining_requests, parsed.reset_requests) == (42, 1.0)


@given(st.dictionaries(st.sampled_from(list(FULL_OPENAI_HEADERS)), st.text()))
def test_parse_rate_limit_headers_never_raises(headers: dict[str, str]) -> None:
    """Any header values give a RateLimitHeaders with sane fields."""
    parsed = parse_rate_limit_headers(headers)
    for value in (parsed.limit_requests, parsed.limit_tokens):
        assert value is None or value > 0
    for value in (parsed.remaining_requests, parsed.remaining_tokens):
        assert value is None or value >= 0
    for value in (parsed.reset_requests, parsed.reset_tokens):
        assert value is None or (math.isfinite(value) and value >= 0)


# ---------------------------------------------------------------- retry-after

NOW = datetime(2024, 11, 28, 12, 0, 0, tzinfo=UTC).timestamp()


def test_parse_retry_after_reads_seconds() -> None:
    """retry-after in whole seconds."""
    assert parse_retry_after({"retry-after": "20"}) == 20.0


def test_parse_retry_after_reads_fractional_seconds() -> None:
    """retry-after with a fraction."""
    assert parse_retry_after({"retry-after": "1.25"}) == 1.25


def test_parse_retry_after_reads_milliseconds() -> None:
    """retry-after-ms is milliseconds, fractions allowed."""
    assert parse_retry_after({"retry-after-ms": "1500.5"}) == pytest.approx(1.5005)


def test_parse_retry_after_prefers_milliseconds_over_seconds() -> None:
    """retry-after-ms wins over retry-after when both are present."""
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25


def test_parse_retry_after_falls_back_when_milliseconds_are_malformed() -> None:
    """A malformed retry-after-ms gives way to retry-after."""
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "3"}) == 3.0


def test_parse_retry_after_reads_an_http_date_relative_to_now() -> None:
    """An HTTP-date is the number of seconds from ``now`` until it."""
    date = format_datetime(datetime(2024, 11, 28, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=NOW) == 30.0


def test_parse_retry_after_reads_a_zoneless_date_as_utc() -> None:
    """A date with "-0000" (no zone information) is taken as UTC."""
    assert parse_retry_after({"retry-after": "Thu, 28 Nov 2024 12:01:00 -0000"}, now=NOW) == 60.0


def test_parse_retry_after_reads_a_date_with_an_offset() -> None:
    """A date with a numeric offset is converted to UTC."""
    headers = {"retry-after": "Thu, 28 Nov 2024 13:00:10 +0100"}
    assert parse_retry_after(headers, now=NOW) == 10.0


def test_parse_retry_after_of_a_past_date_is_zero() -> None:
    """A date already past means retry now."""
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=NOW) == 0.0


def test_parse_retry_after_defaults_now_to_the_wall_clock() -> None:
    """Without ``now`` a date far in the future gives a large positive wait."""
    wait = parse_retry_after({"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"})
    assert wait is not None and wait > 365 * 24 * 3600


@pytest.mark.parametrize(
    "headers", [{"retry-after": "-5"}, {"retry-after-ms": "-100"}, {"retry-after": "-1s"}]
)
def test_parse_retry_after_clamps_negative_waits_to_zero(headers: dict[str, str]) -> None:
    """A negative wait means retry now."""
    assert parse_retry_after(headers) == 0.0


def test_parse_retry_after_reads_a_go_duration() -> None:
    """Some servers send retry-after as a Go duration."""
    assert parse_retry_after({"retry-after": "1m30s"}) == 90.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": ""},
        {"retry-after": "soon"},
        {"retry-after-ms": "nan"},
        {"retry-after-ms": "inf"},
        {"retry-after": "Thu, 99 Nov 2024 12:00:00 GMT"},
    ],
)
def test_parse_retry_after_is_none_when_absent_or_unparseable(headers: dict[str, str]) -> None:
    """Missing or garbage retry headers give None."""
    assert parse_retry_after(headers, now=NOW) is None


def test_parse_retry_after_is_case_insensitive_through_httpx_headers() -> None:
    """httpx.Headers with capitalised names are read."""
    assert parse_retry_after(httpx.Headers({"Retry-After-Ms": "40"})) == 0.04


@given(st.text(), st.text())
def test_parse_retry_after_never_raises(seconds: str, milliseconds: str) -> None:
    """Any header text gives None or a finite non-negative wait."""
    wait = parse_retry_after({"retry-after": seconds, "retry-after-ms": milliseconds}, now=NOW)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


# ---------------------------------------------------------------- try again in


@pytest.mark.parametrize(
    ("message", "seconds"),
    [
        (
            "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per min "
            "(TPM): Limit 200000, Used 199000, Requested 2000. Please try again in 1m26.4s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more.",
            86.4,
        ),
        ("Please try again in 20ms.", 0.02),
        ("Please try again in 6s.", 6.0),
        ("try again in 1.5 seconds", 1.5),
        ("Try again in 1 second", 1.0),
        ("Please retry after 59 seconds.", 59.0),
        ("Please try again in 2 minutes", 120.0),
        ("Please try again in 300 milliseconds", 0.3),
        ("Please try again in 1h2m3s", 3723.0),
        ("TRY AGAIN IN 7S", 7.0),
    ],
)
def test_parse_try_again_in_reads_the_wait(message: str, seconds: float) -> None:
    """Each phrasing of "try again in" gives its wait in seconds."""
    assert parse_try_again_in(message) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "message",
    ["", "Rate limit reached.", "Please try again later.", "try again in a moment", "in 20ms"],
)
def test_parse_try_again_in_is_none_without_a_wait(message: str) -> None:
    """Messages without a "try again in <amount>" give None."""
    assert parse_try_again_in(message) is None


@given(st.text())
def test_parse_try_again_in_never_raises(message: str) -> None:
    """Any message gives None or a finite non-negative wait."""
    wait = parse_try_again_in("Please try again in " + message)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


# ---------------------------------------------------------------- x-should-retry


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("false", False),
        ("True", True),
        (" FALSE ", False),
        ("yes", None),
        ("", None),
    ],
)
def test_parse_should_retry_reads_the_header(value: str, expected: bool | None) -> None:
    """true/false in any case; anything else is None."""
    assert parse_should_retry({"x-should-retry": value}) is expected


def test_parse_should_retry_is_none_when_absent() -> None:
    """No header, no opinion."""
    assert parse_should_retry({}) is None
