"""_WorkerClient.stream_post: a POST whose body is handed out as it arrives.

On any httpx transport (the test doubles httpx.MockTransport and
httpx.ASGITransport here) it is httpx's own ``client.stream`` behind the
:class:`engine._http.StreamedResponse` interface.
"""

from __future__ import annotations

import gzip

import httpx
import pytest
import trio

from engine._http import make_async_client
from engine._sse import ServerSentEvent, SSEDecoder

TIMEOUT = httpx.Timeout(10.0)
EVENTS = [b'data: {"n": %d}\n\n' % n for n in range(5)] + [b"data: [DONE]\n\n"]


def mock_client(handler) -> httpx.AsyncClient:
    """A worker client whose transport is ``httpx.MockTransport(handler)``."""
    return make_async_client(
        "http://api.test/v1",
        headers={"authorization": "Bearer sk-test"},
        timeout=TIMEOUT,
        transport=httpx.MockTransport(handler),
    )


async def read_all(response) -> list[bytes]:
    """Every piece ``receive_some`` hands out, up to the first ``b""``."""
    pieces = []
    while piece := await response.receive_some():
        pieces.append(piece)
    return pieces


async def test_fallback_stream_gives_status_headers_and_the_whole_body():
    """Through MockTransport: the status, lower-case headers, then the body and b"" at its end."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url), request.headers, request.content))
        return httpx.Response(
            200,
            headers=[("Content-Type", "text/event-stream"), ("X-Two", "a"), ("X-Two", "b")],
            content=b"".join(EVENTS),
        )

    async with mock_client(handler) as client:
        async with client.stream_post(
            "/chat/completions", content=b'{"stream":true}', headers={"x-client-request-id": "r1"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["x-two"] == "a"
            assert b"".join(await read_all(response)) == b"".join(EVENTS)
            assert await response.receive_some() == b""
    ((method, url, headers, content),) = seen
    assert (method, url, content) == (
        "POST",
        "http://api.test/v1/chat/completions",
        b'{"stream":true}',
    )
    assert headers["x-client-request-id"] == "r1"
    assert headers["authorization"] == "Bearer sk-test"


async def test_fallback_read_rest_returns_the_body_of_an_error_answer():
    """``read_rest`` gives the whole body of a non-streamed error answer."""
    body = b'{"error": {"message": "slow down", "type": "rate_limit_exceeded"}}'

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, content=body, headers={"retry-after-ms": "20"})

    async with mock_client(handler) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert response.status_code == 429
            assert response.headers["retry-after-ms"] == "20"
            assert await response.read_rest() == body
            assert await response.read_rest() == b""


async def test_fallback_decodes_a_gzip_body():
    """httpx's decoders run on the fallback: a gzip body comes out plain."""
    body = b"".join(EVENTS)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, content=gzip.compress(body), headers={"content-encoding": "gzip"}
        )

    async with mock_client(handler) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.read_rest() == body


async def test_fallback_raises_httpx_errors_on_entering():
    """A transport error surfaces as httpx's exception when the context is entered."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with mock_client(handler) as client:
        with pytest.raises(httpx.ConnectError):
            async with client.stream_post("/chat/completions", content=b"{}"):
                pytest.fail("entered a stream whose request failed")


async def test_fallback_receive_some_is_a_checkpoint():
    """``receive_some`` can be cancelled even when the body is already in memory."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"".join(EVENTS))

    async with mock_client(handler) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            with trio.CancelScope() as scope:
                scope.cancel()
                await response.receive_some()
                pytest.fail("receive_some did not checkpoint")
            assert scope.cancelled_caught


async def test_fallback_leaving_early_then_streaming_again_works():
    """Breaking out before the body's end closes that response; the client streams again."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"".join(EVENTS))

    async with mock_client(handler) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.receive_some()
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert b"".join(await read_all(response)) == b"".join(EVENTS)


async def sse_app(scope, receive, send) -> None:
    """An ASGI app that streams EVENTS, one body message per event."""
    assert scope["type"] == "http"
    request = await receive()
    assert request["body"] == b'{"stream":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    for event in EVENTS:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_fallback_over_asgi_transport_feeds_the_sse_decoder():
    """Through ASGITransport, the pieces decode to the events the app sent, in order."""
    client = make_async_client(
        "http://api.test/v1",
        headers={},
        timeout=TIMEOUT,
        transport=httpx.ASGITransport(app=sse_app),
    )
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    async with client:
        async with client.stream_post("/chat/completions", content=b'{"stream":true}') as response:
            assert response.headers["content-type"] == "text/event-stream"
            while piece := await response.receive_some():
                events.extend(decoder.feed(piece))
    events.extend(decoder.close())
    assert [event.data for event in events] == [event[6:-2] for event in EVENTS]
