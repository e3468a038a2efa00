"""The mock ASGI app in-process (httpx.ASGITransport under trio)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
import trio
from audio_fixtures import make_corrupt_mp3, make_non_audio, mp3_bytes
from pydantic import BaseModel

from engine._tokens import chat_prompt_tokens, count_tokens
from engine.mock import DroppedConnection, MockConfig, create_app

MODEL = "gpt-4o-mini"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, mock!"}]}
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}


def client_for(app, api_key: str = "sk-test-key") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://mock",
        headers={"authorization": f"Bearer {api_key}"},
    )


async def post_chat(app, body=HELLO, **kwargs) -> httpx.Response:
    async with client_for(app, **kwargs) as client:
        return await client.post("/v1/chat/completions", json=body)


def assert_error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


# -- chat completions ----------------------------------------------------------


async def test_chat_answer_is_derived_from_the_last_user_message():
    """The reply quotes the request, so tests can match answers to requests."""
    response = await post_chat(create_app())
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Mock reply to: Hello, mock!"
    assert body["choices"][0]["message"]["refusal"] is None
    assert body["choices"][0]["logprobs"] is None
    assert "tool_calls" not in body["choices"][0]["message"]


async def test_chat_usage_agrees_with_the_engine_estimate_on_plain_text():
    """The mock's own count equals the engine's on plain text: both follow OpenAI's rule."""
    body = (await post_chat(create_app())).json()
    assert body["usage"]["prompt_tokens"] == chat_prompt_tokens(HELLO["messages"], MODEL)
    assert body["usage"]["completion_tokens"] == count_tokens("Mock reply to: Hello, mock!", MODEL)
    assert body["usage"]["total_tokens"] == (
        body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


async def test_chat_respects_n_and_max_tokens():
    """n choices, each cut at max_tokens with finish_reason length; usage counts all."""
    body = (await post_chat(create_app(), {**HELLO, "n": 3, "max_tokens": 2})).json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1, 2]
    assert {choice["finish_reason"] for choice in body["choices"]} == {"length"}
    assert body["usage"]["completion_tokens"] == 6


async def test_chat_max_completion_tokens_wins_over_max_tokens():
    """max_completion_tokens is the per-choice limit when both are given."""
    request = {**HELLO, "max_tokens": 50, "max_completion_tokens": 1}
    body = (await post_chat(create_app(), request)).json()
    assert body["usage"]["completion_tokens"] == 1


class Answer(BaseModel):
    city: str
    population: int
    districts: list[str]
    mayor: str | None


async def test_chat_json_schema_answer_is_valid_against_the_schema():
    """A json_schema response_format is answered with a schema-valid instance."""
    schema = Answer.model_json_schema()
    request = {
        **HELLO,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Answer", "schema": schema, "strict": True},
        },
    }
    content = (await post_chat(create_app(), request)).json()["choices"][0]["message"]["content"]
    jsonschema.validate(json.loads(content), schema)
    Answer.model_validate_json(content)


async def test_chat_json_object_answer_is_a_json_object():
    """json_object mode answers with a JSON object."""
    request = {**HELLO, "response_format": {"type": "json_object"}}
    content = (await post_chat(create_app(), request)).json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict)


async def test_chat_response_ids_are_unique():
    """Identical requests still get distinct ids and x-request-ids."""
    app = create_app()
    first, second = await post_chat(app), await post_chat(app)
    assert first.json()["id"] != second.json()["id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


# -- quotas and headers --------------------------------------------------------


async def test_every_answer_carries_rate_limit_headers_when_limited():
    """With RPM and TPM set, a 200 carries all six x-ratelimit-* headers and x-request-id."""
    response = await post_chat(create_app(MockConfig(rpm=10, tpm=10_000)))
    assert RATE_LIMIT_HEADERS <= set(response.headers)
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-ratelimit-remaining-requests"] == "9"


async def test_rpm_exceeded_gives_openai_429(autojump_clock):
    """The request over RPM gets 429 type requests, code rate_limit_exceeded, retry headers."""
    app = create_app(MockConfig(rpm=2))
    for _ in range(2):
        assert (await post_chat(app)).status_code == 200
    response = await post_chat(app)
    error = assert_error_shape(response, 429)
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    assert error["message"].startswith(
        "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): "
        "Limit 2, Used 2, Requested 1. Please try again in 30s."
    )
    assert response.headers["retry-after"] == "30"
    assert response.headers["retry-after-ms"] == "30000"


async def test_tpm_exceeded_gives_type_tokens():
    """A request over the TPM budget gets 429 with type tokens."""
    app = create_app(MockConfig(tpm=1000))
    request = {**HELLO, "max_tokens": 600}
    assert (await post_chat(app, request)).status_code == 200
    app_config = create_app(MockConfig(tpm=1000, correct_to_usage=False))
    await post_chat(app_config, request)
    error = assert_error_shape(await post_chat(app_config, request), 429)
    assert error["type"] == "tokens"
    assert "tokens per min (TPM)" in error["message"]


async def test_retry_after_headers_can_be_switched_off():
    """Both retry headers can be left out of a 429."""
    app = create_app(MockConfig(rpm=1, retry_after_header=False, retry_after_ms_header=False))
    await post_chat(app)
    response = await post_chat(app)
    assert response.status_code == 429
    assert "retry-after" not in response.headers
    assert "retry-after-ms" not in response.headers


async def test_quota_refills_with_time(autojump_clock):
    """At 60 RPM, a refused request is admitted again one second later."""
    app = create_app(MockConfig(rpm=60))
    for _ in range(60):
        await post_chat(app)
    assert (await post_chat(app)).status_code == 429
    await trio.sleep(1.0)
    assert (await post_chat(app)).status_code == 200


async def test_arrival_charge_is_corrected_to_usage():
    """After the answer, remaining tokens reflect real usage, not the budget."""
    response = await post_chat(create_app(MockConfig(tpm=100_000)), {**HELLO, "max_tokens": 500})
    used = response.json()["usage"]["total_tokens"]
    assert int(response.headers["x-ratelimit-remaining-tokens"]) == 100_000 - used


async def test_arrival_charge_kept_without_correction():
    """With correct_to_usage off, the prompt + n x budget charge stays."""
    app = create_app(MockConfig(tpm=100_000, correct_to_usage=False))
    response = await post_chat(app, {**HELLO, "max_tokens": 500, "n": 2})
    prompt = response.json()["usage"]["prompt_tokens"]
    assert int(response.headers["x-ratelimit-remaining-tokens"]) == 100_000 - prompt - 1000


async def test_request_too_large():
    """A request whose cost exceeds TPM gets 429 'Request too large', type tokens."""
    response = await post_chat(create_app(MockConfig(tpm=100)), {**HELLO, "max_tokens": 200})
    error = assert_error_shape(response, 429)
    assert error["message"].startswith(
        "Request too large for gpt-4o-mini in organization org-mock on tokens per min (TPM): "
        "Limit 100, Requested "
    )
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")


async def test_insufficient_quota_after_n_requests():
    """After the configured number of requests, 429 insufficient_quota."""
    app = create_app(MockConfig(insufficient_quota_after=1))
    assert (await post_chat(app)).status_code == 200
    error = assert_error_shape(await post_chat(app), 429)
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")


async def test_wrong_api_key_gets_401_invalid_api_key():
    """A configured key refuses others with OpenAI's invalid_api_key shape, masking the key."""
    app = create_app(MockConfig(api_key="sk-right-key-123456"))
    assert (await post_chat(app, api_key="sk-right-key-123456")).status_code == 200
    response = await post_chat(app, api_key="sk-wrong-key-987654")
    error = assert_error_shape(response, 401)
    assert error["code"] == "invalid_api_key"
    assert "sk-wrong-key-987654" not in response.text


async def test_limit_groups_are_per_api_key():
    """Two keys have separate quotas for the same model."""
    app = create_app(MockConfig(rpm=1))
    assert (await post_chat(app, api_key="sk-one")).status_code == 200
    assert (await post_chat(app, api_key="sk-two")).status_code == 200
    assert (await post_chat(app, api_key="sk-one")).status_code == 429


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": HELLO["messages"]}).encode(), "model"),
        (json.dumps({"model": MODEL}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": []}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": ["hi"]}).encode(), "messages[0]"),
        (json.dumps({**HELLO, "n": 0}).encode(), "n"),
        (json.dumps({**HELLO, "max_tokens": "ten"}).encode(), "max_tokens"),
        (
            json.dumps({**HELLO, "response_format": {"type": "yaml"}}).encode(),
            "response_format.type",
        ),
        (
            json.dumps(
                {
                    **HELLO,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}},
                    },
                }
            ).encode(),
            "response_format",
        ),
    ],
)
async def test_bad_chat_requests_get_400_in_openai_shape(content, param):
    """Malformed or incomplete requests get 400 naming the bad parameter."""
    async with client_for(create_app()) as client:
        response = await client.post("/v1/chat/completions", content=content)
    assert assert_error_shape(response, 400)["param"] == param


async def test_unknown_path_gets_404():
    """An unknown path gets OpenAI's 'Invalid URL' 404."""
    async with client_for(create_app()) as client:
        response = await client.post("/v1/nothing-here", json={})
    assert "Invalid URL (POST /v1/nothing-here)" in assert_error_shape(response, 404)["message"]


async def test_wrong_method_gets_405():
    """GET on a POST endpoint is refused with 405."""
    async with client_for(create_app()) as client:
        response = await client.get("/v1/chat/completions")
    assert_error_shape(response, 405)


async def test_oversized_body_gets_413():
    """A body above max_body_bytes gets 413 without being parsed."""
    app = create_app(MockConfig(max_body_bytes=100))
    request = {**HELLO, "messages": [{"role": "user", "content": "x" * 200}]}
    assert_error_shape(await post_chat(app, request), 413)


async def test_bad_input_is_not_charged():
    """A rejected request consumes no quota."""
    app = create_app(MockConfig(rpm=1))
    async with client_for(app) as client:
        await client.post("/v1/chat/completions", content=b"{")
    assert (await post_chat(app)).status_code == 200


# -- faults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "status"), [("error_500_rate", 500), ("error_502_rate", 502), ("error_503_rate", 503)]
)
async def test_server_error_faults(field, status):
    """A 5xx fault answers that status with an OpenAI-shaped server_error body."""
    response = await post_chat(create_app(MockConfig(**{field: 1.0})))
    assert assert_error_shape(response, status)["type"] == "server_error"


async def test_drop_fault_raises_a_transport_error_in_process():
    """A dropped connection reaches an httpx client as RemoteProtocolError."""
    with pytest.raises(httpx.RemoteProtocolError) as info:
        await post_chat(create_app(MockConfig(drop_rate=1.0)))
    assert isinstance(info.value, DroppedConnection)


async def test_malformed_json_fault_sends_truncated_body():
    """A malformed-JSON fault is a 200 whose body does not parse."""
    response = await post_chat(create_app(MockConfig(malformed_json_rate=1.0)))
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


async def test_slow_body_fault_takes_slow_body_ms(autojump_clock):
    """A slow body arrives complete, slow_body_ms later."""
    app = create_app(MockConfig(slow_body_rate=1.0, slow_body_ms=3000))
    start = trio.current_time()
    response = await post_chat(app)
    assert trio.current_time() - start == pytest.approx(3.0)
    assert response.json()["object"] == "chat.completion"


async def test_missing_headers_fault_drops_every_rate_limit_header():
    """The missing-headers fault leaves out all x-ratelimit-* headers."""
    response = await post_chat(create_app(MockConfig(rpm=10, tpm=10_000, missing_headers_rate=1)))
    assert not RATE_LIMIT_HEADERS & set(response.headers)


async def test_missing_limit_headers_fault_keeps_remaining_and_reset():
    """The Azure-like fault drops only x-ratelimit-limit-*."""
    app = create_app(MockConfig(rpm=10, tpm=10_000, missing_limit_headers_rate=1))
    names = set((await post_chat(app)).headers) & RATE_LIMIT_HEADERS
    assert names == {name for name in RATE_LIMIT_HEADERS if "-limit-" not in name}


async def test_fault_rates_must_add_up_to_at_most_one():
    """Body fault rates that exceed 1 in total are refused."""
    with pytest.raises(ValueError, match="add up"):
        MockConfig(error_500_rate=0.6, drop_rate=0.6)


async def test_seeded_faults_repeat():
    """Two apps with the same seed inject the same fault sequence."""

    async def statuses(app):
        return [(await post_chat(app)).status_code for _ in range(20)]

    config = MockConfig(error_500_rate=0.5, seed=7)
    first = await statuses(create_app(config))
    assert first == await statuses(create_app(config))
    assert {200, 500} == set(first)


# -- latency -------------------------------------------------------------------


async def test_fixed_latency_plus_per_output_token(autojump_clock):
    """Latency is latency_ms plus ms_per_output_token per completion token of a choice."""
    app = create_app(MockConfig(latency_ms=200, ms_per_output_token=10))
    start = trio.current_time()
    body = (await post_chat(app, {**HELLO, "max_tokens": 3})).json()
    assert body["usage"]["completion_tokens"] == 3
    assert trio.current_time() - start == pytest.approx(0.23)


async def test_lognormal_latency_is_seeded(autojump_clock):
    """A seeded lognormal latency repeats exactly and varies between requests."""

    async def latencies(app):
        times = []
        for _ in range(5):
            start = trio.current_time()
            await post_chat(app)
            times.append(trio.current_time() - start)
        return times

    config = MockConfig(latency_ms=100, latency_sigma=0.5, seed=3)
    first = await latencies(create_app(config))
    assert first == pytest.approx(await latencies(create_app(config)))
    assert len(set(first)) == 5


async def test_concurrent_requests_sleep_concurrently(autojump_clock):
    """Latency is per request: ten concurrent requests take one latency, not ten."""
    app = create_app(MockConfig(latency_ms=1000))
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(post_chat, app)
    assert trio.current_time() - start == pytest.approx(1.0)


# -- accounting and control ----------------------------------------------------


async def test_stats_count_statuses_tokens_and_windows():
    """Stats report statuses, tokens charged and the 60 s window maxima."""
    app = create_app(MockConfig(rpm=2))
    usages = [(await post_chat(app)).json()["usage"]["total_tokens"] for _ in range(2)]
    await post_chat(app)
    async with client_for(app) as client:
        stats = (await client.get("/_mock/stats")).json()
    assert stats["status_counts"] == {"200": 2, "429": 1}
    assert stats["tokens_charged"] == sum(usages)
    assert stats["max_requests_per_60s"] == 2


async def test_stats_count_sends_per_client_request_id():
    """Each X-Client-Request-Id value is counted, so retries show up as 2."""
    app = create_app()
    async with client_for(app) as client:
        for value in ("a", "a", "b"):
            await client.post(
                "/v1/chat/completions", json=HELLO, headers={"x-client-request-id": value}
            )
        stats = (await client.get("/_mock/stats")).json()
    assert stats["client_request_ids"] == {"a": 2, "b": 1}


async def test_reset_clears_stats_and_quotas():
    """POST /_mock/reset gives full quotas and zeroed counters."""
    app = create_app(MockConfig(rpm=1))
    await post_chat(app)
    async with client_for(app) as client:
        assert (await client.post("/_mock/reset")).status_code == 200
        assert (await client.get("/_mock/stats")).json()["requests"] == 0
    assert (await post_chat(app)).status_code == 200


async def test_config_endpoint_changes_limits_mid_run():
    """POST /_mock/config with a new rpm applies at once, keeping usage."""
    app = create_app(MockConfig(rpm=1, quota_semantics="fixed_window"))
    await post_chat(app)
    assert (await post_chat(app)).status_code == 429
    async with client_for(app) as client:
        response = await client.post("/_mock/config", json={"rpm": 3})
    assert response.json()["rpm"] == 3
    assert [(await post_chat(app)).status_code for _ in range(3)] == [200, 200, 429]


async def test_config_endpoint_refuses_unknown_fields():
    """An unknown or invalid field gets 400 and changes nothing."""
    app = create_app(MockConfig(rpm=1))
    async with client_for(app) as client:
        assert_error_shape(await client.post("/_mock/config", json={"rpmm": 3}), 400)
        assert_error_shape(await client.post("/_mock/config", json={"drop_rate": 2}), 400)
        assert (await client.get("/_mock/config")).json()["rpm"] == 1


async def test_models_lists_configured_models():
    """GET /v1/models lists the configured models."""
    async with client_for(create_app(MockConfig(models=("m1", "m2")))) as client:
        body = (await client.get("/v1/models")).json()
    assert [model["id"] for model in body["data"]] == ["m1", "m2"]


async def test_lifespan_startup_and_shutdown_complete():
    """The app answers the ASGI lifespan protocol."""
    app = create_app()
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- transcriptions ------------------------------------------------------------


async def transcribe(app, data: bytes, filename: str = "call.mp3", **fields) -> httpx.Response:
    form = {"model": "whisper-1", **fields}
    async with client_for(app) as client:
        return await client.post(
            "/v1/audio/transcriptions", data=form, files={"file": (filename, data, "audio/mpeg")}
        )


async def test_transcription_json_has_text():
    """The default json format answers {"text", "usage"} with the audio seconds."""
    response = await transcribe(create_app(), mp3_bytes(3.0))
    body = response.json()
    assert body["text"].startswith("Mock transcription of call.mp3: 3.")
    assert body["usage"] == {"type": "duration", "seconds": 4}


async def test_transcription_verbose_json_has_duration():
    """verbose_json carries the duration mutagen reads."""
    body = (await transcribe(create_app(), mp3_bytes(5.0), response_format="verbose_json")).json()
    assert body["duration"] == pytest.approx(5.0, abs=0.15)
    assert body["language"] == "english"


async def test_transcription_text_is_plain_text():
    """The text format answers text/plain."""
    response = await transcribe(create_app(), mp3_bytes(1.0), response_format="text")
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("Mock transcription of call.mp3")


async def test_corrupt_mp3_gets_400(tmp_path):
    """An MP3 with garbage frames gets 400 in OpenAI's shape."""
    data = make_corrupt_mp3(tmp_path / "bad.mp3").read_bytes()
    assert assert_error_shape(await transcribe(create_app(), data), 400)["param"] == "file"


async def test_non_audio_file_gets_400(tmp_path):
    """A text file named .mp3 gets 400."""
    data = make_non_audio(tmp_path / "notes.mp3").read_bytes()
    assert_error_shape(await transcribe(create_app(), data), 400)


async def test_unsupported_extension_gets_400():
    """A file whose extension is not an audio format gets 'Invalid file format'."""
    response = await transcribe(create_app(), mp3_bytes(1.0), filename="call.txt")
    assert "Invalid file format" in assert_error_shape(response, 400)["message"]


async def test_transcription_without_file_gets_400():
    """A form without a file gets 400 naming the file parameter."""
    async with client_for(create_app()) as client:
        response = await client.post(
            "/v1/audio/transcriptions", files={"model": (None, "whisper-1")}
        )
    assert assert_error_shape(response, 400)["param"] == "file"


async def test_transcription_non_multipart_gets_400():
    """A JSON body on the transcription endpoint gets 400."""
    async with client_for(create_app()) as client:
        response = await client.post("/v1/audio/transcriptions", json={"model": "whisper-1"})
    assert_error_shape(response, 400)


async def test_transcriptions_count_against_rpm():
    """Transcriptions use the requests quota of their model's group."""
    app = create_app(MockConfig(rpm=1))
    assert (await transcribe(app, mp3_bytes(1.0))).status_code == 200
    assert (await transcribe(app, mp3_bytes(1.0))).status_code == 429


# -- respond_at_once: the synchronous path the builtin server uses ------------------


def answer_at_once(app, method: str, path: str, body: bytes = b"", headers=()):
    """(status, headers, body) from ``app.respond_at_once``; None when it declines."""
    head_lines = [(b"content-length", b"%d" % len(body)), *headers]
    answer = app.respond_at_once(method, path, head_lines, body)
    if answer is None:
        return None
    head, payload = answer
    assert head.endswith(b"\r\n") and not head.endswith(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-1]
    parsed = [line.split(": ", 1) for line in lines]
    return int(status_line.split()[1]), {name: value for name, value in parsed}, payload


def comparable(body: bytes):
    """A response body for comparison: JSON without the wall-clock ``created``."""
    try:
        document = json.loads(body)
    except ValueError:
        return body
    if isinstance(document, dict):
        document.pop("created", None)
    return document


async def same_answers(config: MockConfig, requests: list[tuple[str, str, bytes, dict]]) -> None:
    """One app answers through ASGI (httpx), a twin through respond_at_once: same answers.

    Status, headers and body (``created`` aside) per request, and the stats
    after all of them.  Time stands still (autojump clock, no sleeps).
    """
    asgi_app, fast_app = create_app(config), create_app(config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi_app), base_url="http://mock"
    ) as client:
        for method, path, body, headers in requests:
            response = await client.request(method, path, content=body, headers=headers)
            fast = answer_at_once(
                fast_app,
                method,
                path,
                body,
                [(name.lower().encode(), value.encode()) for name, value in headers.items()],
            )
            assert fast is not None, (method, path)
            status, fast_headers, fast_body = fast
            assert status == response.status_code
            assert fast_headers == dict(response.headers)
            assert comparable(fast_body) == comparable(response.content)
    assert fast_app.stats.as_dict() == asgi_app.stats.as_dict()


def chat(text: str = "Hello, mock!", key: str | None = "sk-test-key") -> tuple:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]})
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return ("POST", "/v1/chat/completions", body.encode(), headers)


async def test_respond_at_once_matches_asgi_for_chat_with_quotas_off(autojump_clock):
    """200 chat answers, cached and not, are the same through both paths."""
    await same_answers(MockConfig(), [chat(), chat(), chat("other")])


async def test_respond_at_once_matches_asgi_for_chat_with_quotas_on(autojump_clock):
    """Rate-limit headers, the 429 for requests and the one for tokens are the same."""
    await same_answers(MockConfig(rpm=2, tpm=1_000_000), [chat(), chat("b"), chat("c")])
    await same_answers(MockConfig(tpm=40), [chat(), chat(), chat("long " * 80)])


async def test_respond_at_once_matches_asgi_for_errors(autojump_clock):
    """401 (wrong or no key), 404, 405, 400 for bad JSON or fields, 413: the same."""
    bad = {"content-type": "application/json", "authorization": "Bearer sk-right-key-123"}
    await same_answers(
        MockConfig(api_key="sk-right-key-123", max_body_bytes=200),
        [
            chat(key="sk-wrong-key-456"),
            chat(key=None),
            ("POST", "/v1/unknown", b"{}", bad),
            ("GET", "/v1/chat/completions", b"", bad),
            ("POST", "/v1/chat/completions", b"{not json", bad),
            ("POST", "/v1/chat/completions", b'{"model": "gpt-4o-mini"}', bad),
            ("POST", "/v1/chat/completions", b"[" + b" " * 300 + b"]", bad),
            chat("fine", key="sk-right-key-123"),
        ],
    )


async def test_respond_at_once_matches_asgi_for_insufficient_quota(autojump_clock):
    """The insufficient_quota 429 after N admitted requests is the same."""
    await same_answers(MockConfig(insufficient_quota_after=1), [chat(), chat()])


async def test_respond_at_once_matches_asgi_for_transcriptions(autojump_clock):
    """A transcription (multipart upload) answers the same through both paths."""
    request = httpx.Request(
        "POST",
        "http://mock/v1/audio/transcriptions",
        data={"model": "whisper-1", "response_format": "verbose_json"},
        files={"file": ("call.mp3", mp3_bytes(0.5), "audio/mpeg")},
    )
    body = request.read()
    headers = {"content-type": request.headers["content-type"], "authorization": "Bearer k"}
    await same_answers(MockConfig(rpm=10), [("POST", "/v1/audio/transcriptions", body, headers)])


def test_respond_at_once_declines_when_the_answer_could_sleep():
    """With latency or a fault rate configured it returns None and uses nothing up."""
    for fields in ({"latency_ms": 1.0}, {"slow_body_rate": 0.1}, {"drop_rate": 0.1}):
        app = create_app(MockConfig(seed=1, **fields))
        assert answer_at_once(app, *chat()[:3]) is None
        assert app.stats.as_dict()["requests"] == 0
        assert next(app._numbers) == 1
        assert app._rng.random() == create_app(MockConfig(seed=1))._rng.random()


def test_endpoints_answered_at_once_are_the_post_routes_of_the_asgi_call():
    """respond_at_once serves exactly the POST routes it has replies for, no other method."""
    app = create_app()
    assert set(app._replies) <= set(app._routes)
    for path in app._replies:
        assert set(app._routes[path]) == {"POST"}
