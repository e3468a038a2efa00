"""``client.stream`` against the bundled mock (issue 16): in-process for what it answers,
served on loopback for timing and faults over a real connection."""

from __future__ import annotations

import statistics

import httpx
import pytest
import trio
import trio.testing
from mock_clients import KEY, mock_client

import engine
from engine.mock import MockConfig, serve_in_subprocess

MODEL = "gpt-4o-mini"


async def test_a_mock_chat_stream_settles_the_permit_with_its_usage_chunk(autojump_clock):
    """Against the mock, the deltas join into the answer and its usage is what is counted."""
    async with mock_client(MockConfig(ttft_ms=100, ms_per_output_token=10)) as (client, app):
        async with client.stream("Hello, mock!", model=MODEL, max_tokens=30, id="s1") as s:
            deltas = [delta async for delta in s]
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert len(deltas) > 1 and "".join(deltas) == s.result.output == s.text
    usage = s.usage
    assert usage.completion_tokens > 0 and usage.total_tokens > usage.completion_tokens
    assert (stats.prompt_tokens, stats.completion_tokens) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert stats.limiter.tokens_used == usage.total_tokens
    assert app.stats.client_request_ids["s1"] == 1


async def test_a_mock_responses_stream_gives_the_completed_response(autojump_clock):
    """The mock's Responses API events give the text and the completed response's usage."""
    async with mock_client(MockConfig(ttft_ms=100, ms_per_output_token=10)) as (client, _app):
        async with client.stream_response("Hello, mock!", model=MODEL) as s:
            deltas = [delta async for delta in s]
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert len(deltas) > 1 and "".join(deltas) == s.result.output
    assert s.status == "completed" and s.usage.output_tokens > 0
    assert stats.limiter.tokens_used == s.usage.total_tokens


def _mock_requests(base_url: str) -> int:
    root = base_url.removesuffix("/v1")
    return int(httpx.get(f"{root}/_mock/stats").json()["requests"])


def test_ttft_over_a_real_connection_matches_the_mocks_setting():
    """Sequential streams from the served mock (ttft 200 ms, 20 ms a token): TTFT p50 within 10%."""

    async def main(base_url: str) -> list[float]:
        ttfts = []
        async with engine.open_client(base_url=base_url, api_key=KEY, concurrency=4) as client:
            for n in range(8):
                async with client.stream(f"Story {n}", model=MODEL, max_tokens=10) as s:
                    result = await s.get_result()
                ttfts.append(result.timings.ttft)
                assert result.timings.itl_summary is not None
        return ttfts

    with serve_in_subprocess(["--ttft-ms", "200", "--ms-per-output-token", "20"]) as base_url:
        ttfts = trio.run(main, base_url)
    assert statistics.median(ttfts[1:]) == pytest.approx(0.2, rel=0.10)


def test_a_connection_dropped_mid_stream_is_reported_and_sent_once():
    """The served mock cuts the stream after 3 events: one request, StreamInterruptedError."""

    async def main(base_url: str) -> tuple[engine.StreamInterruptedError, str]:
        async with engine.open_client(base_url=base_url, api_key=KEY, max_attempts=5) as client:
            async with client.stream("Hello there, mock", model=MODEL, max_tokens=30) as s:
                with pytest.raises(engine.StreamInterruptedError) as caught:
                    async for _ in s:
                        pass
        return caught.value, s.text

    mock = ["--drop-rate", "1", "--stream-fault-after", "3", "--ms-per-output-token", "5"]
    with serve_in_subprocess(mock) as base_url:
        error, text = trio.run(main, base_url)
        assert _mock_requests(base_url) == 1
    assert error.code == "stream_interrupted" and error.raw == text and text


def test_leaving_a_real_stream_early_closes_it_promptly():
    """Breaking out of a slow served stream leaves at once; the next stream runs as usual."""

    async def main(base_url: str) -> tuple[float, int]:
        async with engine.open_client(base_url=base_url, api_key=KEY, concurrency=1) as client:
            async with client.stream("A long story " * 20, model=MODEL, max_tokens=200) as s:
                async for _ in s:
                    break
                broke_at = trio.current_time()
            left_after = trio.current_time() - broke_at
            await trio.sleep(0.05)
            in_flight = client.statistics().limiter.in_flight
            async with client.stream("Again", model=MODEL, max_tokens=5) as again:
                assert (await again.get_result()).ok  # the only worker is free again
        return left_after, in_flight

    with serve_in_subprocess(["--ttft-ms", "10", "--ms-per-output-token", "100"]) as base_url:
        left_after, in_flight = trio.run(main, base_url)
    assert left_after < 0.09 and in_flight == 0
