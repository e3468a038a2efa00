"""Structured outputs end to end: request shape, parsed answers, kept metadata, failures."""

from __future__ import annotations

import types
from contextlib import asynccontextmanager

import httpx
import orjson
import pydantic
import pytest
import trio

import engine
import engine._client as client_module
from engine.mock import MockConfig, create_app

MODEL = "gpt-4o-mini"
KEY = "sk-test-secret-key-0123456789"


class Address(pydantic.BaseModel):
    city: str


class Person(pydantic.BaseModel):
    """A person mentioned in the text."""

    name: str
    age: int
    address: Address


@asynccontextmanager
async def open_mock(config: MockConfig | None = None, **options):
    options.setdefault("retry_base_delay", 0.01)
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=httpx.ASGITransport(create_app(config or MockConfig())),
        **options,
    ) as client:
        yield client


def completion(content: str | None, *, finish_reason: str = "stop", refusal: str | None = None):
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


@asynccontextmanager
async def open_scripted(answer, sent: list | None = None):
    """A client whose server answers each chat body with ``answer(body)`` (a dict)."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        if sent is not None:
            sent.append(body)
        return httpx.Response(200, json=answer(body), headers={"x-request-id": "req_1"})

    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=httpx.MockTransport(handler)
    ) as client:
        yield client


def prompt_of(body) -> str:
    return body["messages"][-1]["content"]


async def test_request_carries_a_strict_json_schema(autojump_clock):
    """response_model sends a strict json_schema response_format named after the model."""
    sent: list = []
    good = '{"name": "Ada", "age": 36, "address": {"city": "London"}}'
    async with open_scripted(lambda body: completion(good), sent) as client:
        await client.chat("Ada, 36, London", model=MODEL, response_model=Person)
    response_format = sent[0]["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]
    assert schema["strict"] is True and schema["name"] == "Person"
    assert schema["schema"]["additionalProperties"] is False
    assert schema["schema"]["description"] == "A person mentioned in the text."


async def test_answer_is_parsed_with_its_metadata(autojump_clock):
    """The result holds the model instance, usage, model, attempts and the raw input."""
    messages = [{"role": "system", "content": "Extract."}, {"role": "user", "content": "Ada"}]
    async with open_mock() as client:
        result = await client.chat(messages, model=MODEL, response_model=Person, id="p1")
    assert isinstance(result.output, Person) and isinstance(result.output.address, Address)
    assert result.id == "p1" and result.model == MODEL and result.attempts == 1
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert result.usage.completion_tokens > 0
    assert result.input == messages


async def test_input_and_raw_content_stay_out_of_repr(autojump_clock):
    """A long prompt does not flood the result's repr."""
    prompt = "secret prompt text " * 20
    async with open_mock() as client:
        result = await client.chat(prompt, model=MODEL, response_model=Person)
    assert result.input == [{"role": "user", "content": prompt}]
    assert "secret prompt text" not in repr(result)


async def test_sent_at_is_the_real_call_time_not_the_queue_time(autojump_clock, monkeypatch):
    """A request held 60 s by the limiter records the send 60 s after it was queued."""
    # wall-clock time follows the virtual clock, so waits show in the timestamps
    fake_time = types.SimpleNamespace(time=lambda: 1_700_000_000 + trio.current_time())
    monkeypatch.setattr(client_module, "time", fake_time)
    requests = [
        engine.ChatRequest(id=f"r{i}", messages="x", model=MODEL, response_model=Person)
        for i in range(2)
    ]
    async with open_mock(MockConfig(rpm=1), limits=engine.Limits(rpm=1)) as client:
        results = {r.id: r async for r in client.map(requests)}
    first, second = sorted(results.values(), key=lambda r: r.timings.sent_at)
    assert first.timings.sent_at - first.timings.queued_at < 1
    assert 59 <= second.timings.sent_at - second.timings.queued_at <= 61
    assert second.timings.finished_at >= second.timings.sent_at


async def test_refusal_raises_response_validation_error(autojump_clock):
    """A refusal makes chat raise ResponseValidationError with code refusal."""
    answer = completion(None, refusal="I can't help with that.")
    async with open_scripted(lambda body: answer) as client:
        with pytest.raises(engine.ResponseValidationError, match="refused") as info:
            await client.chat("x", model=MODEL, response_model=Person, id="r1")
    assert info.value.code == "refusal" and info.value.raw == "I can't help with that."
    assert "'r1'" in info.value.message


async def test_truncated_answer_raises_output_truncated(autojump_clock):
    """finish_reason length (max_tokens too small) raises with code output_truncated."""
    async with open_mock() as client:
        with pytest.raises(engine.ResponseValidationError) as info:
            await client.chat("x", model=MODEL, response_model=Person, max_tokens=3)
    assert info.value.code == "output_truncated" and info.value.raw


async def test_schema_mismatch_raises_naming_the_field(autojump_clock):
    """JSON missing a required field raises schema_mismatch naming it."""
    answer = completion('{"name": "Ada", "address": {"city": "London"}}')
    async with open_scripted(lambda body: answer) as client:
        with pytest.raises(engine.ResponseValidationError, match="age") as info:
            await client.chat("x", model=MODEL, response_model=Person)
    assert info.value.code == "schema_mismatch"


async def test_failures_in_map_are_item_errors_with_raw_content(autojump_clock):
    """In map, refusal, truncation and mismatch are item errors keeping raw content and usage."""
    good = '{"name": "Ada", "age": 36, "address": {"city": "London"}}'
    bad = '{"name": "Ada", "age": "old", "address": {"city": "London"}}'
    truncated = '{"name": "Ad'
    answers = {
        "good": completion(good),
        "refuse": completion(None, refusal="No."),
        "cut": completion(truncated, finish_reason="length"),
        "mismatch": completion(bad),
    }
    requests = [
        engine.ChatRequest(id=key, messages=key, model=MODEL, response_model=Person)
        for key in answers
    ]
    async with open_scripted(lambda body: answers[prompt_of(body)]) as client:
        results = {r.id: r async for r in client.map(requests)}
    assert results["good"].ok and results["good"].output.age == 36
    expected = {"refuse": "refusal", "cut": "output_truncated", "mismatch": "schema_mismatch"}
    for key, code in expected.items():
        result = results[key]
        assert result.error.code == code and result.output is None
        assert result.usage.total_tokens == 18 and result.input == [
            {"role": "user", "content": key}
        ]
    assert results["refuse"].raw_content == "No."
    assert results["cut"].raw_content == truncated
    assert results["mismatch"].raw_content == bad


async def test_malformed_body_keeps_the_raw_text(autojump_clock):
    """A 200 with cut-off JSON is an invalid_response item error with the raw body kept."""
    requests = [engine.ChatRequest(id="m", messages="x", model=MODEL, response_model=Person)]
    async with open_mock(MockConfig(malformed_json_rate=1.0)) as client:
        (result,) = [r async for r in client.map(requests)]
    assert result.error.code == "invalid_response" and "'m'" in result.error.message
    assert result.raw_content and result.raw_content.startswith("{")
    assert result.input == [{"role": "user", "content": "x"}]
