"""The mock serving several API keys (issue 17, pools): own limits, revocation, per-key stats."""

from __future__ import annotations

import argparse
import json

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing

from engine.mock import MockConfig, ServerLimits, ServerQuota, create_app, serve_in_subprocess
from engine.mock._cli import config_from_args, register
from engine.mock._config import KeyLimits

MODEL = "gpt-4o-mini"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, mock!"}]}
# Pool members: long enough to be masked as sk-***NNNN, never shown whole.
KEY_A = "sk-pool-member-a-secret-0001"
KEY_B = "sk-pool-member-b-secret-0002"
KEY_C = "sk-pool-member-c-secret-0003"
POOL = MockConfig(key_limits={KEY_A: {"rpm": 600}, KEY_B: {"rpm": 600}, KEY_C: KeyLimits(rpm=1200)})


def client_for(app, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mock",
        headers={"authorization": f"Bearer {key}"},
    )


async def send(app, key: str, count: int = 1) -> list[httpx.Response]:
    """``count`` chat requests with ``key``, one after the other."""
    async with client_for(app, key) as client:
        return [await client.post("/v1/chat/completions", json=HELLO) for _ in range(count)]


async def stats_of(app) -> dict:
    async with client_for(app, KEY_A) as client:
        return (await client.get("/_mock/stats")).json()


def parse_mock_args(*argv: str) -> MockConfig:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return config_from_args(parser.parse_args(["mock", *argv]))


# -- per-key limits -------------------------------------------------------------------


async def test_each_key_gets_its_own_rpm(autojump_clock):
    """The 601st request in a minute of a 600 RPM key is 429 while a 1,200 RPM key still admits."""
    app = create_app(POOL)
    answers = await send(app, KEY_A, 601)
    assert [r.status_code for r in answers[:600]] == [200] * 600
    assert answers[600].status_code == 429
    assert "Limit 600, Used 600" in answers[600].json()["error"]["message"]
    assert (await send(app, KEY_B))[0].status_code == 200  # the other 600 RPM key: its own bucket
    other = await send(app, KEY_C, 601)
    assert {r.status_code for r in other} == {200}
    assert other[-1].headers["x-ratelimit-limit-requests"] == "1200"
    assert other[-1].headers["x-ratelimit-remaining-requests"] == "599"


async def test_headers_report_each_keys_own_limits(autojump_clock):
    """x-ratelimit-limit-* of a key with limits are its own; limits it does not set are global."""
    app = create_app(MockConfig(rpm=10, tpm=100_000, key_limits={KEY_A: {"tpm": 5_000}}))
    own = (await send(app, KEY_A))[0]
    other = (await send(app, KEY_B))[0]
    assert own.headers["x-ratelimit-limit-requests"] == "10"
    assert own.headers["x-ratelimit-limit-tokens"] == "5000"
    assert other.headers["x-ratelimit-limit-requests"] == "10"
    assert other.headers["x-ratelimit-limit-tokens"] == "100000"


async def test_key_limits_turn_quotas_on_without_global_limits(autojump_clock):
    """With no global limit, a key with limits is limited and told; other keys are not."""
    app = create_app(MockConfig(key_limits={KEY_A: {"rpm": 2}}))
    limited = await send(app, KEY_A, 3)
    assert [r.status_code for r in limited] == [200, 200, 429]
    assert limited[0].headers["x-ratelimit-limit-requests"] == "2"
    free = await send(app, KEY_B, 5)
    assert {r.status_code for r in free} == {200}
    assert not [name for name in free[0].headers if name.startswith("x-ratelimit-")]


async def test_key_limits_change_at_run_time_keeping_usage(autojump_clock):
    """POST /_mock/config with new key_limits applies them, keeping what the key has used."""
    app = create_app(MockConfig(quota_semantics="fixed_window", key_limits={KEY_A: {"rpm": 100}}))
    await send(app, KEY_A, 5)
    async with client_for(app, KEY_A) as client:
        changed = await client.post("/_mock/config", json={"key_limits": {KEY_A: {"rpm": 6}}})
        assert changed.status_code == 200
        bad = await client.post("/_mock/config", json={"key_limits": {KEY_A: {"rpx": 6}}})
        assert bad.status_code == 400
    assert [r.status_code for r in await send(app, KEY_A, 2)] == [200, 429]


def test_key_limits_config_converts_dicts_and_refuses_bad_ones():
    """key_limits takes KeyLimits or plain dicts; unknown names, negatives and non-keys fail."""
    config = MockConfig(key_limits={KEY_A: {"rpm": 600, "tpd": 9}})
    assert config.key_limits[KEY_A] == KeyLimits(rpm=600, tpd=9)
    assert config.key_server_limits[KEY_A] == ServerLimits(rpm=600, tpd=9)
    assert config == MockConfig(key_limits={KEY_A: KeyLimits(rpm=600, tpd=9)})
    hash(config)  # still a hashable frozen config
    for bad in ({KEY_A: {"rpx": 1}}, {KEY_A: {"rpm": -1}}, {"": {"rpm": 1}}, {KEY_A: 5}):
        with pytest.raises((TypeError, ValueError)):
            MockConfig(key_limits=bad)
    for bad_count in ({KEY_A: -1}, {KEY_A: "3"}, {KEY_A: True}):
        with pytest.raises((TypeError, ValueError)):
            MockConfig(revoke_after=bad_count)


def test_config_repr_never_shows_a_whole_key():
    """repr(MockConfig) masks the keys of key_limits and revoke_after."""
    shown = repr(MockConfig(key_limits={KEY_A: {"rpm": 1}}, revoke_after={KEY_B: 2}))
    assert KEY_A not in shown and KEY_B not in shown
    assert "sk-***0001" in shown and "sk-***0002" in shown


def test_quota_book_applies_each_keys_limits():
    """ServerQuota: a key's groups take its own limits; set_limits replaces them, usage kept."""
    window = "fixed_window"
    book = ServerQuota(
        ServerLimits(rpm=2, semantics=window),
        key_limits={"a": ServerLimits(rpm=3, semantics=window)},
    )
    assert book.limits_for("a").rpm == 3 and book.limits_for("b").rpm == 2
    assert [book.admit(("a", MODEL), 0, 0.0).admitted for _ in range(4)] == [1, 1, 1, 0]
    assert [book.admit(("b", MODEL), 0, 0.0).admitted for _ in range(3)] == [1, 1, 0]
    book.set_limits(
        ServerLimits(rpm=2, semantics=window),
        1.0,
        key_limits={"a": ServerLimits(rpm=4, semantics=window)},
    )
    assert book.snapshot(("a", MODEL), 1.0).limit_requests == 4
    assert book.admit(("a", MODEL), 0, 1.0).admitted  # 3 used of 4
    assert not book.admit(("a", MODEL), 0, 1.0).admitted
    book.set_limits(ServerLimits(rpm=2, semantics=window), 2.0)
    assert book.key_limits == {}
    assert book.snapshot(("a", MODEL), 2.0).limit_requests == 2
    with pytest.raises(ValueError, match="semantics"):
        ServerQuota(ServerLimits(rpm=2), key_limits={"a": ServerLimits(semantics="fixed_window")})


# -- revocation -----------------------------------------------------------------------


async def test_revoke_after_admits_exactly_n_then_401_invalid_api_key():
    """After N admitted requests the key gets the wrong key's 401; other keys are unaffected."""
    app = create_app(MockConfig(revoke_after={KEY_A: 3}))
    answers = await send(app, KEY_A, 5)
    assert [r.status_code for r in answers] == [200, 200, 200, 401, 401]
    wrong = (await send(create_app(MockConfig(api_key=KEY_B)), KEY_A))[0]
    assert answers[3].json() == wrong.json()
    error = answers[3].json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    assert KEY_A not in answers[3].text and "sk-***0001" in error["message"]
    assert {r.status_code for r in await send(app, KEY_B, 5)} == {200}
    async with client_for(app, KEY_A) as client:  # every endpoint refuses the key
        assert (await client.get("/v1/models")).status_code == 401


async def test_revoke_after_zero_revokes_from_the_start():
    """revoke_after 0: the key's first request already gets 401."""
    app = create_app(MockConfig(revoke_after={KEY_A: 0}))
    assert (await send(app, KEY_A))[0].status_code == 401
    assert (await stats_of(app))["admitted"] == 0


async def test_requests_arriving_while_the_last_admitted_are_in_flight_get_401(autojump_clock):
    """N requests still sleeping their latency revoke the key for every request after them."""
    app = create_app(MockConfig(revoke_after={KEY_A: 2}, latency_ms=1000))
    statuses: list[int] = []
    async with client_for(app, KEY_A) as client:

        async def one() -> None:
            statuses.append((await client.post("/v1/chat/completions", json=HELLO)).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one)
            nursery.start_soon(one)
            await trio.sleep(0.5)  # both admitted, both still in flight
            assert statuses == []
            late = await client.post("/v1/chat/completions", json=HELLO)
            assert late.status_code == 401
            assert trio.current_time() < 1.0  # answered at once, before the two finished
    assert sorted(statuses) == [200, 200]


async def test_request_let_in_before_the_nth_admission_is_refused_at_admission():
    """A request authorized before the Nth admission but admitted after it gets 401 too."""
    app = create_app(MockConfig(revoke_after={KEY_A: 1}))
    body = orjson.dumps(HELLO)
    release = trio.Event()
    sent: list[dict] = []

    async def slow_receive() -> dict:  # the body arrives only once the other request is done
        await release.wait()
        return {"type": "http.request", "body": body, "more_body": False}

    async def collect(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"authorization", f"Bearer {KEY_A}".encode())],
    }
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, slow_receive, collect)
        await trio.testing.wait_all_tasks_blocked()
        assert (await send(app, KEY_A))[0].status_code == 200  # the one admission allowed
        release.set()
    assert sent[0]["status"] == 401
    assert b"invalid_api_key" in sent[1]["body"]
    stats = await stats_of(app)
    assert stats["admitted"] == 1
    assert stats["per_key"]["sk-***0001"] == {"admitted": 1, "rate_limited": 0, "revoked": 1}


async def test_reset_gives_a_revoked_key_its_n_requests_again():
    """POST /_mock/reset zeroes the per-key counts, so revocation counts afresh."""
    app = create_app(MockConfig(revoke_after={KEY_A: 1}))
    assert [r.status_code for r in await send(app, KEY_A, 2)] == [200, 401]
    async with client_for(app, KEY_A) as client:
        await client.post("/_mock/reset")
    assert [r.status_code for r in await send(app, KEY_A, 2)] == [200, 401]


async def test_revoke_after_can_be_set_at_run_time():
    """POST /_mock/config {"revoke_after": {KEY: N}} counts what the key was already admitted."""
    app = create_app()
    await send(app, KEY_A, 2)
    async with client_for(app, KEY_A) as client:
        changed = await client.post("/_mock/config", json={"revoke_after": {KEY_A: 3}})
        assert changed.status_code == 200
    assert [r.status_code for r in await send(app, KEY_A, 2)] == [200, 401]
    async with client_for(app, KEY_A) as client:
        await client.post("/_mock/config", json={"revoke_after": {}})
    assert (await send(app, KEY_A))[0].status_code == 200


# -- stats ----------------------------------------------------------------------------


async def test_stats_count_admitted_rate_limited_and_revoked_per_masked_key(autojump_clock):
    """GET /_mock/stats per_key: each key's admitted, 429s and revoked 401s, keys masked."""
    app = create_app(
        MockConfig(key_limits={KEY_A: {"rpm": 2}, KEY_C: {"rpm": 5}}, revoke_after={KEY_B: 1})
    )
    await send(app, KEY_A, 3)
    await send(app, KEY_B, 3)
    stats = await stats_of(app)
    assert stats["per_key"] == {
        "sk-***0001": {"admitted": 2, "rate_limited": 1, "revoked": 0},
        "sk-***0003": {"admitted": 0, "rate_limited": 0, "revoked": 0},  # configured, unused
        "sk-***0002": {"admitted": 1, "rate_limited": 0, "revoked": 2},
    }
    assert stats["status_counts"] == {"200": 3, "401": 2, "429": 1}
    text = json.dumps(stats)
    assert KEY_A not in text and KEY_B not in text and KEY_C not in text


async def test_keys_whose_masks_collide_are_numbered():
    """Short keys all mask to ***: the stats tell them apart as ***, ***#2, ... in order seen."""
    app = create_app()
    await send(app, "k1", 2)
    await send(app, "k2", 1)
    assert (await stats_of(app))["per_key"] == {
        "***": {"admitted": 2, "rate_limited": 0, "revoked": 0},
        "***#2": {"admitted": 1, "rate_limited": 0, "revoked": 0},
    }


async def test_config_endpoint_masks_the_keys():
    """GET /_mock/config shows key_limits and revoke_after under masked keys only."""
    app = create_app(MockConfig(key_limits={KEY_A: {"rpm": 600}}, revoke_after={KEY_B: 4}))
    async with client_for(app, KEY_A) as client:
        response = await client.get("/_mock/config")
    config = response.json()
    assert config["key_limits"] == {
        "sk-***0001": {"rpm": 600, "tpm": None, "rpd": None, "tpd": None}
    }
    assert config["revoke_after"] == {"sk-***0002": 4}
    assert KEY_A not in response.text and KEY_B not in response.text


async def test_respond_at_once_matches_asgi_with_key_limits_and_revocation(autojump_clock):
    """The builtin server's path answers and counts per key exactly as the ASGI call."""
    config = MockConfig(rpm=3, key_limits={KEY_A: {"rpm": 2}}, revoke_after={KEY_B: 1})
    asgi_app, fast_app = create_app(config), create_app(config)
    body = orjson.dumps(HELLO)
    for key in (KEY_A, KEY_A, KEY_A, KEY_B, KEY_B, KEY_C, KEY_C, KEY_C, KEY_C):
        headers = [(b"authorization", f"Bearer {key}".encode())]
        head, fast_body = fast_app.respond_at_once("POST", "/v1/chat/completions", headers, body)
        response = (await send(asgi_app, key))[0]
        assert head.split(b" ", 2)[1] == str(response.status_code).encode()
        assert json.loads(fast_body)["error" if response.status_code != 200 else "usage"]
    assert fast_app.stats.as_dict() == asgi_app.stats.as_dict()
    assert fast_app.stats.as_dict()["per_key"]["sk-***0003"]["rate_limited"] == 1


# -- command line ---------------------------------------------------------------------


def test_cli_key_limits_and_revoke_key():
    """--key-limits KEY=rpm:N,... and --revoke-key KEY=N, each repeatable, build the config."""
    config = parse_mock_args(
        "--rpm",
        "100",
        "--key-limits",
        f"{KEY_A}=rpm:600,tpm:100000",
        "--key-limits",
        f"{KEY_C}=RPM:1200, tpd:5",
        "--revoke-key",
        f"{KEY_B}=7",
        "--revoke-key",
        f"{KEY_C}=0",
    )
    assert dict(config.key_limits) == {
        KEY_A: KeyLimits(rpm=600, tpm=100_000),
        KEY_C: KeyLimits(rpm=1200, tpd=5),
    }
    assert dict(config.revoke_after) == {KEY_B: 7, KEY_C: 0}
    assert config.key_server_limits[KEY_A] == attrs.evolve(config.limits, rpm=600, tpm=100_000)
    default = parse_mock_args()
    assert not default.key_limits and not default.revoke_after


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--key-limits", f"{KEY_A}=rpm:abc"], "'abc'"),
        (["--key-limits", f"{KEY_A}=rpm:-5"], "'-5'"),
        (["--key-limits", f"{KEY_A}=rpx:5"], "'rpx:5'"),
        (["--key-limits", f"{KEY_A}=rpm"], "'rpm'"),
        (["--key-limits", f"{KEY_A}=rpm:1,rpm:2"], "rpm given twice"),
        (["--key-limits", f"{KEY_A}="], "''"),
        (["--key-limits", KEY_A], "KEY=rpm:N"),
        (["--key-limits", "=rpm:5"], "'=rpm:5'"),
        (["--revoke-key", f"{KEY_A}=many"], "'many'"),
        (["--revoke-key", f"{KEY_A}=-1"], "'-1'"),
        (["--revoke-key", KEY_A], "KEY=N"),
    ],
)
def test_cli_malformed_values_are_argparse_errors_naming_the_value(argv, named, capsys):
    """A malformed --key-limits / --revoke-key exits 2 naming the bad part, the key masked."""
    with pytest.raises(SystemExit) as exit_info:
        parse_mock_args(*argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {argv[0]}:" in error
    assert named in error
    assert KEY_A not in error


def test_cli_same_key_twice_is_an_error_with_the_key_masked():
    """Giving one key two --revoke-key values is refused, naming the key masked."""
    with pytest.raises(ValueError, match=r"sk-\*\*\*0001 twice") as error:
        parse_mock_args("--revoke-key", f"{KEY_A}=1", "--revoke-key", f"{KEY_A}=2")
    assert KEY_A not in str(error.value)


def test_served_mock_applies_key_limits_and_revocation():
    """engine mock --key-limits / --revoke-key served: own limits, 401 after N, per-key stats."""
    argv = ["--key-limits", f"{KEY_A}=rpm:2", "--revoke-key", f"{KEY_B}=1"]
    with serve_in_subprocess(argv) as base_url, httpx.Client(base_url=base_url) as client:

        def post(key: str) -> httpx.Response:
            auth = {"authorization": f"Bearer {key}"}
            return client.post("/chat/completions", json=HELLO, headers=auth)

        assert [post(KEY_A).status_code for _ in range(3)] == [200, 200, 429]
        assert [post(KEY_B).status_code for _ in range(2)] == [200, 401]
        assert post(KEY_C).status_code == 200
        stats = client.get(base_url.removesuffix("/v1") + "/_mock/stats").json()
    assert stats["per_key"] == {
        "sk-***0001": {"admitted": 2, "rate_limited": 1, "revoked": 0},
        "sk-***0002": {"admitted": 1, "rate_limited": 0, "revoked": 1},
        "sk-***0003": {"admitted": 1, "rate_limited": 0, "revoked": 0},
    }
