"""Quota arithmetic of the mock server: pure, sans-IO, O(1) per request.

Nothing here imports trio or reads a clock: every method takes ``now`` (seconds
on any monotonic scale) so tests drive it with plain numbers.  None of these
functions checkpoint.  (The one exception: under ``clock_minute`` with no
wall-clock offset given, :class:`ServerQuota` reads ``time.time()`` once.)

A *limit group* is one (API key, model) pair.  Each group has up to four
*meters*: requests per minute, tokens per minute, requests per day, tokens per
day, with the limits of its API key when that key has limits of its own
(``ServerQuota(key_limits=...)``), else the book's.  Every meter follows one
of four semantics:

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
    Remaining and reset describe the sub-window: the headers declare it.
``clock_minute``
    Fixed windows aligned on the *wall clock*: per-minute meters on the minute
    (``:00``), per-day meters on midnight UTC, as request-counting gateways do.
    The reset is always the time to the next boundary.  The wall clock is
    ``now + wall_clock_offset`` (see :class:`ServerQuota`).

**Undeclared sub-windows** (``ServerLimits.subwindow_seconds``, any semantics
but ``per_second``): each per-minute meter also gets a hidden fixed-window
meter of that length, aligned on the minute meter's windows (the group's first
request, or the wall-clock minute), admitting at most ``limit * seconds / 60``
per sub-window (with ``per_second``'s leniency for one large request).  The
headers never mention it: they keep reporting the minute-level meter, so a
refusal from the sub-window arrives while the headers show headroom (OpenAI's
"quantized" limits, Azure checking RPM over 10 s).

A request is admitted only if *every* meter of its group admits it; then all are
charged at once, otherwise none.

Every class here is named ``Server*`` (``ServerLimits``, ``ServerQuota``, ...):
this is the *server's* book, which must never be confused with the engine's own
estimate of it (``engine._quota``), nor share code with it.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Mapping

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
# Window numbers are computed by float division: a time within this many
# seconds' worth of a boundary counts as past it (0.3 / 0.1 is 2.9999999999999996).
_BOUNDARY_EPSILON = 1e-9


class Semantics(enum.Enum):
    """How a meter counts; see the module docstring."""

    TOKEN_BUCKET = "token_bucket"
    FIXED_WINDOW = "fixed_window"
    PER_SECOND = "per_second"
    CLOCK_MINUTE = "clock_minute"


def _semantics(value: Semantics | str) -> Semantics:
    return value if isinstance(value, Semantics) else Semantics(value)


def _optional_limit(value: int | float | None) -> int | None:
    if value is None:
        return None
    number = int(value)
    if number < 0:
        raise ValueError("limits must be >= 0")
    return number


def _optional_seconds(value: int | float | None) -> float | None:
    return None if value is None else float(value)


def check_subwindow(seconds: float | None, semantics: Semantics) -> None:
    """Raise ValueError unless ``seconds`` is a valid undeclared sub-window for ``semantics``."""
    if seconds is None:
        return
    if not 0.0 < seconds < MINUTE:
        raise ValueError(f"subwindow_seconds must be between 0 and 60 (exclusive), got {seconds}")
    if semantics is Semantics.PER_SECOND:
        raise ValueError(
            "subwindow_seconds cannot be combined with per_second semantics, "
            "whose sub-windows the headers declare"
        )


@attrs.frozen(kw_only=True)
class ServerLimits:
    """The limits every group gets; ``None`` means that dimension is unlimited.

    Attributes:
        rpm: requests per minute (default None: unlimited).
        tpm: tokens per minute (default None).
        rpd: requests per day (default None).
        tpd: tokens per day (default None).
        semantics: how all four meters count (default ``token_bucket``).
        subwindow_seconds: length of an undeclared sub-window enforced on the
            per-minute meters besides their own limit, 0 < s < 60, not with
            ``per_second`` (default None: none); see the module docstring.
    """

    rpm: int | None = attrs.field(default=None, converter=_optional_limit)
    tpm: int | None = attrs.field(default=None, converter=_optional_limit)
    rpd: int | None = attrs.field(default=None, converter=_optional_limit)
    tpd: int | None = attrs.field(default=None, converter=_optional_limit)
    semantics: Semantics = attrs.field(default=Semantics.TOKEN_BUCKET, converter=_semantics)
    subwindow_seconds: float | None = attrs.field(default=None, converter=_optional_seconds)

    def __attrs_post_init__(self) -> None:
        check_subwindow(self.subwindow_seconds, self.semantics)

    @property
    def unlimited(self) -> bool:
        """True when no dimension has a limit (the quota check is skipped)."""
        return self.rpm is None and self.tpm is None and self.rpd is None and self.tpd is None


@attrs.define(slots=True)
class ServerMeter:
    """One limited dimension (e.g. tokens per minute) of one group, or its hidden sub-window.

    ``period`` is the limit's period (60 s or a day); windows are ``length``
    seconds long, numbered from ``origin`` (the group's first request, or a
    wall-clock boundary under ``clock_minute``), and each admits
    ``allowance = limit * length / period``.  A ``lenient`` meter (per-second
    windows, sub-windows) admits one request above its allowance into an empty
    window, up to ``limit``.  A ``subwindow`` meter is never reported in headers.
    """

    limit: int
    period: float
    semantics: Semantics
    origin: float
    length: float
    allowance: float
    lenient: bool = False
    subwindow: bool = False
    # token bucket state: level at time ``last``
    level: float = 0.0
    last: float = 0.0
    # window state: ``used`` within window number ``window``
    window: int = 0
    used: float = 0.0

    @classmethod
    def create(
        cls,
        limit: int,
        period: float,
        semantics: Semantics,
        now: float,
        origin: float | None = None,
    ) -> ServerMeter:
        """A fresh meter: a full bucket, or an empty window.

        Windows are numbered from ``origin`` (default ``now``; at most ``now``).
        """
        per_second = semantics is Semantics.PER_SECOND
        length = period / 60 if per_second else period
        return cls(
            limit=limit,
            period=period,
            semantics=semantics,
            origin=now if origin is None else origin,
            length=length,
            allowance=limit * length / period,
            lenient=per_second,
            level=limit,
            last=now,
        )

    @classmethod
    def subwindow_of(cls, meter: ServerMeter, seconds: float) -> ServerMeter:
        """The hidden sub-window meter of ``meter``: windows of ``seconds``, same origin."""
        return cls(
            limit=meter.limit,
            period=meter.period,
            semantics=Semantics.FIXED_WINDOW,
            origin=meter.origin,
            length=seconds,
            allowance=meter.limit * seconds / meter.period,
            lenient=True,
            subwindow=True,
        )

    # -- windows -----------------------------------------------------------

    def _roll(self, now: float) -> None:
        if self.semantics is Semantics.TOKEN_BUCKET:
            if now > self.last:
                rate = self.limit / self.period
                self.level = min(float(self.limit), self.level + (now - self.last) * rate)
                self.last = now
            return
        index = math.floor((now - self.origin) / self.length + _BOUNDARY_EPSILON)
        if index > self.window:
            self.window = index
            self.used = 0.0

    def _window_end(self) -> float:
        return self.origin + (self.window + 1) * self.length

    # -- queries -----------------------------------------------------------

    def wait(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` would fit (0.0 if it fits now), with no other traffic."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            missing = cost - self.level
            if missing <= _EPSILON:
                return 0.0
            return missing / (self.limit / self.period)
        if self.used + cost <= self.allowance + _EPSILON:
            return 0.0
        if self.lenient and self.used == 0 and cost <= self.limit:
            return 0.0
        return max(self._window_end() - now, 0.0) or _EPSILON

    def remaining(self, now: float) -> int:
        """What is left now, as ``x-ratelimit-remaining-*`` reports it (never negative)."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            left = self.level
        else:
            left = self.allowance - self.used
        return max(0, math.floor(left + _EPSILON))

    def used_now(self, now: float) -> int:
        """What counts as used now (``limit - remaining`` for the 429 message)."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            return max(0, math.ceil(self.limit - self.level - _EPSILON))
        return max(0, math.ceil(self.used - _EPSILON))

    def reset_after(self, now: float) -> float:
        """Seconds until the meter is back to its initial state (0.0 if it is).

        Under ``clock_minute``, always the time to the window's end (the next
        wall-clock boundary), as gateways report it.
        """
        return self.headline(now)[1]

    def headline(self, now: float) -> tuple[int, float]:
        """(:meth:`remaining`, :meth:`reset_after`) together, rolling the meter once."""
        self._roll(now)
        if self.semantics is Semantics.TOKEN_BUCKET:
            missing = self.limit - self.level
            reset = max(0.0, missing / (self.limit / self.period)) if missing > _EPSILON else 0.0
            return max(0, math.floor(self.level + _EPSILON)), reset
        used = self.used
        remaining = max(0, math.floor(self.allowance - used + _EPSILON))
        if used <= _EPSILON and self.semantics is not Semantics.CLOCK_MINUTE:
            return remaining, 0.0
        return remaining, max(0.0, self._window_end() - now)

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
        self.allowance = limit * self.length / self.period
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
# The hidden sub-window meters, keyed by the per-minute meter they belong to.
_SUBWINDOWS = (("rpm", "rpm_sub"), ("tpm", "tpm_sub"))
# Meters charged one per request (the others are charged the token cost).
_REQUEST_METERS = frozenset(("rpm", "rpd", "rpm_sub"))
_MINUTE_METERS = frozenset(("rpm", "tpm", "rpm_sub", "tpm_sub"))


def _checked_key_limits(
    limits: ServerLimits, key_limits: Mapping[str, ServerLimits] | None
) -> dict[str, ServerLimits]:
    """``key_limits`` as a dict, each checked to share ``limits``'s semantics and sub-window."""
    if not key_limits:
        return {}
    for own in key_limits.values():
        if (
            own.semantics is not limits.semantics
            or own.subwindow_seconds != limits.subwindow_seconds
        ):
            raise ValueError(
                "a key's limits must have the book's semantics and subwindow_seconds "
                f"({limits.semantics.value}, {limits.subwindow_seconds}), got "
                f"({own.semantics.value}, {own.subwindow_seconds})"
            )
    return dict(key_limits)


class ServerQuota:
    """Every group's meters, created on each group's first request.

    ``admit`` charges one request and its token cost or refuses with the wait;
    ``settle`` corrects the token charge once real usage is known;
    ``snapshot`` gives the header values; ``set_limits`` changes limits at run
    time; ``clear`` forgets every group.

    ``key_limits`` (default None: none) maps an API key to the limits of that
    key's groups, in place of ``limits``; each must have ``limits``'s
    semantics and sub-window (those are the book's, not a key's).  The
    limits are read once, when a group is created: a request to an existing
    group costs the same with or without per-key limits.

    Under ``clock_minute`` the wall clock is ``now + wall_clock_offset``
    (``now`` on the caller's clock).  With ``wall_clock_offset=None`` (the
    default) the offset is ``wall_clock() - now`` (``wall_clock`` default
    :func:`time.time`), taken once, at the first meter that needs it, so it is
    read on the same clock as the requests whatever clock was running when
    the book was made.
    """

    def __init__(
        self,
        limits: ServerLimits,
        *,
        key_limits: Mapping[str, ServerLimits] | None = None,
        wall_clock_offset: float | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._limits = limits
        self._key_limits = _checked_key_limits(limits, key_limits)
        self._groups: dict[tuple[str, str], dict[str, ServerMeter]] = {}
        self._configured_offset = wall_clock_offset
        self._offset = wall_clock_offset
        self._wall_clock = wall_clock

    @property
    def limits(self) -> ServerLimits:
        """The limits in force for every key without limits of its own."""
        return self._limits

    @property
    def key_limits(self) -> Mapping[str, ServerLimits]:
        """The keys with limits of their own, and those limits (a copy)."""
        return dict(self._key_limits)

    def limits_for(self, key: str) -> ServerLimits:
        """The limits of ``key``'s groups: its own, else :attr:`limits`."""
        return self._key_limits.get(key, self._limits)

    def clear(self) -> None:
        """Forget every group: the next requests find full quotas."""
        self._groups.clear()

    def set_wall_clock_offset(self, offset: float | None) -> None:
        """Use ``offset`` (None: take it from the wall clock at the next need) from now on.

        A change starts every group afresh under ``clock_minute`` (its windows move).
        """
        if offset == self._configured_offset:
            return
        self._configured_offset = self._offset = offset
        if self._limits.semantics is Semantics.CLOCK_MINUTE:
            self._groups.clear()

    def set_limits(
        self,
        limits: ServerLimits,
        now: float,
        *,
        key_limits: Mapping[str, ServerLimits] | None = None,
    ) -> None:
        """Apply new limits to every group, keeping what each has used.

        ``key_limits`` replaces the per-key limits (default None: no key has
        limits of its own any more); each group takes its key's.  A dimension
        newly limited starts fresh; a dimension whose limit went away is
        dropped; a change of semantics or of ``subwindow_seconds`` starts
        every meter fresh.
        """
        checked = _checked_key_limits(limits, key_limits)
        restart = (
            limits.semantics is not self._limits.semantics
            or limits.subwindow_seconds != self._limits.subwindow_seconds
        )
        self._limits = limits
        self._key_limits = checked
        for (key, _model), meters in self._groups.items():
            group_limits = checked.get(key, limits)
            fresh = set()
            for name, _kind, _window, period in _DIMENSIONS:
                limit = getattr(group_limits, name)
                meter = meters.get(name)
                if limit is None:
                    meters.pop(name, None)
                elif meter is None or restart:
                    meters[name] = self._meter(limit, period, now)
                    fresh.add(name)
                else:
                    meter.relimit(limit, now)
            self._fit_subwindows(meters, fresh, now)

    def _fit_subwindows(self, meters: dict[str, ServerMeter], fresh: set[str], now: float) -> None:
        """Give each per-minute meter its hidden sub-window (a new one if the meter is new)."""
        seconds = self._limits.subwindow_seconds
        for name, sub_name in _SUBWINDOWS:
            main = meters.get(name)
            sub = meters.get(sub_name)
            if main is None or seconds is None:
                meters.pop(sub_name, None)
            elif sub is None or name in fresh:
                meters[sub_name] = ServerMeter.subwindow_of(main, seconds)
            else:
                sub.relimit(main.limit, now)

    def _meter(self, limit: int, period: float, now: float) -> ServerMeter:
        semantics = self._limits.semantics
        origin = None
        if semantics is Semantics.CLOCK_MINUTE:
            if self._offset is None:
                self._offset = self._wall_clock() - now
            origin = now - (now + self._offset) % period
        return ServerMeter.create(limit, period, semantics, now, origin)

    def _meters(self, group: tuple[str, str], now: float) -> dict[str, ServerMeter]:
        meters = self._groups.get(group)
        if meters is None:
            meters = {}
            limits = self._key_limits.get(group[0], self._limits)
            for name, _kind, _window, period in _DIMENSIONS:
                limit = getattr(limits, name)
                if limit is not None:
                    meters[name] = self._meter(limit, period, now)
            if self._limits.subwindow_seconds is not None:
                self._fit_subwindows(meters, set(meters), now)
            self._groups[group] = meters
        return meters

    def admit(self, group: tuple[str, str], tokens: int, now: float) -> ServerDecision:
        """Charge one request costing ``tokens`` to ``group``, or refuse it.

        A refusal names the reported meter that refused with the longest wait;
        only when none did is it the sub-window's (``subwindow=True``).  Its
        ``retry_after`` is the longest wait over every refusing meter.
        """
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
        declared: tuple[float, str, ServerMeter, int] | None = None
        for name, meter in meters.items():
            cost = 1 if name in _REQUEST_METERS else tokens
            wait = meter.wait(cost, now)
            if wait > 0:
                if worst is None or wait > worst[0]:
                    worst = (wait, name, meter, cost)
                if not meter.subwindow and (declared is None or wait > declared[0]):
                    declared = (wait, name, meter, cost)
        if worst is not None:
            _wait, name, meter, cost = worst if declared is None else declared
            return ServerDecision(
                admitted=False,
                kind="requests" if name in _REQUEST_METERS else "tokens",
                window="minute" if name in _MINUTE_METERS else "day",
                limit=meter.limit,
                used=meter.used_now(now),
                requested=cost,
                retry_after=worst[0],
                subwindow=declared is None,
            )
        token_windows = []
        for name, meter in meters.items():
            if name in _REQUEST_METERS:
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
