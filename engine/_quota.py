"""The quota book: pure, sans-IO bookkeeping of rate limits (no trio, no I/O).

Time is always passed in as ``now`` (seconds on any monotonic clock), so every
behaviour here is tested with plain numbers.  The limiter task is the only
caller in a running client.

Model
-----
A *limit group* (a model, or models sharing limits) has up to four
*dimensions*: requests and tokens, per minute and per day.  Each dimension keeps
an estimate of the capacity available now (``level``) and how it comes back:

* ``CONTINUOUS`` — a token bucket refilling at ``limit / window`` per second.
  The default: it is what OpenAI documents, and it lets a fresh client use the
  burst a token-bucket server grants.
* ``STEP`` — a fixed window: the level stays put until the server's reset
  moment, then returns to the full limit.  Chosen when a response's headers say
  the server will be full later than a token bucket could refill
  (``reset > (limit - remaining) / rate``); sticky once seen.
* ``SUBWINDOW`` — the server enforces the limit per second (a 60th of a
  per-minute limit in each one-second window) and says so in its headers
  (remaining never above a 60th of the limit, reset within a second): a fixed
  window of one second whose end is learned from the reset header.

Every grant *reserves* its estimated cost.  When the response arrives its
``x-ratelimit-*`` snapshot corrects the estimate: the server's ``remaining`` is
compared with the level the book had right after that permit was granted (both
describe about the same moment, so the difference is the book's error), net of
corrections already applied since.  The same mechanism learns limits that were
never configured.  A 429 puts the group in cooldown until the server's reset;
a 429 while the server's own headers still show headroom means the server
enforces a finer window than it reports (e.g. 60,000 RPM as 1,000 per second),
and switches the group to *paced* sending on evenly spaced absolute deadlines.

Until the first response of a group has been seen, at most one request of that
group is in flight (a probe), so the server's semantics and limits are known
before the burst; with configured limits, up to a second's share of them (a
60th, which fits a fresh quota under every semantics).

Servers the engine was not tuned for (docs/design.md, "Rules that hold on
servers we have never seen"): a 429 is ground truth (:meth:`QuotaBook.rate_limited`
brings the level down to what the server had); snapshots older than one
applied, or explained by permits still out at their grant, never raise the
level; bursts are paced at ``burst_pace`` times the sustainable rate until the
server has admitted more than any 10 s sub-window could hold; with no limit
known (no headers) an in-flight window in slow start, then a paced rate with
multiplicative decrease, governs the group; a window that names no reset is
recognised from its refusals and its end guessed on the clock minute.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

import attrs

from engine._headers import RateLimitHeaders

__all__ = [
    "Cost",
    "Decision",
    "DimensionState",
    "GroupState",
    "Limits",
    "QuotaBook",
    "RefillMode",
    "Reservation",
    "TooLarge",
    "Wait",
]

MINUTE = 60.0
DAY = 86_400.0
#: The longest undeclared sub-window the burst pacing guards against (Azure
#: checks per-minute limits over 10 s).
PROOF_SPAN = 10.0
#: Burst pacing lets grants run this many seconds ahead of their slots: at
#: high rates a wake-up per grant would cost more than the grant (trio's timers
#: wake ~0.6 ms late anyway), and a millisecond's worth is no burst.
BURST_SLACK = 0.001
#: A burst spacing below this (seconds) is shorter than a grant takes.
NEGLIGIBLE_SPACING = 1e-6
#: What processes that share a quota keep of their share when paced.
SHARED_PACE_FRACTION = 0.95
#: A claim on a shared pace schedule covers about this many seconds of it:
#: one Redis call per claim, and what a process leaves unused of its last
#: claim (its work done) is at most this much of everyone's time.
PACE_CLAIM_SECONDS = 0.2
#: The same for a burst pace: short, so that a process still holding a stretch
#: when another is refused by a finer window sends little more into it.
BURST_CLAIM_SECONDS = 0.05
#: A slot of a shared pace schedule is still used this late (seconds, or half
#: a spacing if less): a stretch that starts "now" arrives a Redis round trip
#: late.  Later than that it is skipped: sent late, it could land in the next
#: second of a per-second window beside that second's own slots.
LATE_SLOT = 0.005
#: A paced group refused by its finer window again paces at 85% of its rate,
#: and gets this share of the full rate back per request sent.
PACE_RECOVERY = 0.005
#: A blind 429 this soon (seconds) after a guessed window end means the guess
#: was early (the server's clock runs behind): retry a second later.
GUESS_SLACK = 5.0
#: A 429's wait longer than this (seconds) names a window's end rather than
#: the refill of one request.
LONG_WAIT = 2.0
#: While no limit is known, the in-flight window doubles per round trip up to
#: this many requests or this many requests a second, whichever is more, then
#: grows by one per round trip.
SLOW_START_LIMIT = 64
SLOW_START_RATE = 400.0
#: With no per-minute limit configured, this many requests may be out before
#: the first response (and the slow-start window starts here): the first
#: answer is then the fastest of several, not one whole round trip of a
#: lone probe (TCP starts with a window of 4 to 10 segments, RFC 3390 and
#: 6928), while a quota smaller than that refuses only a few.
INITIAL_FLIGHT = 4


def _positive_or_none(
    _instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """Rate limits of one limit group.  Every field is optional.

    Attributes:
        rpm: requests per minute.  None: learned from ``x-ratelimit-*`` headers.
        tpm: tokens per minute.  None: learned from headers.
        rpd: requests per day.  None: not enforced (servers do not report it).
        tpd: tokens per day.  None: not enforced.
        burst: True (default) uses the burst a token-bucket or fixed-window
            server grants; False paces requests evenly from the start, for
            providers known to enforce per-second sub-windows.
    """

    rpm: float | None = attrs.field(default=None, validator=_positive_or_none)
    tpm: float | None = attrs.field(default=None, validator=_positive_or_none)
    rpd: float | None = attrs.field(default=None, validator=_positive_or_none)
    tpd: float | None = attrs.field(default=None, validator=_positive_or_none)
    burst: bool = True


@attrs.frozen
class Cost:
    """What one request is expected to consume: one request and ``tokens`` tokens.

    ``dollars`` is its worst-case price, reserved against a client's spending
    cap (0 when the client has none).
    """

    tokens: int = 0
    requests: int = 1
    dollars: float = 0.0


class RefillMode(enum.Enum):
    """How a dimension's capacity comes back (see the module docstring)."""

    CONTINUOUS = "continuous"
    STEP = "step"
    SUBWINDOW = "subwindow"


@attrs.define(slots=True)
class _Dimension:
    """One limit (e.g. tokens per minute) of a group.  Mutable; book-internal."""

    name: str
    window: float
    configured: float | None
    limit: float | None
    level: float
    updated: float
    mode: RefillMode = RefillMode.CONTINUOUS
    full_at: float | None = None
    granted_total: float = 0.0
    in_flight: float = 0.0
    corrections: float = 0.0
    subwindow_seen: bool = False
    beyond_subwindow_seen: bool = False
    # Capacity the server may have discarded (refill while its bucket, which
    # still holds what is in flight, was full; a window's reset): a permit
    # returned unused after that must not be added again (QuotaBook._give_back).
    overflow: float = 0.0
    # The grant sequence number of the newest snapshot applied: an older one
    # (answers come back out of order) may lower the level, never raise it.
    applied_seq: int = 0
    # A fixed window whose end no header or hint named: it was guessed.
    end_guessed: bool = False
    unconfirmed: bool = False
    counts_tokens: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.counts_tokens = self.name.startswith("tokens")

    def need(self, cost: Cost) -> float:
        """What ``cost`` takes from this dimension."""
        return cost.tokens if self.counts_tokens else cost.requests

    @property
    def rate(self) -> float | None:
        return None if self.limit is None else self.limit / self.window

    @property
    def capacity(self) -> float | None:
        """What a full window holds (a 60th of the limit in SUBWINDOW mode); None: no limit."""
        return None if self.limit is None else self.capacity_under(self.limit)

    def capacity_under(self, limit: float) -> float:
        """What a full window holds under ``limit`` (a 60th of it in SUBWINDOW mode)."""
        return limit if self.mode is not RefillMode.SUBWINDOW else limit / 60

    def refill(self, now: float) -> None:
        """Bring ``level`` up to ``now``."""
        if now <= self.updated:
            return  # already brought here (a grant and its settle often share a moment)
        limit = self.limit
        if limit is None:
            self.updated = now
            return
        if self.mode is RefillMode.CONTINUOUS:
            gain = (now - self.updated) * limit / self.window
            # The server's bucket may hold what is in flight and never reached
            # it: it is full (and discards refill) sooner than the book.
            discarded = self.level + self.in_flight + gain - limit
            if discarded > 0:
                self.overflow += discarded if discarded < gain else gain
            if self.level < limit:
                level = self.level + gain
                self.level = level if level < limit else limit
        elif self.full_at is not None and now >= self.full_at:
            capacity = self.capacity_under(limit)
            if capacity > self.level:
                self.overflow += capacity - self.level
            self.level = capacity
            # A guessed end may come before the server's: one probe first.
            self.unconfirmed = self.end_guessed
            # The next window ends one window later unless a response says otherwise.
            span = self.window if self.mode is RefillMode.STEP else self.window / 60
            self.full_at += span * max(1, math.ceil((now - self.full_at) / span))
        self.updated = max(self.updated, now)

    def ready_at(self, cost: float, now: float) -> float | None:
        """Earliest time ``cost`` fits (``now`` if it fits), None if unknowable."""
        if cost <= 0 or self.level >= cost:
            return now
        limit = self.limit
        if limit is None:
            return None
        if self.mode is RefillMode.CONTINUOUS:
            return now + (cost - self.level) / (limit / self.window)  # the rate
        if self.mode is RefillMode.SUBWINDOW and cost > limit / 60:  # the capacity
            # A request larger than a sub-window goes alone into a fresh one.
            return now if self.level >= limit / 60 else self.full_at
        return self.full_at


@attrs.frozen
class Reservation:
    """Capacity held by one granted permit until it is settled or released.

    ``marks`` records, for requests then tokens per minute, the level right
    after this grant, the total granted so far, the corrections applied so
    far and what was in flight before this grant, so the response's headers
    can be compared with the book's state at that moment.  ``overflows``
    records how much capacity each dimension had discarded so far, so a
    permit returned unused gives back only what did not already come back by
    refill or a reset.
    """

    group: str
    cost: Cost
    granted_at: float
    seq: int
    marks: tuple[float, float, float, float, float, float, float, float]
    #: Each dimension's ``overflow`` at the grant (in the group's dimension order).
    overflows: tuple[float, ...] = ()


@attrs.frozen
class DimensionState:
    """A read-only view of one limit of a group (see :class:`GroupState`).

    Attributes:
        limit: the limit per window, configured or learned (None: unknown).
        level: what the book believes is available now (infinite while the
            limit is unknown).
        mode: ``"continuous"`` (token bucket), ``"step"`` (fixed window) or
            ``"subwindow"`` (declared per-second windows).
        full_at: when a window-mode limit is next full again (None for a bucket).
    """

    limit: float | None
    level: float
    mode: str
    full_at: float | None


@attrs.frozen
class GroupState:
    """A read-only view of one limit group's rate control.

    Attributes:
        name: the limit group (a model, or models sharing limits).
        dimensions: ``requests_per_minute``, ``tokens_per_minute`` (and the
            per-day ones when configured) -> :class:`DimensionState`.
        paced: sending on evenly spaced deadlines (a window finer than the
            server declares was found, or ``Limits(burst=False)``).
        proven: the server admitted more than any sub-window could, so
            bursts go unpaced.
        cooldown_until: the group sends nothing before this time (the
            limiter's clock).
        window: while no request limit is known and no 429 has been seen
            since the last window end, the most requests in flight (slow
            start); None otherwise.
        adaptive_rate: while no request limit is known, the paced rate in
            requests per second found after a 429; None otherwise.
        in_flight: permits granted and not yet settled or released.
        rate_limited: 429s counted for this group.
    """

    name: str
    dimensions: Mapping[str, DimensionState]
    paced: bool
    proven: bool
    cooldown_until: float
    window: float | None
    adaptive_rate: float | None
    in_flight: int
    rate_limited: int


@attrs.frozen
class Wait:
    """Decision: the head request cannot go yet.

    ``until`` is the absolute time worth re-checking at, or None when only a
    response (a settle) or a new lease can change the answer.  ``lease`` is
    True when a shared quota's lease is what is missing (see
    :meth:`QuotaBook.add_lease`).  ``pace`` is the seconds of a shared pace
    schedule to claim when a claim is what is missing (0: none; see
    :meth:`QuotaBook.add_pace_claim`).
    """

    until: float | None
    lease: bool = False
    pace: float = 0.0


@attrs.frozen
class TooLarge:
    """Decision: the request can never fit; ``message`` says which limit."""

    message: str


#: What :meth:`QuotaBook.decide` returns: a grant (the reservation), or why not.
Decision = Reservation | Wait | TooLarge


@attrs.define(slots=True)
class _Group:
    name: str
    dims: dict[str, _Dimension]
    dim_list: tuple[_Dimension, ...] = attrs.field(init=False)
    minute_dims: tuple[_Dimension, _Dimension] = attrs.field(init=False)
    paced: bool
    pace_fraction: float
    # This process's share of a quota shared with others (1 alone): pacing
    # spreads only this share over the server's windows.
    share: float = 1.0
    # Cut by 429s from a finer window while paced, grown back while sending.
    pace_backoff: float = 1.0
    last_pace_cut_at: float = -math.inf
    last_refusal_at: float = -math.inf
    admitted_since_refusal: bool = False
    cooldown_until: float = -math.inf
    # Capacity leased from a shared quota (infinite when the book is not shared).
    lease_requests: float = math.inf
    lease_tokens: float = math.inf
    lease_expires_at: float = math.inf
    next_slot: float = -math.inf
    # The part of a shared pace schedule this process claimed (shared_pace):
    # its paced and burst-paced grants go at claim_next or later, within it.
    claim_next: float = -math.inf
    claim_end: float = -math.inf
    seen_response: bool = False
    last_grant_at: float = -math.inf
    in_flight: int = 0
    rate_limited: int = 0
    blind_rate_limits: int = 0
    last_blind_at: float = -math.inf
    # Burst pacing: grants never come closer than a burst_pace-th of the
    # sustainable spacing, so a 429 from a window finer than the headers
    # declare stops the burst after a few requests (see decide()).
    next_burst_slot: float = -math.inf
    # Set once the server admitted, within PROOF_SPAN of the group's first
    # grant, more than any window up to PROOF_SPAN long could hold: it is a
    # token bucket or a fixed window of the declared size, and bursts go
    # unpaced from then on.
    proven: bool = False
    first_grant_at: float = math.inf
    early_admitted: list[float] = attrs.field(factory=lambda: [0.0, 0.0])
    # Adaptive control while no request limit is known (no rate-limit headers):
    # an in-flight window in slow start until the first 429, then a paced
    # rate with multiplicative decrease on 429 and slow growth while in use.
    window: float = float(INITIAL_FLIGHT)
    adaptive_rate: float | None = None
    loss_rate: float = 0.0  # the adaptive rate when the last 429 came
    admitted_since_decrease: int = 0
    next_adaptive_slot: float = -math.inf
    last_decrease_at: float = -math.inf
    latency: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.dim_list = tuple(self.dims.values())
        self.minute_dims = (self.dims["requests_per_minute"], self.dims["tokens_per_minute"])


_DIMENSIONS = (
    ("requests_per_minute", "rpm", MINUTE, "requests"),
    ("tokens_per_minute", "tpm", MINUTE, "tokens"),
    ("requests_per_day", "rpd", DAY, "requests"),
    ("tokens_per_day", "tpd", DAY, "tokens"),
)


class QuotaBook:
    """Rate-limit state of every limit group.  Pure: no I/O, no clock of its own.

    Args:
        limits: one :class:`Limits` for every group, or a mapping from group
            name to :class:`Limits` (groups not in it learn their limits), or
            None to learn everything from response headers.
        probe_interval: seconds between lone probe requests when a group's
            capacity is exhausted and no response can tell when it returns
            (default 1.0).
        margin: seconds added to every computed wake-up time, and the refill
            of that long a token bucket keeps before an exact fit goes, so
            arrival jitter at the server (whose bucket started a little later)
            does not turn an exact fit into a 429 (default 0.05; it shifts
            when requests go, never how many: no throughput is lost).
        pace_fraction: share of the limit used when a group is paced
            (default 0.98).
        default_cooldown: seconds a group cools down after a 429 that names no
            reset (default 1.0), doubled for each such 429 in a row up to 60 s
            until a request of the group succeeds.
        burst_pace: while a group is not paced, grants come no closer than
            the sustainable spacing divided by this (default 16): a fresh
            quota's burst still goes within a few seconds, and a server that
            enforces a window finer than it declares refuses only the few
            requests sent before its first 429 comes back.
        adaptive_growth: while no request limit is known, the paced rate
            found after a 429 grows by this share per second of sending at
            that rate (default 0.03).
        wall_offset: the wall clock (Unix time) less ``now``'s clock, or None
            (default) when unknown; lets the book guess that a fixed window
            whose end no header names ends on the clock minute.
        shared: True when several processes share the quota (default False).
            Every grant then also needs capacity *leased* from the shared
            quota (:meth:`add_lease`); the local dimensions still learn limits
            and semantics from headers, but are not corrected by them (the
            server's remaining counts the other processes' requests too).
        shared_pace: with ``shared``, True (default False) paces on one
            schedule shared by every process instead of this process's
            share of the rate: paced and burst-paced grants go within
            stretches of it claimed with ``Wait.pace`` and added with
            :meth:`add_pace_claim`.
    """

    def __init__(
        self,
        limits: Limits | Mapping[str, Limits] | None = None,
        *,
        probe_interval: float = 1.0,
        margin: float = 0.05,
        pace_fraction: float = 0.98,
        default_cooldown: float = 1.0,
        shared: bool = False,
        shared_pace: bool = False,
        burst_pace: float = 16.0,
        adaptive_growth: float = 0.03,
        wall_offset: float | None = None,
    ) -> None:
        self._limits = limits
        self._shared = shared
        self._shared_pace = shared and shared_pace
        self._probe_interval = probe_interval
        self._margin = margin
        self._pace_fraction = pace_fraction
        self._default_cooldown = default_cooldown
        self._burst_pace = burst_pace
        self._adaptive_growth = adaptive_growth
        self._wall_offset = wall_offset
        self._groups: dict[str, _Group] = {}
        self._seq = 0
        self._live: dict[int, Reservation] = {}

    # -- groups ---------------------------------------------------------------

    def _limits_for(self, group: str) -> Limits:
        if self._limits is None:
            return Limits()
        if isinstance(self._limits, Limits):
            return self._limits
        return self._limits.get(group, Limits())

    def _group(self, name: str, now: float) -> _Group:
        group = self._groups.get(name)
        if group is None:
            limits = self._limits_for(name)
            dims = {}
            for dim_name, field, window, _kind in _DIMENSIONS:
                configured = getattr(limits, field)
                if configured is None and window == DAY:
                    continue
                dims[dim_name] = _Dimension(
                    name=dim_name,
                    window=window,
                    configured=configured,
                    limit=configured,
                    level=configured if configured is not None else math.inf,
                    updated=now,
                )
            group = _Group(
                name=name, dims=dims, paced=not limits.burst, pace_fraction=self._pace_fraction
            )
            if self._shared:
                group.lease_requests = group.lease_tokens = 0.0
                group.lease_expires_at = -math.inf
            self._groups[name] = group
        return group

    # -- decisions ------------------------------------------------------------

    def decide(self, group_name: str, cost: Cost, now: float) -> Decision:
        """Grant ``cost`` in ``group_name`` now, or say when to look again.

        A grant (a :class:`Reservation`) reserves the cost at once; the caller must later call
        :meth:`settle` or :meth:`release` with the reservation.
        """
        group = self._group(group_name, now)
        ready = now if now >= group.cooldown_until else group.cooldown_until
        if self._shared_pace:
            pass  # the shared schedule paces (_claimed_slot)
        elif group.paced:
            if group.next_slot > ready:
                ready = group.next_slot
        elif not group.proven and group.next_burst_slot > ready + BURST_SLACK:
            ready = group.next_burst_slot
        rpm_dim, tpm_dim = group.minute_dims
        if rpm_dim.limit is None and group.seen_response:
            # No request limit known (no rate-limit headers): adaptive control.
            if group.adaptive_rate is None:
                if group.in_flight >= group.window:
                    return Wait(None)
            elif group.next_adaptive_slot > ready:
                ready = group.next_adaptive_slot
        unknowable = False
        for dim in group.dim_list:
            need = cost.tokens if dim.counts_tokens else cost.requests
            if dim.limit is not None and need > dim.limit:
                return TooLarge(
                    f"request needs {need:g} {_unit(dim.name)} but the limit is "
                    f"{dim.limit:g} {_unit(dim.name)} per {_per(dim.window)}"
                )
            dim.refill(now)
            if dim.level >= need:
                if dim.mode is not RefillMode.CONTINUOUS or dim.limit is None:
                    continue
                # A bucket holding the cost only within the margin's refill
                # goes when it holds the margin too: the server's bucket
                # started a little later than the book's, and an exact fit
                # granted now (a settle woke the limiter) can arrive short.
                rate = dim.limit / dim.window
                reserve = min(rate * self._margin, dim.limit - need)
                if dim.level >= need + reserve:
                    continue
                covered_at = now + (need + reserve - dim.level) / rate
                if covered_at > ready:
                    ready = covered_at
                continue
            at = dim.ready_at(need, now)
            if at is None:
                unknowable = True
            elif at > now and at + self._margin > ready:
                ready = at + self._margin
        if (
            not group.seen_response
            and group.in_flight > 0
            and not self._fits_first_second(group, cost)
        ):
            return Wait(None)
        if (rpm_dim.unconfirmed or tpm_dim.unconfirmed) and group.in_flight > 0:
            return Wait(None)  # a guessed window end: its probe goes alone
        if unknowable:
            if group.in_flight > 0:
                return Wait(None if ready <= now else ready)
            probe_at = max(ready, group.last_grant_at + self._probe_interval)
            if probe_at > now:
                return Wait(probe_at)
            # Nothing in flight and no way to know: send one request as a probe.
        elif ready > now:
            return Wait(ready, lease=self._shared and not self._leased(group, cost, now))
        if self._shared and not self._leased(group, cost, now):
            return Wait(None, lease=True)
        if self._shared_pace:
            wait = self._claimed_slot(group, cost, now)
            if wait is not None:
                return wait
        return self._reserve(group, cost, now)

    def _claimed_slot(self, group: _Group, cost: Cost, now: float) -> Wait | None:
        """Where a paced grant of a shared pace schedule stands: None to grant now.

        Processes that share a quota pace on one schedule (Redis hands out
        consecutive stretches of it, :meth:`add_pace_claim`), so together
        they send at the pace one process would, never two into the same
        slot of a finer window.  A group without a stretch that fits the
        request asks for one (``Wait.pace``); one whose next slot is still
        ahead waits for it.  A slot up to :data:`LATE_SLOT` past is still
        used (a stretch starting "now" arrives a little late); one further
        past is gone, or late grants would bunch up.
        """
        spacing = self._shared_spacing(group, cost)
        if spacing <= NEGLIGIBLE_SPACING:
            return None
        slot = group.claim_next
        if slot < now - min(LATE_SLOT, spacing / 2):
            slot = now
        if slot + spacing > group.claim_end + BURST_SLACK:
            span = PACE_CLAIM_SECONDS if group.paced else BURST_CLAIM_SECONDS
            return Wait(None, pace=spacing * max(1, round(span / spacing)))
        if slot > now + BURST_SLACK:
            return Wait(slot)
        return None

    def _shared_spacing(self, group: _Group, cost: Cost) -> float:
        """The spacing of ``cost`` on a shared pace schedule (0: not paced).

        Paced groups, and groups whose first response has not come yet (a
        second's share in flight from every process would overrun a
        per-second window together), space requests at the sustainable
        rate; groups not yet proven at the burst pace.
        """
        if group.paced or (not group.proven and not group.seen_response):
            return self._pace_spacing(group, cost, alone=True)
        if not group.proven:
            return self._burst_spacing(group, cost)
        return 0.0

    def _burst_spacing(self, group: _Group, cost: Cost) -> float:
        """A ``burst_pace``-th of the sustainable spacing of the per-minute limits."""
        rpm, tpm = group.minute_dims
        spacing = 0.0
        pace = self._burst_pace
        if rpm.limit:
            spacing = cost.requests * rpm.window / (rpm.limit * pace)
        if tpm.limit and cost.tokens:
            spacing = max(spacing, cost.tokens * tpm.window / (tpm.limit * pace))
        return spacing

    @staticmethod
    def _fits_first_second(group: _Group, cost: Cost) -> bool:
        """True if ``cost`` may join the requests out before any response.

        Configured per-minute limits allow a second's share (a 60th of each,
        the finest window servers document) in flight before the first
        response: that much fits a fresh quota under every semantics, and a
        token bucket does not sit full (discarding refill) for the first
        round trip.  A dimension not configured does not restrict it; with
        none configured, :data:`INITIAL_FLIGHT` requests may be out.  A
        process sharing the quota keeps to its share of either.
        """
        configured = False
        for dim in group.minute_dims:
            if dim.configured is None:
                continue
            if dim.in_flight + dim.need(cost) > dim.configured / 60 * group.share:
                return False
            configured = True
        return configured or group.in_flight < max(1.0, INITIAL_FLIGHT * group.share)

    @staticmethod
    def _leased(group: _Group, cost: Cost, now: float) -> bool:
        if now >= group.lease_expires_at:
            group.lease_requests = group.lease_tokens = 0.0
        return group.lease_requests >= cost.requests and group.lease_tokens >= cost.tokens

    def _reserve(self, group: _Group, cost: Cost, now: float) -> Reservation:
        for dim in group.dim_list:
            need = cost.tokens if dim.counts_tokens else cost.requests
            dim.level -= need
            dim.granted_total += need
            dim.in_flight += need
        rpm, tpm = group.minute_dims
        marks = (
            rpm.level,
            rpm.granted_total,
            rpm.corrections,
            rpm.in_flight - cost.requests,
            tpm.level,
            tpm.granted_total,
            tpm.corrections,
            tpm.in_flight - cost.tokens,
        )
        if self._shared_pace:
            spacing = self._shared_spacing(group, cost)
            if spacing > NEGLIGIBLE_SPACING:
                slot = group.claim_next
                late = slot < now - min(LATE_SLOT, spacing / 2)
                group.claim_next = (now if late else slot) + spacing
        if group.paced:
            if not self._shared_pace:
                group.next_slot = max(group.next_slot, now) + self._pace_spacing(group, cost)
            if group.pace_backoff < 1.0:
                group.pace_backoff = min(1.0, group.pace_backoff + PACE_RECOVERY)
        elif not group.proven:
            if group.first_grant_at > now:
                group.first_grant_at = now
            spacing = self._burst_spacing(group, cost)
            if spacing > NEGLIGIBLE_SPACING:
                slot = group.next_burst_slot
                group.next_burst_slot = (slot if slot > now else now) + spacing
            elif spacing:
                # Limits so high that the pace is shorter than a grant takes:
                # nothing to pace, nothing to prove.
                group.proven = True
        rate = group.adaptive_rate
        if rate is not None:
            if now <= group.next_adaptive_slot + 1.0 / rate:
                # Sending as fast as the rate allows: probe upward slowly
                # (``adaptive_growth`` of the rate per second of paced
                # sending), six times slower near the rate of the last 429, so
                # a low rate is not refused every few seconds.
                step = self._adaptive_growth
                if 0.95 * group.loss_rate <= rate <= 1.05 * group.loss_rate:
                    step /= 6
                rate = group.adaptive_rate = rate + step
            group.next_adaptive_slot = max(group.next_adaptive_slot, now) + cost.requests / rate
        group.lease_requests -= cost.requests
        group.lease_tokens -= cost.tokens
        group.in_flight += 1
        group.last_grant_at = now
        self._seq += 1
        reservation = Reservation(
            group=group.name,
            cost=cost,
            granted_at=now,
            seq=self._seq,
            marks=marks,
            overflows=tuple([dim.overflow for dim in group.dim_list]),
        )
        self._live[reservation.seq] = reservation
        return reservation

    def _pace_spacing(self, group: _Group, cost: Cost, *, alone: bool = False) -> float:
        """Seconds a paced ``cost`` takes of the group's rate (``alone``: all of it)."""
        spacing = 0.0
        for dim in group.dims.values():
            rate = dim.rate
            if rate:
                spacing = max(spacing, dim.need(cost) / (rate * group.pace_fraction))
        if group.share < 1 and not alone:
            # Processes pacing independently fall into the same server window
            # now and then: leave them room for one request more each.
            spacing /= group.share * SHARED_PACE_FRACTION
        return spacing / group.pace_backoff

    # -- outcomes -------------------------------------------------------------

    def release(self, reservation: Reservation, now: float) -> None:
        """Return the whole reservation: the request never reached the server."""
        group = self._finish(reservation)
        if group is None:
            return
        if now < group.lease_expires_at:
            group.lease_requests += reservation.cost.requests
            group.lease_tokens += reservation.cost.tokens
        self._give_back(group, reservation, now)

    def settle(
        self,
        reservation: Reservation,
        now: float,
        *,
        headers: RateLimitHeaders | None = None,
        used_tokens: int | None = None,
    ) -> None:
        """Account a completed request (any status but 429; see :meth:`rate_limited`).

        Args:
            headers: the response's rate-limit snapshot, if it had one.
            used_tokens: real total tokens from the response's ``usage``; when
                no headers can correct the book, the difference from the
                estimate is refunded (or charged) on the token dimensions.
        """
        group = self._finish(reservation)
        if group is None:
            return
        group.seen_response = True
        group.blind_rate_limits = 0
        rpm_dim, tpm_dim = group.minute_dims
        if rpm_dim.unconfirmed or tpm_dim.unconfirmed:
            rpm_dim.unconfirmed = tpm_dim.unconfirmed = False
        if not group.admitted_since_refusal and reservation.granted_at > group.last_refusal_at:
            group.admitted_since_refusal = True
        if rpm_dim.limit is None:
            group.admitted_since_decrease += 1
            took = now - reservation.granted_at
            group.latency = took if not group.latency else 0.9 * group.latency + 0.1 * took
            if group.adaptive_rate is None:
                # Slow start: the window doubles every round trip until it holds
                # SLOW_START_LIMIT requests or sends SLOW_START_RATE a second, then
                # grows by one per round trip: what is sent before the first 429
                # comes back, the overshoot of an unknown limit, stays small.
                threshold = max(SLOW_START_LIMIT, SLOW_START_RATE * group.latency)
                group.window += 1 if group.window < threshold else 1 / group.window
        if not group.proven and reservation.granted_at < group.first_grant_at + PROOF_SPAN:
            self._count_early(group, reservation.cost)
        applied = self._apply_headers(group, reservation, headers, now)
        if used_tokens is not None:
            delta = reservation.cost.tokens - used_tokens
            if now < group.lease_expires_at:
                group.lease_tokens += delta  # the lease was charged the estimate
            for dim in group.dims.values():
                if dim.counts_tokens and dim.name not in applied:
                    dim.refill(now)
                    dim.level += delta
                    if dim.limit is not None:
                        dim.level = min(dim.level, dim.limit)

    def rate_limited(
        self,
        reservation: Reservation,
        now: float,
        *,
        headers: RateLimitHeaders | None = None,
        retry_after: float | None = None,
        limit_type: str | None = None,
    ) -> float:
        """Account a 429 ``rate_limit_exceeded``: the request was not served.

        The reservation is returned, the group cools down until the server's
        retry-after (else the named dimension's reset, else
        ``default_cooldown``), and the group switches to paced sending if the
        server's headers still showed headroom.  Returns the cooldown end.
        """
        group = self._finish(reservation)
        if group is None:
            return now
        group.seen_response = True
        group.rate_limited += 1
        self._give_back(group, reservation, now)
        if now < group.lease_expires_at:
            group.lease_requests += reservation.cost.requests
            group.lease_tokens += reservation.cost.tokens
        self._apply_headers(group, reservation, headers, now, served=False)
        both = ("requests", "tokens")
        kinds = (limit_type,) if limit_type in both else both
        finer_window, short = self._believe_the_refusal(group, reservation, headers, limit_type)
        if group.minute_dims[0].limit is None:
            self._decrease_adaptive_rate(group, reservation, now, retry_after)
        wait = retry_after
        new_round = True
        if wait is None and headers is not None:
            resets = [getattr(headers, f"reset_{kind}") for kind in kinds]
            known = [r for r in resets if r is not None]
            wait = max(known) if known else None
        if wait is None:
            # Nothing says when capacity returns: back off exponentially on
            # consecutive blind 429s (1 s, 2 s, 4 s, ... up to 60 s) so a
            # spent quota is not hit again by the whole window every second.
            # Refusals of requests sent before the last blind one are the
            # same round: they do not back off further.
            new_round = reservation.granted_at > group.last_blind_at
            if new_round:
                group.blind_rate_limits += 1
                group.last_blind_at = now
            wait = min(60.0, self._default_cooldown * 2 ** (group.blind_rate_limits - 1))
            if group.paced or finer_window:
                # A window finer than declared (10 s at most, in practice)
                # ends soon: probing every 2 s wastes less of the next one
                # than a doubling wait.
                wait = min(wait, 2 * self._default_cooldown)
            blind = True
        else:
            group.blind_rate_limits = 0
            blind = False
        if not finer_window:
            window_end = self._learn_window_from_refusal(
                group, short, reservation.cost, wait, blind, new_round, now
            )
            if window_end is not None:
                wait = window_end - now
        if finer_window:
            if (
                group.paced
                and group.admitted_since_refusal
                and reservation.granted_at > group.last_pace_cut_at
            ):
                # Refused while paced, after the pace had been admitted: other
                # clients share the server's windows (or the pace was too
                # fast).  Pace slower, once a round, and grow back slowly (see
                # _reserve).  Probes into a window still full say nothing of it.
                group.pace_backoff = max(0.1, group.pace_backoff * 0.85)
                group.last_pace_cut_at = now
            group.admitted_since_refusal = False
            group.last_refusal_at = now
            group.paced = True
            group.next_slot = max(group.next_slot, now + wait)
        group.cooldown_until = max(group.cooldown_until, now + wait + self._margin)
        return group.cooldown_until

    @staticmethod
    def _count_early(group: _Group, cost: Cost) -> None:
        """Count an early admission; prove the group when it beats every sub-window."""
        early = group.early_admitted
        rpm, tpm = group.minute_dims
        requests = early[0] = early[0] + cost.requests
        tokens = early[1] = early[1] + cost.tokens
        share = PROOF_SPAN / MINUTE
        if (rpm.limit is not None and requests > rpm.limit * share + cost.requests) or (
            tpm.limit is not None and cost.tokens and tokens > tpm.limit * share + cost.tokens
        ):
            group.proven = True

    def _believe_the_refusal(
        self,
        group: _Group,
        reservation: Reservation,
        headers: RateLimitHeaders | None,
        limit_type: str | None,
    ) -> tuple[bool, list[_Dimension]]:
        """Take a 429 as ground truth; True if it proves a window finer than declared.

        The server had less than this request needed when it refused it.  For
        each per-minute dimension the refusal is about, the book's level is
        brought down to what the server had then (its ``remaining`` header,
        else nothing), net of what was granted after this request and of the
        refill since, both of which the level already holds: the refused
        permit, returned just before, cannot recreate the excess that drew
        the 429.  Which dimension: the one the body names, else those whose
        ``remaining`` was short, else (no headers) the one the book believed
        tightest.  When the server's headers, or without headers the book's
        own corrected level, showed room for a second's share of the limit
        beyond this request, the refusal came from a window finer than the
        headers describe (e.g. 60,000 RPM enforced as 1,000 per second).
        Returns that verdict and the dimensions the refusal was about.
        """
        cost = reservation.cost
        marks = reservation.marks
        candidates = []
        for index, dim in enumerate(group.minute_dims):
            kind = "tokens" if dim.counts_tokens else "requests"
            need = dim.need(cost)
            limit = dim.limit
            if limit is None or need <= 0:
                continue
            remaining = None if headers is None else getattr(headers, f"remaining_{kind}")
            level_after, _granted, corrections_then, _out = marks[4 * index : 4 * index + 4]
            believed = None
            if not math.isinf(level_after):
                believed = level_after + need + (dim.corrections - corrections_then)
            candidates.append((dim, kind, need, remaining, believed, limit))
        if not candidates:
            return False, []
        named = [c for c in candidates if c[1] == limit_type]
        short = [c for c in candidates if c[3] is not None and c[3] < c[2]]
        if named:
            chosen = named
        elif short:
            chosen = short
        elif any(c[3] is not None for c in candidates):
            chosen = []  # the headers show room in every dimension
        else:
            chosen = [min(candidates, key=lambda c: math.inf if c[4] is None else c[4] / c[5])]
        finer = not chosen
        for dim, _kind, need, remaining, believed, limit in chosen:
            second = max(2.0, limit / 60)
            if remaining is not None:
                had = float(remaining)
                if had >= need + second:
                    finer = True
                    continue
            else:
                had = 0.0
                if believed is not None and believed >= need + second:
                    finer = True
                    continue  # the minute's level was not what ran out
            if believed is None:
                continue
            error = min(had, need - 1.0) - believed
            if error < 0 and not self._shared:
                dim.level += error
                dim.corrections += error
        return finer, [c[0] for c in chosen]

    def _learn_window_from_refusal(
        self,
        group: _Group,
        short: list[_Dimension],
        cost: Cost,
        wait: float,
        blind: bool,
        new_round: bool,
        now: float,
    ) -> float | None:
        """Recognise a fixed window from 429s that name no reset header; its end or None.

        A bucket refills a request in ``1 / rate``: a server that makes the
        group wait much longer than the deficit needs (its retry hint), or
        that refuses twice in a row with nothing said although a bucket would
        have refilled (a gateway counting requests per clock minute, with
        ``remaining`` but no reset header), counts in windows.  Without a
        hint the window is taken to end at the next wall-clock minute (as
        request-counting gateways align them) when the book knows the wall
        clock, else one window from now.  A refusal just after a guessed end
        (the server's clock behind ours) retries a second later, unless the
        request went before the guess (``new_round`` False: it was sent with
        the one whose refusal made the guess).
        """
        end = None
        if group.paced:
            return None  # a finer window than declared: its refusals say nothing of the minute's
        for dim in short:
            if dim.rate is None:
                continue
            if dim.mode is RefillMode.STEP and dim.end_guessed and dim.full_at is not None:
                if blind and new_round and now - (dim.full_at - dim.window) < GUESS_SLACK:
                    # Refused just after the guessed end: the server's clock
                    # runs behind ours.  Try again a second later, and move
                    # the guessed ends with it.
                    dim.full_at = now + 1.0
                    end = dim.full_at if end is None else max(end, dim.full_at)
                continue
            if dim.mode is not RefillMode.CONTINUOUS:
                continue
            if not blind:
                deficit = max(0.0, dim.need(cost) - max(0.0, dim.level))
                if wait <= deficit / dim.rate + 0.25 + 0.02 * dim.window:
                    continue
                at = now + wait
            elif group.blind_rate_limits >= 2 and self._wall_offset is not None:
                wall = now + self._wall_offset
                at = now + (math.floor(wall / dim.window) + 1) * dim.window - wall
            elif group.blind_rate_limits >= 2:
                at = now + dim.window
            else:
                continue
            dim.mode = RefillMode.STEP
            dim.full_at = at
            dim.end_guessed = blind
            end = at if end is None else max(end, at)
        return end

    def _decrease_adaptive_rate(
        self, group: _Group, reservation: Reservation, now: float, retry_after: float | None
    ) -> None:
        """Multiplicative decrease of the adaptive rate (no request limit known).

        Once per round: a 429 for a request granted before the last decrease
        says nothing about the rate chosen since.  A server's wait longer
        than ``LONG_WAIT`` names a window's end, not a refill interval: the
        group waits for it, then starts slow again from half its window (as
        TCP's fast recovery does).  Otherwise the first 429 ends slow start at
        half the rate the window was sending at, or one request per the
        server's wait if that is slower (a token bucket just emptied refills
        one request in about that time).  Later ones halve the rate while it
        is still searching (within 2 s of the last decrease) and take a fifth
        off it once it has settled, and never leave it above what the server
        admitted since the last decrease (cooldown included): that is what a
        token bucket refills.
        """
        if reservation.granted_at <= group.last_decrease_at:
            return
        since = now - group.last_decrease_at
        admitted = group.admitted_since_decrease
        group.last_decrease_at = now
        group.admitted_since_decrease = 0
        latency = group.latency if group.latency > 0 else 1.0
        rate = group.adaptive_rate
        if retry_after is not None and retry_after > LONG_WAIT:
            window = group.window if rate is None else rate * latency
            group.window = max(1.0, window / 2)
            group.adaptive_rate = None
            return
        if rate is not None:
            group.loss_rate = rate
        if rate is None:
            rate = 0.5 * max(group.window, 1.0) / latency
            if retry_after:
                rate = min(rate, reservation.cost.requests / retry_after)
        else:
            rate *= 0.5 if since < 2.0 else 0.8
            if since < math.inf and admitted / since < rate:
                # What the server admitted since the last decrease, cooldown
                # included, is what it can take: a token bucket refills at
                # that rate.  Straight there, not by halving step after step.
                rate = admitted / since
        group.adaptive_rate = max(rate, 1.0 / MINUTE)
        group.next_adaptive_slot = now

    def _finish(self, reservation: Reservation) -> _Group | None:
        if self._live.pop(reservation.seq, None) is None:
            return None  # already settled or released: never account twice
        group = self._groups[reservation.group]
        group.in_flight -= 1
        cost = reservation.cost
        for dim in group.dim_list:
            dim.in_flight -= cost.tokens if dim.counts_tokens else cost.requests
        return group

    def _apply_headers(
        self,
        group: _Group,
        reservation: Reservation,
        headers: RateLimitHeaders | None,
        now: float,
        *,
        served: bool = True,
    ) -> set[str]:
        applied: set[str] = set()
        if headers is None:
            return applied
        rpm, tpm = group.minute_dims
        for dim, limit, remaining, reset in (
            (
                rpm,
                headers.limit_requests,
                headers.remaining_requests,
                headers.reset_requests,
            ),
            (
                tpm,
                headers.limit_tokens,
                headers.remaining_tokens,
                headers.reset_tokens,
            ),
        ):
            if limit is None and remaining is None and reset is None:
                continue
            dim_name = dim.name
            dim.refill(now)
            if limit is not None and limit > 0:
                dim.limit = float(limit) if dim.configured is None else min(dim.configured, limit)
            offset = 4 if dim.counts_tokens else 0
            mark = reservation.marks[offset : offset + 4]
            if not served:
                need = dim.need(reservation.cost)
                # A 429 is not charged (the caller already returned the cost):
                # compare as if this request had never been granted.
                mark = (mark[0] + need, mark[1] - need, mark[2], mark[3])
            if (
                remaining is not None
                and dim.mode is not RefillMode.SUBWINDOW
                and not self._shared
                and (served or math.isinf(mark[0]))
            ):
                # A 429's own snapshot is taken as ground truth by rate_limited().
                may_raise = dim.configured is None or (
                    limit is not None and limit <= dim.configured
                )
                if reservation.seq < dim.applied_seq:
                    may_raise = False
                else:
                    dim.applied_seq = reservation.seq
                self._correct(dim, mark, float(remaining), may_raise=may_raise)
            if reset is not None and dim.limit is not None:
                was_continuous = dim.mode is RefillMode.CONTINUOUS
                self._learn_mode(dim, remaining, reset, now)
                if was_continuous and dim.mode is RefillMode.STEP and remaining is not None:
                    # A fixed window gave nothing back since it began, whatever
                    # the book refilled as a bucket meanwhile (e.g. while the
                    # probe was out): start from the server's count, less what
                    # was granted after this request.
                    dim.level = min(dim.level, remaining - (dim.granted_total - mark[1]))
            if dim.limit is not None:
                capacity = dim.limit if dim.mode is not RefillMode.SUBWINDOW else dim.limit / 60
                if dim.level > capacity:
                    dim.level = capacity  # also ends an infinite level
            if remaining is not None:
                applied.add(dim_name)
        return applied

    @staticmethod
    def _give_back(group: _Group, reservation: Reservation, now: float) -> None:
        """Return a permit the server never counted, less what came back meanwhile.

        Refill the level could not hold (it was at the limit) or a window's
        reset may already have restored this permit's share: adding it again
        would let the book run ahead of the server.  What the dimension
        discarded since the grant is taken off what is returned (all of it,
        conservatively, when several permits were out).
        """
        overflows = reservation.overflows
        for index, dim in enumerate(group.dim_list):
            dim.refill(now)
            need = dim.need(reservation.cost)
            returned = need
            if index < len(overflows):
                returned = max(0.0, need - (dim.overflow - overflows[index]))
            dim.level += returned
            dim.granted_total -= need
            capacity = dim.capacity
            if capacity is not None:
                dim.level = min(dim.level, capacity)

    @staticmethod
    def _correct(
        dim: _Dimension,
        mark: tuple[float, ...],  # one dimension's four marks (see Reservation.marks)
        remaining: float,
        *,
        may_raise: bool,
    ) -> None:
        level_after, granted_then, corrections_then, out_before = mark
        if math.isinf(level_after):
            if math.isinf(dim.level):
                # First sight of this limit: the server's remaining, less what
                # was granted after this request (it reached the server later).
                new_level = remaining - (dim.granted_total - granted_then)
                dim.corrections += new_level
                dim.level = new_level
            return  # granted before the limit was known: nothing to compare with
        # The server may take its snapshot when the request arrived (then it
        # should match the level right after this grant) or when it answered
        # (then it should match the level now).  Only an error both readings
        # agree on is corrected, by the smaller of the two.
        error_at_grant = remaining - level_after - (dim.corrections - corrections_then)
        if error_at_grant > 0:
            # Permits granted before this one and still out when it was
            # granted may reach the server after it (answers and uploads come
            # back out of order): its snapshot does not count them yet.  Only
            # a surplus beyond all of them is real.
            error_at_grant = max(0.0, error_at_grant - out_before)
        error_now = remaining - dim.level
        if error_now > 0:
            # Permits still in flight may not have reached the server yet: its
            # remaining does not count them, the book does.  Net of them, as
            # far as raising goes (a slow upload can hold many).
            error_now = max(0.0, error_now - dim.in_flight)
        if (error_at_grant > 0) != (error_now > 0):
            return
        error = min(error_at_grant, error_now, key=abs)
        if abs(error) < 2.0:
            # One or two either way is the noise of requests crossing the
            # snapshot; taking only the downward half of it drifts the level
            # low and leaves capacity unspent.
            return
        if error > 0:
            if not may_raise:
                return  # the user chose less than the server allows: never raise
            # Requests granted after the server's snapshot but not yet arrived
            # make both readings of a bucket look a little high in steady
            # state; raising on that noise would overshoot.  Only a clear
            # surplus (refunds the server counted, a limit larger than known)
            # is worth taking.  A fixed window has no refill to blur the
            # readings, and the reading now is net of everything in flight:
            # its surplus is real (e.g. what the switch to a window held back
            # for requests the server had in fact already counted).
            if (
                dim.limit is not None
                and dim.mode is RefillMode.CONTINUOUS
                and error < max(2.0, 0.01 * dim.limit)
            ):
                return
        dim.level += error
        dim.corrections += error

    def _learn_mode(self, dim: _Dimension, remaining: int | None, reset: float, now: float) -> None:
        limit = dim.limit
        if remaining is None or limit is None:
            return
        # A server enforcing per-second sub-windows reports at most a 60th of
        # the limit as remaining, with a reset within a second.  A token bucket
        # or a fixed window reports more than that at least once (the probe).
        share = limit / 60
        if remaining > share + 1:
            dim.beyond_subwindow_seen = True
        elif reset <= 1.05 and not dim.beyond_subwindow_seen:
            dim.subwindow_seen = True
        if dim.subwindow_seen and not dim.beyond_subwindow_seen:
            if dim.mode is not RefillMode.SUBWINDOW:
                dim.mode = RefillMode.SUBWINDOW
                dim.level = min(dim.level, float(remaining))
                dim.full_at = now + reset
            elif dim.full_at is None or now < dim.full_at:
                # Later in the same window: the end can only be later (our
                # receipt time runs behind the server's clock by the latency).
                dim.full_at = max(dim.full_at or now, now + reset)
            return
        bucket_reset = max(0.0, (limit - remaining) / (limit / dim.window))  # over the rate
        tolerance = 0.25 + 0.02 * dim.window
        if dim.mode is RefillMode.CONTINUOUS and reset > bucket_reset + tolerance:
            dim.mode = RefillMode.STEP
        if dim.mode is RefillMode.STEP:
            dim.full_at = now + reset

    # -- shared quota ---------------------------------------------------------

    def add_lease(
        self, group_name: str, *, requests: float, tokens: float, expires_at: float, now: float
    ) -> None:
        """Add capacity leased from the shared quota, usable until ``expires_at``.

        Capacity left from an earlier lease that has not expired is kept, and
        the whole pool then lasts until the later expiry.
        """
        group = self._group(group_name, now)
        if now >= group.lease_expires_at:
            group.lease_requests = group.lease_tokens = 0.0
        group.lease_requests += requests
        group.lease_tokens += tokens
        group.lease_expires_at = max(group.lease_expires_at, expires_at)

    def add_pace_claim(self, group_name: str, start: float, end: float, now: float) -> None:
        """Pace the group's next grants within ``[start, end)`` of a shared schedule.

        The stretch replaces what was left of the last one (a group asks for
        a new stretch only when the last has no room left).
        """
        group = self._group(group_name, now)
        group.claim_next = start
        group.claim_end = end

    def take_back_lease(self, group_name: str, now: float) -> tuple[float, float]:
        """Empty the group's lease pool; return the unused (requests, tokens).

        For handing capacity back to the shared quota when the group is idle.
        """
        group = self._group(group_name, now)
        if now >= group.lease_expires_at:
            unused = (0.0, 0.0)
        else:
            unused = (max(0.0, group.lease_requests), max(0.0, group.lease_tokens))
        group.lease_requests = group.lease_tokens = 0.0
        group.lease_expires_at = -math.inf
        return unused

    def lease_state(self, group_name: str, now: float) -> tuple[float, float, float]:
        """(requests, tokens, expires_at) left in the group's lease pool."""
        group = self._group(group_name, now)
        if now >= group.lease_expires_at:
            return (0.0, 0.0, group.lease_expires_at)
        return (group.lease_requests, group.lease_tokens, group.lease_expires_at)

    def set_share(self, group_name: str, share: float, now: float) -> None:
        """Pace the group at ``share`` (0 < share <= 1) of its limits (processes sharing them)."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share!r}")
        self._group(group_name, now).share = share

    def cool_down(self, group_name: str, until: float, now: float, *, refused: bool = True) -> None:
        """Hold the group until ``until``.

        ``refused`` (default True): a refusal another process observed, which
        may reveal a finer window than declared; False: a pause with nothing
        learned from it (a pool member that could not be reached).
        """
        group = self._group(group_name, now)
        group.cooldown_until = max(group.cooldown_until, until)
        if refused and not group.proven and not group.paced:
            # Another process was refused before this one saw the server admit
            # more than a sub-window could: it may be a finer window than
            # declared, which the other found first.  Pace (at this
            # process's share) rather than burst into it again.
            group.paced = True
            group.next_slot = max(group.next_slot, until)

    def learned_limits(self, group_name: str, now: float) -> tuple[float | None, float | None]:
        """The (requests, tokens) per-minute limits the group knows now."""
        rpm, tpm = self._group(group_name, now).minute_dims
        return (rpm.limit, tpm.limit)

    def learn_limits(
        self, group_name: str, now: float, *, rpm: float | None, tpm: float | None
    ) -> None:
        """Adopt per-minute limits another process learned (configured ones win)."""
        group = self._group(group_name, now)
        for dim, value in zip(group.minute_dims, (rpm, tpm), strict=True):
            if value is None or value <= 0 or dim.configured is not None:
                continue
            if dim.limit is None:
                dim.level = float(value)
            dim.limit = float(value)
            dim.level = min(dim.level, dim.capacity_under(dim.limit))

    # -- introspection --------------------------------------------------------

    def in_flight(self, group_name: str | None = None) -> int:
        """Reservations not yet settled or released (in one group, or in all)."""
        if group_name is None:
            return len(self._live)
        group = self._groups.get(group_name)
        return 0 if group is None else group.in_flight

    def request_rate(self) -> float | None:
        """Sum of the known per-minute request rates (requests/s) of all groups.

        None when some group's request limit is still unknown.
        """
        total = 0.0
        for group in self._groups.values():
            rate = group.dims["requests_per_minute"].rate
            if rate is None:
                return None
            total += rate
        return total or None

    def requests_available(self, now: float) -> float:
        """Requests every group could send right now (the sum of their request levels).

        What a burst may put in flight at once; infinite while a group's
        request limit is unknown.
        """
        total = 0.0
        for group in self._groups.values():
            dim = group.dims["requests_per_minute"]
            dim.refill(now)
            if dim.limit is None:
                return math.inf
            total += max(0.0, dim.level)
        return total

    def group_states(self, now: float | None) -> tuple[GroupState, ...]:
        """A :class:`GroupState` for every group seen so far.  Changes nothing.

        Safe to call from outside the limiter task between its steps: levels
        are projected to ``now`` without refilling the book (``None``: as last
        brought up to date).
        """
        states = []
        for group in self._groups.values():
            dimensions = {}
            for dim in group.dim_list:
                level, limit = dim.level, dim.limit
                if now is None:
                    pass
                elif dim.mode is RefillMode.CONTINUOUS and limit is not None and now > dim.updated:
                    level = min(limit, level + (now - dim.updated) * limit / dim.window)
                elif dim.full_at is not None and now >= dim.full_at and dim.capacity is not None:
                    level = max(level, dim.capacity)
                dimensions[dim.name] = DimensionState(
                    limit=dim.limit, level=level, mode=dim.mode.value, full_at=dim.full_at
                )
            adaptive = group.minute_dims[0].limit is None and group.seen_response
            states.append(
                GroupState(
                    name=group.name,
                    dimensions=dimensions,
                    paced=group.paced,
                    proven=group.proven,
                    cooldown_until=group.cooldown_until,
                    window=group.window if adaptive and group.adaptive_rate is None else None,
                    adaptive_rate=group.adaptive_rate if adaptive else None,
                    in_flight=group.in_flight,
                    rate_limited=group.rate_limited,
                )
            )
        return tuple(states)

    def snapshot(self, group_name: str, now: float) -> dict[str, dict[str, object]]:
        """Plain-data view of a group's dimensions (for statistics and debugging)."""
        group = self._group(group_name, now)
        view: dict[str, dict[str, object]] = {}
        for dim in group.dims.values():
            dim.refill(now)
            view[dim.name] = {
                "limit": dim.limit,
                "level": dim.level,
                "mode": dim.mode.value,
                "full_at": dim.full_at,
            }
        view["group"] = {
            "paced": group.paced,
            "cooldown_until": group.cooldown_until,
            "in_flight": group.in_flight,
            "rate_limited": group.rate_limited,
            "proven": group.proven,
            "window": group.window if group.adaptive_rate is None else None,
            "adaptive_rate": group.adaptive_rate,
        }
        return view


def _unit(dim_name: str) -> str:
    return dim_name.split("_", 1)[0]


def _per(window: float) -> str:
    return "minute" if window == MINUTE else "day"
