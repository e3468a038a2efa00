"""The mock behaving as servers other than OpenAI do (issue #13): other 429 bodies,
missing or partial x-ratelimit-* headers, non-standard retry hints."""

from __future__ import annotations

import argparse
import itertools
import math
import statistics

import httpx
import pytest
import trio

from engine.mock import MockConfig, create_app
from engine.mock._cli import config_from_args, register

MODEL = "gpt-4o-mini"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, mock!"}]}
RESETS = {"x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"}


def client_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mock",
        headers={"authorization": "Bearer sk-test-key"},
    )


async def answers(app, count: int, body: dict = HELLO) -> list[httpx.Response]:
    """``count`` chat requests sent one after the other."""
    async with client_for(app) as client:
        return [await client.post("/v1/chat/completions", json=body) for _ in range(count)]


def ratelimit_names(response: httpx.Response) -> set[str]:
    return {name for name in response.headers if name.startswith("x-ratelimit-")}


def parse_mock_args(*argv: str) -> MockConfig:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return config_from_args(parser.parse_args(["mock", *argv]))


# -- 429 body shapes ----------------------------------------------------------------


async def test_azure_429_names_the_call_rate_limit_and_whole_seconds(autojump_clock):
    """Azure's shape: code "429", no type, "call rate limit", the wait rounded up to seconds."""
    app = create_app(MockConfig(rpm=2, rate_limit_body="azure"))
    refused = (await answers(app, 3))[2]
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == "429"
    assert error["message"].startswith(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "2024-10-21 have exceeded call rate limit of your current OpenAI S0 pricing tier. "
        "Please retry after 30 seconds. "
    )
    assert refused.headers["retry-after"] == "30"


async def test_azure_429_for_tokens_says_token_rate_limit(autojump_clock):
    """A TPM refusal in Azure's shape is a "token rate limit"; a 0.12 s wait is "1 second"."""
    app = create_app(MockConfig(tpm=1000, rate_limit_body="azure", correct_to_usage=False))
    refused = (await answers(app, 2, {**HELLO, "max_tokens": 490}))[1]
    message = refused.json()["error"]["message"]
    assert "have exceeded token rate limit of your current OpenAI S0 pricing tier" in message
    assert "Please retry after 1 second." in message


async def test_generic_429_has_a_gateway_type_and_try_again_in(autojump_clock):
    """The generic shape: type rate_limit_error, code too_many_requests, "try again in 30s"."""
    app = create_app(MockConfig(rpm=2, rate_limit_body="generic"))
    refused = (await answers(app, 3))[2]
    assert refused.json() == {
        "error": {
            "message": "Rate limit exceeded, try again in 30s",
            "type": "rate_limit_error",
            "code": "too_many_requests",
        }
    }


async def test_generic_429_writes_a_fractional_wait_in_seconds(autojump_clock):
    """At 40 RPM the next request fits in 1.5 s: "try again in 1.5s"."""
    app = create_app(MockConfig(rpm=40, rate_limit_body="generic"))
    refused = (await answers(app, 41))[40]
    assert refused.json()["error"]["message"] == "Rate limit exceeded, try again in 1.5s"


async def test_bare_429_is_an_error_string():
    """The bare shape is {"error": "Too Many Requests"} and nothing else."""
    app = create_app(MockConfig(rpm=1, rate_limit_body="bare"))
    refused = (await answers(app, 2))[1]
    assert refused.status_code == 429
    assert refused.json() == {"error": "Too Many Requests"}


async def test_none_429_has_an_empty_body_and_still_the_retry_headers():
    """The none shape sends no body; retry-after and retry-after-ms are still there."""
    app = create_app(MockConfig(rpm=1, rate_limit_body="none"))
    refused = (await answers(app, 2))[1]
    assert refused.status_code == 429
    assert refused.content == b""
    assert {"retry-after", "retry-after-ms"} <= set(refused.headers)


@pytest.mark.parametrize("shape", ["openai", "azure", "generic", "bare", "none"])
async def test_retry_headers_switch_off_in_every_shape(shape):
    """retry_after_header / retry_after_ms_header apply whatever the body shape."""
    config = MockConfig(rpm=1, rate_limit_body=shape, retry_after_ms_header=False)
    refused = (await answers(create_app(config), 2))[1]
    assert refused.status_code == 429
    assert "retry-after" in refused.headers
    assert "retry-after-ms" not in refused.headers


@pytest.mark.parametrize("shape", ["azure", "generic", "bare", "none"])
async def test_too_large_and_insufficient_quota_keep_openai_shape(shape):
    """Only rate_limit_exceeded changes shape: the other 429s are OpenAI's."""
    too_large = (await answers(create_app(MockConfig(tpm=100, rate_limit_body=shape)), 1))[0]
    error = too_large.json()["error"]
    assert error["message"].startswith("Request too large for gpt-4o-mini")
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    config = MockConfig(insufficient_quota_after=0, rate_limit_body=shape)
    error = (await answers(create_app(config), 1))[0].json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")


def test_unknown_body_shape_is_refused():
    """rate_limit_body accepts only the five shapes."""
    with pytest.raises(ValueError, match="rate_limit_body"):
        MockConfig(rate_limit_body="aws")


# -- which headers are sent ---------------------------------------------------------


async def test_no_rate_limit_headers_on_any_answer():
    """rate_limit_headers=False: neither 200s nor 429s carry x-ratelimit-*; retry-after stays."""
    app = create_app(MockConfig(rpm=1, tpm=10_000, rate_limit_headers=False))
    admitted, refused = await answers(app, 2)
    assert (admitted.status_code, refused.status_code) == (200, 429)
    assert ratelimit_names(admitted) == ratelimit_names(refused) == set()
    assert "retry-after" in refused.headers
    assert "x-request-id" in admitted.headers


async def test_rate_limit_headers_can_be_left_off_429s_only():
    """rate_limit_headers_on_429=False: 200s report the quota, 429s (any kind) do not."""
    app = create_app(MockConfig(rpm=1, rate_limit_headers_on_429=False))
    admitted, refused = await answers(app, 2)
    assert ratelimit_names(admitted) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    assert refused.status_code == 429
    assert ratelimit_names(refused) == set()
    config = MockConfig(rpm=5, insufficient_quota_after=0, rate_limit_headers_on_429=False)
    assert ratelimit_names((await answers(create_app(config), 1))[0]) == set()


async def test_reset_headers_can_be_left_out():
    """reset_headers=False: limit and remaining only, on 200s and 429s."""
    app = create_app(MockConfig(rpm=1, tpm=10_000, reset_headers=False))
    admitted, refused = await answers(app, 2)
    for response in (admitted, refused):
        assert ratelimit_names(response) == {
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
        }
    assert admitted.headers["x-ratelimit-remaining-requests"] == "0"


async def test_retry_hint_header_carries_the_wait_in_seconds(autojump_clock):
    """A gateway's own header carries the wait (1.5 s at 40 RPM), here instead of retry-after."""
    config = MockConfig(
        rpm=40,
        retry_after_header=False,
        retry_after_ms_header=False,
        retry_hint_header="X-RateLimit-Retry-After-Seconds",
    )
    responses = await answers(create_app(config), 41)
    refused = responses[40]
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-retry-after-seconds"] == "1.5"
    assert "retry-after" not in refused.headers
    assert "retry-after-ms" not in refused.headers
    assert "x-ratelimit-retry-after-seconds" not in responses[0].headers


def test_retry_hint_header_must_be_a_header_name():
    """A name with a space or a colon is refused."""
    with pytest.raises(ValueError, match="retry_hint_header"):
        MockConfig(retry_hint_header="retry after")


# -- stats, run-time config and the command line --------------------------------------


async def test_stats_count_429s_by_cause():
    """rate_limited_by says which limit sent each 429; the counts add up to the 429s."""
    app = create_app(MockConfig(rpm=2, tpm=100, insufficient_quota_after=3))
    async with client_for(app) as client:
        for _ in range(3):
            await client.post("/v1/chat/completions", json={**HELLO, "max_tokens": 10})
        await client.post("/v1/chat/completions", json={**HELLO, "max_tokens": 500})
        stats = (await client.get("/_mock/stats")).json()
    assert stats["rate_limited_by"] == {
        "per_minute": 1,
        "per_day": 0,
        "undeclared_subwindow": 0,
        "request_too_large": 1,
        "insufficient_quota": 0,
    }
    assert sum(stats["rate_limited_by"].values()) == stats["status_counts"]["429"]


async def test_body_shape_and_headers_change_at_run_time():
    """POST /_mock/config switches the 429 shape and the headers of a running mock."""
    app = create_app(MockConfig(rpm=1))
    async with client_for(app) as client:
        await client.post("/v1/chat/completions", json=HELLO)
        changes = {"rate_limit_body": "bare", "rate_limit_headers": False}
        assert (await client.post("/_mock/config", json=changes)).status_code == 200
        refused = await client.post("/v1/chat/completions", json=HELLO)
        rejected = await client.post("/_mock/config", json={"rate_limit_body": "aws"})
    assert refused.json() == {"error": "Too Many Requests"}
    assert ratelimit_names(refused) == set()
    assert rejected.status_code == 400


def test_command_line_flags_set_the_config_fields():
    """Each option is an engine mock flag of the same name."""
    config = parse_mock_args(
        "--rate-limit-body",
        "generic",
        "--no-rate-limit-headers",
        "--no-rate-limit-headers-on-429",
        "--no-reset-headers",
        "--retry-hint-header",
        "x-ratelimit-retry-after-seconds",
    )
    assert config.rate_limit_body == "generic"
    assert config.rate_limit_headers is False
    assert config.rate_limit_headers_on_429 is False
    assert config.reset_headers is False
    assert config.retry_hint_header == "x-ratelimit-retry-after-seconds"
    defaults = parse_mock_args()
    assert (defaults.rate_limit_body, defaults.rate_limit_headers, defaults.reset_headers) == (
        "openai",
        True,
        True,
    )


# -- undeclared sub-windows and wall-clock windows ------------------------------------


async def test_undeclared_subwindow_refuses_while_the_headers_show_headroom(autojump_clock):
    """600 RPM enforced per second: the 11th request gets a 429 whose headers say 590 left."""
    app = create_app(MockConfig(rpm=600, subwindow_seconds=1.0))
    async with client_for(app) as client:
        statuses = [
            (await client.post("/v1/chat/completions", json=HELLO)).status_code for _ in range(10)
        ]
        refused = await client.post("/v1/chat/completions", json=HELLO)
        await trio.sleep(1.0)
        after = await client.post("/v1/chat/completions", json=HELLO)
        stats = (await client.get("/_mock/stats")).json()
    assert statuses == [200] * 10
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-limit-requests"] == "600"
    assert refused.headers["x-ratelimit-remaining-requests"] == "590"
    assert refused.headers["retry-after-ms"] == "1000"
    assert after.status_code == 200
    assert stats["rate_limited_by"]["undeclared_subwindow"] == 1
    assert stats["rate_limited_by"]["per_minute"] == 0


async def test_azure_ten_second_subwindow_says_the_wait_to_its_end(autojump_clock):
    """1,200 RPM checked over 10 s: 200 per 10 s; 3 s in, Azure's 429 says retry after 7 s."""
    app = create_app(MockConfig(rpm=1200, subwindow_seconds=10.0, rate_limit_body="azure"))
    async with client_for(app) as client:
        for _ in range(200):
            assert (await client.post("/v1/chat/completions", json=HELLO)).status_code == 200
        await trio.sleep(3.0)
        refused = await client.post("/v1/chat/completions", json=HELLO)
    assert refused.status_code == 429
    assert "Please retry after 7 seconds." in refused.json()["error"]["message"]
    # The minute's bucket: 1,000 left after 200, plus 3 s of refill at 20/s.
    assert refused.headers["x-ratelimit-remaining-requests"] == "1060"


async def test_a_request_counting_gateway_on_the_clock_minute(autojump_clock):
    """Windows end at :00 (20 s after a :40 start); no reset header; the wait in its own header."""
    config = MockConfig(
        rpm=3,
        quota_semantics="clock_minute",
        wall_clock_offset=1_800_000_040.0 - trio.current_time(),
        reset_headers=False,
        rate_limit_body="generic",
        retry_after_header=False,
        retry_after_ms_header=False,
        retry_hint_header="x-ratelimit-retry-after-seconds",
    )
    app = create_app(config)
    first = await answers(app, 4)
    await trio.sleep(20.0)
    second = await answers(app, 4)
    assert [r.status_code for r in first] == [200, 200, 200, 429]
    assert [r.status_code for r in second] == [200, 200, 200, 429]
    assert first[3].headers["x-ratelimit-retry-after-seconds"] == "20"
    assert second[3].headers["x-ratelimit-retry-after-seconds"] == "60"
    assert first[3].json()["error"]["message"] == "Rate limit exceeded, try again in 20s"
    assert ratelimit_names(first[0]) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
    }
    assert "retry-after" not in first[3].headers


async def test_clock_minute_reset_header_counts_down_to_the_minute(autojump_clock):
    """With reset headers on, clock_minute's reset is the time to the next :00."""
    offset = 1_800_000_040.0 - trio.current_time()
    app = create_app(MockConfig(rpm=3, quota_semantics="clock_minute", wall_clock_offset=offset))
    await trio.sleep(5.0)
    response = (await answers(app, 1))[0]
    assert response.headers["x-ratelimit-reset-requests"] == "15s"


async def test_subwindow_and_clock_change_at_run_time(autojump_clock):
    """POST /_mock/config sets subwindow_seconds, clock_minute and the offset of a running mock."""
    app = create_app(MockConfig(rpm=600))
    changes = {
        "subwindow_seconds": 1.0,
        "quota_semantics": "clock_minute",
        "wall_clock_offset": 1_800_000_000.0,
    }
    async with client_for(app) as client:
        assert (await client.post("/_mock/config", json=changes)).status_code == 200
        statuses = [
            (await client.post("/v1/chat/completions", json=HELLO)).status_code for _ in range(11)
        ]
        bad = await client.post("/_mock/config", json={"subwindow_seconds": 60})
        per_second = await client.post("/_mock/config", json={"quota_semantics": "per_second"})
    assert statuses == [200] * 10 + [429]
    assert (bad.status_code, per_second.status_code) == (400, 400)


def test_subwindow_and_clock_flags_set_the_config_fields():
    """--subwindow-seconds, --quota-semantics clock_minute and --wall-clock-offset."""
    config = parse_mock_args(
        "--subwindow-seconds",
        "10",
        "--quota-semantics",
        "clock_minute",
        "--wall-clock-offset",
        "12.5",
    )
    assert config.subwindow_seconds == 10.0
    assert config.quota_semantics.value == "clock_minute"
    assert config.wall_clock_offset == 12.5
    assert parse_mock_args().subwindow_seconds is None


# -- slow servers ------------------------------------------------------------------


async def test_latencies_of_seconds_come_back_far_out_of_order(autojump_clock):
    """Median 3 s, sigma 1: 400 concurrent answers show that median and spread, out of order."""
    app = create_app(MockConfig(latency_ms=3000, latency_sigma=1.0, seed=11))
    done: list[tuple[float, int]] = []
    async with client_for(app) as client:

        async def ask(index: int) -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"n{index}"}]}
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            done.append((trio.current_time(), index))

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for index in range(400):
                nursery.start_soon(ask, index)
    latencies = sorted(finished - start for finished, _ in done)
    logs = [math.log(latency) for latency in latencies]
    mean = statistics.fmean(logs)
    assert statistics.median(latencies) == pytest.approx(3.0, rel=0.1)
    assert statistics.stdev(logs, mean) == pytest.approx(1.0, abs=0.1)
    assert latencies[-1] > 20.0  # a wide spread: the slowest answers take many medians
    order = [index for _, index in done]
    inversions = sum(a > b for a, b in itertools.pairwise(order))
    assert inversions > 100  # sent 0..399 at once, answered in no such order
