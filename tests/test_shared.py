"""Shared quota through Redis: pure helpers, the Lua scripts, the lease manager, the client.

Tests that talk to Redis use the session's throwaway ``redis_server``
(tests/conftest.py) and real time: Redis's clock runs the accounting, so
``autojump_clock`` is used only where Redis is not involved.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
import trio.testing

import engine
from engine._headers import RateLimitHeaders
from engine._limiter import Limiter
from engine._quota import Cost, Limits, QuotaBook
from engine._shared import (
    COOLDOWN_SCRIPT,
    LEASE_SCRIPT,
    PACE_SCRIPT,
    RETURN_SCRIPT,
    FallbackBucket,
    LeaseManager,
    LeaseReply,
    RedisQuota,
    ask_size,
    cooldown_channel,
    fair_pace,
    group_keys,
    pace_key,
    retry_delay,
)
from engine.mock import MockConfig, create_app, serve_in_subprocess

coredis = pytest.importorskip("coredis")

MODEL = "gpt-4o-mini"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


# -- pure helpers ---------------------------------------------------------------


def test_ask_covers_a_fair_share_of_the_rate_for_ask_seconds():
    """600 RPM shared by 2 for 4 s: 10/s / 2 * 4 = 20 requests, tokens at 100 each."""
    assert ask_size(
        Cost(tokens=100),
        rpm=600,
        tpm=None,
        clients=2,
        ask_seconds=4,
        min_requests=5,
        tokens_per_request=100,
    ) == (20, 2000)


def test_ask_is_never_below_the_minimum_or_the_need():
    """A slow rate still asks min_requests; a large need is always covered."""
    assert ask_size(
        Cost(tokens=5000, requests=1),
        rpm=60,
        tpm=6000,
        clients=4,
        ask_seconds=1,
        min_requests=20,
        tokens_per_request=10,
    ) == (20, 5000)


def test_tokens_asked_are_bounded_by_the_fair_token_rate():
    """20 requests at 1,000 tokens ask only ask_seconds of a fair share of TPM."""
    asked = ask_size(
        Cost(tokens=1000),
        rpm=None,
        tpm=60_000,
        clients=2,
        ask_seconds=2,
        min_requests=20,
        tokens_per_request=1000,
    )
    assert asked == (20, 1000)


def test_no_wait_after_a_full_grant():
    """Everything asked was granted: the next ask may follow at once."""
    assert retry_delay((20, 0), (20, 0), rates=(10, None), clients=2, floor=0.02, ceiling=2) == 0


def test_wait_after_a_short_grant_is_the_time_the_fair_share_takes():
    """10 requests short at 10/s shared by 2: one second, within the bounds."""
    assert retry_delay(
        (20, 0), (10, 0), rates=(10, None), clients=2, floor=0.02, ceiling=2
    ) == pytest.approx(2.0)
    assert retry_delay(
        (20, 0), (18, 0), rates=(10, None), clients=1, floor=0.02, ceiling=2
    ) == pytest.approx(0.2)
    assert retry_delay((20, 0), (0, 0), rates=(1, None), clients=1, floor=0.02, ceiling=2) == 2


def test_contended_grants_are_paced_at_a_fair_share():
    """30 requests at 100/s shared by 4 last 30 / (0.9 x 25) s."""
    assert fair_pace((30, 0), rates=(100, None), clients=4) == pytest.approx(30 / 22.5)
    assert fair_pace((0, 0), rates=(100, None), clients=4) == 0


def test_fallback_share_starts_empty_and_refills_at_its_share():
    """A quarter of 600 RPM: nothing at once, 2.5 requests/s after that."""
    bucket = FallbackBucket(limits=(600, None, None, None), share=0.25, started=0.0)
    assert bucket.grant((20, 100), 0.0) == (0, 100)
    assert bucket.grant((20, 100), 4.0) == (10, 100)
    assert bucket.grant((1000, 0), 1000.0) == (150, 0)  # capped at a quarter of the limit


def test_fallback_without_known_limits_grants_what_is_asked():
    """Unknown limits are not enforced locally either (the probe will learn them)."""
    bucket = FallbackBucket(limits=(None, None, None, None), share=0.5, started=0.0)
    assert bucket.grant((20, 300), 0.0) == (20, 300)


def test_lease_reply_parses_strings_and_empty_cooldown():
    """Numbers come back as strings or integers; 0 limits mean unknown."""
    reply = LeaseReply.parse([3, 40, "1700000000000000", 2, "", "600", "0", "0", "0"])
    assert reply.requests == 3 and reply.tokens == 40 and reply.clients == 2
    assert reply.cooldown_until_us is None
    assert reply.limits == (600.0, None, None, None)


def test_safe_url_hides_credentials():
    """Messages name the server, never the password."""
    config = RedisQuota("redis://user:s3cret@cache.internal:6379/2")
    assert config.safe_url() == "redis://cache.internal:6379/2"


def test_config_refuses_a_share_above_one():
    """fallback_share is a fraction of each limit."""
    with pytest.raises(ValueError, match="fallback_share"):
        RedisQuota("redis://127.0.0.1", fallback_share=2.0)


def test_keys_of_a_group_share_one_cluster_slot():
    """All of a group's keys carry the same {namespace:group} hash tag."""
    keys = group_keys("ns", "gpt-4o")
    assert all(key.startswith("{ns:gpt-4o}:") for key in keys)


# -- the Lua scripts on a real Redis ----------------------------------------------


@asynccontextmanager
async def redis_client(url: str):
    client = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        yield client


class Scripts:
    """Direct calls of the lease, return and cooldown scripts, as one named client."""

    def __init__(self, redis, namespace: str, group: str = "g") -> None:
        self.redis = redis
        self.namespace = namespace
        self.keys = group_keys(namespace, group)
        self.lease_script = redis.register_script(LEASE_SCRIPT)
        self.return_script = redis.register_script(RETURN_SCRIPT)
        self.cooldown_script = redis.register_script(COOLDOWN_SCRIPT)

    async def lease(
        self,
        client: str,
        ask: tuple[int, int],
        *,
        limits=(600, 0, 0, 0),
        unused=(0, 0),
        lease_ms: int = 10_000,
        rejoin: bool = False,
        need=(0, 0),
    ) -> LeaseReply:
        raw = await self.lease_script(
            keys=list(self.keys),
            args=[client, lease_ms * 1000, int(rejoin), *ask, *unused, *limits, 600_000, 0, *need],
        )
        return LeaseReply.parse(raw)

    async def give_back(self, client: str, unused: tuple[int, int]) -> None:
        await self.return_script(keys=list(self.keys[:2]), args=[client, *unused])

    async def level(self, name: str = "rpm") -> float:
        return float(await self.redis.hget(self.keys[0], f"lvl:{name}"))


@pytest.fixture
async def scripts(redis_server):
    async with redis_client(redis_server.url) as redis:
        yield Scripts(redis, fresh_namespace())


async def test_lone_client_gets_the_whole_burst_of_a_fresh_bucket(scripts):
    """Alone, a client may lease up to the limit; asking more than is left is contended."""
    reply = await scripts.lease("a", (200, 0))
    assert reply.requests == 200 and reply.clients == 1 and not reply.contended
    assert await scripts.level() == pytest.approx(400, abs=1)
    second = await scripts.lease("a", (500, 0), unused=(0, 0))
    assert second.requests == pytest.approx(400, abs=1) and second.contended


async def test_a_second_client_is_capped_at_its_fair_share(scripts):
    """With two clients holding leases, each may hold at most half the limit."""
    await scripts.lease("a", (20, 0))
    reply = await scripts.lease("b", (600, 0))
    assert reply.clients == 2
    assert reply.requests == 300


async def test_fair_share_counts_what_the_client_already_holds(scripts):
    """A client reporting 250 unused may add only 50 to reach half of 600."""
    await scripts.lease("a", (20, 0))
    reply = await scripts.lease("b", (600, 0), unused=(250, 0))
    assert reply.requests == 50


async def test_fair_share_never_falls_below_the_waiting_request(scripts):
    """Eight sharers of 10,000 TPM: a 3,000-token request may still lease 3,000."""
    for other in range(7):
        await scripts.lease(f"o{other}", (1, 1), limits=(0, 10_000, 0, 0))
    reply = await scripts.lease("big", (1, 3000), limits=(0, 10_000, 0, 0), need=(1, 3000))
    assert reply.clients == 8 and reply.tokens == 3000


async def test_unknown_limits_grant_what_is_asked(scripts):
    """Without any known limit the shared quota does not hold a request back."""
    reply = await scripts.lease("a", (20, 4000), limits=(0, 0, 0, 0))
    assert (reply.requests, reply.tokens) == (20, 4000)


async def test_tokens_and_requests_are_leased_from_their_own_buckets(scripts):
    """The token bucket limits tokens; the request bucket, requests."""
    reply = await scripts.lease("a", (50, 9000), limits=(600, 5000, 0, 0))
    assert (reply.requests, reply.tokens) == (50, 5000)


async def test_daily_limit_bounds_the_grant_too(scripts):
    """An RPD of 30 caps the requests leased even below the RPM."""
    reply = await scripts.lease("a", (50, 0), limits=(600, 0, 30, 0))
    assert reply.requests == 30


async def test_returned_capacity_goes_back_to_the_bucket(scripts):
    """Handing back unused capacity refills the bucket and ends the client's share."""
    await scripts.lease("a", (500, 0))
    await scripts.lease("b", (10, 0))
    await scripts.give_back("a", (400, 0))
    assert await scripts.level() == pytest.approx(490, abs=2)
    reply = await scripts.lease("b", (10, 0))
    assert reply.clients == 1


@pytest.mark.wallclock
async def test_leases_expire_and_stop_counting(scripts):
    """A client whose lease expired no longer counts as a sharer."""
    # Redis's clock decides, so no virtual clock can stand in: a lease of a whole second
    # outlives the next call even on a loaded machine, and sleeping past it is always safe.
    await scripts.lease("gone", (20, 0), lease_ms=1000)
    assert (await scripts.lease("b", (1, 0))).clients == 2
    await trio.sleep(1.1)
    assert (await scripts.lease("b", (1, 0))).clients == 1
    assert list(await scripts.redis.hkeys(scripts.keys[1])) == ["b"]


async def test_held_leases_keep_the_bucket_from_refilling_past_the_limit(scripts):
    """Refill stops at the limit less what live leases hold (no extra burst)."""
    await scripts.lease("a", (300, 0), limits=(60_000, 0, 0, 0))
    await scripts.lease("b", (1, 0), limits=(60_000, 0, 0, 0))
    await trio.sleep(0.05)
    await scripts.lease("b", (0, 0), limits=(60_000, 0, 0, 0))
    # a holds 300 of 60,000: the level may refill to at most 59,700
    assert await scripts.level() <= 60_000 - 300


async def test_a_rejoining_client_finds_a_lost_bucket_empty(scripts):
    """After Redis lost its data, a client that knew the bucket starts it at zero."""
    reply = await scripts.lease("a", (100, 0), rejoin=True)
    assert reply.requests == 0
    assert await scripts.level() <= 1


async def test_cooldown_is_published_and_drains_the_buckets(scripts):
    """A cooldown is returned by later lease calls, and nothing is leased before it ends."""
    await scripts.lease("a", (10, 0))
    ends = float(
        await scripts.cooldown_script(
            keys=[scripts.keys[2], scripts.keys[0]], args=[500_000, "ch", "a"]
        )
    )
    reply = await scripts.lease("b", (10, 0))
    assert reply.cooldown_until_us == ends
    assert reply.requests == 0
    assert 0 < ends - reply.redis_now_us <= 500_000


async def test_a_longer_cooldown_is_announced_on_the_channel(scripts):
    """The cooldown script announces a new end (key, end, Redis now, client); a shorter one not."""
    channel = cooldown_channel(scripts.namespace)
    async with scripts.redis.pubsub(channels=[channel], ignore_subscribe_messages=True) as sub:
        keys = [scripts.keys[2], scripts.keys[0]]
        ends = await scripts.cooldown_script(keys=keys, args=[500_000, channel, "a"])
        await scripts.cooldown_script(keys=keys, args=[100_000, channel, "b"])
        with trio.fail_after(5):
            message = await anext(aiter(sub))  # skips the subscription's confirmation
        key, end, now, client = message["data"].split(" ")
        assert (key, end, client) == (scripts.keys[2], ends, "a")
        assert 0 < float(end) - float(now) <= 500_000
        assert await sub.get_message(timeout=0.2) is None  # the shorter one stayed quiet


async def test_pace_stretches_of_two_clients_follow_each_other(scripts):
    """The pace script hands out consecutive stretches: B's starts where A's ends."""
    pace = scripts.redis.register_script(PACE_SCRIPT)
    key = pace_key(scripts.namespace, "g")
    a_start, a_now, cooldown = await pace(keys=[key, scripts.keys[2]], args=[200_000, 10_000])
    b_start, _b_now, _ = await pace(keys=[key, scripts.keys[2]], args=[100_000, 10_000])
    assert cooldown == "" and 0 <= float(a_start) - float(a_now) < 1_000
    assert float(b_start) == float(a_start) + 200_000


async def test_pace_stretches_start_after_a_published_cooldown(scripts):
    """A stretch claimed during a cooldown starts when it ends, and names it."""
    pace = scripts.redis.register_script(PACE_SCRIPT)
    ends = float(
        await scripts.cooldown_script(
            keys=[scripts.keys[2], scripts.keys[0]], args=[500_000, "ch", "a"]
        )
    )
    start, _now, cooldown = await pace(
        keys=[pace_key(scripts.namespace, "g"), scripts.keys[2]], args=[100_000, 10_000]
    )
    assert float(start) == ends and float(cooldown) == ends


async def test_learned_limits_are_stored_for_others(scripts):
    """A limit one client passes is returned to a client that knows none."""
    await scripts.lease("a", (1, 0), limits=(600, 90_000, 0, 0))
    reply = await scripts.lease("b", (1, 0), limits=(0, 0, 0, 0))
    assert reply.limits[:2] == (600, 90_000)
    assert reply.requests == 1


# -- the lease manager, with real limiters -------------------------------------------


@asynccontextmanager
async def managed_limiter(config: RedisQuota, limits: Limits | None, *, shared_pace: bool = False):
    """A limiter in shared mode with its lease manager running."""
    manager = LeaseManager(config, limits)
    book = QuotaBook(limits, margin=0.0, shared=True, shared_pace=shared_pace)
    limiter = Limiter(book, **manager.callbacks())
    manager.attach(limiter)
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        await nursery.start(manager.run)
        try:
            yield limiter, manager
        finally:
            with trio.CancelScope(shield=True):
                await manager.aclose()
            limiter.close()


async def test_a_waiting_permit_gets_a_lease_from_redis(redis_server):
    """The first acquire is held until a lease arrives, then granted."""
    config = RedisQuota(redis_server.url, namespace=fresh_namespace())
    async with managed_limiter(config, Limits(rpm=600)) as (limiter, manager):
        with trio.fail_after(5):
            reservation = await limiter.acquire("g", Cost())
        limiter.settle_nowait(reservation)
        stats = manager.statistics()
    assert stats.leases == 1 and stats.requests_leased == 20 and stats.connected


async def test_cooldown_seen_by_one_process_reaches_another(redis_server):
    """A 429 in A is published; B's next lease call puts B's group in cooldown."""
    namespace = fresh_namespace()
    a_config = RedisQuota(redis_server.url, namespace=namespace, client_id="a")
    b_config = RedisQuota(redis_server.url, namespace=namespace, client_id="b")
    async with (
        managed_limiter(a_config, Limits(rpm=600)) as (a, _),
        managed_limiter(b_config, Limits(rpm=600)) as (b, _),
    ):
        with trio.fail_after(5):
            reservation = await a.acquire("g", Cost())
            a.rate_limited_nowait(reservation, retry_after=30.0)
            await eventually(lambda: _redis_has(redis_server, group_keys(namespace, "g")[2]))
        with trio.move_on_after(0.5) as scope:
            await b.acquire("g", Cost())
        assert scope.cancelled_caught  # held by the cooldown A published
        assert b._book.snapshot("g", trio.current_time())["group"]["cooldown_until"] > (
            trio.current_time() + 25
        )


@pytest.mark.wallclock
async def test_a_cooldown_reaches_a_process_still_holding_a_lease(redis_server):
    """B holds leased capacity when A is refused for 1 s: B's next stretch starts after it."""
    namespace = fresh_namespace()
    paced = Limits(rpm=600, burst=False)
    async with (
        managed_limiter(
            RedisQuota(redis_server.url, namespace=namespace, client_id="a"),
            paced,
            shared_pace=True,
        ) as (a, _),
        managed_limiter(
            RedisQuota(redis_server.url, namespace=namespace, client_id="b", min_ask_requests=20),
            paced,
            shared_pace=True,
        ) as (b, _),
    ):
        with trio.fail_after(5):
            b.settle_nowait(await b.acquire("g", Cost()))
            assert (await b.lease_state("g"))[0] >= 1  # B needs no new lease to send again
            refused = await a.acquire("g", Cost())
            # The cooldown starts no earlier than this: measured from here, a slow
            # machine's delays can only lengthen B's wait, never shorten it.
            refused_at = trio.current_time()
            a.rate_limited_nowait(refused, retry_after=1.0)
            await eventually(lambda: _redis_has(redis_server, group_keys(namespace, "g")[2]))
            b.settle_nowait(await b.acquire("g", Cost()))
            assert trio.current_time() - refused_at >= 0.9  # 1 s, less half a 0.1 s spacing


async def test_an_idle_process_hears_a_cooldown_at_once(redis_server):
    """A refused for 1 s: B, sending nothing and claiming nothing, holds the cooldown too."""
    namespace = fresh_namespace()
    paced = Limits(rpm=600, burst=False)
    async with (
        managed_limiter(
            RedisQuota(redis_server.url, namespace=namespace, client_id="a"),
            paced,
            shared_pace=True,
        ) as (a, _),
        managed_limiter(
            RedisQuota(redis_server.url, namespace=namespace, client_id="b"),
            paced,
            shared_pace=True,
        ) as (b, _),
    ):
        with trio.fail_after(5):
            b.settle_nowait(await b.acquire("g", Cost()))
            refused = await a.acquire("g", Cost())
            refused_at = trio.current_time()
            a.rate_limited_nowait(refused, retry_after=1.0)

            async def b_cools_down() -> bool:
                (state,) = b.statistics().groups
                return state.cooldown_until >= refused_at + 0.9

            await eventually(b_cools_down)
            # Heard, not read from a lease or a claim: well before A's cooldown ends.
            assert trio.current_time() - refused_at < 0.5


async def test_limits_learned_by_one_process_reach_another(redis_server):
    """A's headers teach 600 RPM; B, which knew nothing, adopts it."""
    namespace = fresh_namespace()
    a_config = RedisQuota(redis_server.url, namespace=namespace, client_id="a")
    b_config = RedisQuota(redis_server.url, namespace=namespace, client_id="b")
    async with (
        managed_limiter(a_config, None) as (a, _),
        managed_limiter(b_config, None) as (b, _),
    ):
        with trio.fail_after(5):
            reservation = await a.acquire("g", Cost())
            a.settle_nowait(
                reservation,
                headers=RateLimitHeaders(
                    limit_requests=600, remaining_requests=599, reset_requests=0.1
                ),
            )
            await eventually(
                lambda: _redis_hget(redis_server, group_keys(namespace, "g")[0], "lim:rpm")
            )
            b.settle_nowait(await b.acquire("g", Cost()))
            await eventually(lambda: _now(b._book.learned_limits("g", trio.current_time())[0]))
        assert b._book.learned_limits("g", trio.current_time())[0] == 600


async def test_idle_lease_is_handed_back(redis_server):
    """A group that stops using its lease returns it and leaves the sharers."""
    namespace = fresh_namespace()
    config = RedisQuota(redis_server.url, namespace=namespace, idle_seconds=0.05)
    async with managed_limiter(config, Limits(rpm=600)) as (limiter, manager):
        with trio.fail_after(5):
            limiter.settle_nowait(await limiter.acquire("g", Cost()))
            await eventually(lambda: _now(manager.statistics().returns))
        assert await _redis_hlen(redis_server, group_keys(namespace, "g")[1]) == 0
        level = await _redis_hget(redis_server, group_keys(namespace, "g")[0], "lvl:rpm")
        assert float(level) >= 599 - 1  # the 19 unused came back


async def eventually(check, interval: float = 0.01) -> None:
    """Poll ``check()`` (an awaitable) until it is truthy; the caller bounds the time."""
    for _ in range(100_000):
        if await check():
            return
        await trio.sleep(interval)


async def _now(value):
    return value


async def _redis_has(server, key: str) -> bool:
    async with redis_client(server.url) as redis:
        return bool(await redis.exists([key]))


async def _redis_hget(server, key: str, field: str) -> str | None:
    async with redis_client(server.url) as redis:
        return await redis.hget(key, field)


async def _redis_hlen(server, key: str) -> int:
    async with redis_client(server.url) as redis:
        return await redis.hlen(key)


# -- a killed process ------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, trio
    from engine._limiter import Limiter
    from engine._quota import Cost, Limits, QuotaBook
    from engine._shared import LeaseManager, RedisQuota

    async def main():
        config = RedisQuota(sys.argv[1], namespace=sys.argv[2], client_id="holder",
                            lease_seconds=3.0, min_ask_requests=40_000, idle_seconds=60)
        limits = Limits(rpm=60_000)
        manager = LeaseManager(config, limits)
        limiter = Limiter(QuotaBook(limits, shared=True), **manager.callbacks())
        manager.attach(limiter)
        async with trio.open_nursery() as nursery:
            await nursery.start(limiter.run)
            await nursery.start(manager.run)
            await limiter.acquire("g", Cost())
            print("holding", flush=True)
            await trio.sleep_forever()

    trio.run(main)
    """
)


@pytest.mark.wallclock
async def test_a_killed_process_loses_its_lease_when_it_expires(redis_server):
    """SIGKILL a holder of 40,000 of 60,000 RPM: it counts until its lease expires, then not."""
    namespace = fresh_namespace()
    holder = await trio.lowlevel.open_process(
        [sys.executable, "-c", _HOLDER, redis_server.url, namespace],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        with trio.fail_after(20):
            line = b""
            while b"\n" not in line:
                chunk = await holder.stdout.receive_some()
                assert chunk, "the holder exited early"
                line += chunk
        assert line.strip() == b"holding"
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    async with redis_client(redis_server.url) as redis:
        scripts = Scripts(redis, namespace)
        limits = (60_000, 0, 0, 0)
        # The holder's lease is 3 s (Redis's clock): it still counts however long a loaded
        # machine takes from the kill to here, and sleeping past it is always safe.
        during = await scripts.lease("b", (60_000, 0), limits=limits, lease_ms=100)
        assert during.clients == 2
        assert during.requests <= 20_000 + 100  # what the dead holder left, plus refill
        await trio.sleep(3.2)
        after = await scripts.lease("c", (60_000, 0), limits=limits)
        assert after.clients == 1  # b's 100 ms lease expired too
        assert list(await redis.hkeys(scripts.keys[1])) == ["c"]


# -- Redis going away and coming back ---------------------------------------------------


def _fast_retry(url: str, **options) -> RedisQuota:
    options.setdefault("namespace", fresh_namespace())
    return RedisQuota(url, retry_initial=0.05, retry_max=0.2, command_timeout=0.5, **options)


async def test_redis_down_at_start_falls_back_with_one_warning(own_redis, caplog):
    """No Redis: one warning naming the URL, leases from a local share, work goes on."""
    own_redis.stop()
    url = own_redis.url
    config = _fast_retry(url, fallback_share=0.5)
    caplog.set_level(logging.WARNING, logger="engine.shared")
    async with managed_limiter(config, Limits(rpm=6000)) as (limiter, manager):
        with trio.fail_after(5):
            for _ in range(5):
                limiter.settle_nowait(await limiter.acquire("g", Cost()))
        stats = manager.statistics()
    warnings = [r for r in caplog.records if r.name == "engine.shared"]
    assert len(warnings) == 1
    assert url.rsplit("/", 1)[0] in warnings[0].getMessage()
    assert "0.5 of each limit" in warnings[0].getMessage()
    assert stats.fallback_leases >= 1 and not stats.connected


async def test_redis_restart_mid_run_falls_back_then_rejoins(own_redis, caplog):
    """Stop Redis mid-run: fallback and a warning; restart it: leases come from Redis again."""
    caplog.set_level(logging.WARNING, logger="engine.shared")
    config = _fast_retry(
        own_redis.url, fallback_share=0.5, idle_seconds=60, min_ask_requests=5, ask_seconds=0.05
    )
    # 6,000 RPM = 100/s; asks of 5 requests.
    async with managed_limiter(config, Limits(rpm=6000)) as (limiter, manager):
        with trio.fail_after(10):
            for _ in range(30):
                limiter.settle_nowait(await limiter.acquire("g", Cost()))
            assert manager.statistics().connected
            own_redis.stop()
            stopped_at = trio.current_time()
            for _ in range(30):  # a fallback share of 50/s, starting empty
                limiter.settle_nowait(await limiter.acquire("g", Cost()))
            outage_pace = trio.current_time() - stopped_at
            down = manager.statistics()
            own_redis.start()
            while not manager.statistics().connected:
                limiter.settle_nowait(await limiter.acquire("g", Cost()))
            leases_back = manager.statistics().leases
            for _ in range(40):
                limiter.settle_nowait(await limiter.acquire("g", Cost()))
        after = manager.statistics()
    assert down.fallback_leases >= 1 and not down.connected and down.outages == 1
    # at most 5 left from Redis's last lease, the other 25 at 50/s or slower
    assert outage_pace >= 0.4
    assert after.connected and after.outages == 1 and after.leases > leases_back
    messages = [r.getMessage() for r in caplog.records if r.name == "engine.shared"]
    assert len(messages) == 2
    assert "unavailable" in messages[0] and "is back" in messages[1]


async def test_a_redis_that_never_answers_does_not_hang_the_client(caplog):
    """A server that accepts connections but says nothing: a warning, then the fallback."""
    caplog.set_level(logging.WARNING, logger="engine.shared")
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted = []

    async def accept_and_stay_silent() -> None:
        while True:
            accepted.append(await listener.accept())

    config = RedisQuota(
        f"redis://127.0.0.1:{port}/0",
        namespace=fresh_namespace(),
        command_timeout=0.2,
        fallback_share=1.0,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_and_stay_silent)
        async with managed_limiter(config, Limits(rpm=6000)) as (limiter, manager):
            with trio.fail_after(5):
                limiter.settle_nowait(await limiter.acquire("g", Cost()))
            stats = manager.statistics()
        nursery.cancel_scope.cancel()
    for stream in accepted:
        await stream.aclose()
    await listener.aclose()
    assert accepted and stats.fallback_leases >= 1 and not stats.connected
    assert any("unavailable" in r.getMessage() for r in caplog.records)


# -- the client end to end -------------------------------------------------------------------


async def test_two_clients_share_one_quota_without_429s(redis_server):
    """Two clients on one 1,200 RPM key send 1,280 requests: no 429, neither starves."""
    app = create_app(MockConfig(rpm=1200))
    namespace = fresh_namespace()
    done: dict[str, int] = {}
    calls: dict[str, int] = {}

    async def one(name: str) -> None:
        async with engine.open_client(
            base_url="http://127.0.0.1/v1",
            api_key="sk-test",
            transport=httpx.ASGITransport(app),
            limits=engine.Limits(rpm=1200),
            concurrency=64,
            shared=RedisQuota(redis_server.url, namespace=namespace, client_id=name),
        ) as client:
            items = [
                engine.ChatRequest(
                    id=f"{name}{i}", messages="hi", model=MODEL, params={"max_tokens": 4}
                )
                for i in range(640)
            ]
            done[name] = sum([result.ok async for result in client.map(items)])
            calls[name] = client.shared_statistics().redis_calls

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "a")
            nursery.start_soon(one, "b")
    assert done == {"a": 640, "b": 640}
    assert app.stats.status_counts.get(429, 0) == 0
    assert sum(calls.values()) <= 0.1 * 1280


async def test_open_client_without_shared_has_no_shared_statistics():
    """shared=None keeps the single-process path."""
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key="sk-test",
        transport=httpx.ASGITransport(create_app(MockConfig())),
    ) as client:
        assert client.shared_statistics() is None


# -- engine run --redis ------------------------------------------------------------------------


def _batch_lines(path, prefix: str, count: int) -> None:
    with open(path, "w") as file:
        for i in range(count):
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            }
            file.write(
                json.dumps(
                    {
                        "custom_id": f"{prefix}{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + "\n"
            )


async def test_two_engine_runs_with_redis_share_the_quota(redis_server, tmp_path):
    """Two `engine run --redis` on one 3,000 RPM key send 3,080 lines: all done, no 429."""
    namespace = fresh_namespace()
    with serve_in_subprocess(["--rpm", "3000", "--seed", "7"]) as base_url:
        runs = []
        for name in ("a", "b"):
            _batch_lines(tmp_path / f"{name}.jsonl", name, 1540)
            runs.append(
                await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-m",
                        "engine",
                        "run",
                        str(tmp_path / f"{name}.jsonl"),
                        "-o",
                        str(tmp_path / f"{name}.out.jsonl"),
                        "--base-url",
                        base_url,
                        "--rpm",
                        "3000",
                        "--concurrency",
                        "32",
                        "--redis",
                        redis_server.url,
                        "--redis-namespace",
                        namespace,
                    ],
                    cwd=ROOT,
                    env={**os.environ, "OPENAI_API_KEY": "sk-test"},
                    stderr=subprocess.DEVNULL,
                )
            )
        with trio.fail_after(60):
            codes = [await run.wait() for run in runs]
        async with httpx.AsyncClient() as control:
            answer = await control.get(base_url.removesuffix("/v1") + "/_mock/stats")
        stats = answer.json()
    assert codes == [0, 0]
    assert stats["status_counts"].get("429", 0) == 0
    assert stats["status_counts"].get("200") == 3080
    assert await _redis_hget(redis_server, group_keys(namespace, MODEL)[0], "lim:rpm") == "3000"
