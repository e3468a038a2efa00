"""The mock behaving as servers other than OpenAI do (issue #13): other 429 bodies,
missing or partial x-ratelimit-* headers, non-standard retry hints."""

from __future__ import annotations

import argparse

import httpx
import pytest

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
    """A TPM refusal in Azure's shape is a "token rate limit", a wait under 1 s said as 1 second."""
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
