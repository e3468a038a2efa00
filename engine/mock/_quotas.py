"""Quota arithmetic of the mock server: pure, sans-IO, O(1) per request.

Nothing here imports trio or reads a clock: every method takes ``now`` (seconds
on any monotonic scale) so tests drive it with plain numbers.  None of these
functions checkpoint.

A *limit group* is one (API key, model) pair.  Each group has up to four
*meters*: requests per minute, tokens per minute, requests per day, tokens per
day.  Every meter follows one of three semantics:

``token_bucket``
    Capacity ``limit``, refilled continuously at ``limit / period`` per second,
    starting full.  Remaining is the current level; the reset time is how long
    until the bucket is full again (OpenAI's meaning of ``x-ratelimit-reset-*``).
``fixed_window``
    Windows of ``period`` seconds, aligned on the group's first request; at most
    ``limit`` per window; everything resets at the window's end.
``per_second``
    The period is cut in 60 sub-windows (one second for per-minute limits), each
    allowing ``limit / 60``: how providers enforce 60,000 RPM as 1,000 per second.
    A single request larger than a sub-window's share is admitted when its
    sub-window is still empty, so nothing under the limit itself starves.

A request is admitted only if *every* meter of its group admits it; then all are
charged at once, otherwise none.

Every class here is named ``Server*`` (``ServerLimits``, ``ServerQuota``, ...):
this is the *server's* book, which must never be confused with the engine's own
estimate of it (``engine._quota``), nor share code with it.
"""

from __future__ import annotations

import enum
import math

import attrs

__all__ = [
    "Semantics",
    "ServerDecision",
    "ServerLimits",
    "ServerMeter",
    "ServerQuota",
    "ServerReservation",
    "ServerSnapshot",
]

MINUTE = 60.0
DAY = 86_400.0

# Float refills (limit / period per second) are not exact; a request that fits
# to within this many units is treated as fitting.
_EPSILON = 1e-9


class Semantics(enum.Enum):
    """How a meter counts; see the module docstring."""

    TOKEN_BUCKET = "token_bucket"
    FIXED_WINDOW = "fixed_window"
    PER_SECOND = "per_second"


def _semantics(value: Semantics | str) -> Semantics:
    return value if isinstance(value, Semantics) else Semantics(value)


def _optional_limit(value: int | float | None) -> int | None:
    if value is None:
        return None
    number = int(value)
    if number < 0:
        raise ValueError("limits must be >= 0")
    return number


@attrs.frozen(kw_only=True)
class ServerLimits:
    """The limits every group gets; ``None`` means that dimension is unlimited.

    Attributes:
        rpm: requests per minute (default None: unlimited).
        tpm: tokens per minute (default None).
        rpd: requests per day (default None).
        tpd: tokens per day (default None).
        semantics: how all four meters count (default ``token_bucket``).
    """

    rpm: int | None = attrs.field(default=None, converter=_optional_limit)
    tpm: int | None = attrs.field(default=None, converter=_optional_limit)
    rpd: int | None = attrs.field(default=None, converter=_optional_limit)
    tpd: int | None = attrs.field(default=None, converter=_optional_limit)
    semantics: Semantics = attrs.field(default=Semantics.TOKEN_BUCKET, converter=_semantics)

    @property
    def unlimited(self) -> bool:
        """True when no dimension has a limit (the quota check is skipped)."""
        return self.rpm is None and self.tpm is None and self.rpd is None and self.tpd is None


@attrs.define(slots=True)
class ServerMeter:
    """One limited dimension (e.g. tokens per minute) of one group.

    ``origin`` is the time of the group's first request; fixed and per-second
    windows are aligned on it.
    """

    limit: int
    period: float
    semantics: Semantics
    origin: float
    # token bucket state: level at time ``last``
    level: float = 0.0
    last: float = 0.0
    # window state: ``used`` within window number ``window``
    window: int = 0
    used: float = 0.0

    @classmethod
    def create(cls, limit: int, period: float, semantics: Semantics, now: float) -> ServerMeter:
        """A fresh meter: a full bucket, or an empty window starting at ``now``."""
        return cls(
            limit=limit, period=period, semantics=semantics, origin=now, level=limit, last=now
        )

    # -- windows -----------------------------------------------------------

    @property
    def _window_length(self) -> float:
        if self.semantics is Semantics.PER_SECOND:
            return self.period / 60
        return self.period

    @property
    def _allowance(self) -> float:
        if self.semantics is Semantics.PER_SECOND:
            return self.limit / 60
        return float(self.limit)

    def _roll(self, now: float) -> None:
        if self.semantics is Semantics.TOKEN_BUCKET:
            if now > self.last:
                rate = self.limit / self.period
                self.level = min(float(self.limit), self.level + (now - self.last) * rate)
                self.last = now
            return
        index = math.floor((now - self.origin) / self._window_length)
        if index > self.window:
            self.window = index
            self.used = 0.0

    def _window_end(self) -> float:
        return self.origin + (self.window + 1) * self._window_length

    # -- queries -----------------------------------------------------------

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` would fit (0.0 if it fits now), with no other traffic."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            missing = cost - self.level
            if missing <= _EPSILON:
                return 0.0
            return missing / (self.limit / self.period)
        if self.used + cost <= self._allowance + _EPSILON:
            return 0.0
        if self.semantics is Semantics.PER_SECOND and self.used == 0 and cost <= self.limit:
            return 0.0
        return self._window_end() - now

    def remaining(self, now: float) -> int:
        """What is left now, as ``x-ratelimit-remaining-*`` reports it (never negative)."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            left = self.level
        else:
            left = self._allowance - self.used
        return max(0, math.floor(left + _EPSILON))

    def used_now(self, now: float) -> int:
        """What counts as used now (``limit - remaining`` for the 429 message)."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            return max(0, math.ceil(self.limit - self.level - _EPSILON))
        return max(0, math.ceil(self.used - _EPSILON))

    def reset_after(self, now: float) -> float:
        """Seconds until the meter is back to its initial state (0.0 if it is)."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            missing = self.limit - self.level
            return max(0.0, missing / (self.limit / self.period)) if missing > _EPSILON else 0.0
        if self.used <= _EPSILON:
            return 0.0
        return self._window_end() - now

    def headline(self, now: float) -> tuple[int, float]:
        """(:meth:`remaining`, :meth:`reset_after`) together, rolling the meter once."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            missing = self.limit - self.level
            reset = max(0.0, missing / (self.limit / self.period)) if missing > _EPSILON else 0.0
            return max(0, math.floor(self.level + _EPSILON)), reset
        used = self.used
        remaining = max(0, math.floor(self._allowance - used + _EPSILON))
        return remaining, (0.0 if used <= _EPSILON else self._window_end() - now)

    # -- changes -----------------------------------------------------------

    def take(self, cost: float, now: float) -> int:
        """Charge ``cost``; return the window number charged (used by :meth:`adjust`)."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            self.level -= cost
            return 0
        self.used += cost
        return self.window

    def adjust(self, delta: float, window: int, now: float) -> None:
        """Add ``delta`` (negative: a refund) to a charge made in ``window``.

        A bucket takes it whatever the time (refunds never overfill it); a
        window takes it only while the charged window is still the current one.
        """
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            self.level = min(float(self.limit), self.level - delta)
        elif window == self.window:
            self.used = max(0.0, self.used + delta)

    def relimit(self, limit: int, now: float) -> None:
        """Change the limit, keeping what was used (a bucket keeps its level, capped)."""
        self._roll(now)
        self.limit = limit
        if self.semantics is Semantics.TOKEN_BUCKET:
            self.level = min(self.level, float(limit))


@attrs.frozen(kw_only=True)
class ServerReservation:
    """What an admitted request was charged, to correct it later with real usage."""

    group: tuple[str, str]
    tokens: int
    token_windows: tuple[tuple[str, int], ...]


@attrs.frozen(kw_only=True)
class ServerDecision:
    """The answer of :meth:`ServerQuota.admit`.

    Attributes:
        admitted: True when the request was charged.
        reservation: the charge (when admitted), for :meth:`ServerQuota.settle`.
        kind: on refusal, ``"requests"`` or ``"tokens"``: the dimension that refused.
        window: on refusal, ``"minute"`` or ``"day"``.
        limit: on refusal, that dimension's limit.
        used: on refusal, what that dimension had used.
        requested: on refusal, what the request asked of that dimension.
        retry_after: on refusal, seconds until the request would fit (the
            longest wait over every refusing dimension).
        too_large: True when the request alone exceeds a token limit: it can
            never be admitted.
        subwindow: True when only an undeclared sub-window refused (every meter
            the headers report had room); see ``ServerLimits.subwindow_seconds``.
    """

    admitted: bool
    reservation: ServerReservation | None = None
    kind: str | None = None
    window: str | None = None
    limit: int = 0
    used: int = 0
    requested: int = 0
    retry_after: float = 0.0
    too_large: bool = False
    subwindow: bool = False


@attrs.frozen(kw_only=True)
class ServerSnapshot:
    """The ``x-ratelimit-*`` values of a group; None for an unlimited dimension.

    Per-minute limits are reported when set, per-day ones otherwise.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


# (ServerLimits attribute, kind, window, period)
_DIMENSIONS = (
    ("rpm", "requests", "minute", MINUTE),
    ("tpm", "tokens", "minute", MINUTE),
    ("rpd", "requests", "day", DAY),
    ("tpd", "tokens", "day", DAY),
)


class ServerQuota:
    """Every group's meters, created on each group's first request.

    ``admit`` charges one request and its token cost or refuses with the wait;
    ``settle`` corrects the token charge once real usage is known;
    ``snapshot`` gives the header values; ``set_limits`` changes limits at run
    time; ``clear`` forgets every group.
    """

    def __init__(self, limits: ServerLimits) -> None:
        self._limits = limits
        self._groups: dict[tuple[str, str], dict[str, ServerMeter]] = {}

    @property
    def limits(self) -> ServerLimits:
        """The limits in force."""
        return self._limits

    def clear(self) -> None:
        """Forget every group: the next requests find full quotas."""
        self._groups.clear()

    def set_limits(self, limits: ServerLimits, now: float) -> None:
        """Apply new limits to every group, keeping what each has used.

        A dimension newly limited starts fresh; a dimension whose limit went
        away is dropped; a change of semantics starts every meter fresh.
        """
        restart = limits.semantics is not self._limits.semantics
        self._limits = limits
        for meters in self._groups.values():
            for name, _kind, _window, period in _DIMENSIONS:
                limit = getattr(limits, name)
                meter = meters.get(name)
                if limit is None:
                    meters.pop(name, None)
                elif meter is None or restart:
                    meters[name] = ServerMeter.create(limit, period, limits.semantics, now)
                else:
                    meter.relimit(limit, now)

    def _meters(self, group: tuple[str, str], now: float) -> dict[str, ServerMeter]:
        meters = self._groups.get(group)
        if meters is None:
            meters = {}
            for name, _kind, _window, period in _DIMENSIONS:
                limit = getattr(self._limits, name)
                if limit is not None:
                    meters[name] = ServerMeter.create(limit, period, self._limits.semantics, now)
            self._groups[group] = meters
        return meters

    def admit(self, group: tuple[str, str], tokens: int, now: float) -> ServerDecision:
        """Charge one request costing ``tokens`` to ``group``, or refuse it."""
        meters = self._meters(group, now)
        for name in ("tpm", "tpd"):
            meter = meters.get(name)
            if meter is not None and tokens > meter.limit:
                return ServerDecision(
                    admitted=False,
                    kind="tokens",
                    window="minute" if name == "tpm" else "day",
                    limit=meter.limit,
                    used=meter.used_now(now),
                    requested=tokens,
                    too_large=True,
                )
        worst: tuple[float, str, ServerMeter, int] | None = None
        for name, meter in meters.items():
            cost = 1 if name in ("rpm", "rpd") else tokens
            wait = meter.wait(cost, now)
            if wait > 0 and (worst is None or wait > worst[0]):
                worst = (wait, name, meter, cost)
        if worst is not None:
            wait, name, meter, cost = worst
            return ServerDecision(
                admitted=False,
                kind="requests" if name in ("rpm", "rpd") else "tokens",
                window="minute" if name in ("rpm", "tpm") else "day",
                limit=meter.limit,
                used=meter.used_now(now),
                requested=cost,
                retry_after=wait,
            )
        token_windows = []
        for name, meter in meters.items():
            if name in ("rpm", "rpd"):
                meter.take(1, now)
            else:
                token_windows.append((name, meter.take(tokens, now)))
        return ServerDecision(
            admitted=True,
            reservation=ServerReservation(
                group=group, tokens=tokens, token_windows=tuple(token_windows)
            ),
        )

    def settle(self, reservation: ServerReservation, actual_tokens: int, now: float) -> None:
        """Correct an admitted request's token charge to ``actual_tokens``."""
        delta = actual_tokens - reservation.tokens
        if delta == 0:
            return
        meters = self._groups.get(reservation.group)
        if meters is None:
            return
        for name, window in reservation.token_windows:
            meter = meters.get(name)
            if meter is not None:
                meter.adjust(delta, window, now)

    def snapshot(self, group: tuple[str, str], now: float) -> ServerSnapshot:
        """Header values for ``group`` now (its meters are created if new)."""
        meters = self._meters(group, now)
        requests = meters.get("rpm") or meters.get("rpd")
        tokens = meters.get("tpm") or meters.get("tpd")
        remaining_requests, reset_requests = requests.headline(now) if requests else (None, None)
        remaining_tokens, reset_tokens = tokens.headline(now) if tokens else (None, None)
        return ServerSnapshot(
            limit_requests=requests.limit if requests else None,
            remaining_requests=remaining_requests,
            reset_requests=reset_requests,
            limit_tokens=tokens.limit if tokens else None,
            remaining_tokens=remaining_tokens,
            reset_tokens=reset_tokens,
        )
