"""The limiter task: the only owner of the quota book.

Workers talk to it through one inbox.  ``acquire`` sends a waiter and
parks until the limiter answers it (a reservation, or a refusal); the answer is
delivered by rescheduling the parked task with it, which is what a 1-slot reply
channel does inside, without allocating a channel per request (that alone cost
more than the rest of a permit).  After the response the worker reports the
outcome with
``settle_nowait`` / ``rate_limited_nowait`` / ``release_nowait``.  The limiter
grants in FIFO order per limit group, never polls: it sleeps until the earliest
absolute moment the head of some queue can go (or a message arrives) and at each
wake-up grants every permit that fits.

The inbox is a plain deque, unbounded on purpose: each worker has at most one
message outstanding, so its length is bounded by the number of workers, and
reports must never block (they are sent from cleanup paths).  A message wakes
the limiter task only when it is parked; a trio memory channel did the same
with a task switch of its own and KI-protected calls, about a quarter of a
microsecond more per message, two messages per request.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping

import attrs
import outcome
import trio

from engine._budget import Budget, BudgetExhaustedError, OverBudgetError
from engine._errors import FatalError, RequestTooLargeError, RunStoppedError
from engine._headers import RateLimitHeaders
from engine._quota import Cost, Decision, GroupState, QuotaBook, Reservation, TooLarge, Wait

__all__ = ["ENDPOINT_RETIRED", "LATENCY_BUCKETS", "Limiter", "LimiterStatistics"]

#: The error code of a pooled request refused because every member it may go
#: to was retired (a request pinned to a retired member): unsent, and not sent
#: again in this run.
ENDPOINT_RETIRED = "endpoint_retired"

#: Upper bounds (seconds) of the latency histogram's buckets: Prometheus's
#: default ones, plus 30 and 60 s for long completions.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0
)  # fmt: skip


class _State(enum.Enum):
    PENDING = "pending"
    GRANTED = "granted"
    CANCELLED = "cancelled"


@attrs.define(slots=True, eq=False)
class _Waiter:
    group: str
    cost: Cost
    task: trio.lowlevel.Task
    state: _State = _State.PENDING

    def abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        # Runs only while the limiter has not answered yet (same thread), so a
        # cancelled waiter never holds a reservation.
        self.state = _State.CANCELLED
        return trio.lowlevel.Abort.SUCCEEDED


@attrs.define(slots=True, eq=False)
class _PoolWaiter(_Waiter):
    """A waiter any of several pool members may serve: ``(member, member group)`` each.

    ``group`` is only the queue it waits in (FIFO with the others of its
    limit group); the permit is for the chosen member's group.
    """

    choices: tuple[tuple[str, str], ...] = ()


# The messages below are created once or twice per request, on the hot path:
# plain slotted classes, which build about 3x faster than frozen ones.  They
# are never mutated.


@attrs.define(slots=True, eq=False)
class _Settle:
    reservation: Reservation
    headers: RateLimitHeaders | None
    used_tokens: int | None
    latency: float | None


@attrs.define(slots=True, eq=False)
class _SettleSpent(_Settle):
    """A settle that says what the request cost (a client with a spending cap)."""

    spent: float


@attrs.define(slots=True, eq=False)
class _RateLimited:
    reservation: Reservation
    headers: RateLimitHeaders | None
    retry_after: float | None
    limit_type: str | None


@attrs.define(slots=True, eq=False)
class _Release:
    reservation: Reservation


@attrs.frozen
class _Stop:
    error: FatalError


@attrs.frozen
class _Retire:
    member: str
    reason: str


@attrs.frozen
class _Lease:
    group: str
    requests: float
    tokens: float
    expires_at: float


@attrs.frozen
class _CoolDown:
    group: str
    until: float
    refused: bool = True


@attrs.frozen
class _PaceClaim:
    group: str
    start: float
    end: float


@attrs.frozen
class _Share:
    group: str
    share: float


@attrs.frozen
class _LearnLimits:
    group: str
    rpm: float | None
    tpm: float | None


@attrs.frozen
class _TakeBack:
    group: str
    reply: trio.MemorySendChannel[tuple[float, float]]


@attrs.frozen
class _LeaseState:
    group: str
    reply: trio.MemorySendChannel[tuple[float, float, float]]


@attrs.frozen
class LimiterStatistics:
    """A snapshot of the limiter's counters.

    Attributes:
        granted: permits granted so far.
        waiting: acquires queued, not yet granted.
        in_flight: permits granted and not yet settled or released.
        rate_limited: 429 ``rate_limit_exceeded`` responses reported.
        too_large: requests refused because their cost exceeds a limit.
        tokens_reserved: tokens reserved by granted permits (estimates).
        tokens_used: real tokens reported by settled responses.
        in_flight_cap: the current bound on permits in flight.
        groups: each limit group's rate control (:class:`~engine.GroupState`:
            limits, refill modes, pacing, cooldown, and the adaptive window
            or rate used while no limit is known).
        max_cost: the spending cap in dollars (None: no cap).
        spent: dollars settled so far by the answers' usage (0 without a cap).
        cost_reserved: worst-case dollars held by permits in flight.
        latency_counts: answered attempts (any status but 429) per latency
            bucket: ``latency_counts[i]`` took at most ``LATENCY_BUCKETS[i]``
            seconds and more than the bound before; the last, longer than all.
            Empty unless :meth:`Limiter.count_latencies` was called (a client
            opened with ``latency_histogram=True``, or served by
            :mod:`engine.metrics`).
        latency_sum: their latencies added up (seconds).
        rate_limited_by: 429s per limit the server named (``"requests"``,
            ``"tokens"``, or ``"unknown"`` when it did not say).
        granted_by_member: a pool's permits per member (empty without a pool).
    """

    granted: int
    waiting: int
    in_flight: int
    rate_limited: int
    too_large: int
    tokens_reserved: int
    tokens_used: int
    in_flight_cap: int
    groups: tuple[GroupState, ...] = ()
    max_cost: float | None = None
    spent: float = 0.0
    cost_reserved: float = 0.0
    latency_counts: tuple[int, ...] = ()
    latency_sum: float = 0.0
    rate_limited_by: Mapping[str, int] = attrs.field(factory=dict)
    granted_by_member: Mapping[str, int] = attrs.field(factory=dict)


def _now_or_none() -> float | None:
    """The trio clock, or None outside a trio run (statistics read after it ended)."""
    try:
        return trio.current_time()
    except RuntimeError:
        return None


class Limiter:
    """Grants permits from a :class:`~engine._quota.QuotaBook` to worker tasks.

    Args:
        book: the quota book; from now on only :meth:`run` touches it.
        max_in_flight: the most permits in flight at once (default 512).
        auto_in_flight: when True (default False), the bound adapts to what
            the known request rates need at the observed latency (twice the
            rate times the latency, plus 8) plus the requests the quota holds
            right now (so a burst goes at once), never above ``max_in_flight``.

    Shared quotas (several processes on one key) plug in with three
    callbacks, each called synchronously from the limiter task and expected to
    return at once (e.g. by ``send_nowait`` to the caller's own task):

    * ``on_lease_needed(group, cost)``: a waiter of ``group`` needs leased
      capacity (answer later with :meth:`lease_nowait`);
    * ``on_cooldown(group, until)``: a 429 put ``group`` in cooldown until
      ``until`` (trio clock), worth telling the other processes;
    * ``on_limits_learned(group, rpm, tpm)``: headers taught new limits;
    * ``on_pace_needed(group, seconds)``: a waiter of ``group`` needs a
      stretch of the shared pace schedule (answer later with
      :meth:`pace_nowait`; only asked of a ``QuotaBook(shared_pace=True)``).

    ``budget`` (default None) caps spending across every group: a permit is
    granted only if its ``cost.dollars`` fits beside what is spent and
    reserved; a request that could take spending alone over the cap stops
    the limiter with :class:`~engine.BudgetExhaustedError` (see
    :attr:`budget_error`), and one whose worst case exceeds the whole cap
    fails with :class:`~engine.OverBudgetError`.

    ``weights`` (default None) makes the limiter a pool's: member name ->
    weight.  A pooled acquire (``choices``) is granted by the first member,
    in order of permits granted per unit of weight, whose group can take it
    now; a member retired (:meth:`retire_nowait`) is skipped, and a waiter
    left with no member is refused with :class:`~engine.RunStoppedError`.

    Call :meth:`run` in a nursery (``await nursery.start(limiter.run)``); it
    returns after :meth:`close`.
    """

    def __init__(
        self,
        book: QuotaBook,
        *,
        max_in_flight: int = 512,
        auto_in_flight: bool = False,
        on_lease_needed: Callable[[str, Cost], None] | None = None,
        on_cooldown: Callable[[str, float], None] | None = None,
        on_limits_learned: Callable[[str, float | None, float | None], None] | None = None,
        on_pace_needed: Callable[[str, float], None] | None = None,
        budget: Budget | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        self._book = book
        self._budget = budget
        self._weights = weights
        self._member_granted: dict[str, int] = dict.fromkeys(weights or (), 0)
        #: Retired pool members -> why.
        self._retired: dict[str, str] = {}
        self.budget_error: BudgetExhaustedError | None = None
        self._on_pace_needed = on_pace_needed
        self._on_lease_needed = on_lease_needed
        self._on_cooldown = on_cooldown
        self._on_limits_learned = on_limits_learned
        self._known_limits: dict[str, tuple[float | None, float | None]] = {}
        self._inbox: deque[object] = deque()
        #: The limiter task while it is parked waiting for a message (else None).
        self._parked: trio.lowlevel.Task | None = None
        self._closed = False
        self._queues: dict[str, deque[_Waiter]] = {}
        self._max_in_flight = max_in_flight
        self._auto = auto_in_flight
        self._cap = 8 if auto_in_flight else max_in_flight
        self._latency = 0.0
        self._stopped: FatalError | None = None
        self._granted = 0
        self._rate_limited = 0
        self._too_large = 0
        self._tokens_reserved = 0
        self._tokens_used = 0
        self._in_flight = 0
        # None until count_latencies(): the histogram costs the hot path only when wanted.
        self._latency_counts: list[int] | None = None
        self._latency_sum = 0.0
        self._rate_limited_by: dict[str, int] = {}

    # -- worker side ----------------------------------------------------------

    async def acquire(
        self, group: str, cost: Cost, choices: tuple[tuple[str, str], ...] | None = None
    ) -> Reservation:
        """Wait for a permit for ``cost`` in ``group``.  Checkpoints.

        ``choices`` (a pool's limiter only): the (member, member group) pairs
        that may serve it; ``group`` is then the queue it waits in, and the
        reservation's group is the chosen member's.

        Raises:
            RequestTooLargeError: the cost can never fit the group's limits
                (every choice's, in a pool).
            RunStoppedError: the limiter was stopped by a fatal error, or
                every member of ``choices`` was retired (code
                :data:`ENDPOINT_RETIRED`).
        A caller cancelled while waiting leaves the queue and holds nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        task = trio.lowlevel.current_task()
        waiter = (
            _Waiter(group, cost, task)
            if choices is None
            else _PoolWaiter(group, cost, task, choices=choices)
        )
        if self._closed:
            raise RunStoppedError("the client is closed")
        self._report(waiter)
        answer = await trio.lowlevel.wait_task_rescheduled(waiter.abort)
        if isinstance(answer, Reservation):
            return answer
        raise answer

    def settle_nowait(
        self,
        reservation: Reservation,
        *,
        headers: RateLimitHeaders | None = None,
        used_tokens: int | None = None,
        latency: float | None = None,
        spent: float | None = None,
    ) -> None:
        """Report a finished request (any status but a 429 rate limit).

        ``spent``: the dollars it cost, against the budget (None, the
        default: its whole worst case, for an answer whose usage is unknown).
        """
        if spent is None:
            self._report(_Settle(reservation, headers, used_tokens, latency))
        else:
            self._report(_SettleSpent(reservation, headers, used_tokens, latency, spent))

    def rate_limited_nowait(
        self,
        reservation: Reservation,
        *,
        headers: RateLimitHeaders | None = None,
        retry_after: float | None = None,
        limit_type: str | None = None,
    ) -> None:
        """Report a 429 ``rate_limit_exceeded``: the group cools down."""
        self._report(_RateLimited(reservation, headers, retry_after, limit_type))

    def release_nowait(self, reservation: Reservation) -> None:
        """Return a permit whose request never reached the server."""
        self._report(_Release(reservation))

    def stop_nowait(self, error: FatalError) -> None:
        """Refuse every waiting and future acquire with ``error`` (e.g. insufficient_quota)."""
        self._report(_Stop(error))

    def retire_nowait(self, member: str, reason: str) -> None:
        """Take pool member ``member`` out of every later grant (``reason`` says why)."""
        self._report(_Retire(member, reason))

    def lease_nowait(
        self, group: str, *, requests: float, tokens: float, expires_at: float
    ) -> None:
        """Add capacity leased from a shared quota (``expires_at`` on the trio clock)."""
        self._report(_Lease(group, requests, tokens, expires_at))

    def cool_down_nowait(self, group: str, until: float, *, refused: bool = True) -> None:
        """Hold ``group`` until ``until`` (trio clock).

        ``refused`` (default True): a server's refusal seen elsewhere (another
        process's 429), which also tells the book to pace; False: only a pause
        (a pool member that could not be reached).
        """
        self._report(_CoolDown(group, until, refused))

    def pace_nowait(self, group: str, start: float, end: float) -> None:
        """Pace ``group`` within ``[start, end)`` (trio clock) of the shared schedule."""
        self._report(_PaceClaim(group, start, end))

    def share_nowait(self, group: str, share: float) -> None:
        """Pace ``group`` at ``share`` of its limits (1 / the processes sharing the quota)."""
        self._report(_Share(group, share))

    def learn_limits_nowait(self, group: str, *, rpm: float | None, tpm: float | None) -> None:
        """Adopt per-minute limits another process learned (configured ones win)."""
        self._report(_LearnLimits(group, rpm, tpm))

    async def take_back_lease(self, group: str) -> tuple[float, float]:
        """Empty ``group``'s lease pool and return the unused (requests, tokens).

        Checkpoints.  Returns (0, 0) if the limiter has stopped.
        """
        if self._closed:
            return (0.0, 0.0)
        send, receive = trio.open_memory_channel[tuple[float, float]](1)
        self._report(_TakeBack(group, send))
        async with receive:
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                return (0.0, 0.0)

    async def lease_state(self, group: str) -> tuple[float, float, float]:
        """(requests, tokens, expires_at) left in ``group``'s lease pool (trio clock).

        Checkpoints.  Returns (0, 0, -inf) if the limiter has stopped.
        """
        if self._closed:
            return (0.0, 0.0, -math.inf)
        send, receive = trio.open_memory_channel[tuple[float, float, float]](1)
        self._report(_LeaseState(group, send))
        async with receive:
            try:
                return await receive.receive()
            except trio.EndOfChannel:
                return (0.0, 0.0, -math.inf)

    def count_latencies(self) -> None:
        """From now on, count settled latencies per :data:`LATENCY_BUCKETS` (for metrics)."""
        if self._latency_counts is None:
            self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)

    def close(self) -> None:
        """End :meth:`run` once it has handled the messages already sent."""
        self._closed = True
        self._wake()

    def _report(self, message: object) -> None:
        if self._closed:
            return  # the limiter is gone; nothing is left to account
        self._inbox.append(message)
        if self._parked is not None:
            self._wake()

    def _wake(self) -> None:
        task = self._parked
        if task is not None:
            self._parked = None  # rescheduled once: a second message must not do it again
            trio.lowlevel.reschedule(task)

    def _abort_wait(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        # The deadline passed (or the task is cancelled): it is no longer parked.
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _wait(self, deadline: float) -> None:
        """Park until a message (or :meth:`close`) wakes the task, or until ``deadline``."""
        self._parked = trio.lowlevel.current_task()
        if deadline == math.inf:
            await trio.lowlevel.wait_task_rescheduled(self._abort_wait)
        else:
            with trio.move_on_at(deadline):
                await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def statistics(self) -> LimiterStatistics:
        """Return a :class:`LimiterStatistics` snapshot (does not checkpoint)."""
        return LimiterStatistics(
            granted=self._granted,
            waiting=sum(1 for q in self._queues.values() for w in q if w.state is _State.PENDING),
            in_flight=self._in_flight,
            rate_limited=self._rate_limited,
            too_large=self._too_large,
            tokens_reserved=self._tokens_reserved,
            tokens_used=self._tokens_used,
            in_flight_cap=self._cap,
            groups=self._book.group_states(_now_or_none()),
            max_cost=None if self._budget is None else self._budget.cap,
            spent=0.0 if self._budget is None else self._budget.spent,
            cost_reserved=0.0 if self._budget is None else self._budget.reserved,
            latency_counts=() if self._latency_counts is None else tuple(self._latency_counts),
            latency_sum=self._latency_sum,
            rate_limited_by=dict(self._rate_limited_by),
            granted_by_member=dict(self._member_granted),
        )

    # -- the task -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The limiter task.  Returns once :meth:`close` was called and drained."""
        task_status.started()
        plain = self._budget is None and self._weights is None
        grant_ready = self._grant_ready if plain else self._grant_ready_general
        deadline = math.inf
        inbox = self._inbox
        handle = self._handle
        clock_now = trio.lowlevel.current_clock().current_time  # trio.current_time, 2 calls fewer
        try:
            while True:
                if not inbox:
                    if self._closed:
                        break
                    await self._wait(deadline)
                now = clock_now()
                while inbox:
                    handle(inbox.popleft(), now)
                deadline = grant_ready(now)
        finally:
            self._closed = True
            self._parked = None
        self._fail_waiters(RunStoppedError("the client is closed"))

    def _handle(self, message: object, now: float) -> None:
        book = self._book
        if isinstance(message, _Waiter):
            if self._stopped is not None:
                self._answer(message, RunStoppedError(self._stopped.message))
                return
            queue = self._queues.get(message.group)
            if queue is None:
                queue = self._queues[message.group] = deque()
            queue.append(message)
        elif isinstance(message, _Settle):
            self._in_flight -= 1
            if message.used_tokens is not None:
                self._tokens_used += message.used_tokens
            if message.latency is not None:
                counts = self._latency_counts
                if counts is not None:
                    counts[bisect_left(LATENCY_BUCKETS, message.latency)] += 1
                    self._latency_sum += message.latency
                self._latency = (
                    message.latency
                    if not self._latency
                    else (0.9 * self._latency + 0.1 * message.latency)
                )
            book.settle(
                message.reservation, now, headers=message.headers, used_tokens=message.used_tokens
            )
            if self._budget is not None:
                worst = message.reservation.cost.dollars
                spent = message.spent if isinstance(message, _SettleSpent) else worst
                self._budget.settle(worst, spent)
            if self._auto:
                self._update_cap(now)
            if self._on_limits_learned is not None and message.headers is not None:
                group = message.reservation.group
                learned = book.learned_limits(group, now)
                if learned != self._known_limits.get(group):
                    self._known_limits[group] = learned
                    self._on_limits_learned(group, *learned)
        elif isinstance(message, _RateLimited):
            self._in_flight -= 1
            self._rate_limited += 1
            limit = message.limit_type or "unknown"
            self._rate_limited_by[limit] = self._rate_limited_by.get(limit, 0) + 1
            until = book.rate_limited(
                message.reservation,
                now,
                headers=message.headers,
                retry_after=message.retry_after,
                limit_type=message.limit_type,
            )
            if self._budget is not None:
                self._budget.refund(message.reservation.cost.dollars)  # a 429 is not billed
            if self._on_cooldown is not None:
                self._on_cooldown(message.reservation.group, until)
        elif isinstance(message, _Release):
            self._in_flight -= 1
            book.release(message.reservation, now)
            if self._budget is not None:
                self._budget.refund(message.reservation.cost.dollars)
        elif isinstance(message, _Lease):
            book.add_lease(
                message.group,
                requests=message.requests,
                tokens=message.tokens,
                expires_at=message.expires_at,
                now=now,
            )
        elif isinstance(message, _CoolDown):
            book.cool_down(message.group, message.until, now, refused=message.refused)
        elif isinstance(message, _Share):
            book.set_share(message.group, message.share, now)
        elif isinstance(message, _PaceClaim):
            book.add_pace_claim(message.group, message.start, message.end, now)
        elif isinstance(message, _LearnLimits):
            book.learn_limits(message.group, now, rpm=message.rpm, tpm=message.tpm)
            self._known_limits[message.group] = book.learned_limits(message.group, now)
        elif isinstance(message, _TakeBack):
            with message.reply:
                message.reply.send_nowait(book.take_back_lease(message.group, now))
        elif isinstance(message, _LeaseState):
            with message.reply:
                message.reply.send_nowait(book.lease_state(message.group, now))
        elif isinstance(message, _Retire):
            self._retired.setdefault(message.member, message.reason)
        elif isinstance(message, _Stop):
            if self._stopped is None:
                self._stopped = message.error
                self._fail_waiters(RunStoppedError(message.error.message, code="run_stopped"))

    @staticmethod
    def _answer(waiter: _Waiter, answer: object) -> None:
        waiter.state = _State.GRANTED
        trio.lowlevel.reschedule(waiter.task, outcome.Value(answer))

    def _fail_waiters(self, error: Exception) -> None:
        for queue in self._queues.values():
            while queue:
                waiter = queue.popleft()
                if waiter.state is _State.PENDING:
                    self._answer(waiter, error)

    def _grant_ready(self, now: float) -> float:
        """Grant every head that fits; return the next moment worth waking at."""
        book = self._book
        wake = math.inf
        for queue in self._queues.values():
            while queue:
                if self._in_flight >= self._cap:
                    return wake  # a settle will wake us
                waiter = queue[0]
                if waiter.state is not _State.PENDING:
                    queue.popleft()
                    continue
                decision = book.decide(waiter.group, waiter.cost, now)
                if isinstance(decision, Wait):
                    if decision.until is not None:
                        wake = min(wake, decision.until)
                    if decision.lease or decision.pace:
                        self._ask_for_capacity(waiter.group, waiter.cost, decision)
                    break
                queue.popleft()
                if isinstance(decision, TooLarge):
                    self._too_large += 1
                    self._answer(waiter, RequestTooLargeError(decision.message))
                    continue
                self._answer(waiter, decision)
                self._in_flight += 1
                self._granted += 1
                self._tokens_reserved += decision.cost.tokens
        return wake

    def _grant_ready_general(self, now: float) -> float:
        """:meth:`_grant_ready` for a limiter with a budget or a pool.

        With a budget, a head waits until its dollars fit; a pooled head is
        decided by :meth:`_decide_pooled`.  A separate loop, so that a plain
        limiter pays for neither.
        """
        book = self._book
        budget = self._budget
        wake = math.inf
        for queue in self._queues.values():
            while queue:
                if self._in_flight >= self._cap:
                    return wake  # a settle will wake us
                waiter = queue[0]
                if waiter.state is not _State.PENDING:
                    queue.popleft()
                    continue
                if budget is not None and not budget.fits(waiter.cost.dollars):
                    if self._over_budget(budget, waiter):
                        queue.popleft()
                        continue
                    if self._stopped is not None:
                        return math.inf  # the budget is spent: every waiter was answered
                    break  # a settle frees reserved dollars and wakes us
                decision: Decision | RunStoppedError
                if type(waiter) is _PoolWaiter:
                    decision = self._decide_pooled(waiter, now)
                else:
                    decision = book.decide(waiter.group, waiter.cost, now)
                if isinstance(decision, Wait):
                    if decision.until is not None:
                        wake = min(wake, decision.until)
                    if type(waiter) is not _PoolWaiter:
                        self._ask_for_capacity(waiter.group, waiter.cost, decision)
                    break
                queue.popleft()
                if isinstance(decision, TooLarge):
                    self._too_large += 1
                    self._answer(waiter, RequestTooLargeError(decision.message))
                    continue
                if isinstance(decision, RunStoppedError):
                    self._answer(waiter, decision)
                    continue
                self._answer(waiter, decision)
                self._in_flight += 1
                self._granted += 1
                self._tokens_reserved += decision.cost.tokens
                if budget is not None:
                    budget.reserve(decision.cost.dollars)
        return wake

    def _decide_pooled(self, waiter: _PoolWaiter, now: float) -> Decision | RunStoppedError:
        """Grant a pooled waiter on the first member able to take it now, or say when to look again.

        Members are tried in order of permits granted per unit of weight (the
        least served first), retired ones skipped.  Waits: the earliest moment
        any member could grant (None when none can tell).  Too large only if
        too large for every member; refused when every member is retired.
        """
        book = self._book
        granted = self._member_granted
        weights = self._weights
        assert weights is not None
        retired = self._retired
        live = [choice for choice in waiter.choices if choice[0] not in retired]
        if not live:
            reasons = "; ".join(f"{m}: {retired[m]}" for m, _ in waiter.choices if m in retired)
            return RunStoppedError(
                "no endpoint left for this request: every one it may go to was retired "
                f"({reasons})",
                code=ENDPOINT_RETIRED,
            )
        if len(live) > 1:
            live.sort(key=lambda choice: granted[choice[0]] / weights[choice[0]])
        too_large: TooLarge | None = None
        waiting = False
        until = math.inf  # the earliest moment a member said it could grant
        for member, group in live:
            decision = book.decide(group, waiter.cost, now)
            if isinstance(decision, Wait):
                self._ask_for_capacity(group, waiter.cost, decision)
                waiting = True
                if decision.until is not None and decision.until < until:
                    until = decision.until
                continue
            if isinstance(decision, TooLarge):
                too_large = decision
                continue
            granted[member] += 1
            return decision
        if waiting:
            return Wait(None if until == math.inf else until)
        assert too_large is not None
        return too_large

    def _ask_for_capacity(self, group: str, cost: Cost, decision: Wait) -> None:
        """Ask the shared quota for what a waiting head of ``group`` lacks (lease, pace)."""
        if decision.lease and self._on_lease_needed is not None:
            self._on_lease_needed(group, cost)
        if decision.pace and self._on_pace_needed is not None:
            self._on_pace_needed(group, decision.pace)

    def _over_budget(self, budget: Budget, waiter: _Waiter) -> bool:
        """Answer a waiter that can never fit the budget; True if it was answered alone.

        A worst case above the whole cap fails that request alone
        (:class:`OverBudgetError`).  One that fits the cap but not beside
        what is already spent means the budget is spent: the limiter stops
        granting (every waiter comes back ``run_stopped``; permits in flight
        run on) and returns False.  Otherwise it returns False: the waiter
        waits for permits in flight to settle.
        """
        dollars = waiter.cost.dollars
        if dollars > budget.cap:
            self._too_large += 1
            self._answer(
                waiter,
                OverBudgetError(
                    f"this request's worst-case cost ${dollars:.4f} exceeds the whole "
                    f"spending cap ${budget.cap:g}; lower its max_tokens or raise the cap"
                ),
            )
            return True
        if budget.can_never_fit(dollars) and self._stopped is None:
            budget.exhausted = True
            error = BudgetExhaustedError(
                f"the spending cap ${budget.cap:g} is reached: ${budget.spent:.4f} spent, "
                f"and the next request could cost up to ${dollars:.4f}"
            )
            self.budget_error = error
            self._stopped = error
            self._fail_waiters(RunStoppedError(error.message, code="run_stopped"))
        return False

    def _update_cap(self, now: float) -> None:
        rate = self._book.request_rate()
        if rate is None or math.isinf(rate):
            self._cap = self._max_in_flight
            return
        # Enough to keep the refill rate busy at the observed latency, plus
        # whatever the quota holds right now: a fresh bucket's burst goes at
        # once instead of trickling out at a few times the refill rate.
        burst = min(self._book.requests_available(now), self._max_in_flight)
        want = 2 * rate * self._latency + 8 + burst
        self._cap = max(8, min(self._max_in_flight, math.ceil(want)))
