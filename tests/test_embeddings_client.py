"""client.embed and embeddings requests end to end against the in-process mock."""

from __future__ import annotations

import pytest
from mock_clients import mock_client

import engine
from engine.mock import MockConfig

MODEL = "text-embedding-3-small"


async def test_embed_returns_one_vector_per_input(autojump_clock):
    """embed() gives one vector per input, of the model's length, and the token usage."""
    async with mock_client(MockConfig()) as (client, app):
        result = await client.embed(["first text", "second text"], model=MODEL)
    assert isinstance(result, engine.EmbeddingResult)
    assert [len(vector) for vector in result.vectors] == [1536, 1536]
    assert result.usage.prompt_tokens > 0
    assert app.stats.tokens_charged == result.usage.total_tokens


async def test_dimensions_and_base64_give_the_same_vectors_as_floats(autojump_clock):
    """dimensions sets the length; a base64 answer decodes to the float answer's values."""
    async with mock_client(MockConfig()) as (client, _app):
        floats = await client.embed("text", model=MODEL, dimensions=8)
        packed = await client.embed("text", model=MODEL, dimensions=8, encoding_format="base64")
    assert len(floats.vectors[0]) == 8
    assert packed.vectors[0] == pytest.approx(floats.vectors[0], rel=1e-6)
    assert isinstance(packed.response["data"][0]["embedding"], str)


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (["word"] * 2049, "2,049 inputs"),
        (["fine", "token " * 9000], "input[1] has"),
        ([], "input is empty"),
    ],
)
async def test_bad_inputs_fail_locally_and_send_nothing(autojump_clock, given, words):
    """Too many inputs, an over-long one or none: InputError naming the request, no request sent."""
    async with mock_client(MockConfig()) as (client, app):
        with pytest.raises(engine.InputError) as info:
            await client.embed(given, model=MODEL, id="e-1")
    assert info.value.message.startswith("request 'e-1': ")
    assert words in info.value.message
    assert sum(app.stats.status_counts.values()) == 0


async def test_known_tpm_limit_draws_no_429_for_embeddings(autojump_clock):
    """Embeddings are charged their input tokens under the quota: a known TPM, no 429s."""
    config = MockConfig(rpm=10_000, tpm=3_000)
    items = [
        engine.EmbeddingRequest(
            id=f"e{i}", input=[f"text number {i} " * 20] * 5, model=MODEL, dimensions=4
        )
        for i in range(60)
    ]
    async with mock_client(config, limits=engine.Limits(rpm=10_000, tpm=3_000)) as (client, app):
        results = [result async for result in client.map(items)]
    assert all(result.ok for result in results)
    assert app.stats.status_counts.get(429, 0) == 0
    assert app.stats.tokens_charged == sum(r.usage.total_tokens for r in results)
