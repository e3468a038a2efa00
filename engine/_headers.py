"""Reading rate-limit facts out of HTTP response headers and error messages.

Pure and synchronous (sans-IO): no trio, no httpx import.  Every function
takes a case-insensitive ``Mapping[str, str]`` of response headers, such as
``httpx.Headers``; a plain ``dict`` works when its keys are lower-case
(:func:`parse_rate_limit_headers` matches any case).  ``httpx.Headers`` gets
a faster path, recognised only if httpx is already imported.

What the servers send, and what is read here:

* ``x-ratelimit-{limit,remaining}-{requests,tokens}``: integers.
* ``x-ratelimit-reset-{requests,tokens}``: a Go-style duration until the
  window refills (``20ms``, ``1.5s``, ``6m0s``, ``2m59.56s``, ``1h2m3s``).
  Any of the six may be missing: Azure OpenAI sends only ``remaining-*``.
* ``retry-after-ms`` (milliseconds, may be fractional) and ``retry-after``
  (seconds, or an HTTP-date).
* ``x-should-retry: true|false``: the server's own verdict on retrying.
* In 429 bodies: "... Please try again in 1m26.4s." and similar.

Header parsers never raise on a bad value: a malformed header is treated as
absent, because one odd proxy must not fail a request that otherwise worked.
None of these functions checkpoint.
"""

from __future__ import annotations

import email.utils
import math
import re
import sys
import time
from collections.abc import Mapping
from datetime import UTC
from functools import lru_cache

import attrs

__all__ = [
    "RateLimitHeaders",
    "parse_go_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "parse_should_retry",
    "parse_try_again_in",
]

# Seconds per unit.  Go writes microseconds as "µs" (U+00B5); "μs" (Greek mu,
# U+03BC) and ASCII "us" are accepted too.  "ms" must precede "m" and "s" in
# the alternation so that "20ms" is not read as 20 minutes followed by junk.
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
_GO_DURATION = re.compile(rf"([+-]?)((?:{_NUMBER}{_UNIT})+)")
_GO_COMPONENT = re.compile(rf"({_NUMBER})({_UNIT})")
_BARE_NUMBER = re.compile(rf"[+-]?{_NUMBER}")


def parse_go_duration(text: str) -> float:
    """Return the number of seconds that a Go-style duration string denotes.

    Accepts what Go's ``time.ParseDuration`` accepts — an optional sign, then
    one or more ``<number><unit>`` parts with units ``h``, ``m``, ``s``,
    ``ms``, ``us`` / ``µs`` / ``μs`` and ``ns`` and decimal fractions
    (``"2m59.56s"``, ``"1h2m3s"``, ``".5s"``) — and, unlike Go, a bare number
    of seconds (``"20"``, ``"1.5"``), which some servers send.  Surrounding
    whitespace is ignored.  A leading ``-`` gives a negative result.

    Raises:
        ValueError: ``"invalid duration: ..."`` for anything else, including
            the empty string and values too large to represent.
    """
    return _parse_go_duration(text)


# Reset headers repeat the same few values at high request rates; a parse
# costs ~4 us, a cache hit ~0.1 us.
@lru_cache(maxsize=4096)
def _parse_go_duration(text: str) -> float:
    stripped = text.strip()
    seconds: float
    if _BARE_NUMBER.fullmatch(stripped):
        seconds = float(stripped)
    else:
        match = _GO_DURATION.fullmatch(stripped)
        if match is None:
            raise ValueError(f"invalid duration: {_shorten(text)!r}")
        seconds = 0.0
        for number, unit in _GO_COMPONENT.findall(match[2]):
            seconds += float(number) * _UNIT_SECONDS[unit]
        if match[1] == "-":
            seconds = -seconds
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration: {_shorten(text)!r} is out of range")
    return seconds


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@attrs.frozen
class RateLimitHeaders:
    """The ``x-ratelimit-*`` facts of one response; each is None when absent.

    Attributes:
        limit_requests: requests allowed per window (``x-ratelimit-limit-requests``).
        limit_tokens: tokens allowed per window (``x-ratelimit-limit-tokens``).
        remaining_requests: requests left in the window (``...-remaining-requests``).
        remaining_tokens: tokens left in the window (``...-remaining-tokens``).
        reset_requests: seconds, counted from when the response was received,
            until the request window is full again (``...-reset-requests``).
        reset_tokens: the same for tokens (``...-reset-tokens``).
    """

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None

    @property
    def is_empty(self) -> bool:
        """True when the response carried none of the six headers (in usable form)."""
        return (
            self.limit_requests is None
            and self.limit_tokens is None
            and self.remaining_requests is None
            and self.remaining_tokens is None
            and self.reset_requests is None
            and self.reset_tokens is None
        )


_NO_HEADERS = RateLimitHeaders()


def _first_value(value: str) -> str:
    # A repeated header arrives joined with ", " (httpx.Headers.get does this);
    # the first occurrence is the one the server meant first.
    comma = value.find(",")
    return (value if comma < 0 else value[:comma]).strip()


_INTEGER = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
_PREFIX = "x-ratelimit-"
_PREFIX_BYTES = _PREFIX.encode()


def _integer(raw: str | None) -> int | None:
    """An integer header ("100", or "100.0" as some gateways write it), or None."""
    if raw is None:
        return None
    text = _first_value(raw)
    if text.isascii() and text.isdigit():  # the common case, without a regex
        return int(text)
    if not _INTEGER.fullmatch(text):
        return None
    return int(text.partition(".")[0])


def _limit(raw: str | None) -> int | None:
    value = _integer(raw)
    # A limit of zero would mean "never send"; no server means that, so it is noise.
    return value if value is not None and value > 0 else None


def _remaining(raw: str | None) -> int | None:
    value = _integer(raw)
    # A server that overshot may report a negative remainder: nothing is left.
    return None if value is None else max(value, 0)


def _reset(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        seconds = parse_go_duration(_first_value(raw))
    except ValueError:
        return None
    return max(seconds, 0.0)


def _rate_limit_values(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers by lower-case suffix (``"reset-tokens"``).

    One pass over the headers instead of six look-ups: ``httpx.Headers.get``
    scans every header on each call, which made this the costliest step of
    reading a response.  For ``httpx.Headers`` the raw byte pairs are read
    (cheaper than its ``items()``); the first of repeated headers wins, as
    with ``_first_value`` on a joined value.
    """
    values: dict[str, str] = {}
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(headers, httpx.Headers):
        for name, value in headers.raw:
            if name[:12].lower() == _PREFIX_BYTES:
                values.setdefault(
                    name[12:].lower().decode("ascii", "replace"), value.decode("utf-8", "replace")
                )
        return values
    for name, value in headers.items():
        if name[:12].lower() == _PREFIX:
            values.setdefault(name[12:].lower(), value)
    return values


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitHeaders:
    """Read the six ``x-ratelimit-*`` headers; never raises.

    Header names are matched case-insensitively whatever the mapping (a plain
    ``dict`` with mixed-case keys works here).  A missing or malformed header
    gives None for its field.  Limits must be positive integers (a limit of 0
    or below is treated as absent); a negative remaining count is read as 0; a
    negative reset as 0 seconds.  Repeated headers use their first value.
    """
    values = _rate_limit_values(headers)
    if not values:
        return _NO_HEADERS
    get = values.get
    return RateLimitHeaders(
        limit_requests=_limit(get("limit-requests")),
        limit_tokens=_limit(get("limit-tokens")),
        remaining_requests=_remaining(get("remaining-requests")),
        remaining_tokens=_remaining(get("remaining-tokens")),
        reset_requests=_reset(get("reset-requests")),
        reset_tokens=_reset(get("reset-tokens")),
    )


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks the client to wait, or None if it does not say.

    ``retry-after-ms`` (milliseconds, fractions allowed) wins when it parses;
    otherwise ``retry-after`` is read as seconds (fractions and Go-style
    durations allowed) or as an HTTP-date, which is taken relative to ``now``
    (wall-clock epoch seconds; default: ``time.time()``).  A date without a
    zone is taken as UTC.  Negative waits and dates in the past give 0.
    Missing or unparseable headers give None; never raises.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        text = _first_value(raw_ms)
        if _BARE_NUMBER.fullmatch(text):
            milliseconds = float(text)
            if math.isfinite(milliseconds):
                return max(milliseconds / 1000.0, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(parse_go_duration(_first_value(raw)), 0.0)
    except ValueError:
        pass
    return _seconds_until_http_date(raw, now)


def _seconds_until_http_date(text: str, now: float | None) -> float | None:
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        epoch = moment.timestamp()
    except (OverflowError, OSError, ValueError):
        return None
    if now is None:
        now = time.time()
    return max(epoch - now, 0.0)


# "Please try again in 1m26.4s." / "try again in 20ms" / "Try again in 6s."
_TRY_AGAIN_GO = re.compile(
    rf"(?:try again|retry)\s+(?:in|after)\s+((?:{_NUMBER}{_UNIT})+)(?![a-z0-9])",
    re.IGNORECASE,
)
# "try again in 1.5 seconds" / "Please retry after 59 seconds." (Azure)
_TRY_AGAIN_WORDS = re.compile(
    rf"(?:try again|retry)\s+(?:in|after)\s+({_NUMBER})\s*"
    r"(milliseconds?|msecs?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h)\b",
    re.IGNORECASE,
)


def _word_unit_seconds(word: str) -> float:
    word = word.lower()
    if word.startswith(("mil", "ms")):
        return 1e-3
    if word.startswith("s"):
        return 1.0
    if word.startswith("m"):
        return 60.0
    return 3600.0


def parse_try_again_in(message: str) -> float | None:
    """Seconds from a "try again in ..." sentence in an error message, or None.

    Understands Go-style durations (``"Please try again in 1m26.4s."``,
    ``"in 20ms"``) and a number with a unit word (``"try again in 1.5
    seconds"``, Azure's ``"Please retry after 59 seconds."``).  Never raises.
    """
    match = _TRY_AGAIN_GO.search(message)
    if match is not None:
        try:
            return max(parse_go_duration(match[1].lower()), 0.0)
        except ValueError:
            pass
    match = _TRY_AGAIN_WORDS.search(message)
    if match is not None:
        seconds = float(match[1]) * _word_unit_seconds(match[2])
        if math.isfinite(seconds):
            return seconds
    return None


def parse_should_retry(headers: Mapping[str, str]) -> bool | None:
    """The ``x-should-retry`` header: True, False, or None when absent or neither."""
    raw = headers.get("x-should-retry")
    if raw is None:
        return None
    value = raw.strip().lower()
    if value == "true":
        return True
    if value == "false":
        return False
    return None
