"""The limiter task, under trio's virtual clock."""

from __future__ import annotations

import functools
import math

import pytest
import trio
import trio.testing

from engine._errors import InsufficientQuotaError, RequestTooLargeError, RunStoppedError
from engine._limiter import Limiter
from engine._quota import Cost, Limits
from engine._quota import QuotaBook as PacedQuotaBook

# These tests are about the limiter task, not the book's burst pacing (tested
# in test_quota.py): they turn it off.
QuotaBook = functools.partial(PacedQuotaBook, burst_pace=math.inf)

ONE = Cost()


async def _probe(limiter: Limiter, group: str = "g") -> None:
    limiter.settle_nowait(await limiter.acquire(group, ONE))


@pytest.fixture
async def limiter_factory(nursery):
    def make(limits, **kwargs) -> Limiter:
        limiter = Limiter(QuotaBook(limits, margin=0.0), **kwargs)
        nursery.start_soon(limiter.run)
        return limiter

    return make


async def test_burst_is_granted_at_once_then_paced_by_refill(limiter_factory, autojump_clock):
    """At 60 RPM: 60 permits at t=0, then one per second on the dot."""
    limiter = limiter_factory(Limits(rpm=60))
    start = trio.current_time()
    await _probe(limiter)
    for _ in range(59):
        await limiter.acquire("g", ONE)
    assert trio.current_time() == start
    await limiter.acquire("g", ONE)
    assert trio.current_time() - start == pytest.approx(1.0)
    await limiter.acquire("g", ONE)
    assert trio.current_time() - start == pytest.approx(2.0)


async def test_permits_are_granted_in_fifo_order(limiter_factory, autojump_clock):
    """Waiters queued behind an exhausted quota are served in arrival order."""
    limiter = limiter_factory(Limits(rpm=60))
    await _probe(limiter)
    for _ in range(59):
        await limiter.acquire("g", ONE)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await limiter.acquire("g", ONE)
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(waiter, i)
            await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4]


async def test_cancelled_waiter_returns_its_place(limiter_factory, autojump_clock):
    """A waiter cancelled in the queue leaves nothing in flight and no reservation."""
    limiter = limiter_factory(Limits(rpm=60))
    await _probe(limiter)
    for _ in range(59):
        limiter.settle_nowait(await limiter.acquire("g", ONE))
    with trio.move_on_after(0.5):
        await limiter.acquire("g", ONE)
    await trio.testing.wait_all_tasks_blocked()
    stats = limiter.statistics()
    assert stats.in_flight == 0 and stats.waiting == 0
    # the refill that was due at t=1 is still available to the next waiter
    await limiter.acquire("g", ONE)
    assert trio.current_time() == pytest.approx(1.0)


async def test_cancelled_waiter_passes_its_turn_to_the_next(limiter_factory, autojump_clock):
    """When the head waiter is cancelled, the next one gets the permit when it is due."""
    limiter = limiter_factory(Limits(rpm=60))
    await _probe(limiter)
    for _ in range(59):
        limiter.settle_nowait(await limiter.acquire("g", ONE))
    granted_at: list[float] = []

    first_scope = trio.CancelScope()

    async def first() -> None:
        with first_scope:
            await limiter.acquire("g", ONE)
            granted_at.append(-1.0)

    async def second() -> None:
        await limiter.acquire("g", ONE)
        granted_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        first_scope.cancel()
    assert granted_at == [pytest.approx(1.0)]
    assert limiter.statistics().in_flight == 1


async def test_too_large_fails_fast_and_others_proceed(limiter_factory, autojump_clock):
    """An oversized request fails at once; the next request is granted."""
    limiter = limiter_factory(Limits(tpm=1000))
    await _probe(limiter)
    with pytest.raises(RequestTooLargeError, match="limit is 1000 tokens per minute"):
        await limiter.acquire("g", Cost(tokens=5000))
    await limiter.acquire("g", Cost(tokens=10))
    assert trio.current_time() == 0
    assert limiter.statistics().too_large == 1


async def test_stop_fails_every_waiter_and_later_acquire(limiter_factory, autojump_clock):
    """After a fatal stop, queued and new acquires raise RunStoppedError."""
    limiter = limiter_factory(Limits(rpm=1))
    await _probe(limiter)
    errors: list[Exception] = []

    async def waiter() -> None:
        try:
            await limiter.acquire("g", ONE)
        except RunStoppedError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        limiter.stop_nowait(InsufficientQuotaError("you exceeded your current quota"))
    assert len(errors) == 1 and "quota" in str(errors[0])
    with pytest.raises(RunStoppedError):
        await limiter.acquire("g", ONE)


async def test_cooling_group_does_not_block_another(limiter_factory, autojump_clock):
    """A 429 on one group leaves another group's permits flowing."""
    limiter = limiter_factory(Limits(rpm=600))
    await _probe(limiter, "a")
    await _probe(limiter, "b")
    reservation = await limiter.acquire("a", ONE)
    limiter.rate_limited_nowait(reservation, retry_after=30.0)
    await limiter.acquire("b", ONE)
    assert trio.current_time() == 0
    await limiter.acquire("a", ONE)
    assert trio.current_time() == pytest.approx(30.0)


async def test_in_flight_cap_holds_grants_until_a_settle(limiter_factory, autojump_clock):
    """With max_in_flight=2 the third acquire waits for a settle."""
    limiter = limiter_factory(None, max_in_flight=2)
    await _probe(limiter)
    first = await limiter.acquire("g", ONE)
    await limiter.acquire("g", ONE)
    got_third = trio.Event()

    async def third() -> None:
        await limiter.acquire("g", ONE)
        got_third.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.testing.wait_all_tasks_blocked()
        assert not got_third.is_set()
        limiter.settle_nowait(first)
    assert got_third.is_set()


async def test_messages_sent_before_close_are_handled_and_later_ones_refused(autojump_clock):
    """What reached the inbox before close() is handled; after it, acquire and leases refuse."""
    limiter = Limiter(QuotaBook(Limits(rpm=600)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.run)
        reservation = await limiter.acquire("g", ONE)
        limiter.settle_nowait(reservation, used_tokens=7)  # sent, then close at once
        limiter.close()
        await trio.testing.wait_all_tasks_blocked()
    assert limiter.statistics().tokens_used == 7 and limiter.statistics().in_flight == 0
    with pytest.raises(RunStoppedError):
        await limiter.acquire("g", ONE)
    assert await limiter.take_back_lease("g") == (0.0, 0.0)
    limiter.settle_nowait(reservation)  # a report after the end is dropped, not an error


async def test_a_parked_limiter_wakes_for_a_deadline_and_for_a_message(autojump_clock):
    """Parked until the next grant is due, the limiter grants then, and at once for a new waiter."""
    limiter = Limiter(QuotaBook(Limits(rpm=60, burst=False)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.run)
        limiter.settle_nowait(await limiter.acquire("g", ONE))
        started = trio.current_time()
        await limiter.acquire("g", ONE)  # paced: the next slot is about a second away
        assert 0.9 < trio.current_time() - started < 1.2
        with trio.fail_after(0.01):
            await limiter.acquire("other", ONE)  # a message wakes it at once
        limiter.close()


async def test_close_ends_the_task_and_fails_waiters(autojump_clock):
    """close() lets run() return and answers waiters with RunStoppedError."""
    limiter = Limiter(QuotaBook(Limits(rpm=1)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.run)
        await _probe(limiter)
        failures: list[Exception] = []

        async def waiter() -> None:
            try:
                await limiter.acquire("g", ONE)
            except RunStoppedError as exc:
                failures.append(exc)

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        limiter.close()
    assert len(failures) == 1


async def test_shared_quota_hooks_ask_for_leases_and_publish_cooldowns(autojump_clock):
    """A waiter without lease triggers on_lease_needed; a lease unblocks it; 429s are told."""
    needed: list[str] = []
    cooldowns: list[tuple[str, float]] = []
    limiter = Limiter(
        QuotaBook(Limits(rpm=600), margin=0.0, shared=True),
        on_lease_needed=lambda group, cost: needed.append(group),
        on_cooldown=lambda group, until: cooldowns.append((group, until)),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.run)
        got: list[object] = []

        async def waiter() -> None:
            got.append(await limiter.acquire("g", ONE))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert needed and needed[0] == "g" and not got
        limiter.lease_nowait("g", requests=5, tokens=0, expires_at=60.0)
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 1
        limiter.rate_limited_nowait(got[0], retry_after=2.0)
        await trio.testing.wait_all_tasks_blocked()
        assert cooldowns == [("g", pytest.approx(2.0))]
        assert await limiter.take_back_lease("g") == (5, 0)
        limiter.close()


async def test_auto_in_flight_bound_lets_a_fresh_burst_go_at_once(autojump_clock):
    """With the automatic bound, 300 permits of a fresh 600 RPM bucket go at t=0."""
    limiter = Limiter(QuotaBook(Limits(rpm=600), margin=0.0), auto_in_flight=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(limiter.run)
        limiter.settle_nowait(await limiter.acquire("g", ONE), latency=0.3)
        granted_at: list[float] = []

        async def one() -> None:
            await limiter.acquire("g", ONE)
            granted_at.append(trio.current_time())

        async with trio.open_nursery() as burst:
            for _ in range(300):
                burst.start_soon(one)
        assert granted_at == [0.0] * 300
        limiter.close()


def test_statistics_can_be_read_after_the_trio_run_ended():
    """statistics() outside trio still reports each group, without projecting its levels."""

    async def run() -> Limiter:
        limiter = Limiter(QuotaBook(Limits(rpm=600), margin=0.0))
        async with trio.open_nursery() as nursery:
            await nursery.start(limiter.run)
            limiter.settle_nowait(await limiter.acquire("m", Cost(tokens=0)))
            limiter.close()
        return limiter

    limiter = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    (group,) = limiter.statistics().groups
    assert group.name == "m" and group.dimensions["requests_per_minute"].limit == 600
