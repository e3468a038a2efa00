"""_WorkerClient.stream_post: a POST whose body is handed out as it arrives.

On any httpx transport (the test doubles httpx.MockTransport and
httpx.ASGITransport here) it is httpx's own ``client.stream`` behind the
:class:`engine._http.StreamedResponse` interface; on the engine's
H11Transport it reads the body from the socket as it comes, checked here over
loopback against tiny scripted trio servers.
"""

from __future__ import annotations

import functools
import gzip
import ssl
import subprocess

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing

from engine._http import H11Transport, TimeoutWatch, _H11Stream, make_async_client
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


# --- the H11Transport fast path, over loopback -------------------------------------


class Peer:
    """The server side of one connection: reads requests with h11, writes raw bytes."""

    def __init__(self, stream: trio.abc.Stream, server: Server, index: int) -> None:
        self.stream = stream
        self.server = server
        self.index = index
        self.h11 = h11.Connection(h11.SERVER)

    async def read_request(self) -> bytes | None:
        """The next request's body (None at end of stream); notes its target on the server."""
        # Answers go out raw, unknown to h11: each request is read by a fresh parser.
        leftover = self.h11.trailing_data[0]
        self.h11 = h11.Connection(h11.SERVER)
        if leftover:
            self.h11.receive_data(leftover)
        body = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                self.h11.receive_data(data)
            elif isinstance(event, h11.Request):
                self.server.targets.append((event.target, self.index))
                self.server.headers.append(dict(event.headers))
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(body)
            else:
                return None

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


@attrs.define
class Server:
    """A scripted loopback server: where it listens and what it was asked."""

    port: int = 0
    scheme: str = "http"
    connections: int = 0
    targets: list[tuple[bytes, int]] = attrs.Factory(list)
    headers: list[dict[bytes, bytes]] = attrs.Factory(list)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/v1"


async def start_server(
    nursery: trio.Nursery, handler, ssl_context: ssl.SSLContext | None = None
) -> Server:
    """Serve ``handler(peer)`` (one call per connection) on a free loopback port (TLS if given)."""
    server = Server(scheme="https" if ssl_context else "http")

    async def on_connection(stream: trio.abc.Stream) -> None:
        server.connections += 1
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
        try:
            await handler(Peer(stream, server, server.connections))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), on_connection, 0
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


def loopback_client(
    server: Server,
    watch: TimeoutWatch | None = None,
    read: float = 10.0,
    transport: H11Transport | None = None,
):
    """A worker client on its own H11Transport (kept by ``watch`` if given)."""
    return make_async_client(
        server.url,
        headers={"authorization": "Bearer sk-test"},
        timeout=httpx.Timeout(10.0, read=read),
        watch=watch,
        transport=transport,
    )


async def running_watch(nursery: trio.Nursery) -> TimeoutWatch:
    watch = TimeoutWatch()
    await nursery.start(watch.run)
    return watch


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunked(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
WHOLE_SSE_ANSWER = SSE_HEAD + b"".join(chunked(event) for event in EVENTS) + LAST_CHUNK


async def answer_each_with(peer: Peer, answer: bytes = WHOLE_SSE_ANSWER) -> None:
    """Answer every request on the connection with ``answer``."""
    while await peer.read_request() is not None:
        await peer.send(answer)


@pytest.fixture(params=[False, True], ids=["cancel-scope", "timeout-watch"])
async def watch(request, nursery) -> TimeoutWatch | None:
    """No watch (a cancel scope per wait), or a running TimeoutWatch."""
    return await running_watch(nursery) if request.param else None


async def test_pieces_arrive_before_the_body_ends(nursery, watch):
    """The first event is handed out while the server still holds back the rest."""
    first_seen = trio.Event()

    async def hold_back_until_seen(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD + chunked(EVENTS[0]))
        await first_seen.wait()
        await peer.send(b"".join(chunked(event) for event in EVENTS[1:]) + LAST_CHUNK)

    server = await start_server(nursery, hold_back_until_seen)
    async with loopback_client(server, watch) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert isinstance(response, _H11Stream)  # the fast path, not httpx's
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert await response.receive_some() == EVENTS[0]
            first_seen.set()
            rest = await response.read_rest()
    assert rest == b"".join(EVENTS[1:])


async def test_request_goes_out_as_post_sends_it(nursery):
    """The streamed POST carries the path, the client's headers, the caller's, and the body."""
    bodies = []

    async def record(peer: Peer) -> None:
        while (body := await peer.read_request()) is not None:
            bodies.append(body)
            await peer.send(WHOLE_SSE_ANSWER)

    server = await start_server(nursery, record)
    async with loopback_client(server) as client:
        async with client.stream_post(
            "/chat/completions", content=b'{"stream":true}', headers={"x-client-request-id": "r7"}
        ) as response:
            await response.read_rest()
    assert server.targets == [(b"/v1/chat/completions", 1)]
    assert bodies == [b'{"stream":true}']
    sent = server.headers[0]
    assert sent[b"authorization"] == b"Bearer sk-test"
    assert sent[b"x-client-request-id"] == b"r7"
    assert sent[b"content-length"] == b"15"
    assert b"accept-encoding" not in sent


async def test_sse_events_decode_from_the_streamed_pieces(nursery, watch):
    """Events sent as chunks one by one decode, in order, from the handed-out pieces."""

    async def one_chunk_per_event(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD)
        for event in EVENTS:
            await trio.sleep(0.001)
            await peer.send(chunked(event))
        await peer.send(LAST_CHUNK)

    server = await start_server(nursery, one_chunk_per_event)
    decoder = SSEDecoder()
    events = []
    async with loopback_client(server, watch) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            while piece := await response.receive_some():
                events.extend(decoder.feed(piece))
    assert [event.data for event in events + decoder.close()] == [e[6:-2] for e in EVENTS]


async def test_a_body_read_to_its_end_keeps_the_connection(nursery, watch):
    """Streams read to the end, and a plain post after them, share one connection."""
    server = await start_server(nursery, answer_each_with)
    async with loopback_client(server, watch) as client:
        for _ in range(3):
            async with client.stream_post("/chat/completions", content=b"{}") as response:
                assert await response.read_rest() == b"".join(EVENTS)
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            await response.read_rest()
            assert await response.receive_some() == b""
    assert server.connections == 1
    assert len(server.targets) == 4


async def test_content_length_body_streams_and_keeps_the_connection(nursery):
    """A Content-Length body (an error answer, say) is read whole; the connection stays."""
    error = b'{"error": {"message": "slow down"}}'
    answer = b"HTTP/1.1 429 Too Many Requests\r\nretry-after-ms: 20\r\ncontent-length: %d\r\n\r\n%s"

    server = await start_server(
        nursery, functools.partial(answer_each_with, answer=answer % (len(error), error))
    )
    async with loopback_client(server) as client:
        for _ in range(2):
            async with client.stream_post("/chat/completions", content=b"{}") as response:
                assert response.status_code == 429
                assert response.headers["retry-after-ms"] == "20"
                assert await response.read_rest() == error
        assert (await client.post("/chat/completions", content=b"{}")).status_code == 429
    assert server.connections == 1


async def test_leaving_early_drops_the_connection_and_the_next_request_works(nursery, watch):
    """Breaking out mid-body closes that connection; the next stream connects afresh."""

    async def first_stalls_then_answer(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await peer.send(SSE_HEAD + chunked(EVENTS[0]))
            await trio.sleep_forever()
        await answer_each_with(peer)

    server = await start_server(nursery, first_stalls_then_answer)
    async with loopback_client(server, watch) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.receive_some() == EVENTS[0]
        with pytest.raises(httpx.StreamClosed):
            await response.receive_some()
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.read_rest() == b"".join(EVENTS)
    assert server.connections == 2


async def test_timeout_between_pieces_raises_read_timeout(nursery, watch, autojump_clock):
    """A server that goes quiet mid-body trips the read timeout, from the wait's start."""

    async def one_event_then_silence(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD + chunked(EVENTS[0]))
        await trio.sleep_forever()

    server = await start_server(nursery, one_event_then_silence)
    async with loopback_client(server, watch, read=3.0) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.receive_some() == EVENTS[0]
            await trio.sleep(10.0)  # the caller's own time between reads is not timed
            start = trio.current_time()
            with trio.fail_after(30), pytest.raises(httpx.ReadTimeout):
                await response.receive_some()
            assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    if watch is not None:
        assert not watch._connections  # the dropped connection is forgotten


async def test_read_timeout_bounds_each_wait_not_the_whole_stream(nursery, watch, autojump_clock):
    """Events 2 s apart under a 3 s read timeout stream for 12 s without a timeout."""

    async def slow_events(peer: Peer) -> None:
        await peer.read_request()
        await trio.sleep(2.0)
        await peer.send(SSE_HEAD)
        for event in EVENTS:
            await trio.sleep(2.0)
            await peer.send(chunked(event))
        await peer.send(LAST_CHUNK)
        await trio.sleep_forever()

    server = await start_server(nursery, slow_events)
    async with loopback_client(server, watch, read=3.0) as client:
        start = trio.current_time()
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.read_rest() == b"".join(EVENTS)
        assert trio.current_time() - start == pytest.approx(14.0, abs=0.01)


async def test_head_that_never_comes_raises_read_timeout_on_entering(
    nursery, watch, autojump_clock
):
    """No answer at all: entering the stream raises ReadTimeout after the read timeout."""

    async def never_answer(peer: Peer) -> None:
        await peer.read_request()
        await trio.sleep_forever()

    server = await start_server(nursery, never_answer)
    async with loopback_client(server, watch, read=3.0) as client:
        with trio.fail_after(30), pytest.raises(httpx.ReadTimeout):
            async with client.stream_post("/chat/completions", content=b"{}"):
                pytest.fail("entered without a head")


@pytest.mark.parametrize(
    "cut",
    [
        SSE_HEAD + chunked(EVENTS[0]) + chunked(EVENTS[1])[:10],
        SSE_HEAD + chunked(EVENTS[0]) + b"1",
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + EVENTS[0],
    ],
    ids=["mid-chunk", "mid-size-line", "short-content-length"],
)
async def test_peer_closing_mid_body_raises_remote_protocol_error(nursery, watch, cut):
    """A peer that closes before the body's declared end: RemoteProtocolError, no re-send."""

    async def close_mid_body(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(cut)

    server = await start_server(nursery, close_mid_body)
    async with loopback_client(server, watch) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            with pytest.raises(httpx.RemoteProtocolError):
                await response.read_rest()
    assert len(server.targets) == 1


async def test_malformed_chunk_raises_remote_protocol_error(nursery):
    """Bytes that are not chunked coding: RemoteProtocolError from receive_some."""

    async def bad_chunk(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD)
        await trio.sleep(0.01)
        await peer.send(b"zz\r\nnot a chunk\r\n")
        await trio.sleep_forever()

    server = await start_server(nursery, bad_chunk)
    async with loopback_client(server) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            with pytest.raises(httpx.RemoteProtocolError):
                await response.receive_some()


async def test_close_delimited_body_ends_at_the_close_and_is_not_reused(nursery):
    """A body without framing (read by h11) ends when the server closes; the next connects."""

    async def close_delimited(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + EVENTS[0])
        await trio.sleep(0.001)
        await peer.send(EVENTS[1])

    server = await start_server(nursery, close_delimited)
    async with loopback_client(server) as client:
        for _ in range(2):
            async with client.stream_post("/chat/completions", content=b"{}") as response:
                assert await response.read_rest() == EVENTS[0] + EVENTS[1]
    assert server.connections == 2


async def test_gzip_body_is_decoded(nursery):
    """A content-encoded body is decoded (by httpx's decoders) as it streams."""
    body = b"".join(EVENTS)
    packed = gzip.compress(body)
    answer = (
        b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunked(packed[:20])
        + chunked(packed[20:])
        + LAST_CHUNK
    )
    server = await start_server(nursery, functools.partial(answer_each_with, answer=answer))
    async with loopback_client(server) as client:
        for _ in range(2):
            async with client.stream_post("/chat/completions", content=b"{}") as response:
                assert response.headers["content-encoding"] == "gzip"
                assert await response.read_rest() == body
    assert server.connections == 1


async def test_stale_reused_connection_is_retried_once_on_a_new_one(nursery):
    """A reused connection closed with no byte of the head: the stream's request goes again."""

    async def close_the_second_request_unanswered(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await peer.send(WHOLE_SSE_ANSWER)
            await peer.read_request()
            return
        await answer_each_with(peer)

    server = await start_server(nursery, close_the_second_request_unanswered)
    async with loopback_client(server) as client:
        async with client.stream_post("/first", content=b"{}") as response:
            await response.read_rest()
        async with client.stream_post("/second", content=b"{}") as response:
            assert await response.read_rest() == b"".join(EVENTS)
    assert server.targets == [(b"/v1/first", 1), (b"/v1/second", 1), (b"/v1/second", 2)]


async def test_fresh_connection_closed_without_an_answer_is_not_retried(nursery):
    """On a new connection, a server that closes without answering: an error, sent once."""

    async def read_then_close(peer: Peer) -> None:
        await peer.read_request()

    server = await start_server(nursery, read_then_close)
    async with loopback_client(server) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            async with client.stream_post("/chat/completions", content=b"{}"):
                pytest.fail("entered without a head")
    assert len(server.targets) == 1


async def test_cancelled_mid_body_drops_the_connection_and_the_next_request_works(nursery, watch):
    """A caller cancelled while waiting for a piece leaves a clean transport behind."""

    async def first_stalls_then_answer(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await peer.send(SSE_HEAD + chunked(EVENTS[0]))
            await trio.sleep_forever()
        await answer_each_with(peer)

    server = await start_server(nursery, first_stalls_then_answer)
    async with loopback_client(server, watch) as client:
        with trio.move_on_after(0.05) as scope:
            async with client.stream_post("/chat/completions", content=b"{}") as response:
                await response.read_rest()
        assert scope.cancelled_caught
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.read_rest() == b"".join(EVENTS)
    assert server.connections == 2


async def test_the_connection_is_the_streams_from_entering_to_leaving(nursery):
    """A second request on the same client waits until the stream is left."""
    order = []

    server = await start_server(nursery, answer_each_with)
    async with loopback_client(server) as client:

        async def second() -> None:
            await client.post("/chat/completions", content=b"{}")
            order.append("second done")

        async with client.stream_post("/chat/completions", content=b"{}") as response:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            order.append("stream still open")
            await response.read_rest()
        await trio.testing.wait_all_tasks_blocked()
    assert order == ["stream still open", "second done"]
    assert server.connections == 1


async def test_pool_timeout_while_a_stream_holds_the_connection(nursery, autojump_clock):
    """A request waiting longer than the pool timeout for an open stream: PoolTimeout."""
    server = await start_server(nursery, answer_each_with)
    async with loopback_client(server) as client:
        async with client.stream_post("/chat/completions", content=b"{}"):
            with pytest.raises(httpx.PoolTimeout):
                await client.post(
                    "/chat/completions", content=b"{}", timeout=httpx.Timeout(10.0, pool=1.0)
                )


async def test_framing_headers_take_httpx_s_path(nursery):
    """A caller's own framing header sends the stream through httpx (still the same interface)."""
    server = await start_server(nursery, answer_each_with)
    async with loopback_client(server) as client:
        async with client.stream_post(
            "/chat/completions", content=b"{}", headers={"Connection": "close"}
        ) as response:
            assert not isinstance(response, _H11Stream)
            assert await response.read_rest() == b"".join(EVENTS)


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts for a throwaway self-signed 127.0.0.1 certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    return server_context, ssl.create_default_context(cafile=cert)


async def test_stream_over_tls_hands_out_pieces_and_keeps_the_connection(nursery, tls_contexts):
    """Over TLS the body streams too, read to its end the connection is kept."""
    server_context, client_context = tls_contexts
    first_seen = trio.Event()

    async def hold_back_once(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD + chunked(EVENTS[0]))
        await first_seen.wait()
        await peer.send(b"".join(chunked(event) for event in EVENTS[1:]) + LAST_CHUNK)
        await answer_each_with(peer)

    server = await start_server(nursery, hold_back_once, ssl_context=server_context)
    transport = H11Transport(ssl_context=client_context)
    async with loopback_client(server, transport=transport) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.receive_some() == EVENTS[0]
            first_seen.set()
            assert await response.read_rest() == b"".join(EVENTS[1:])
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.read_rest() == b"".join(EVENTS)
    assert server.connections == 1


async def test_stream_over_tls_times_out_between_pieces(nursery, tls_contexts, autojump_clock):
    """Over TLS (a cancel scope per wait, even with a watch) the read timeout holds."""
    server_context, client_context = tls_contexts

    async def one_event_then_silence(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD + chunked(EVENTS[0]))
        await trio.sleep_forever()

    server = await start_server(nursery, one_event_then_silence, ssl_context=server_context)
    watch = await running_watch(nursery)
    transport = H11Transport(ssl_context=client_context, watch=watch)
    async with loopback_client(server, read=3.0, transport=transport) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.receive_some() == EVENTS[0]
            start = trio.current_time()
            with trio.fail_after(30), pytest.raises(httpx.ReadTimeout):
                await response.receive_some()
            assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)


async def test_a_watch_closed_mid_stream_leaves_the_timeout_to_a_cancel_scope(
    nursery, autojump_clock
):
    """When the watch stops during a stream, the next wait is bounded by a cancel scope."""

    async def one_event_then_silence(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(SSE_HEAD + chunked(EVENTS[0]))
        await trio.sleep_forever()

    server = await start_server(nursery, one_event_then_silence)
    watch = await running_watch(nursery)
    async with loopback_client(server, watch, read=3.0) as client:
        async with client.stream_post("/chat/completions", content=b"{}") as response:
            assert await response.receive_some() == EVENTS[0]
            watch.close()
            await trio.testing.wait_all_tasks_blocked()
            assert not watch.running
            start = trio.current_time()
            with trio.fail_after(30), pytest.raises(httpx.ReadTimeout):
                await response.receive_some()
            assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
