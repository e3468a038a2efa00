"""The mock's streamed answers (``"stream": true``, issue 16): their events, their timing
and their faults, in-process (the ASGI app under trio's MockClock) and served."""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import random
import statistics
import time
from typing import Any

import httpx
import orjson
import pytest
import sniffio
import trio

from engine.mock import DroppedConnection, MockConfig, create_app, serve_in_subprocess
from engine.mock._app import TimedStream
from engine.mock._cli import config_from_args, register
from engine.mock._stream import due_offsets

MODEL = "gpt-4o-mini"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hello, mock!"}]}
STREAM = {**HELLO, "stream": True}
WITH_USAGE = {**STREAM, "stream_options": {"include_usage": True}}
CHAT = "/v1/chat/completions"


# -- helpers -------------------------------------------------------------------------


class Sent:
    """What the app sent for one request: the head, and each body message with its time."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.pieces: list[tuple[float, bytes, bool]] = []  # (time, body, more_body)
        self.started_at: float | None = None

    @property
    def body(self) -> bytes:
        return b"".join(piece for _, piece, _ in self.pieces)

    @property
    def complete(self) -> bool:
        return bool(self.pieces) and not self.pieces[-1][2]

    def events(self) -> list[bytes]:
        """The ``data`` of each event (split on the blank line, as the mock writes them)."""
        return [data_of(block) for block in self.body.split(b"\n\n") if block]

    def chunks(self) -> list[dict[str, Any]]:
        """The JSON chunks of a chat stream (without the ``[DONE]`` sentinel)."""
        return [orjson.loads(data) for data in self.events() if data != b"[DONE]"]


def data_of(block: bytes) -> bytes:
    lines = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
    return b"\n".join(lines)


async def call(app, body: dict[str, Any], path: str = CHAT) -> Sent:
    """Run one POST through the app's ASGI call, noting when each message is sent."""
    sent = Sent()
    request = [{"type": "http.request", "body": orjson.dumps(body), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.status = message["status"]
            sent.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            sent.started_at = trio.current_time()
        else:
            sent.pieces.append(
                (trio.current_time(), message.get("body", b""), message.get("more_body", False))
            )

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"authorization", b"Bearer sk-t")],
    }
    await app(scope, receive, send)
    return sent


def content_chunks(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        chunk
        for chunk in chunks
        if chunk["choices"] and "content" in chunk["choices"][0]["delta"]
        if "role" not in chunk["choices"][0]["delta"]
    ]


async def non_streamed(app, body: dict[str, Any]) -> dict[str, Any]:
    plain = {key: value for key, value in body.items() if key not in ("stream", "stream_options")}
    sent = await call(app, plain)
    assert sent.status == 200
    return orjson.loads(sent.body)


def parse_mock_args(*argv: str) -> MockConfig:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return config_from_args(parser.parse_args(["mock", *argv]))


# -- chat completions: the events -------------------------------------------------


async def test_chat_stream_is_role_then_one_chunk_per_token_then_finish_usage_and_done():
    """The chunk sequence OpenAI sends, one content chunk per output token of usage."""
    app = create_app()
    sent = await call(app, WITH_USAGE)
    assert sent.status == 200
    assert sent.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "content-length" not in sent.headers
    assert sent.complete
    assert sent.events()[-1] == b"[DONE]"
    chunks = sent.chunks()
    first, *middle, finish, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all(len(chunk["choices"]) == 1 for chunk in middle)
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(middle)
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    text = "".join(chunk["choices"][0]["delta"]["content"] for chunk in middle)
    whole = await non_streamed(app, WITH_USAGE)
    assert text == whole["choices"][0]["message"]["content"]
    assert last["usage"] == whole["usage"]


async def test_chat_chunks_carry_openais_fields():
    """id, object, created, model, system_fingerprint; choices with index, delta, logprobs."""
    chunks = (await call(create_app(), STREAM)).chunks()
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert abs(chunk["created"] - time.time()) < 60
        assert chunk["model"] == MODEL
        assert chunk["system_fingerprint"] == "fp_mock"
        assert "usage" not in chunk  # only with stream_options.include_usage
        (choice,) = chunk["choices"]
        assert set(choice) == {"index", "delta", "logprobs", "finish_reason"}
        assert choice["index"] == 0 and choice["logprobs"] is None


async def test_chat_stream_with_n_choices_interleaves_them_token_by_token():
    """n=3: each step has one chunk per choice; content chunks = completion_tokens."""
    sent = await call(create_app(), {**WITH_USAGE, "n": 3})
    chunks = sent.chunks()
    contents = content_chunks(chunks)
    assert len(contents) == chunks[-1]["usage"]["completion_tokens"]
    assert [chunk["choices"][0]["index"] for chunk in contents] == [0, 1, 2] * (len(contents) // 3)
    texts = ["".join(c["choices"][0]["delta"]["content"] for c in contents[i::3]) for i in range(3)]
    assert texts == ["Mock reply to: Hello, mock!"] * 3


@pytest.mark.parametrize("token_rule", ["tiktoken", "chars"])
async def test_chat_stream_cut_at_max_tokens_finishes_with_length(token_rule):
    """max_tokens=3: three content chunks and finish_reason length, under either rule."""
    app = create_app(MockConfig(token_rule=token_rule))
    chunks = (await call(app, {**WITH_USAGE, "max_tokens": 3})).chunks()
    assert len(content_chunks(chunks)) == 3 == chunks[-1]["usage"]["completion_tokens"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"


async def test_multibyte_text_streams_as_many_chunks_as_tokens():
    """Tokens that split a character still count one chunk each; the text comes out whole."""
    prompt = "日本語のテキスト 🚀🚀 ünïcödé"
    body = {**WITH_USAGE, "messages": [{"role": "user", "content": prompt}]}
    chunks = (await call(create_app(), body)).chunks()
    contents = content_chunks(chunks)
    assert len(contents) == chunks[-1]["usage"]["completion_tokens"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in contents) == (
        f"Mock reply to: {prompt}"
    )


async def test_stream_options_without_stream_is_refused():
    """OpenAI refuses stream_options on a request that does not stream."""
    sent = await call(create_app(), {**HELLO, "stream_options": {"include_usage": True}})
    assert sent.status == 400
    assert orjson.loads(sent.body)["error"]["param"] == "stream_options"


async def test_a_429_before_a_stream_is_an_ordinary_json_answer():
    """Refused by the quota: a whole JSON 429 with its retry headers, no event stream."""
    app = create_app(MockConfig(rpm=1))
    assert (await call(app, STREAM)).status == 200
    refused = await call(app, STREAM)
    assert refused.status == 429
    assert refused.headers["content-type"] == "application/json"
    assert "retry-after-ms" in refused.headers
    assert orjson.loads(refused.body)["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("timed", [False, True])
async def test_streamed_answer_is_charged_and_told_as_a_non_streamed_one(timed, autojump_clock):
    """Same quota charge, same x-ratelimit-* headers, same stats, timed or not."""
    timing = {"ttft_ms": 100.0, "ms_per_output_token": 10.0} if timed else {}
    config = MockConfig(rpm=100, tpm=10_000, **timing)
    streamed_app, plain_app = create_app(config), create_app(config)
    streamed = await call(streamed_app, {**STREAM, "max_tokens": 50})
    plain = await call(plain_app, {**HELLO, "max_tokens": 50})
    names = {name for name in plain.headers if name.startswith("x-ratelimit-")}
    assert len(names) == 6
    for name in names:
        if not (timed and name.startswith("x-ratelimit-re")):  # a timed stream tells at arrival
            assert streamed.headers[name] == plain.headers[name], name
    assert streamed.headers["x-ratelimit-remaining-requests"] == "99"
    assert (
        streamed_app.stats.as_dict()["tokens_charged"]
        == (plain_app.stats.as_dict()["tokens_charged"])
    )
    assert streamed_app.stats.status_counts[200] == 1


async def test_builtin_server_path_sends_the_same_stream_chunked():
    """respond_at_once answers a stream with chunked coding and the ASGI call's events."""
    app = create_app()
    head, body = app.respond_at_once(
        "POST", CHAT, [(b"content-type", b"application/json")], orjson.dumps(WITH_USAGE)
    )
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked\r\n" in head and b"content-length" not in head
    size, _, rest = body.partition(b"\r\n")
    events = rest[: int(size, 16)]
    assert rest[int(size, 16) :] == b"\r\n0\r\n\r\n"
    via_asgi = (await call(create_app(), WITH_USAGE)).body
    assert (
        events.replace(b"chatcmpl-mock1", b"X").split(b'"created"')[0]
        == (via_asgi.replace(b"chatcmpl-mock1", b"X").split(b'"created"')[0])
    )
    assert events.count(b"\n\n") == via_asgi.count(b"\n\n")


def test_a_timed_stream_is_handed_to_the_builtin_server_as_frames():
    """With a ttft and gaps respond_at_once returns the head and a TimedStream of frames."""
    app = create_app(MockConfig(ttft_ms=5, ms_per_output_token=2, rpm=10, tpm=100_000))
    before = time.monotonic()
    head, stream = app.respond_at_once("POST", CHAT, [], orjson.dumps(WITH_USAGE))
    assert isinstance(stream, TimedStream)
    assert (
        b"transfer-encoding: chunked\r\n" in head and b"x-ratelimit-remaining-requests: 9" in head
    )
    after = time.monotonic()
    dues = [due for due, _ in stream.frames]
    assert before + 0.005 <= dues[0] <= after + 0.005
    assert [b - a for a, b in itertools.pairwise(dues)] == pytest.approx([0.002] * (len(dues) - 1))
    events = b"".join(frame for _, frame in stream.frames).split(b"\n\n")[:-1]
    chunks = [orjson.loads(data_of(event)) for event in events[:-1]]
    assert data_of(events[-1]) == b"[DONE]"
    assert len(content_chunks(chunks)) == chunks[-1]["usage"]["completion_tokens"]
    assert app.stats.tokens_charged == 0  # the charge is corrected when the stream ends
    stream.finish()
    assert app.stats.tokens_charged == chunks[-1]["usage"]["total_tokens"]
    assert app.stats.status_counts[200] == 1


def test_a_non_streamed_request_with_latency_is_still_left_to_the_asgi_call():
    """Timing configured: only streamed answers are answered synchronously."""
    app = create_app(MockConfig(ttft_ms=5, latency_ms=5))
    assert app.respond_at_once("POST", CHAT, [], orjson.dumps(HELLO)) is None
    assert next(app._numbers) == 1


# -- chat completions: timing -------------------------------------------------------


async def test_first_token_at_ttft_then_one_token_per_gap(autojump_clock):
    """ttft 200 ms, 20 ms per token: the role and first token at 0.2 s, then every 20 ms."""
    app = create_app(MockConfig(ttft_ms=200, ms_per_output_token=20))
    start = trio.current_time()
    sent = await call(app, {**WITH_USAGE, "max_tokens": 8})
    assert sent.started_at == pytest.approx(start)  # the head goes out at admission
    times = [moment - start for moment, _, _ in sent.pieces]
    assert times == pytest.approx([0.2 + 0.02 * step for step in range(8)])
    first = [orjson.loads(data_of(block)) for block in sent.pieces[0][1].split(b"\n\n") if block]
    assert first[0]["choices"][0]["delta"]["role"] == "assistant"
    assert first[1]["choices"][0]["delta"]["content"] == "Mock"
    assert sent.pieces[-1][1].endswith(b"data: [DONE]\n\n") and sent.complete


async def test_latency_ms_does_not_delay_a_stream_nor_ttft_a_whole_answer(autojump_clock):
    """latency_ms is for non-streamed answers, ttft_ms for streamed ones."""
    app = create_app(MockConfig(latency_ms=1000, ttft_ms=300))
    start = trio.current_time()
    streamed = await call(app, STREAM)
    assert streamed.pieces[0][0] - start == pytest.approx(0.3)
    start = trio.current_time()
    plain = await call(app, HELLO)
    assert plain.pieces[0][0] - start == pytest.approx(1.0)


async def test_tokens_due_together_go_out_in_one_message(autojump_clock):
    """No gap between tokens: the whole stream is one body message at the ttft."""
    app = create_app(MockConfig(ttft_ms=50))
    sent = await call(app, WITH_USAGE)
    assert len([piece for piece in sent.pieces if piece[1]]) == 1
    assert sent.events()[-1] == b"[DONE]"


async def test_concurrent_streams_keep_their_own_schedules(autojump_clock):
    """Three streams at once each get their tokens on time."""
    app = create_app(MockConfig(ttft_ms=100, ms_per_output_token=50))
    results: list[tuple[float, Sent]] = []

    async def one(delay: float) -> None:
        await trio.sleep(delay)
        start = trio.current_time()
        results.append((start, await call(app, {**STREAM, "max_tokens": 4})))

    async with trio.open_nursery() as nursery:
        for delay in (0.0, 0.01, 0.07):
            nursery.start_soon(one, delay)
    for start, sent in results:
        assert [t - start for t, _, _ in sent.pieces] == pytest.approx([0.1, 0.15, 0.2, 0.25])


async def test_a_stream_whose_client_left_is_still_settled(autojump_clock):
    """Cancelled mid-stream (the server gave up on the client): the charge is corrected."""
    app = create_app(MockConfig(ttft_ms=100, ms_per_output_token=50, rpm=10, tpm=100_000))
    with trio.move_on_after(0.2):
        await call(app, WITH_USAGE)
    reference = create_app(MockConfig(rpm=10, tpm=100_000))
    await call(reference, WITH_USAGE)
    assert app.stats.tokens_charged == reference.stats.tokens_charged > 0


def test_spread_keeps_the_configured_value_the_median():
    """Lognormal TTFT and gaps: medians within 3% of the configured values."""
    rng = random.Random(7)
    draws = [
        due_offsets(11, rng, ttft_ms=200, ttft_sigma=0.5, gap_ms=20, gap_sigma=0.5)
        for _ in range(2001)
    ]
    assert statistics.median(d[0] for d in draws) == pytest.approx(0.2, rel=0.03)
    gaps = [b - a for d in draws for a, b in itertools.pairwise(d)]
    assert statistics.median(gaps) == pytest.approx(0.02, rel=0.03)
    assert statistics.mean(gaps) == pytest.approx(0.02 * math.exp(0.5**2 / 2), rel=0.03)
    assert max(d[0] for d in draws) > 0.4  # a spread, not a constant


def test_no_spread_means_exact_times():
    """Sigma 0 draws nothing: exact offsets."""
    rng = random.Random(1)
    assert due_offsets(3, rng, ttft_ms=100, ttft_sigma=0, gap_ms=10, gap_sigma=0) == (
        pytest.approx([0.1, 0.11, 0.12])
    )
    assert rng.random() == random.Random(1).random()


def test_streaming_flags_set_the_config_fields():
    """--ttft-ms, --ttft-sigma, --output-token-sigma, --stream-fault-after map to MockConfig."""
    config = parse_mock_args(
        "--ttft-ms",
        "200",
        "--ttft-sigma",
        "0.3",
        "--ms-per-output-token",
        "20",
        "--output-token-sigma",
        "0.2",
        "--stream-fault-after",
        "5",
    )
    assert (config.ttft_ms, config.ttft_sigma) == (200.0, 0.3)
    assert (config.ms_per_output_token, config.output_token_sigma) == (20.0, 0.2)
    assert config.stream_fault_after == 5
    assert parse_mock_args().ttft_ms == 0 and parse_mock_args().stream_fault_after is None


async def test_streaming_timing_changes_at_run_time(autojump_clock):
    """POST /_mock/config switches the time to first token on for the next stream."""
    app = create_app()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mock"
    ) as client:
        changed = await client.post("/_mock/config", json={"ttft_ms": 250})
        assert changed.json()["ttft_ms"] == 250
    start = trio.current_time()
    sent = await call(app, STREAM)
    assert sent.pieces[0][0] - start == pytest.approx(0.25)


# -- the Responses API ------------------------------------------------------------------

RESPONSES = "/v1/responses"
RESPONSE_STREAM = {"model": MODEL, "input": "Hello, mock!", "stream": True}
RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
RESPONSE_CLOSING = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def typed_events(sent: Sent) -> list[tuple[str, dict[str, Any]]]:
    """(event type, data) of each event of a Responses API stream; the two types agree."""
    events = []
    for block in sent.body.split(b"\n\n"):
        if not block:
            continue
        kind_line, data_line = block.split(b"\n")
        assert kind_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == kind_line[7:].decode()
        events.append((data["type"], data))
    return events


async def test_responses_stream_sends_the_event_sequence_with_one_delta_per_token():
    """created ... one output_text.delta per output token ... completed with the usage."""
    app = create_app()
    sent = await call(app, RESPONSE_STREAM, RESPONSES)
    assert sent.status == 200 and sent.complete
    assert sent.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = typed_events(sent)
    kinds = [kind for kind, _ in events]
    deltas = [data for kind, data in events if kind == "response.output_text.delta"]
    assert kinds == RESPONSE_EVENTS + ["response.output_text.delta"] * len(deltas) + (
        RESPONSE_CLOSING
    )
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    whole = orjson.loads((await call(app, {**RESPONSE_STREAM, "stream": False}, RESPONSES)).body)
    completed = events[-1][1]["response"]
    assert completed["usage"] == whole["usage"]
    assert completed["usage"]["output_tokens"] == len(deltas)
    text = "".join(delta["delta"] for delta in deltas)
    assert text == whole["output"][0]["content"][0]["text"]
    assert completed["output"][0]["content"][0]["text"] == text
    assert completed["status"] == "completed" and completed["completed_at"] is not None


async def test_responses_stream_events_name_their_response_and_item():
    """created/in_progress carry the response in progress; the rest name the item."""
    events = typed_events(await call(create_app(), RESPONSE_STREAM, RESPONSES))
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["usage"] is None and created["id"].startswith("resp_")
    assert abs(created["created_at"] - time.time()) < 60
    item_id = events[2][1]["item"]["id"]
    assert item_id.startswith("msg_")
    for _kind, data in events[3:-2]:
        assert (data["item_id"], data["output_index"], data["content_index"]) == (item_id, 0, 0)
    assert events[-1][1]["response"]["id"] == created["id"]
    assert events[-2][1]["item"]["status"] == "completed"


async def test_responses_stream_cut_at_max_output_tokens_ends_incomplete():
    """max_output_tokens 16 on a longer answer: 16 deltas, then response.incomplete."""
    body = {**RESPONSE_STREAM, "input": "word " * 60, "max_output_tokens": 16}
    events = typed_events(await call(create_app(), body, RESPONSES))
    deltas = [data for kind, data in events if kind == "response.output_text.delta"]
    assert len(deltas) == 16
    assert events[-1][0] == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["status"] == "incomplete" and final["usage"]["output_tokens"] == 16
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_responses_stream_follows_the_same_timing(autojump_clock):
    """The opening events go with the first delta at the ttft; one delta per gap."""
    app = create_app(MockConfig(ttft_ms=120, ms_per_output_token=30))
    start = trio.current_time()
    sent = await call(app, RESPONSE_STREAM, RESPONSES)
    steps = len([e for e in typed_events(sent) if e[0] == "response.output_text.delta"])
    times = [moment - start for moment, _, _ in sent.pieces]
    assert times == pytest.approx([0.12 + 0.03 * step for step in range(steps)])
    assert sent.pieces[0][1].count(b"event: ") == len(RESPONSE_EVENTS) + 1


async def test_embeddings_refuse_to_stream():
    """Embeddings do not stream: a clear 400 on the stream parameter."""
    body = {"model": "text-embedding-3-small", "input": "x", "stream": True}
    sent = await call(create_app(), body, "/v1/embeddings")
    assert sent.status == 400
    assert orjson.loads(sent.body)["error"]["param"] == "stream"


async def test_transcriptions_refuse_to_stream():
    """Transcriptions do not stream here: a clear 400 on the stream field."""
    from audio_fixtures import mp3_bytes

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app()), base_url="http://mock"
    ) as client:
        response = await client.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1", "stream": "true"},
            files={"file": ("call.mp3", mp3_bytes(1.0), "audio/mpeg")},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "stream"


# -- faults mid-stream ------------------------------------------------------------------


async def call_until_dropped(app, body: dict[str, Any], path: str = CHAT) -> Sent:
    """Like :func:`call`, for an answer the app cuts off: returns what was sent before."""
    sent = Sent()
    request = [{"type": "http.request", "body": orjson.dumps(body), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if request:
            return request.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.status = message["status"]
            sent.started_at = trio.current_time()
        else:
            sent.pieces.append((trio.current_time(), message["body"], message["more_body"]))

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    with pytest.raises(DroppedConnection):
        await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("after", [0, 1, 3])
async def test_drop_cuts_the_stream_after_k_events(after):
    """drop_rate 1, stream_fault_after k: exactly k whole events, then the cut, no end."""
    app = create_app(MockConfig(drop_rate=1.0, stream_fault_after=after))
    sent = await call_until_dropped(app, WITH_USAGE)
    assert sent.status == 200
    assert all(more for _, _, more in sent.pieces)  # never the last body message
    assert sent.body.count(b"\n\n") == after
    assert sent.pieces  # even with no event, the head went out (with an empty body)


async def test_drop_by_default_cuts_half_way_and_never_sends_done():
    """Without stream_fault_after the cut comes after half of the events."""
    whole = (await call(create_app(), WITH_USAGE)).events()
    sent = await call_until_dropped(create_app(MockConfig(drop_rate=1.0)), WITH_USAGE)
    assert len(sent.events()) == len(whole) // 2
    assert b"[DONE]" not in sent.body


async def test_a_large_k_still_leaves_the_last_event_out():
    """k beyond the stream: everything but the last event, so the cut is still a cut."""
    whole = (await call(create_app(), WITH_USAGE)).events()
    sent = await call_until_dropped(
        create_app(MockConfig(drop_rate=1.0, stream_fault_after=10_000)), WITH_USAGE
    )
    assert sent.events() == whole[:-1]


async def test_events_before_a_drop_arrive_on_time(autojump_clock):
    """Timed stream cut after 4 events: role+first token at ttft, then one per gap."""
    config = MockConfig(ttft_ms=100, ms_per_output_token=10, drop_rate=1.0, stream_fault_after=4)
    start = trio.current_time()
    sent = await call_until_dropped(create_app(config), STREAM)
    assert [t - start for t, _, _ in sent.pieces] == pytest.approx([0.1, 0.11, 0.12])
    assert sent.body.count(b"\n\n") == 4


async def test_drop_mid_responses_stream():
    """The Responses API stream is cut the same way (no response.completed)."""
    app = create_app(MockConfig(drop_rate=1.0, stream_fault_after=5))
    sent = await call_until_dropped(app, RESPONSE_STREAM, RESPONSES)
    assert sent.body.count(b"event: ") == 5 and b"response.completed" not in sent.body


async def test_dropped_stream_is_charged_its_usage():
    """The charge is corrected to the answer's usage, as a dropped non-streamed answer."""
    app = create_app(MockConfig(drop_rate=1.0, rpm=100, tpm=100_000))
    await call_until_dropped(app, {**STREAM, "max_tokens": 100})
    reference = create_app(MockConfig(rpm=100, tpm=100_000))
    await call(reference, {**STREAM, "max_tokens": 100})
    assert app.stats.tokens_charged == reference.stats.tokens_charged


async def test_stall_pauses_the_stream_then_finishes_it(autojump_clock):
    """slow_body_rate 1: after k events the stream stalls slow_body_ms, then ends cleanly."""
    config = MockConfig(slow_body_rate=1.0, slow_body_ms=500, stream_fault_after=2)
    start = trio.current_time()
    sent = await call(create_app(config), WITH_USAGE)
    assert sent.complete and sent.events()[-1] == b"[DONE]"
    (first_time, first, _), (later_time, _, _) = sent.pieces
    assert first.count(b"\n\n") == 2
    assert (first_time - start, later_time - start) == pytest.approx((0.0, 0.5))


async def test_stall_delays_the_tokens_after_it(autojump_clock):
    """A stall in a timed stream shifts every later token by its length."""
    config = MockConfig(
        ttft_ms=100,
        ms_per_output_token=10,
        slow_body_rate=1.0,
        slow_body_ms=300,
        stream_fault_after=3,
    )
    start = trio.current_time()
    sent = await call(create_app(config), {**STREAM, "max_tokens": 4})
    times = [t - start for t, _, _ in sent.pieces]
    assert times == pytest.approx([0.1, 0.11, 0.12 + 0.3, 0.13 + 0.3])


async def test_malformed_fault_cuts_one_events_json_and_ends_normally():
    """malformed_json_rate 1: event k's JSON is cut in half; the rest is whole."""
    whole = (await call(create_app(), WITH_USAGE)).events()
    config = MockConfig(malformed_json_rate=1.0, stream_fault_after=3)
    sent = await call(create_app(config), WITH_USAGE)
    events = sent.events()
    assert sent.complete and len(events) == len(whole)
    assert events[3] == whole[3][: len(events[3])] and len(events[3]) < len(whole[3])
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(events[3])
    assert events[:3] == whole[:3] and events[4:] == whole[4:]


async def test_5xx_faults_answer_a_stream_request_before_any_event():
    """error_503_rate 1: an ordinary JSON 503, not a stream."""
    sent = await call(create_app(MockConfig(error_503_rate=1.0)), STREAM)
    assert sent.status == 503 and orjson.loads(sent.body)["error"]["type"] == "server_error"


async def test_drop_switches_on_per_test_through_mock_config():
    """POST /_mock/config {"drop_rate": 1, "stream_fault_after": 2} cuts the next stream."""
    app = create_app()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mock"
    ) as client:
        changed = await client.post(
            "/_mock/config", json={"drop_rate": 1.0, "stream_fault_after": 2}
        )
        assert changed.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(CHAT, json=STREAM)
        await client.post("/_mock/config", json={"drop_rate": 0.0})
        assert (await client.post(CHAT, json=STREAM)).status_code == 200


# -- conformance to OpenAI's published schemas ----------------------------------------


def openai_schema(name: str):
    """A jsonschema validator for one of OpenAI's OpenAPI components (``nullable`` as JSON
    Schema says it); skips when the description is not on this machine."""
    from jsonschema import Draft202012Validator

    components = _openai_components()
    return Draft202012Validator({**components["schemas"][name], "components": components})


@functools.cache
def _openai_components() -> dict[str, Any]:
    from test_mock_served import OPENAPI_PATH

    if not OPENAPI_PATH.exists():
        pytest.skip(f"OpenAI OpenAPI description not found at {OPENAPI_PATH}")

    def plain(node: Any) -> Any:
        if isinstance(node, list):
            return [plain(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: plain(value) for key, value in node.items()}
        if node.pop("nullable", False):
            if isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
                if "enum" in node:
                    node["enum"] = [*node["enum"], None]
            else:
                node = {"anyOf": [node, {"type": "null"}]}
        return node

    return plain(orjson.loads(OPENAPI_PATH.read_bytes())["components"])


@pytest.mark.parametrize("usage", [False, True])
async def test_chat_chunks_conform_to_openais_stream_response(usage):
    """Every chunk validates against CreateChatCompletionStreamResponse (n=2, cut at 3)."""
    validator = openai_schema("CreateChatCompletionStreamResponse")
    body = {**(WITH_USAGE if usage else STREAM), "n": 2, "max_tokens": 3}
    for chunk in (await call(create_app(), body)).chunks():
        validator.validate(chunk)


@pytest.mark.parametrize("limit", [None, 16])
async def test_responses_events_conform_to_openais_stream_events(limit):
    """Every event validates against its own schema (ResponseTextDeltaEvent, ...)."""
    names = {
        "response.created": "ResponseCreatedEvent",
        "response.in_progress": "ResponseInProgressEvent",
        "response.output_item.added": "ResponseOutputItemAddedEvent",
        "response.content_part.added": "ResponseContentPartAddedEvent",
        "response.output_text.delta": "ResponseTextDeltaEvent",
        "response.output_text.done": "ResponseTextDoneEvent",
        "response.content_part.done": "ResponseContentPartDoneEvent",
        "response.output_item.done": "ResponseOutputItemDoneEvent",
        "response.completed": "ResponseCompletedEvent",
        "response.incomplete": "ResponseIncompleteEvent",
    }
    body = {**RESPONSE_STREAM, "input": "word " * 40, "max_output_tokens": limit}
    for kind, data in typed_events(await call(create_app(), body, RESPONSES)):
        if kind in ("response.created", "response.in_progress"):
            # OpenAI's own examples send "usage": null while in progress; the schema
            # has no null there, so that one field is checked here instead.
            assert data["response"].pop("usage") is None
        openai_schema(names[kind]).validate(data)


# -- served over loopback -------------------------------------------------------------


@pytest.mark.wallclock
@pytest.mark.parametrize("server", ["builtin", "uvicorn", "hypercorn"])
async def test_every_server_flushes_each_token_when_it_is_due(server):
    """ttft 300 ms, 60 ms per token: the bytes arrive spread over time, not at the end."""
    args = ["--server", server, "--ttft-ms", "300", "--ms-per-output-token", "60"]
    with serve_in_subprocess(args) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            body = {**WITH_USAGE, "max_tokens": 6}
            start = time.monotonic()
            arrivals: list[tuple[float, bytes]] = []
            async with client.stream("POST", "/chat/completions", json=body) as response:
                assert response.status_code == 200
                assert response.headers["transfer-encoding"] == "chunked"
                async for piece in response.aiter_raw():
                    arrivals.append((time.monotonic() - start, piece))
    text = b"".join(piece for _, piece in arrivals)
    assert text.endswith(b"data: [DONE]\n\n")
    first_token = next(t for t, piece in arrivals if b'"content":"Mock"' in piece)
    last = arrivals[-1][0]
    assert first_token >= 0.25, arrivals
    assert last - first_token >= 0.2, arrivals  # 5 gaps of 60 ms, not all at once
    assert len({round(t, 2) for t, _ in arrivals}) >= 3, arrivals


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """(the data of a chunked body, whether its last chunk arrived)."""
    data = b""
    while body:
        size_line, separator, rest = body.partition(b"\r\n")
        if not separator:
            break
        size = int(size_line, 16)
        if size == 0:
            return data, True
        data += rest[:size]
        body = rest[size + 2 :]
    return data, False


@pytest.mark.wallclock
@pytest.mark.parametrize("server", ["builtin", "uvicorn", "hypercorn"])
async def test_every_server_cuts_a_dropped_stream_mid_body(server):
    """On the wire: 200, chunked, three whole events, then EOF with no last chunk."""
    args = ["--server", server, "--drop-rate", "1", "--stream-fault-after", "3"]
    args += ["--ttft-ms", "50", "--ms-per-output-token", "20"]
    with serve_in_subprocess(args) as url:
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        payload = orjson.dumps(STREAM)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(payload), payload)
            )
            received = b""
            with trio.fail_after(20):
                while piece := await stream.receive_some():
                    received += piece
        async with httpx.AsyncClient(base_url=url, timeout=20.0) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                async with client.stream("POST", "/chat/completions", json=STREAM) as response:
                    async for _ in response.aiter_raw():
                        pass
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding: chunked" in head.lower()
    data, ended = dechunk(body)
    assert not ended
    assert data.count(b"\n\n") == 3 and data.endswith(b"\n\n")


# -- the builtin server's timed streams, in-process ------------------------------------


class FakeTransport:
    """Collects what the server writes, with the time of each write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, bytes]] = []
        self.closed = False

    @property
    def written(self) -> bytes:
        return b"".join(data for _, data in self.writes)

    def write(self, data: bytes) -> None:
        self.writes.append((time.monotonic(), data))

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def wire_request(body: dict[str, Any], path: str = CHAT) -> bytes:
    payload = orjson.dumps(body)
    return b"POST %s HTTP/1.1\r\nhost: mock\r\ncontent-length: %d\r\n\r\n%s" % (
        path.encode(),
        len(payload),
        payload,
    )


def serve_in_process(app, *requests: bytes, wait: float, lose_after: float | None = None):
    """Feed ``requests`` to one builtin-server connection on asyncio; its transport after
    ``wait`` seconds (the connection is lost after ``lose_after`` seconds when given)."""
    import asyncio

    from engine.mock._server import _Connection, _Server

    async def main() -> FakeTransport:
        connection = _Connection(app, asyncio.get_running_loop(), _Server(1 << 20))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(b"".join(requests))
        if lose_after is not None:
            await asyncio.sleep(lose_after)
            connection.connection_lost(None)
        await asyncio.sleep(wait)
        return transport

    previous = sniffio.thread_local.name
    sniffio.thread_local.name = "asyncio"  # as engine.mock._server.serve sets it
    try:
        return asyncio.run(main())
    finally:
        sniffio.thread_local.name = previous


def test_builtin_server_writes_a_timed_stream_frame_by_frame_then_the_next_request():
    """Two pipelined timed streams: frames written over time, answers in order, then done."""
    app = create_app(MockConfig(ttft_ms=30, ms_per_output_token=10))
    transport = serve_in_process(
        app,
        wire_request({**STREAM, "max_tokens": 4}),
        wire_request(RESPONSE_STREAM, RESPONSES),
        wait=1.0,
    )
    wire = transport.written
    first, second = wire.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert b"chatcmpl-mock1" in first and b"resp_mock2" in second
    for answer in (first, second):
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head and b"\r\ndate: " in head
        data, ended = dechunk(body)
        assert ended
        assert data.endswith(b"data: [DONE]\n\n") or b"event: response.completed" in data
    assert len(transport.writes) >= 8  # one write per token, not one per answer
    assert not transport.closed
    assert app.stats.tokens_charged > 0


def test_a_timed_stream_whose_client_left_is_settled_and_stops():
    """The connection lost mid-stream: no more writes, and the charge is corrected."""
    app = create_app(MockConfig(ttft_ms=10, ms_per_output_token=50))
    transport = serve_in_process(app, wire_request(STREAM), wait=0.3, lose_after=0.03)
    assert all(moment <= transport.writes[0][0] + 0.02 for moment, _ in transport.writes)
    assert app.stats.tokens_charged > 0


# -- the official SDK over loopback -------------------------------------------------------


@pytest.fixture(scope="module")
def timed_url():
    """One builtin-served mock with a short time to first token and gaps, for this module."""
    with serve_in_subprocess(["--ttft-ms", "20", "--ms-per-output-token", "2"]) as url:
        yield url


async def test_sdk_streams_a_chat_completion(timed_url):
    """openai's chat.completions.create(stream=True) reads every chunk and the usage."""
    import openai

    async with openai.AsyncOpenAI(base_url=timed_url, api_key="sk-test") as client:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "ping"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Mock reply to: ping"
    assert chunks[-1].usage is not None
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == chunks[-1].usage.completion_tokens


async def test_sdk_streams_a_response(timed_url):
    """openai's responses.create(stream=True) reads the events up to response.completed."""
    import openai

    async with openai.AsyncOpenAI(base_url=timed_url, api_key="sk-test") as client:
        stream = await client.responses.create(model=MODEL, input="ping", stream=True)
        events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Mock reply to: ping" == events[-1].response.output_text
    assert events[-1].response.usage.output_tokens == len(deltas)


@pytest.mark.wallclock
@pytest.mark.parametrize("server", ["builtin", "uvicorn", "hypercorn"])
async def test_every_server_sends_an_untimed_stream_chunked_and_whole(server):
    """No timing: the whole stream in one go, still chunked, still ending in [DONE]."""
    with serve_in_subprocess(["--server", server]) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            async with client.stream("POST", "/chat/completions", json=WITH_USAGE) as response:
                assert response.headers["transfer-encoding"] == "chunked"
                assert "content-length" not in response.headers
                body = await response.aread()
            plain = (await client.post("/chat/completions", json=HELLO)).json()
    events = [data_of(block) for block in body.split(b"\n\n") if block]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(data) for data in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == plain["usage"]


@pytest.mark.wallclock
@pytest.mark.parametrize("server", ["builtin", "uvicorn", "hypercorn"])
async def test_every_server_settles_a_stream_its_client_left(server):
    """The client hangs up after the first token: the server lives on and settles the charge."""
    args = ["--server", server, "--ttft-ms", "50", "--ms-per-output-token", "50"]
    with serve_in_subprocess(args) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30.0) as client:
            async with client.stream("POST", "/chat/completions", json=STREAM) as response:
                async for _ in response.aiter_raw():
                    break  # leave with the rest of the stream unread: the connection closes
            await trio.sleep(1.0)  # past the stream's end (50 + 7 x 50 ms)
            stats = (await client.get(url.removesuffix("/v1") + "/_mock/stats")).json()
            assert (await client.post("/chat/completions", json=HELLO)).status_code == 200
    assert stats["status_counts"] == {"200": 1}
    assert stats["tokens_charged"] > 0
