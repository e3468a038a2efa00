"""client.respond and Responses API requests end to end against the in-process mock."""

from __future__ import annotations

import pydantic
import pytest
from mock_clients import mock_client

import engine
from engine.mock import MockConfig

MODEL = "gpt-4o-mini"


class Person(pydantic.BaseModel):
    """Someone mentioned in the text."""

    name: str
    age: int
    nickname: str | None = None


async def test_respond_returns_the_output_text_and_usage(autojump_clock):
    """A plain respond() gives the mock's output text and its input/output token usage."""
    async with mock_client(MockConfig()) as (client, app):
        result = await client.respond("Say hi", model=MODEL, instructions="Be brief.")
    assert isinstance(result, engine.ResponseResult)
    assert result.ok and result.output == "Mock reply to: Say hi"
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    assert result.status == "completed" and result.attempts == 1
    assert app.stats.tokens_charged == result.usage.total_tokens


async def test_respond_with_a_model_parses_the_structured_output(autojump_clock):
    """response_model goes out as text.format json_schema and comes back as an instance."""
    async with mock_client(MockConfig()) as (client, _app):
        result = await client.respond("Ada was 36.", model=MODEL, response_model=Person)
    assert isinstance(result.output, Person)
    assert result.response is not None
    assert result.response["text"]["format"]["type"] == "json_schema"
    assert result.response["text"]["format"]["strict"] is True


async def test_structured_answer_cut_at_max_output_tokens_raises(autojump_clock):
    """An incomplete structured answer raises ResponseValidationError (output_truncated)."""

    class Long(pydantic.BaseModel):
        one_long_field_name_for_the_mock: str
        another_long_field_name_for_the_mock: str
        a_third_long_field_name_for_the_mock: str

    async with mock_client(MockConfig()) as (client, _app):
        with pytest.raises(engine.ResponseValidationError) as info:
            await client.respond("x", model=MODEL, response_model=Long, max_output_tokens=16)
    assert info.value.code == "output_truncated"
    assert "raise max_output_tokens" in info.value.message


async def test_batch_lines_and_request_objects_mix_in_map(autojump_clock):
    """Responses Batch lines and ResponseRequest objects run beside chat in one map."""
    items = [
        {"custom_id": "line", "url": "/v1/responses", "body": {"model": MODEL, "input": "a"}},
        engine.ResponseRequest(id="obj", input="b", model=MODEL, response_model=Person),
        engine.ChatRequest(id="chat", messages="c", model=MODEL),
    ]
    async with mock_client(MockConfig()) as (client, _app):
        results = {result.id: result async for result in client.map(items)}
    assert results["line"].output == "Mock reply to: a"
    assert isinstance(results["obj"].output, Person)
    assert isinstance(results["chat"], engine.ChatResult) and results["chat"].ok
    statistics = client.statistics()
    assert statistics.succeeded == 3
    assert statistics.prompt_tokens == sum(
        getattr(r.usage, "prompt_tokens", 0) or getattr(r.usage, "input_tokens", 0)
        for r in results.values()
    )


async def test_known_limits_draw_no_429_for_responses(autojump_clock):
    """Responses are charged under the quota like chat: known limits, no 429s."""
    config = MockConfig(rpm=60, tpm=20_000)
    items = [
        engine.ResponseRequest(
            id=f"r{i}", input=f"question {i}", model=MODEL, params={"max_output_tokens": 30}
        )
        for i in range(150)
    ]
    async with mock_client(config, limits=engine.Limits(rpm=60, tpm=20_000)) as (client, app):
        results = [result async for result in client.map(items)]
    assert all(result.ok for result in results)
    assert app.stats.status_counts.get(429, 0) == 0


async def test_bad_responses_line_fails_alone(autojump_clock):
    """A responses line without input fails as invalid_input; the others go on."""
    items = [
        {"custom_id": "bad", "url": "/v1/responses", "body": {"model": MODEL}},
        {"custom_id": "good", "url": "/v1/responses", "body": {"model": MODEL, "input": "a"}},
    ]
    async with mock_client(MockConfig()) as (client, app):
        results = {result.id: result async for result in client.map(items)}
    assert isinstance(results["bad"], engine.ResponseResult)
    assert results["bad"].error is not None and results["bad"].error.code == "invalid_input"
    assert "body.input is missing" in results["bad"].error.message
    assert results["good"].ok
    assert sum(app.stats.status_counts.values()) == 1
