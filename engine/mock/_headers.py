"""Header values the mock sends: Go durations and the ``x-ratelimit-*`` set.

Pure functions; none checkpoint.
"""

from __future__ import annotations

import functools
import math

from engine.mock._quotas import ServerSnapshot

__all__ = [
    "format_decimal_seconds",
    "format_go_duration",
    "rate_limit_headers",
    "retry_after_headers",
    "whole_seconds",
]


def format_go_duration(seconds: float) -> str:
    """``seconds`` as Go's ``time.Duration.String()`` writes it, to the millisecond.

    Rounded *up* to a whole millisecond (a reset is never announced early):
    ``0s``, ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``2m59.56s``, ``1h2m3s``.
    """
    return _go_duration_of_millis(max(0, math.ceil(seconds * 1000 - 1e-6)))


@functools.lru_cache(maxsize=4096)
def _go_duration_of_millis(millis: int) -> str:
    """:func:`format_go_duration` of a whole number of milliseconds (cached: resets
    repeat at high rates, and every answer carries two)."""
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, fraction = divmod(millis, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


_HEADER_NAMES = {
    kind: (
        f"x-ratelimit-limit-{kind}".encode(),
        f"x-ratelimit-remaining-{kind}".encode(),
        f"x-ratelimit-reset-{kind}".encode(),
    )
    for kind in ("requests", "tokens")
}


def format_decimal_seconds(seconds: float) -> str:
    """``seconds`` as a plain decimal number, rounded *up* to the millisecond.

    ``0``, ``0.02``, ``1``, ``2.5``, ``90.001``: how gateways write a wait in
    "try again in 2.5s" or in a header of their own.
    """
    millis = max(0, math.ceil(seconds * 1000 - 1e-6))
    whole, fraction = divmod(millis, 1000)
    return f"{whole}.{fraction:03d}".rstrip("0").rstrip(".")


def whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up to a whole second, at least 1 (``retry-after``, Azure's text)."""
    return max(1, math.ceil(seconds - 1e-9))


def rate_limit_headers(
    snapshot: ServerSnapshot, *, include_limits: bool = True, include_resets: bool = True
) -> list[tuple[bytes, bytes]]:
    """The ``x-ratelimit-*`` headers of ``snapshot`` (unlimited dimensions left out).

    With ``include_limits=False`` (default True) the ``x-ratelimit-limit-*``
    pair is left out, as Azure OpenAI sometimes does; with
    ``include_resets=False`` (default True) the ``x-ratelimit-reset-*`` pair,
    as gateways that report only a limit and what remains.
    """
    headers: list[tuple[bytes, bytes]] = []
    for kind, limit, remaining, reset in (
        ("requests", snapshot.limit_requests, snapshot.remaining_requests, snapshot.reset_requests),
        ("tokens", snapshot.limit_tokens, snapshot.remaining_tokens, snapshot.reset_tokens),
    ):
        if limit is None or remaining is None:  # a snapshot sets both or neither
            continue
        limit_name, remaining_name, reset_name = _HEADER_NAMES[kind]
        if include_limits:
            headers.append((limit_name, b"%d" % limit))
        headers.append((remaining_name, b"%d" % remaining))
        if include_resets:
            headers.append((reset_name, format_go_duration(reset or 0.0).encode()))
    return headers


def retry_after_headers(
    seconds: float, *, retry_after: bool = True, retry_after_ms: bool = True
) -> list[tuple[bytes, bytes]]:
    """``retry-after`` (whole seconds, rounded up) and ``retry-after-ms`` for a 429."""
    headers: list[tuple[bytes, bytes]] = []
    if retry_after:
        headers.append((b"retry-after", b"%d" % whole_seconds(seconds)))
    if retry_after_ms:
        headers.append((b"retry-after-ms", str(max(0, math.ceil(seconds * 1000 - 1e-6))).encode()))
    return headers
