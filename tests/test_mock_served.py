"""The mock served over loopback by ``engine mock``: the official openai SDK talks
to it, and its answers conform to OpenAI's published OpenAPI description."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import httpx
import openai
import pytest
import trio
from audio_fixtures import make_mp3, mp3_bytes
from pydantic import BaseModel

from engine.mock import serve_in_subprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = REPO_ROOT.parent / "shared" / "openapi" / "openai-openapi.json"
MODEL = "gpt-4o-mini"
API_KEY = "sk-mock-test-key"


@pytest.fixture(scope="module")
def base_url():
    """One mock on the default (builtin) server with generous quotas for this module."""
    with serve_in_subprocess(
        ["--rpm", "100000", "--tpm", "100000000", "--api-key", API_KEY]
    ) as url:
        yield url


@pytest.fixture(scope="session")
def openapi_spec():
    """OpenAI's OpenAPI description, parsed once per session."""
    if not OPENAPI_PATH.exists():
        pytest.skip(f"OpenAI OpenAPI description not found at {OPENAPI_PATH}")
    from openapi_core import Config, OpenAPI

    return OpenAPI.from_dict(
        json.loads(OPENAPI_PATH.read_text()), config=Config(spec_validator_cls=None)
    )


def sdk(base_url: str, **kwargs) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, **kwargs)


# -- the official SDK --------------------------------------------------------------


class Person(BaseModel):
    name: str
    age: int
    hobbies: list[str]
    email: str | None


async def test_sdk_chat_completion(base_url):
    """The SDK's chat.completions.create gets the mock's derived answer and usage."""
    async with sdk(base_url) as client:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "ping"}]
        )
    assert completion.choices[0].message.content == "Mock reply to: ping"
    assert completion.usage.total_tokens > 0


async def test_sdk_parse_with_pydantic_model(base_url):
    """chat.completions.parse returns a parsed instance of the pydantic model."""
    async with sdk(base_url) as client:
        completion = await client.chat.completions.parse(
            model=MODEL,
            messages=[{"role": "user", "content": "Describe a person"}],
            response_format=Person,
        )
    assert isinstance(completion.choices[0].message.parsed, Person)


async def test_sdk_transcription_of_generated_mp3(base_url, tmp_path):
    """audio.transcriptions.create uploads an MP3 and gets its text back."""
    path = make_mp3(tmp_path / "speech.mp3", 2.0)
    async with sdk(base_url) as client:
        with path.open("rb") as audio:
            transcription = await client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert transcription.text.startswith("Mock transcription of speech.mp3: 2.")


async def test_sdk_responses_create(base_url):
    """responses.create gets the mock's answer as output_text, with usage."""
    async with sdk(base_url) as client:
        response = await client.responses.create(
            model=MODEL, input="ping", instructions="Be brief."
        )
    assert response.output_text == "Mock reply to: ping"
    assert response.usage is not None and response.usage.output_tokens > 0


async def test_sdk_responses_parse_with_pydantic_model(base_url):
    """responses.parse with a pydantic model gets a parsed instance back."""
    async with sdk(base_url) as client:
        response = await client.responses.parse(
            model=MODEL, input="Describe a person", text_format=Person
        )
    assert isinstance(response.output_parsed, Person)


async def test_sdk_embeddings_create(base_url):
    """embeddings.create (base64 on the wire, as the SDK asks) decodes to the right lengths."""
    async with sdk(base_url) as client:
        answer = await client.embeddings.create(
            model="text-embedding-3-small", input=["one", "two"], dimensions=16
        )
        floats = await client.embeddings.create(
            model="text-embedding-3-small", input="one", dimensions=16, encoding_format="float"
        )
    assert [len(item.embedding) for item in answer.data] == [16, 16]
    assert answer.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)
    assert answer.usage.prompt_tokens > 0


async def test_sdk_wrong_key_raises_authentication_error(base_url):
    """A key the mock was not given surfaces as openai.AuthenticationError."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-wrong-key-000000", max_retries=0)
    async with client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.models.list()
    assert info.value.code == "invalid_api_key"


async def test_sdk_rate_limit_error_has_code_and_type():
    """A 429 from the uvicorn-served mock surfaces as RateLimitError with code and type."""
    with serve_in_subprocess(["--server", "uvicorn", "--rpm", "1"]) as url:
        async with sdk(url, max_retries=0) as client:
            messages = [{"role": "user", "content": "hi"}]
            await client.chat.completions.create(model=MODEL, messages=messages)
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(model=MODEL, messages=messages)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.type == "requests"
    assert int(info.value.response.headers["retry-after"]) >= 1


# -- conformance to OpenAI's OpenAPI description -------------------------------------


@attrs.frozen
class _Request:
    """openapi-core's Request protocol for a request to api.openai.com/v1."""

    path: str
    method: str
    host_url: str = "https://api.openai.com"
    content_type: str = "application/json"
    body: bytes | None = None
    parameters: object = attrs.field(factory=lambda: _parameters())


def _parameters():
    from openapi_core.datatypes import RequestParameters

    return RequestParameters()


@attrs.frozen
class _Response:
    """openapi-core's Response protocol built from an httpx response."""

    status_code: int
    content_type: str
    headers: dict
    data: bytes

    @classmethod
    def of(cls, response: httpx.Response) -> _Response:
        return cls(
            status_code=response.status_code,
            content_type=response.headers["content-type"].split(";")[0],
            headers=dict(response.headers),
            data=response.content,
        )


def assert_conforms(spec, method: str, path: str, response: httpx.Response) -> None:
    spec.validate_response(_Request(path=f"/v1{path}", method=method), _Response.of(response))


async def fetch(base_url: str, method: str, path: str, **kwargs) -> httpx.Response:
    headers = {"authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(base_url=base_url + "/", headers=headers) as client:
        return await client.request(method, path.lstrip("/"), **kwargs)


CHAT_BODIES = {
    "text": {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
    "n_and_max_tokens": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello there"}],
        "n": 2,
        "max_tokens": 2,
    },
    "json_schema": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "a person"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Person", "schema": Person.model_json_schema()},
        },
    },
}


@pytest.mark.parametrize("kind", sorted(CHAT_BODIES))
async def test_served_chat_completion_conforms(base_url, openapi_spec, kind):
    """Served chat completions validate against CreateChatCompletionResponse."""
    response = await fetch(base_url, "POST", "/chat/completions", json=CHAT_BODIES[kind])
    assert response.status_code == 200
    assert_conforms(openapi_spec, "post", "/chat/completions", response)


RESPONSES_BODIES = {
    "text": {"model": MODEL, "input": "hello", "instructions": "Be brief."},
    "incomplete": {"model": MODEL, "input": "hello " * 50, "max_output_tokens": 16},
    "json_schema": {
        "model": MODEL,
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "a person"}]}],
        "text": {
            "format": {
                "type": "json_schema",
                "name": "Person",
                "strict": True,
                "schema": Person.model_json_schema(),
            }
        },
    },
}


@pytest.mark.parametrize("kind", sorted(RESPONSES_BODIES))
async def test_served_response_conforms(base_url, openapi_spec, kind):
    """Served responses validate against the published Response object.

    With plain JSON Schema: openapi-core follows the ``discriminator`` of
    output items, which has no mapping in OpenAI's description and resolves
    to a schema that does not exist (``#/components/schemas/message``).
    """
    from jsonschema import Draft202012Validator

    response = await fetch(base_url, "POST", "/responses", json=RESPONSES_BODIES[kind])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    spec = json.loads(OPENAPI_PATH.read_text())
    schema = spec["components"]["schemas"]["Response"]
    Draft202012Validator({**schema, "components": spec["components"]}).validate(response.json())


@pytest.mark.parametrize("encoding", ["float", "base64"])
async def test_served_embeddings_conform(base_url, openapi_spec, encoding):
    """Served embeddings validate against CreateEmbeddingResponse."""
    body = {"model": "text-embedding-3-small", "input": ["a", "b"], "encoding_format": encoding}
    response = await fetch(base_url, "POST", "/embeddings", json=body)
    assert response.status_code == 200, response.text
    if encoding == "float":  # the published schema describes the float form only
        assert_conforms(openapi_spec, "post", "/embeddings", response)
    else:
        assert all(isinstance(item["embedding"], str) for item in response.json()["data"])


async def test_served_models_list_conforms(base_url, openapi_spec):
    """The served model list validates against ListModelsResponse."""
    response = await fetch(base_url, "GET", "/models")
    assert_conforms(openapi_spec, "get", "/models", response)


async def test_served_transcription_json_conforms(base_url, openapi_spec):
    """A served json transcription validates against the transcription response."""
    files = {"file": ("a.mp3", mp3_bytes(1.0), "audio/mpeg")}
    response = await fetch(
        base_url, "POST", "/audio/transcriptions", data={"model": "whisper-1"}, files=files
    )
    assert response.status_code == 200
    assert_conforms(openapi_spec, "post", "/audio/transcriptions", response)


async def test_served_verbose_transcription_matches_its_schema(base_url, openapi_spec):
    """A served verbose_json transcription validates against its component schema."""
    from jsonschema_path import SchemaPath
    from openapi_schema_validator import OAS31Validator

    files = {"file": ("a.mp3", mp3_bytes(1.0), "audio/mpeg")}
    form = {"model": "whisper-1", "response_format": "verbose_json"}
    response = await fetch(base_url, "POST", "/audio/transcriptions", data=form, files=files)
    spec = json.loads(OPENAPI_PATH.read_text())
    schema = SchemaPath.from_dict(spec) / "components" / "schemas"
    verbose = (schema / "CreateTranscriptionResponseVerboseJson").read_value()
    OAS31Validator({**verbose, "components": spec["components"]}).validate(response.json())


async def test_served_429_conforms(base_url, openapi_spec):
    """A served 429 ("Request too large") validates against TooManyRequests."""
    body = {**CHAT_BODIES["text"], "max_tokens": 200_000_000}
    response = await fetch(base_url, "POST", "/chat/completions", json=body)
    assert response.status_code == 429
    assert response.json()["error"]["message"].startswith("Request too large")
    assert_conforms(openapi_spec, "post", "/chat/completions", response)


async def test_conformance_check_catches_a_wrong_body(openapi_spec):
    """The OpenAPI check is not vacuous: a chat body without choices fails it."""
    from openapi_core.validation.response.exceptions import InvalidData

    bad = httpx.Response(
        200, json={"id": "x", "object": "chat.completion"}, headers={"x-request-id": "r"}
    )
    with pytest.raises(InvalidData):
        assert_conforms(openapi_spec, "post", "/chat/completions", bad)


# -- the command itself --------------------------------------------------------------


@pytest.mark.parametrize("server", ["hypercorn", "uvicorn"])
def test_other_servers_still_serve_the_mock(server):
    """--server hypercorn and --server uvicorn answer a chat completion too."""
    with serve_in_subprocess(["--server", server]) as url:
        response = httpx.post(
            f"{url}/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
        )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Mock reply to: hello"


def _served_answers(server: str) -> tuple[list[tuple[int, set[str], object]], dict]:
    """The same requests to a freshly served mock: (status, header names, body) each; stats."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "same on both"}]}
    args = ["--server", server, "--rpm", "3", "--api-key", API_KEY]
    answers = []
    with serve_in_subprocess(args) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {API_KEY}"}) as client:
            responses = [
                client.post("/chat/completions", json=chat),
                client.post("/chat/completions", content=b"{not json"),
                client.post("/nowhere", json={}),
                client.post("/chat/completions", json=chat, headers={"authorization": "Bearer x"}),
                client.post("/chat/completions", json=chat),
                client.post("/chat/completions", json=chat),
                client.post("/chat/completions", json=chat),  # the fourth admitted: 429
            ]
            stats = client.get(url.removesuffix("/v1") + "/_mock/stats").json()
    for response in responses:
        body = response.json()
        if "choices" in body:  # ids and times aside
            body = {name: body[name] for name in ("object", "model", "choices", "usage")}
        else:  # the wait in a 429's message depends on when it was sent
            body["error"]["message"] = re.sub(
                r"try again in [0-9.hms]+", "try again in ...", body["error"]["message"]
            )
        names = set(response.headers) - {"date", "server"}
        answers.append((response.status_code, names, body))
    return answers, stats


def test_builtin_and_uvicorn_serve_the_same_answers_and_stats():
    """The builtin server's synchronous path and uvicorn's ASGI call agree, stats included."""
    builtin, builtin_stats = _served_answers("builtin")
    uvicorn, uvicorn_stats = _served_answers("uvicorn")
    assert [status for status, _, _ in builtin] == [200, 400, 404, 401, 200, 200, 429]
    assert builtin == uvicorn
    assert builtin_stats == uvicorn_stats


def test_sigterm_stops_the_server_cleanly():
    """engine mock exits 0 on SIGTERM after printing its ready line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "mock", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("mock listening on http://127.0.0.1:")
        assert line.rstrip().endswith("/v1")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()


SLOW_SEED_DRAWS_MS = [1811, 2429, 866, 5383, 3273, 1601, 5684, 1251]  # seed 4, median 3 s, sigma 1


async def test_every_server_serves_latencies_of_seconds_out_of_order():
    """Median 3 s, sigma 1: all three servers answer 8 concurrent requests, out of order."""
    args = ["--latency-ms", "3000", "--latency-sigma", "1.0", "--seed", "4"]
    with contextlib.ExitStack() as stack:
        urls = {
            server: stack.enter_context(serve_in_subprocess(["--server", server, *args]))
            for server in ("builtin", "uvicorn", "hypercorn")
        }
        finished: dict[str, list[tuple[float, int, int]]] = {server: [] for server in urls}
        start = trio.current_time()

        async def ask(server: str, index: int) -> None:
            async with httpx.AsyncClient(base_url=urls[server], timeout=30.0) as client:
                body = {"model": MODEL, "messages": [{"role": "user", "content": f"n{index}"}]}
                response = await client.post("/chat/completions", json=body)
            finished[server].append((trio.current_time() - start, index, response.status_code))

        async with trio.open_nursery() as nursery:
            for server in urls:
                for index in range(len(SLOW_SEED_DRAWS_MS)):
                    nursery.start_soon(ask, server, index)
    for server, answers in finished.items():
        assert [status for _, _, status in answers] == [200] * 8, server
        order = [index for _, index, _ in answers]
        assert order != sorted(order), server
        times = [elapsed for elapsed, _, _ in answers]
        # The slowest answer took at least the longest draw; the fastest well under it.
        assert max(times) >= max(SLOW_SEED_DRAWS_MS) / 1000, server
        assert min(times) < 2.0, server
