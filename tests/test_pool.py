"""Pools: members' configuration, the limiter's routing, and pooled clients against the mock."""

from __future__ import annotations

import logging
import uuid
from collections import Counter

import httpx
import pytest
import trio
import trio.testing

import engine
from engine._limiter import Limiter
from engine._pool import Pool, PoolLimits, member_group, member_of
from engine._quota import Cost, QuotaBook
from engine.mock import MockConfig, create_app

MODEL = "gpt-4o-mini"
GOOD_KEY = "sk-pool-good-0123456789abcdef"
BAD_KEY = "sk-pool-revoked-fedcba9876543210"


def member(name: str, key: str = GOOD_KEY, **fields) -> engine.Endpoint:
    return engine.Endpoint(name, "http://127.0.0.1/v1", api_key=key, **fields)


def chat_requests(count: int, **fields) -> list[engine.ChatRequest]:
    return [
        engine.ChatRequest(messages=f"item {i}", model=MODEL, params={"max_tokens": 5}, **fields)
        for i in range(count)
    ]


# -- configuration ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a/b", "has space", "-lead", "x" * 65, 3])
def test_an_endpoint_name_that_cannot_label_a_member_is_refused(name):
    """Names go into group names, labels and logs: empty, '/', spaces and the like are refused."""
    with pytest.raises(ValueError, match="endpoint name"):
        engine.Endpoint(name, "http://127.0.0.1/v1")


@pytest.mark.parametrize("weight", [0, -1, float("inf"), float("nan")])
def test_a_weight_that_is_not_a_positive_number_is_refused(weight):
    """Weight breaks ties by division: zero, negative and non-finite weights are refused."""
    with pytest.raises(ValueError, match="weight"):
        engine.Endpoint("a", "http://127.0.0.1/v1", weight=weight)


def test_an_endpoint_repr_never_shows_its_key():
    """The key is left out of the repr (it ends up in logs and tracebacks)."""
    endpoint = member("a", key="sk-secret-value-123456")
    assert "sk-secret" not in repr(endpoint) and "'a'" in repr(endpoint)


def test_models_restrict_what_a_member_serves():
    """models=None serves every model; a list (or one string) only those."""
    assert member("a").serves("anything")
    assert member("b", models=["m1", "m2"]).serves("m2")
    assert not member("b", models=["m1"]).serves("m2")
    assert member("c", models="m1").models == frozenset({"m1"})
    with pytest.raises(ValueError, match="at least one model"):
        member("d", models=[])


def test_pool_limits_give_each_member_group_its_members_limits():
    """One Limits applies to every group of its member; a mapping by group; missing: learn."""
    limits = PoolLimits(
        [
            member("a", limits=engine.Limits(rpm=600)),
            member("b", limits={MODEL: engine.Limits(rpm=1200)}),
            member("c"),
        ]
    )
    assert limits[member_group("a", "any-model")] == engine.Limits(rpm=600)
    assert limits.get(member_group("b", MODEL)) == engine.Limits(rpm=1200)
    assert limits.get(member_group("b", "other"), None) is None
    assert limits.get(member_group("c", MODEL), None) is None
    assert limits.get("not-a-member/x", None) is None
    assert list(limits) == [member_group("b", MODEL)]
    assert member_of(member_group("b", "ft:gpt-4o/x")) == "b"


def test_a_pool_refuses_no_members_and_duplicate_names():
    """A pool needs at least one member, each with its own name."""
    with pytest.raises(ValueError, match="at least one"):
        Pool([])
    with pytest.raises(ValueError, match="two endpoints are named 'a'"):
        Pool([member("a"), member("a")])


def test_choices_list_the_members_serving_a_model_and_pins_check_the_name():
    """A model's choices are its members, in order; a pin names one member that serves it."""
    pool = Pool([member("a", models=["m1"]), member("b"), member("c", models=["m2"])])
    assert pool.choices("m1", "m1") == (("a", "a/m1"), ("b", "b/m1"))
    assert pool.choices("m3", "g") == (("b", "b/g"),)
    assert pool.pinned("c", "m2", "m2") == (("c", "c/m2"),)
    with pytest.raises(KeyError, match="not in the pool"):
        pool.pinned("z", "m1", "m1")
    with pytest.raises(KeyError, match="does not serve model 'm1'"):
        pool.pinned("c", "m1", "m1")


# -- the limiter -----------------------------------------------------------------


def pool_limiter(weights: dict[str, float], limits: dict[str, engine.Limits]) -> Limiter:
    book = QuotaBook({member_group(name, MODEL): lim for name, lim in limits.items()})
    return Limiter(book, weights=weights)


async def test_a_saturated_pool_grants_each_member_in_proportion_to_its_quota(autojump_clock):
    """With work always waiting, each member is granted what its own quota allows."""
    limits = {"a": engine.Limits(rpm=60), "b": engine.Limits(rpm=120)}
    limiter = pool_limiter({"a": 1.0, "b": 1.0}, limits)
    choices = (("a", "a/" + MODEL), ("b", "b/" + MODEL))
    granted: Counter[str] = Counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)

        async def one() -> None:
            reservation = await limiter.acquire(MODEL, Cost(tokens=1), choices)
            granted[member_of(reservation.group)] += 1
            limiter.settle_nowait(reservation)

        async with trio.open_nursery() as requests:
            for _ in range(300):
                requests.start_soon(one)
        limiter.close()
    # Bursts of 60 and 120, then 1/s and 2/s: 100 and 200.
    assert granted["a"] + granted["b"] == 300
    assert granted["b"] / granted["a"] == pytest.approx(2.0, rel=0.05)
    assert limiter.statistics().granted_by_member == {"a": granted["a"], "b": granted["b"]}


async def test_ties_go_to_the_member_with_the_fewest_grants_per_unit_of_weight(autojump_clock):
    """Members that can all grant now share the requests by weight."""
    plenty = engine.Limits(rpm=1_000_000)
    limiter = pool_limiter({"a": 1.0, "b": 3.0}, {"a": plenty, "b": plenty})
    choices = (("a", "a/" + MODEL), ("b", "b/" + MODEL))
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        groups = [(await limiter.acquire(MODEL, Cost(tokens=1), choices)).group for _ in range(40)]
        limiter.close()
    assert Counter(member_of(g) for g in groups) == {"a": 10, "b": 30}


async def test_a_retired_member_is_skipped_and_a_waiter_with_none_left_is_refused(
    autojump_clock,
):
    """After retire_nowait no permit goes to that member; one pinned to it is refused."""
    plenty = engine.Limits(rpm=1_000_000)
    limiter = pool_limiter({"a": 1.0, "b": 1.0}, {"a": plenty, "b": plenty})
    both = (("a", "a/" + MODEL), ("b", "b/" + MODEL))
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        limiter.retire_nowait("a", "HTTP 401: revoked")
        groups = {(await limiter.acquire(MODEL, Cost(tokens=1), both)).group for _ in range(10)}
        assert groups == {"b/" + MODEL}
        with pytest.raises(engine.RunStoppedError, match=r"retired \(a: HTTP 401: revoked\)"):
            await limiter.acquire("a/" + MODEL, Cost(tokens=1), (("a", "a/" + MODEL),))
        limiter.close()


async def test_a_request_too_large_for_one_member_goes_to_one_it_fits():
    """TooLarge on one member is not the answer while another member can take the cost."""
    limits = {"small": engine.Limits(tpm=100), "large": engine.Limits(tpm=10_000)}
    limiter = pool_limiter({"small": 1.0, "large": 1.0}, limits)
    choices = (("small", "small/" + MODEL), ("large", "large/" + MODEL))
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        reservation = await limiter.acquire(MODEL, Cost(tokens=500), choices)
        assert reservation.group == "large/" + MODEL
        with pytest.raises(engine.RequestTooLargeError):
            await limiter.acquire(MODEL, Cost(tokens=50_000), choices)
        limiter.close()


# -- pooled clients against the mock -----------------------------------------------


def pool_options(app, endpoints, **extra) -> dict:
    return {
        "endpoints": endpoints,
        "transport": httpx.ASGITransport(app),
        "retry_base_delay": 0.01,
        **extra,
    }


async def test_a_pool_spreads_a_run_over_members_by_their_quotas(autojump_clock):
    """Three members at 60/60/120 RPM finish 480 requests with shares 1:1:2 and no 429."""
    keys = {"a": "sk-pool-a-000000000001", "b": "sk-pool-b-000000000002", "c": "sk-pool-c-3"}
    app = create_app(
        MockConfig(
            key_limits={keys["a"]: {"rpm": 60}, keys["b"]: {"rpm": 60}, keys["c"]: {"rpm": 120}}
        )
    )
    endpoints = [
        member("a", key=keys["a"], limits=engine.Limits(rpm=60)),
        member("b", key=keys["b"], limits=engine.Limits(rpm=60)),
        member("c", key=keys["c"], limits=engine.Limits(rpm=120)),
    ]
    async with engine.open_client(**pool_options(app, endpoints)) as client:
        started = trio.current_time()
        results = [r async for r in client.map(chat_requests(480))]
        elapsed = trio.current_time() - started
        stats = client.statistics()
    assert all(r.ok for r in results)
    shares = {e.name: e.succeeded for e in stats.endpoints}
    assert sum(shares.values()) == 480 and stats.rate_limited == 0
    assert shares["c"] / (shares["a"] + shares["b"]) == pytest.approx(1.0, rel=0.05)
    assert shares["a"] / shares["b"] == pytest.approx(1.0, rel=0.05)
    # Bursts of 240, then 240 more at 4 a second: about a minute.
    assert elapsed == pytest.approx(60, rel=0.1)
    per_key = app.stats.as_dict()["per_key"]
    assert sorted(count["admitted"] for count in per_key.values()) == sorted(shares.values())


async def test_a_refused_key_retires_its_member_and_its_work_goes_to_the_others(
    autojump_clock, caplog
):
    """A 401 retires the member once, with a warning; every item still succeeds elsewhere."""
    app = create_app(MockConfig(api_key=GOOD_KEY))
    endpoints = [member("bad", key=BAD_KEY), member("good")]
    with caplog.at_level(logging.WARNING, logger="engine.pool"):
        async with engine.open_client(**pool_options(app, endpoints, concurrency=8)) as client:
            results = [r async for r in client.map(chat_requests(50))]
            stats = client.statistics()
    assert sum(r.ok for r in results) == 50
    by_name = {e.name: e for e in stats.endpoints}
    assert by_name["good"].succeeded == 50 and by_name["bad"].succeeded == 0
    assert by_name["bad"].retired is not None and "401" in by_name["bad"].retired
    assert by_name["bad"].sent == by_name["bad"].errors >= 1
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'bad' retired" in warnings[0] and "good" in warnings[0]
    assert BAD_KEY not in caplog.text


async def test_the_run_stops_only_when_the_last_member_is_retired(autojump_clock):
    """With every key refused the client stops: the last member's 401 is fatal, as one key's is."""
    app = create_app(MockConfig(api_key=GOOD_KEY))
    endpoints = [member("x", key=BAD_KEY), member("y", key=BAD_KEY + "2")]
    results: list[engine.ChatResult] = []
    async with engine.open_client(**pool_options(app, endpoints, concurrency=4)) as client:
        with pytest.raises(engine.AuthenticationError):
            async for result in client.map(chat_requests(20)):
                results.append(result)
        assert all(e.retired for e in client.statistics().endpoints)
    codes = Counter(r.error.code for r in results if r.error)
    # As for one key: map yields what was under way, then raises; nothing succeeded.
    assert sum(codes.values()) == len(results) > 0
    assert set(codes) <= {"invalid_api_key", "run_stopped"}


async def test_a_pinned_request_goes_only_to_its_member(autojump_clock):
    """endpoint= on a call, a request object and a Batch line all reach that member alone."""
    app = create_app(MockConfig())
    endpoints = [member("a"), member("b")]
    async with engine.open_client(**pool_options(app, endpoints)) as client:
        await client.chat("hi", model=MODEL, endpoint="b", max_tokens=5)
        await client.respond("hi", model=MODEL, endpoint="b", max_output_tokens=16)
        line = {
            "custom_id": "line-1",
            "endpoint": "b",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        }
        items = [*chat_requests(3, endpoint="b"), line]
        assert all([r.ok async for r in client.map(items)])
        stats = {e.name: e for e in client.statistics().endpoints}
    assert stats["b"].sent == 6 and stats["a"].sent == 0


async def test_a_request_pinned_to_a_retired_member_is_left_for_a_rerun(autojump_clock):
    """Pinned to a member retired since, a request fails unsent: endpoint_retired."""
    app = create_app(MockConfig(api_key=GOOD_KEY))
    endpoints = [member("bad", key=BAD_KEY), member("good")]
    async with engine.open_client(**pool_options(app, endpoints)) as client:
        with pytest.raises(engine.RunStoppedError, match="every one it may go to was retired") as e:
            await client.chat("hi", model=MODEL, endpoint="bad", max_tokens=5)
        assert e.value.code == "endpoint_retired"
        assert (await client.chat("hi", model=MODEL, max_tokens=5)).ok
        assert client.fatal_error is None


async def test_bad_pins_and_unserved_models_are_input_errors_naming_the_request():
    """An unknown member, a pin without a pool, or a model no member serves: unsent InputError."""
    app = create_app(MockConfig())
    async with engine.open_client(
        **pool_options(app, [member("a", models=[MODEL])], max_attempts=1)
    ) as client:
        with pytest.raises(engine.InputError, match="'nope' is not in the pool"):
            await client.chat("hi", model=MODEL, endpoint="nope", id="r1")
        with pytest.raises(engine.InputError, match="no endpoint of the pool serves model 'other'"):
            await client.chat("hi", model="other", id="r2")
        assert client.statistics().sent == 0
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", transport=httpx.ASGITransport(app)
    ) as plain:
        with pytest.raises(engine.InputError, match="no pool"):
            await plain.chat("hi", model=MODEL, endpoint="a")


async def test_endpoints_and_a_base_url_or_key_together_are_refused():
    """base_url, api_key and limits belong on each Endpoint when endpoints= is given."""
    with pytest.raises(ValueError, match=r"on each engine\.Endpoint"):
        async with engine.open_client(endpoints=[member("a")], api_key="sk-x"):
            pass
    with pytest.raises(ValueError, match="two endpoints"):
        async with engine.open_client(endpoints=[member("a"), member("a")]):
            pass


async def test_each_member_is_called_with_its_own_key(autojump_clock):
    """Member a's requests carry a's key and b's carry b's (the mock counts per key)."""
    seen: Counter[bytes] = Counter()
    app = create_app(MockConfig())

    async def spy(scope, receive, send):
        seen[dict(scope["headers"]).get(b"authorization", b"")] += 1
        await app(scope, receive, send)

    endpoints = [member("a", key="sk-a-11111111"), member("b", key="sk-b-22222222")]
    async with engine.open_client(**pool_options(spy, endpoints)) as client:
        await client.chat("hi", model=MODEL, endpoint="a", max_tokens=5)
        for _ in range(2):
            await client.chat("hi", model=MODEL, endpoint="b", max_tokens=5)
    assert seen == {b"Bearer sk-a-11111111": 1, b"Bearer sk-b-22222222": 2}
    assert repr(client) == "<engine.Client endpoints=['a', 'b']>"


async def test_with_redis_each_members_quota_is_shared_on_its_own(redis_server):
    """Two pooled clients on two 600 RPM keys send 1,280: <= 1% 429s, a Redis bucket per member."""
    pytest.importorskip("coredis")
    from engine._shared import group_keys

    keys = {"a": "sk-pool-shared-a-0001", "b": "sk-pool-shared-b-0002"}
    app = create_app(MockConfig(key_limits={key: {"rpm": 600} for key in keys.values()}))
    namespace = f"test-pool-{uuid.uuid4().hex[:10]}"
    done: dict[str, int] = {}

    async def one(process: str) -> None:
        endpoints = [
            member(name, key=key, limits=engine.Limits(rpm=600)) for name, key in keys.items()
        ]
        async with engine.open_client(
            **pool_options(app, endpoints, concurrency=64),
            shared=engine.RedisQuota(redis_server.url, namespace=namespace, client_id=process),
        ) as client:
            items = chat_requests(640)
            done[process] = sum([result.ok async for result in client.map(items)])

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, "p1")
            nursery.start_soon(one, "p2")
    assert done == {"p1": 640, "p2": 640}
    per_key = app.stats.as_dict()["per_key"]
    # Issue 17's bound (<= 1% 429s): a pooled shared run draws 0-3 of 1,280 here.
    assert sum(count["rate_limited"] for count in per_key.values()) <= 0.01 * 1280
    assert sum(count["admitted"] for count in per_key.values()) == 1280
    import coredis

    redis = coredis.Redis.from_url(redis_server.url, decode_responses=True)
    async with redis:
        for name in keys:
            state, _leases, _cooldown = group_keys(namespace, member_group(name, MODEL))
            assert await redis.exists([state]) == 1


async def test_an_unreachable_member_cools_down_and_the_others_take_its_work(autojump_clock):
    """Connect errors pause the member (longer each time): every item succeeds on the live one."""
    asgi = httpx.ASGITransport(create_app(MockConfig()))

    class DeadHost(httpx.AsyncBaseTransport):
        """The mock, except that the member at localhost:9 refuses connections."""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host == "localhost":
                raise httpx.ConnectError("connection refused", request=request)
            return await asgi.handle_async_request(request)

    endpoints = [
        engine.Endpoint("dead", "http://localhost:9/v1", limits=engine.Limits(rpm=6000)),
        member("live", limits=engine.Limits(rpm=600)),
    ]
    options = {"transport": DeadHost(), "max_attempts": 3, "retry_base_delay": 0.05}
    async with engine.open_client(endpoints=endpoints, **options) as client:
        results = [r async for r in client.map(chat_requests(800))]
        stats = {e.name: e for e in client.statistics().endpoints}
    assert all(r.ok for r in results)
    assert stats["live"].succeeded == 800 and stats["dead"].succeeded == 0
    assert 1 <= stats["dead"].errors == stats["dead"].sent <= 20
    assert stats["dead"].retired is None  # unreachable is not refused: it may come back
