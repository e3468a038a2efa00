"""Streaming in the library: ``client.stream``, ``client.stream_response``, and
``"stream": true`` bodies in ``map`` and ``engine run`` (issue 16).

The server here is an ``httpx.MockTransport`` whose bodies are async
generators sleeping on trio's clock, so under ``autojump_clock`` the time to
the first token and the gaps between tokens are exact, and faults (a 429 or
503 before the body, a body cut off mid-stream) are scripted per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio
import trio.testing

import engine
from engine._results import GapSummary, Timings
from engine._sse import SSEDecoder
from engine.app import batch
from engine.app._summary import format_summary
from engine.endpoints._stream import (
    ChatStreamAssembler,
    ResponseStreamAssembler,
    StreamInterruptedError,
    TokenClock,
    with_usage_requested,
)

KEY = "sk-test-secret-key-0123456789"
TOKENS = ["Hel", "lo", ",", " wor", "ld", "!"]
PROMPT_TOKENS = 9

# -- the server ---------------------------------------------------------------------------


def _sse(value: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(value) + b"\n\n"


def _chunk(delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": choices,
        "usage": None,
    }


def _usage(completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


@attrs.define
class StreamServer:
    """A scripted OpenAI-style server: each request takes the next step of ``plan``.

    Steps: ``"ok"`` (the default once the plan is used up), ``"429"``, ``"503"``,
    ``"400"``, ``("cut", k)`` (the connection drops after k content chunks),
    ``("end", k)`` (the body ends cleanly after k content chunks, unfinished),
    ``("error", k)`` (an error event after k content chunks).
    """

    tokens: list[str] = attrs.field(factory=lambda: list(TOKENS))
    ttft: float = 0.2
    gap: float = 0.02
    plan: list[Any] = attrs.field(factory=list)
    requests: int = 0
    bodies: list[dict[str, Any]] = attrs.field(factory=list)
    closed_early: int = 0
    chunks_sent: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        body = orjson.loads(request.content)
        self.bodies.append(body)
        step = self.plan.pop(0) if self.plan else "ok"
        if step == "429":
            return httpx.Response(
                429,
                headers={"retry-after-ms": "50"},
                json={"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
            )
        if step in ("503", "400"):
            return httpx.Response(int(step), json={"error": {"message": f"HTTP {step}"}})
        if not body.get("stream"):
            return httpx.Response(200, json=self._whole(body))
        stream = self._responses(step) if request.url.path.endswith("/responses") else None
        if stream is None:
            usage = (body.get("stream_options") or {}).get("include_usage") is True
            stream = self._chat(step, usage)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)

    def _whole(self, body: dict[str, Any]) -> dict[str, Any]:
        """The non-streamed answer: the same text as a chat.completion."""
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "gpt-test",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "".join(self.tokens),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(len(self.tokens)),
        }

    async def _content(self, step: Any, make: Any) -> AsyncIterator[bytes]:
        """The content events, with the scripted fault; ``make(token)`` builds one."""
        fault, at = step if isinstance(step, tuple) else (None, -1)
        for index, token in enumerate(self.tokens):
            if index == at:
                if fault == "cut":
                    raise httpx.RemoteProtocolError("peer closed connection mid-body")
                if fault == "error":
                    yield _sse({"error": {"message": "model overloaded", "code": "overloaded"}})
                return
            await trio.sleep(self.ttft if index == 0 else self.gap)
            self.chunks_sent += 1
            yield make(token)

    async def _chat(self, step: Any, usage: bool) -> AsyncIterator[bytes]:
        finished = False
        try:
            yield _sse(_chunk({"role": "assistant", "content": ""}))
            async for piece in self._content(step, lambda token: _sse(_chunk({"content": token}))):
                yield piece
            if isinstance(step, tuple):
                return
            yield _sse(_chunk({}, "stop"))
            if usage:
                yield _sse(_chunk(None) | {"usage": _usage(len(self.tokens))})
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            if not finished and not isinstance(step, tuple):
                self.closed_early += 1

    async def _responses(self, step: Any) -> AsyncIterator[bytes]:
        text = "".join(self.tokens)
        response = {"id": "resp_1", "object": "response", "model": "gpt-test", "output": []}
        yield _sse(
            {"type": "response.created", "response": response | {"status": "in_progress"}},
            "response.created",
        )

        def delta(token: str) -> bytes:
            event = {"type": "response.output_text.delta", "delta": token, "output_index": 0}
            return _sse(event, "response.output_text.delta")

        async for piece in self._content(step, delta):
            yield piece
        if isinstance(step, tuple):
            return
        final = response | {
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": PROMPT_TOKENS,
                "output_tokens": len(self.tokens),
                "total_tokens": PROMPT_TOKENS + len(self.tokens),
            },
        }
        yield _sse({"type": "response.completed", "response": final}, "response.completed")


def _client(server: StreamServer, **options: Any) -> Any:
    options.setdefault("retry_base_delay", 0.01)
    return engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=httpx.MockTransport(server.handle),
        **options,
    )


# -- assembling chunks (pure) ---------------------------------------------------------------


def _events(raw: bytes, piece: int) -> list[tuple[str, bytes]]:
    decoder = SSEDecoder()
    events = []
    for start in range(0, len(raw), piece):
        events += [(e.event, e.data) for e in decoder.feed(raw[start : start + piece])]
    return events


def _chat_stream_bytes(tokens: list[str]) -> bytes:
    raw = _sse(_chunk({"role": "assistant", "content": ""}))
    raw += b"".join(_sse(_chunk({"content": token})) for token in tokens)
    raw += _sse(_chunk({}, "stop"))
    raw += _sse(_chunk(None) | {"usage": _usage(len(tokens))})
    return raw + b"data: [DONE]\n\n"


@pytest.mark.parametrize("piece", [1, 7, 10_000])
def test_chat_chunks_assemble_into_the_completion_a_whole_answer_would_be(piece):
    """Chunks fed at any split give the deltas in order and a chat.completion body."""
    assembler = ChatStreamAssembler()
    deltas = []
    for event, data in _events(_chat_stream_bytes(TOKENS), piece):
        text, _output = assembler.feed(event, data)
        if text:
            deltas.append(text)
    assert deltas == TOKENS
    assert assembler.done and assembler.complete() and assembler.usage_reported
    assert assembler.text == "".join(TOKENS)
    assert assembler.body() == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-test",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello, world!",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(len(TOKENS)),
    }


def test_tool_call_and_second_choice_deltas_are_joined_per_index():
    """Tool-call arguments and a second choice's content are assembled, and count as output."""
    assembler = ChatStreamAssembler()
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}

    def arguments(text: str) -> dict[str, Any]:
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    pieces = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
        {"choices": [{"index": 0, "delta": arguments('{"a"')}]},
        {"choices": [{"index": 0, "delta": arguments(": 1}")}]},
        {"choices": [{"index": 1, "delta": {"content": "two"}, "finish_reason": "stop"}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    outputs = [assembler.feed("message", orjson.dumps(piece))[1] for piece in pieces]
    assert outputs == [False, True, True, True, False]
    assert assembler.complete() and not assembler.done and not assembler.usage_reported
    first, second = assembler.body()["choices"]
    assert first["message"]["content"] is None
    assert first["message"]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    ]
    assert first["finish_reason"] == "tool_calls"
    assert second["message"]["content"] == "two"
    assert assembler.text == ""  # the text is the first choice's content


def test_an_error_chunk_raises_with_the_text_so_far():
    """An ``error`` object mid-stream raises StreamInterruptedError keeping what arrived."""
    assembler = ChatStreamAssembler()
    assembler.feed("message", orjson.dumps(_chunk({"content": "par"})))
    with pytest.raises(StreamInterruptedError, match="model overloaded") as caught:
        assembler.feed("message", b'{"error": {"message": "model overloaded"}}')
    assert caught.value.raw == "par" and caught.value.code == "stream_interrupted"


def test_a_chunk_that_is_not_json_is_a_validation_error():
    """Data that is not a JSON object is a ResponseValidationError, its text kept."""
    with pytest.raises(engine.ResponseValidationError) as caught:
        ChatStreamAssembler().feed("message", b"{not json")
    assert caught.value.raw == "{not json"


def test_a_stream_without_finish_or_done_is_not_complete():
    """Content without a finish reason or [DONE] is not a whole answer."""
    assembler = ChatStreamAssembler()
    assembler.feed("message", orjson.dumps(_chunk({"content": "x"})))
    assert not assembler.complete()


def test_responses_events_assemble_into_the_final_response():
    """output_text deltas are the text; response.completed's response is the body."""
    assembler = ResponseStreamAssembler()
    final = {"id": "resp_1", "status": "completed", "usage": {"input_tokens": 1}}
    events = [
        ("response.created", {"type": "response.created", "response": {"id": "resp_1"}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "!"}),
        ("response.output_text.done", {"type": "response.output_text.done", "text": "Hi!"}),
        ("response.completed", {"type": "response.completed", "response": final}),
    ]
    texts = [assembler.feed(name, orjson.dumps(value))[0] for name, value in events]
    assert texts == ["", "Hi", "!", "", ""]
    assert assembler.done and assembler.complete() and assembler.usage_reported
    assert assembler.body() == final and assembler.text == "Hi!"


def test_a_responses_error_event_raises():
    """An ``error`` event is a StreamInterruptedError naming the server's message."""
    event = {"type": "error", "code": "server_error", "message": "boom"}
    with pytest.raises(StreamInterruptedError, match="boom"):
        ResponseStreamAssembler().feed("error", orjson.dumps(event))


def test_usage_is_requested_unless_the_caller_chose_stream_options():
    """include_usage is added to a streamed chat body; a caller's stream_options win."""
    assert with_usage_requested({"stream": True})["stream_options"] == {"include_usage": True}
    mine = {"stream": True, "stream_options": {"include_usage": False}}
    assert with_usage_requested(mine) is mine


def test_token_clock_gives_ttft_and_gaps():
    """TTFT is the first output after the send; ITL the gaps between outputs."""
    clock = TokenClock(sent_at=10.0)
    assert clock.ttft is None and clock.itl is None
    for now in (10.25, 10.5, 11.0):
        clock.mark(now)
    assert clock.ttft == 0.25 and clock.itl == [0.25, 0.5]


def test_itl_summary_percentiles_are_nearest_rank():
    """The gap summary's percentiles are gaps that occurred (nearest rank)."""
    gaps = [float(n) for n in range(1, 101)]
    summary = Timings(queued_at=0.0, itl=gaps).itl_summary
    assert summary == GapSummary(count=100, mean=50.5, p50=50.0, p90=90.0, p99=99.0, max=100.0)
    assert Timings(queued_at=0.0).itl_summary is None


# -- client.stream ------------------------------------------------------------------------


async def test_stream_yields_each_chunk_in_order_and_the_result_after(autojump_clock):
    """Deltas arrive in order; the result holds the joined text, usage, model and timings."""
    server = StreamServer()
    async with _client(server) as client:
        async with client.stream("Say hello", model="gpt-test", max_tokens=50) as s:
            deltas = [delta async for delta in s]
        assert deltas == TOKENS
        assert s.text == "".join(TOKENS) == s.result.output
        assert s.usage == engine.Usage(**_usage(len(TOKENS)))
        assert s.finish_reason == "stop" and s.model == "gpt-test"
        assert s.timings.ttft == pytest.approx(server.ttft)
        assert s.timings.itl == pytest.approx([server.gap] * (len(TOKENS) - 1))
        assert s.timings.latency >= s.timings.ttft
        assert s.result.response["object"] == "chat.completion"
    sent = server.bodies[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


async def test_the_usage_chunk_settles_the_permit(autojump_clock):
    """The final usage chunk's tokens are what the limiter and the statistics count."""
    server = StreamServer()
    async with _client(server) as client:
        async with client.stream("Say hello", model="gpt-test", max_tokens=50) as s:
            await s.get_result()
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert stats.prompt_tokens == PROMPT_TOKENS and stats.completion_tokens == len(TOKENS)
    assert stats.limiter.tokens_used == PROMPT_TOKENS + len(TOKENS)
    assert stats.limiter.tokens_reserved > stats.limiter.tokens_used
    assert stats.limiter.in_flight == 0 and stats.succeeded == 1 and stats.sent == 1


async def test_a_stream_without_usage_keeps_the_whole_reservation(autojump_clock):
    """Without a usage chunk nothing corrects the estimate: it stays charged."""
    server = StreamServer()
    async with _client(server) as client:
        async with client.stream(
            "Say hello", model="gpt-test", stream_options={"include_usage": False}
        ) as s:
            result = await s.get_result()
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert server.bodies[0]["stream_options"] == {"include_usage": False}
    assert result.ok and result.output == "".join(TOKENS) and result.usage == engine.Usage()
    assert stats.limiter.tokens_used == 0 and stats.limiter.tokens_reserved > 0
    assert stats.limiter.in_flight == 0


@pytest.mark.parametrize("fault", ["429", "503"])
async def test_a_refusal_before_the_first_byte_is_retried(autojump_clock, fault):
    """A 429 or 503 answer before any body byte is retried; the caller sees one clean stream."""
    server = StreamServer(plan=[fault])
    async with _client(server) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            deltas = [delta async for delta in s]
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert deltas == TOKENS and s.result.attempts == 2 and server.requests == 2
    assert (stats.rate_limited, stats.retries) == ((1, 0) if fault == "429" else (0, 1))


async def test_a_connect_failure_before_the_head_is_retried(autojump_clock):
    """A transport error before the response head is retried like a plain request's."""
    server = StreamServer()
    failures = [httpx.ConnectError("connection refused")]

    async def handle(request: httpx.Request) -> httpx.Response:
        if failures:
            raise failures.pop()
        return await server.handle(request)

    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=httpx.MockTransport(handle),
        retry_base_delay=0.01,
    ) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            assert (await s.get_result()).output == "".join(TOKENS)
        assert client.statistics().retries == 1


@pytest.mark.parametrize("fault", ["cut", "end", "error"])
async def test_a_failure_after_the_first_token_is_raised_and_not_retried(autojump_clock, fault):
    """A stream that breaks off mid-way raises StreamInterruptedError, sent once, estimate kept."""
    server = StreamServer(plan=[(fault, 2)])
    deltas = []
    async with _client(server) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            with pytest.raises(engine.StreamInterruptedError) as caught:
                async for delta in s:
                    deltas.append(delta)
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert deltas == TOKENS[:2] and server.requests == 1
    assert caught.value.raw == "".join(TOKENS[:2])
    assert s.result.error.code == "stream_interrupted" and s.result.raw_content == "Hel" + "lo"
    assert s.timings.ttft == pytest.approx(server.ttft) and len(s.timings.itl) == 1
    assert stats.failed == 1 and stats.retries == 0
    assert stats.limiter.in_flight == 0 and stats.limiter.tokens_used == 0


async def test_a_400_before_the_stream_raises_the_servers_error(autojump_clock):
    """A non-retryable answer instead of a stream raises BadRequestError from the loop."""
    server = StreamServer(plan=["400"])
    async with _client(server) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            with pytest.raises(engine.BadRequestError, match="HTTP 400"):
                await s.get_result()
    assert server.requests == 1


async def test_leaving_the_block_early_closes_the_stream_and_settles_the_permit(autojump_clock):
    """Breaking out after two deltas closes the body at once; the permit is settled on leaving."""
    server = StreamServer(tokens=["t"] * 100, gap=1.0)
    async with _client(server) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            async for _delta in s:
                if len(s.text) == 2:
                    break
            left_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert client.statistics().limiter.in_flight == 0
        assert trio.current_time() - left_at < 1.0
        await trio.sleep(10)
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert server.closed_early == 1 and server.chunks_sent < 5
    assert stats.limiter.tokens_used == 0 and stats.limiter.tokens_reserved > 0
    with pytest.raises(RuntimeError, match="not ended"):
        _ = s.result


async def test_cancelling_the_reading_task_closes_the_stream(autojump_clock):
    """A cancel scope expiring mid-stream closes it and settles the permit before it exits."""
    server = StreamServer(tokens=["t"] * 100, gap=1.0)
    deltas = []
    async with _client(server) as client:
        with trio.move_on_after(server.ttft + 2.5) as scope:
            async with client.stream("Say hello", model="gpt-test") as s:
                async for delta in s:
                    deltas.append(delta)
        assert scope.cancelled_caught
        await trio.testing.wait_all_tasks_blocked()
        assert client.statistics().limiter.in_flight == 0
        # the client goes on: the worker is free for the next stream
        server.tokens = list(TOKENS)
        async with client.stream("Again", model="gpt-test") as again:
            assert await again.get_result()
    assert len(deltas) == 3 and server.closed_early == 1 and server.requests == 2


async def test_stream_response_yields_output_text_deltas(autojump_clock):
    """The Responses API streams output_text deltas; the result is the completed response."""
    server = StreamServer()
    async with _client(server) as client:
        async with client.stream_response("Say hello", model="gpt-test") as s:
            deltas = [delta async for delta in s]
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert deltas == TOKENS
    assert isinstance(s.result, engine.ResponseResult) and s.result.output == "".join(TOKENS)
    assert s.status == "completed" and s.usage.output_tokens == len(TOKENS)
    assert s.timings.ttft == pytest.approx(server.ttft)
    assert server.bodies[0]["stream"] is True and "stream_options" not in server.bodies[0]
    assert stats.limiter.tokens_used == PROMPT_TOKENS + len(TOKENS)


async def test_a_cut_responses_stream_raises(autojump_clock):
    """A Responses stream without its response.completed event is interrupted."""
    server = StreamServer(plan=[("end", 3)])
    async with _client(server) as client:
        async with client.stream_response("Say hello", model="gpt-test") as s:
            with pytest.raises(engine.StreamInterruptedError):
                await s.get_result()
    assert s.text == "".join(TOKENS[:3])


# -- map and engine run -------------------------------------------------------------------


def _line(custom_id: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "Say hello"}],
        "max_tokens": 20,
    }
    if stream:
        body["stream"] = True
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def test_map_consumes_stream_true_bodies_into_whole_answers(autojump_clock):
    """A streamed Batch line's result looks like a non-streamed one's, with TTFT recorded."""
    server = StreamServer()
    async with _client(server) as client:
        results = {r.id: r async for r in client.map([_line("s", True), _line("w", False)])}
    streamed, whole = results["s"], results["w"]
    assert streamed.ok and streamed.output == whole.output == "".join(TOKENS)
    assert streamed.usage == whole.usage
    assert streamed.response == whole.response
    assert streamed.timings.ttft == pytest.approx(server.ttft) and whole.timings.ttft is None


async def test_map_reports_a_stream_cut_mid_way_as_a_failed_result(autojump_clock):
    """In map, a stream broken after its first token is a failed result, sent once."""
    server = StreamServer(plan=[("cut", 1)])
    async with _client(server) as client:
        (result,) = [r async for r in client.map([_line("s", True)])]
    assert result.error.code == "stream_interrupted" and server.requests == 1


async def test_engine_run_writes_streamed_lines_like_whole_ones(tmp_path, autojump_clock):
    """engine run on stream:true lines writes the same output line shape as without."""
    source = tmp_path / "in.jsonl"
    lines = [_line(f"s{n}", True) for n in range(3)] + [_line("w", False)]
    source.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    output = tmp_path / "out.jsonl"
    server = StreamServer(plan=["503"])
    options = {
        "base_url": "http://127.0.0.1/v1",
        "api_key": KEY,
        "transport": httpx.MockTransport(server.handle),
        "retry_base_delay": 0.01,
    }
    summary = await batch.run_file(source, output, client_options=options)
    assert summary.succeeded == 4 and summary.failed == 0
    records = {
        record["custom_id"]: record
        for record in map(orjson.loads, output.read_bytes().splitlines())
    }
    whole = records.pop("w")
    for record in records.values():
        assert record.keys() == whole.keys()
        assert record["response"]["body"] == whole["response"]["body"]
        assert record["response"]["status_code"] == 200 and record["error"] is None
    assert server.requests == 5
    assert summary.ttft_p50 == pytest.approx(server.ttft)
    assert "time to first token (p50)" in format_summary(summary)


async def test_engine_run_without_streamed_lines_reports_no_ttft(tmp_path, autojump_clock):
    """A run with no stream:true line has no TTFT in its summary."""
    source = tmp_path / "in.jsonl"
    source.write_bytes(orjson.dumps(_line("w", False)) + b"\n")
    server = StreamServer()
    options = {
        "base_url": "http://127.0.0.1/v1",
        "api_key": KEY,
        "transport": httpx.MockTransport(server.handle),
    }
    summary = await batch.run_file(source, tmp_path / "out.jsonl", client_options=options)
    assert summary.succeeded == 1 and summary.ttft_p50 is None
    assert "time to first token" not in format_summary(summary)


async def test_exports_have_ttft_and_itl_columns_when_some_result_streamed(autojump_clock):
    """A table with a streamed result has ttft and itl columns; a table without has none."""
    server = StreamServer()
    async with _client(server) as client:
        results = [r async for r in client.map([_line("s", True), _line("w", False)])]
    results.sort(key=lambda result: result.id)
    streamed, whole = engine.to_rows(results)
    assert list(streamed)[13:17] == ["ttft", "itl_mean", "itl_p50", "itl_p99"]
    assert streamed["ttft"] == pytest.approx(server.ttft)
    assert streamed["itl_p50"] == pytest.approx(server.gap)
    assert whole["ttft"] is None
    assert "ttft" not in engine.to_rows(results[1:])[0]


async def test_chat_with_stream_true_returns_the_assembled_result(autojump_clock):
    """client.chat(..., stream=True) reads the stream itself and returns the whole answer."""
    server = StreamServer()
    async with _client(server) as client:
        result = await client.chat("Say hello", model="gpt-test", stream=True)
    assert result.output == "".join(TOKENS) and result.usage.completion_tokens == len(TOKENS)
    assert result.timings.ttft == pytest.approx(server.ttft)
    assert server.bodies[0]["stream_options"] == {"include_usage": True}


async def test_a_body_going_on_after_done_does_not_hold_the_answer(autojump_clock):
    """A server that keeps the body open after [DONE] costs its connection, not the answer."""

    async def endless() -> AsyncIterator[bytes]:
        yield _chat_stream_bytes(TOKENS)
        while True:
            await trio.sleep(10)
            yield b": keep-alive\n\n"

    async def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=httpx.MockTransport(handle)
    ) as client:
        started = trio.current_time()
        result = await client.chat("Say hello", model="gpt-test", stream=True)
        assert trio.current_time() - started < 2
    assert result.output == "".join(TOKENS)


async def test_rate_limit_headers_of_a_streamed_answer_feed_the_quota_book(autojump_clock):
    """The x-ratelimit-* headers on a stream's head teach the limiter the limits."""
    server = StreamServer()

    async def handle(request: httpx.Request) -> httpx.Response:
        response = await server.handle(request)
        response.headers.update(
            {
                "x-ratelimit-limit-requests": "600",
                "x-ratelimit-remaining-requests": "599",
                "x-ratelimit-reset-requests": "100ms",
                "x-ratelimit-limit-tokens": "90000",
                "x-ratelimit-remaining-tokens": "89000",
                "x-ratelimit-reset-tokens": "1s",
            }
        )
        return response

    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=httpx.MockTransport(handle)
    ) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            await s.get_result()
        await trio.testing.wait_all_tasks_blocked()
        (group,) = client.statistics().limiter.groups
    assert group.dimensions["requests_per_minute"].limit == 600
    assert group.dimensions["tokens_per_minute"].limit == 90000


async def test_a_server_that_answers_json_instead_of_a_stream_still_gives_the_answer(
    autojump_clock,
):
    """A 200 JSON answer to a streamed request is read whole; the text comes as one piece."""
    server = StreamServer()

    async def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=server._whole({}))

    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=httpx.MockTransport(handle)
    ) as client:
        async with client.stream("Say hello", model="gpt-test") as s:
            deltas = [delta async for delta in s]
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert deltas == ["".join(TOKENS)] and s.result.usage.completion_tokens == len(TOKENS)
    assert s.timings.ttft is None and stats.limiter.tokens_used == PROMPT_TOKENS + len(TOKENS)


async def test_map_consumes_a_streamed_responses_line(autojump_clock):
    """A /v1/responses Batch line with stream:true gives the completed response's result."""
    server = StreamServer()
    body = {"model": "gpt-test", "input": "Say hello", "stream": True}
    line = {"custom_id": "r", "method": "POST", "url": "/v1/responses", "body": body}
    async with _client(server) as client:
        (result,) = [r async for r in client.map([line])]
    assert isinstance(result, engine.ResponseResult) and result.output == "".join(TOKENS)
    assert result.response["status"] == "completed" and result.timings.ttft is not None


def test_logprobs_of_each_chunk_are_joined_in_order():
    """Each chunk's logprobs.content entries end up in one list, as a whole answer has them."""
    assembler = ChatStreamAssembler()
    for token in ("a", "b"):
        choice = {"index": 0, "delta": {"content": token}, "logprobs": {"content": [token]}}
        assembler.feed("message", orjson.dumps({"choices": [choice]}))
    assert assembler.body()["choices"][0]["logprobs"] == {"content": ["a", "b"]}


async def test_cancelling_a_stream_still_waiting_for_quota_takes_nothing(autojump_clock):
    """A stream cancelled while its permit is queued leaves at once, holding and sending nothing."""
    server = StreamServer()
    async with _client(server, limits=engine.Limits(rpm=1)) as client:
        async with client.stream("first", model="gpt-test") as s:
            await s.get_result()
        with trio.move_on_after(5) as scope:
            async with client.stream("second", model="gpt-test") as s:
                await s.get_result()
        assert scope.cancelled_caught and trio.current_time() < 30
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert server.requests == 1
    assert stats.limiter.waiting == 0 and stats.limiter.in_flight == 0


async def test_a_connection_failing_as_it_is_closed_keeps_the_answer(autojump_clock):
    """An error while dropping a connection after the answer was read does not lose it."""

    class ResetOnClose(httpx.AsyncByteStream):
        """The whole stream, then a body that never ends and resets when closed."""

        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield _chat_stream_bytes(TOKENS)
            while True:
                await trio.sleep(10)
                yield b": keep-alive\n\n"

        async def aclose(self) -> None:
            raise httpx.ReadError("connection reset while closing")

    async def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=ResetOnClose())

    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=httpx.MockTransport(handle)
    ) as client:
        result = await client.chat("Say hello", model="gpt-test", stream=True)
        await trio.testing.wait_all_tasks_blocked()
        stats = client.statistics()
    assert result.output == "".join(TOKENS) and stats.sent == 1
    assert stats.limiter.in_flight == 0 and stats.limiter.tokens_used == PROMPT_TOKENS + 6
