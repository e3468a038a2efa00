"""The client end to end against the in-process mock (httpx.ASGITransport, virtual clock)."""

from __future__ import annotations

import functools

import httpx
import pydantic
import pytest
import trio
import trio.testing
from mock_clients import KEY, mock_client

import engine
from engine.mock import MockConfig

MODEL = "gpt-4o-mini"


def requests(n: int, **params):
    params.setdefault("max_tokens", 16)
    return [
        engine.ChatRequest(id=f"r{i}", messages=f"question {i}", model=MODEL, params=params)
        for i in range(n)
    ]


async def collect(client, items):
    return [result async for result in client.map(items)]


def count_429(app) -> int:
    return app.stats.status_counts.get(429, 0)


async def test_chat_returns_the_answer_and_usage(autojump_clock):
    """client.chat returns the text, usage, model and one attempt."""
    async with mock_client(MockConfig()) as (client, _app):
        result = await client.chat("Say hi", model=MODEL)
    assert result.ok and result.output == "Mock reply to: Say hi"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.attempts == 1 and result.model == MODEL


async def test_requests_carry_the_package_version_in_their_user_agent(autojump_clock):
    """The user-agent names engine.__version__, written once in engine/_version.py."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["user-agent"])
        return httpx.Response(500)

    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=httpx.MockTransport(answer),
        max_attempts=1,
    ) as client:
        with pytest.raises(engine.EngineError):
            await client.chat("hi", model=MODEL)
    assert seen == [f"quota-engine/{engine.__version__}"]


class Person(pydantic.BaseModel):
    name: str
    age: int


async def test_structured_output_is_parsed_into_the_model(autojump_clock):
    """response_model makes result.output an instance of that model."""
    async with mock_client(MockConfig()) as (client, _app):
        result = await client.chat("Extract", model=MODEL, response_model=Person)
    assert isinstance(result.output, Person)


@pytest.mark.parametrize("semantics", ["token_bucket", "fixed_window"])
async def test_known_limits_draw_no_429(semantics, autojump_clock):
    """With the server's limits known, 400 requests at 120 RPM never see a 429."""
    config = MockConfig(rpm=120, tpm=1_000_000, quota_semantics=semantics, latency_ms=200)
    async with mock_client(config, limits=engine.Limits(rpm=120, tpm=1_000_000)) as (c, app):
        results = await collect(c, requests(400))
    assert all(r.ok for r in results)
    # zero 429s is the proof: a token bucket or fixed window legitimately
    # accepts up to twice the limit in a sliding 60 s window
    assert count_429(app) == 0


async def test_known_limits_paced_draw_no_429_on_a_per_second_server(autojump_clock):
    """Limits(burst=False) keeps a per-second sub-window server free of 429s."""
    config = MockConfig(rpm=600, quota_semantics="per_second", latency_ms=200)
    async with mock_client(config, limits=engine.Limits(rpm=600, burst=False)) as (c, app):
        results = await collect(c, requests(600))
    assert all(r.ok for r in results)
    assert count_429(app) == 0


async def test_default_burst_on_a_per_second_server_stays_under_one_percent_429s(
    autojump_clock,
):
    """Bursting first, then pacing after 429s with headroom: under 1% 429s."""
    config = MockConfig(rpm=600, quota_semantics="per_second", latency_ms=200)
    async with mock_client(config, limits=engine.Limits(rpm=600)) as (c, app):
        results = await collect(c, requests(1200))
    assert all(r.ok for r in results)
    assert count_429(app) <= 0.01 * 1200, app.stats.as_dict()["status_counts"]


async def test_token_bucket_burst_finishes_as_fast_as_the_server_allows(autojump_clock):
    """900 requests at 600 RPM on a fresh token bucket take ~30 s, not 90 s."""
    config = MockConfig(rpm=600, latency_ms=100)
    async with mock_client(config, limits=engine.Limits(rpm=600)) as (c, app):
        start = trio.current_time()
        results = await collect(c, requests(900))
        elapsed = trio.current_time() - start
    assert all(r.ok for r in results) and count_429(app) == 0
    assert 29.5 <= elapsed <= 31.5


async def test_unknown_limits_are_learned_and_respected(autojump_clock):
    """limits=None: the engine learns 120 RPM / 20k TPM from headers and stays under."""
    config = MockConfig(rpm=120, tpm=20_000, latency_ms=300)
    async with mock_client(config) as (c, app):
        results = await collect(c, requests(400, max_tokens=50))
    assert all(r.ok for r in results)
    assert count_429(app) == 0


async def test_per_day_limits_are_respected(autojump_clock):
    """rpd=30: the 31st request waits for the daily budget to refill."""
    config = MockConfig(rpm=600, rpd=30, latency_ms=50)
    limits = engine.Limits(rpm=600, rpd=30)
    async with mock_client(config, limits=limits) as (c, app):
        start = trio.current_time()
        results = await collect(c, requests(31))
        elapsed = trio.current_time() - start
    assert all(r.ok for r in results) and count_429(app) == 0
    assert elapsed >= 86_400 / 30


async def test_oversized_request_fails_fast_while_others_proceed(autojump_clock):
    """A request above the TPM limit fails at once with RequestTooLargeError."""
    config = MockConfig(rpm=600, tpm=2_000, latency_ms=50)
    async with mock_client(config, limits=engine.Limits(rpm=600, tpm=2_000)) as (c, _app):
        items = requests(5)
        items.insert(
            2, engine.ChatRequest(id="big", messages="x", model=MODEL, params={"max_tokens": 5_000})
        )
        start = trio.current_time()
        results = {r.id: r for r in await collect(c, items)}
        elapsed = trio.current_time() - start
    assert results["big"].error.code == "request_too_large"
    assert results["big"].attempts == 0
    assert all(r.ok for key, r in results.items() if key != "big")
    assert elapsed < 1.0


async def test_single_oversized_chat_raises(autojump_clock):
    """client.chat raises RequestTooLargeError for a request that can never fit."""
    async with mock_client(MockConfig(), limits=engine.Limits(tpm=100)) as (c, _app):
        with pytest.raises(engine.RequestTooLargeError):
            await c.chat("hello", model=MODEL, max_tokens=500)


async def test_leaving_map_early_cancels_its_work_and_returns_reservations(autojump_clock):
    """Breaking out of map leaves nothing in flight or waiting, and the client closes."""
    config = MockConfig(rpm=60, latency_ms=500)
    async with mock_client(config, limits=engine.Limits(rpm=60)) as (c, _app):
        seen = 0
        async for _result in c.map(requests(500)):
            seen += 1
            if seen == 5:
                break
        await trio.sleep(1)
        await trio.testing.wait_all_tasks_blocked()
        stats = c.statistics().limiter
        assert stats.in_flight == 0 and stats.waiting == 0
        # the quota still works for a new call
        assert (await c.chat("again", model=MODEL)).ok


async def test_cancelling_the_caller_of_map_leaves_no_task_behind(autojump_clock):
    """A cancel scope around map ends it; the client exits with nothing in flight."""
    config = MockConfig(rpm=60, latency_ms=500)
    async with mock_client(config, limits=engine.Limits(rpm=60)) as (c, _app):
        with trio.move_on_after(3):
            await collect(c, requests(500))
        await trio.testing.wait_all_tasks_blocked()
        assert c.statistics().limiter.in_flight == 0


async def test_insufficient_quota_stops_everything_within_one_round_trip(autojump_clock):
    """After insufficient_quota no new request is sent and map raises the fatal error."""
    config = MockConfig(insufficient_quota_after=20, latency_ms=100)
    results = []
    async with mock_client(config, concurrency=8) as (c, app):
        with pytest.raises(engine.InsufficientQuotaError, match="quota"):
            async for result in c.map(requests(1000)):
                results.append(result)
        assert c.fatal_error is not None
    codes = [r.error.code for r in results if r.error]
    assert "insufficient_quota" in codes
    # at most one round of in-flight requests (8) after the 20 admitted ones
    assert app.stats.as_dict()["requests"] <= 20 + 8
    assert len({r.id for r in results}) == len(results)


async def test_wrong_api_key_stops_the_run(autojump_clock):
    """A 401 is fatal: chat raises AuthenticationError without leaking the key."""
    async with mock_client(MockConfig(api_key="sk-the-right-one-000")) as (c, _app):
        with pytest.raises(engine.AuthenticationError) as info:
            await c.chat("hi", model=MODEL)
    assert KEY not in str(info.value) and KEY not in repr(info.value)


async def test_every_input_yields_exactly_one_result_under_faults(autojump_clock):
    """With 5xx, drops and malformed bodies, 300 inputs give 300 distinct results."""
    config = MockConfig(
        rpm=6000,
        error_500_rate=0.05,
        error_503_rate=0.05,
        drop_rate=0.03,
        malformed_json_rate=0.02,
        latency_ms=20,
        seed=7,
    )
    async with mock_client(config, limits=engine.Limits(rpm=6000)) as (c, _app):
        results = await collect(c, requests(300))
    assert sorted(r.id for r in results) == sorted(f"r{i}" for i in range(300))
    assert sum(r.ok for r in results) >= 280
    retried = [r for r in results if r.attempts > 1]
    assert retried, "some requests should have been retried"
    assert {r.error.code for r in results if r.error} <= {"invalid_response", "retries_exhausted"}


async def test_server_errors_are_retried_up_to_max_attempts(autojump_clock):
    """An always-failing server yields retries_exhausted after max_attempts attempts."""
    async with mock_client(MockConfig(error_503_rate=1.0), max_attempts=3) as (c, _app):
        with pytest.raises(engine.RetriesExhaustedError) as info:
            await c.chat("hi", model=MODEL)
    assert "3 attempts" in str(info.value)


async def test_bad_request_fails_at_once_without_retry(autojump_clock):
    """A 400 from the server fails that item with the server's message, one attempt."""
    async with mock_client(MockConfig()) as (c, _app):
        bad = {"custom_id": "bad", "body": {"model": MODEL, "n": 0, "messages": "hi"}}
        results = {r.id: r for r in await collect(c, [bad, *requests(3)])}
    assert results["bad"].error is not None and results["bad"].attempts == 1
    assert results["bad"].status_code == 400
    assert all(results[f"r{i}"].ok for i in range(3))


async def test_malformed_input_item_becomes_an_error_result(autojump_clock):
    """A map input that is not a request is an invalid_input result; others run."""
    async with mock_client(MockConfig()) as (c, _app):
        results = await collect(c, [42, *requests(2)])
    errors = [r for r in results if r.error]
    assert len(results) == 3 and len(errors) == 1
    assert errors[0].error.code == "invalid_input" and "item 0" in errors[0].error.message


async def test_batch_api_dicts_are_accepted(autojump_clock):
    """map takes Batch-API input lines and keeps their custom_id."""
    line = {
        "custom_id": "a-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    }
    async with mock_client(MockConfig()) as (c, _app):
        (result,) = await collect(c, [line])
    assert result.id == "a-1" and result.ok


async def test_token_estimate_is_counted_once_per_request(autojump_clock, monkeypatch):
    """Retries do not count tokens again."""
    import engine.endpoints.chat as chat_module

    calls = []
    real = chat_module.estimate_chat_tokens

    def counting(body, **kw):
        calls.append(1)
        return real(body, **kw)

    monkeypatch.setattr(chat_module.ChatEndpoint, "estimate_tokens", staticmethod(counting))
    async with mock_client(MockConfig(error_503_rate=1.0), max_attempts=4) as (c, _app):
        with pytest.raises(engine.RetriesExhaustedError):
            await c.chat("hi", model=MODEL)
    assert len(calls) == 1


async def test_async_iterable_input_is_consumed_lazily(autojump_clock):
    """map accepts an async iterable and pulls from it only as workers free up."""
    pulled = 0

    async def source():
        nonlocal pulled
        for request in requests(50):
            pulled += 1
            yield request

    async with mock_client(MockConfig(latency_ms=100), concurrency=4) as (c, _app):
        seen = 0
        async for _result in c.map(source()):
            seen += 1
            if seen == 1:
                assert pulled < 50
    assert seen == 50


def test_client_repr_and_errors_hide_the_api_key():
    """The key never shows in the client's repr."""

    async def main():
        async with mock_client(MockConfig()) as (c, _app):
            return repr(c)

    assert KEY not in trio.run(main)


async def test_results_keep_the_messages_sent(autojump_clock):
    """Every chat result carries its input messages, from ChatRequest and Batch-API dicts."""
    line = {
        "custom_id": "a-1",
        "body": {"model": MODEL, "messages": [{"role": "user", "content": "from a line"}]},
    }
    async with mock_client(MockConfig()) as (c, _app):
        results = {r.id: r for r in await collect(c, [line, *requests(1)])}
    assert results["a-1"].input == [{"role": "user", "content": "from a line"}]
    assert results["r0"].input == [{"role": "user", "content": "question 0"}]


async def test_failed_results_keep_the_messages_sent(autojump_clock):
    """A request that fails after retries still carries its input messages."""
    async with mock_client(MockConfig(error_503_rate=1.0), max_attempts=2) as (c, _app):
        (result,) = await collect(c, requests(1))
    assert result.error.code == "retries_exhausted"
    assert result.input == [{"role": "user", "content": "question 0"}]


async def test_two_maps_on_one_client_each_get_all_their_results(autojump_clock):
    """Workers switch between two concurrent maps; leaving one early leaves the other whole."""
    config = MockConfig(latency_ms=50)
    firsts: list[str] = []
    async with mock_client(config, concurrency=3) as (c, _app):
        async with trio.open_nursery() as nursery:

            async def abandoned() -> None:
                async for result in c.map(requests(40)):
                    firsts.append(result.id)
                    if len(firsts) == 4:
                        break

            nursery.start_soon(abandoned)
            others = [
                engine.ChatRequest(id=f"b{i}", messages=f"other {i}", model=MODEL)
                for i in range(30)
            ]
            seconds = await collect(c, others)
        await trio.testing.wait_all_tasks_blocked()
        assert c.statistics().limiter.in_flight == 0
        assert (await c.chat("again", model=MODEL)).ok
    assert len(firsts) == 4 and all(r.startswith("r") for r in firsts)
    assert sorted(r.id for r in seconds) == sorted(f"b{i}" for i in range(30))
    assert all(r.ok for r in seconds)


def _answering(body: bytes) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": [{"message": "just text"}], "usage": {}}',
        b'{"choices": [{"message": {"content": 42}}], "usage": {}}',
        b'{"choices": ["x"], "usage": {}}',
        b'{"choices": [], "usage": {}}',
        b'{"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": "many"}}',
    ],
)
async def test_oddly_shaped_2xx_bodies_are_item_errors(body, autojump_clock):
    """A 200 whose body does not have a chat completion's shape fails that item only."""
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=_answering(body), max_attempts=1
    ) as c:
        (result,) = await collect(c, requests(1))
    assert result.error is not None
    assert "malformed response body" in result.error.message


async def test_a_model_name_that_is_not_a_string_falls_back_to_the_one_asked_for(autojump_clock):
    """A 200 naming its model with a non-string keeps the requested model on the result."""
    body = b'{"model": 7, "choices": [{"message": {"content": "hi"}}], "usage": {}}'
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=_answering(body)
    ) as c:
        result = await c.chat("hello", model=MODEL)
    assert result.ok and result.output == "hi" and result.model == MODEL


async def test_a_server_that_never_answers_trips_the_read_timeout(nursery, autojump_clock):
    """Over loopback, each attempt ends at http_timeout's read bound; the item fails as timeout."""
    attempts_seen = 0

    async def silent(stream: trio.SocketStream) -> None:
        nonlocal attempts_seen
        attempts_seen += 1
        await stream.receive_some(65536)
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, host="127.0.0.1"), silent, 0)
    port = listeners[0].socket.getsockname()[1]
    start = trio.current_time()
    with trio.fail_after(120):
        async with engine.open_client(
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key=KEY,
            http_timeout=httpx.Timeout(10.0, read=2.0),
            max_attempts=2,
            retry_base_delay=0.5,
            retry_max_delay=0.5,
            concurrency=1,
        ) as c:
            (result,) = await collect(c, requests(1))
    elapsed = trio.current_time() - start
    assert result.error is not None and result.error.code == "retries_exhausted"
    assert "ReadTimeout" in result.error.message
    assert result.attempts == 2 and attempts_seen == 2
    assert 4.0 <= elapsed <= 4.6  # two 2 s reads and at most one 0.5 s backoff


async def test_an_id_with_a_line_break_is_not_sent_as_a_header(autojump_clock):
    """An id that cannot be a header value still gets its answer; only the header is left out."""
    odd = engine.ChatRequest(id="a\r\nx-injected: 1", messages="hi", model=MODEL)
    async with mock_client(MockConfig()) as (c, app):
        (result,) = await collect(c, [odd])
    assert result.ok and result.id == "a\r\nx-injected: 1"
    assert app.stats.as_dict()["client_request_ids"] == {}
