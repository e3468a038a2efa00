"""H11Transport over loopback, against tiny scripted trio/h11 servers started in the test."""

from __future__ import annotations

import functools
import gzip
import shutil
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from http import HTTPStatus

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing

from engine._http import (
    H11Transport,
    RawResponse,
    TimeoutWatch,
    make_async_client,
    shared_ssl_context,
)

OK_BODY = b'{"ok":true}'
TIMEOUT = httpx.Timeout(10.0)


@attrs.define
class Received:
    """One request as the server saw it."""

    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes
    connection: int


@attrs.define
class Server:
    """A scripted loopback server: what it saw, and where it listens."""

    port: int
    requests: list[Received] = attrs.Factory(list)
    connections: int = 0
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


class Peer:
    """The server side of one connection: read requests with h11, write raw bytes."""

    def __init__(self, stream: trio.abc.Stream, server: Server, index: int) -> None:
        self.stream = stream
        self.server = server
        self.index = index
        self.h11 = h11.Connection(h11.SERVER)

    async def read_request(self) -> Received | None:
        """The next complete request on this connection, or None at end of stream."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        elif self.h11.their_state is h11.DONE:
            # The last answer went out raw (send_raw), unknown to h11: start afresh.
            self.h11 = h11.Connection(h11.SERVER)
        head = None
        body = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data and head is None:
                    return None
                self.h11.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                received = Received(
                    head.method,
                    head.target,
                    {name: value for name, value in head.headers},
                    b"".join(body),
                    self.index,
                )
                self.server.requests.append(received)
                return received
            elif isinstance(event, h11.ConnectionClosed):
                return None
            else:
                raise AssertionError(f"test server got {event!r}")

    async def respond(
        self, body: bytes = OK_BODY, status: int = 200, headers: list[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer the current request through h11 (Content-Length unless headers say else)."""
        all_headers = list(headers)
        if not any(
            name.lower() in (b"content-length", b"transfer-encoding") for name, _ in headers
        ):
            all_headers.append((b"content-length", str(len(body)).encode()))
        reason = HTTPStatus(status).phrase.encode()
        data = self.h11.send(h11.Response(status_code=status, headers=all_headers, reason=reason))
        if body:
            data += self.h11.send(h11.Data(data=body))
        data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)


Handler = Callable[[Peer], Awaitable[None]]


async def keep_answering(peer: Peer) -> None:
    """Answer every request with 200 OK_BODY until the client closes."""
    while await peer.read_request() is not None:
        await peer.respond()


async def start_server(
    nursery: trio.Nursery, handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> Server:
    """Serve ``handler`` (one call per connection) on a loopback port chosen by the OS."""
    server = Server(port=0, scheme="https" if ssl_context else "http")

    async def on_connection(stream: trio.abc.Stream) -> None:
        server.connections += 1
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
        try:
            await handler(Peer(stream, server, server.connections))
        except trio.BrokenResourceError:
            pass
        finally:
            await trio.aclose_forcefully(stream)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, host="127.0.0.1"), on_connection, 0
    )
    server.port = listeners[0].socket.getsockname()[1]
    return server


def client_for(server: Server, **kwargs) -> httpx.AsyncClient:
    return make_async_client(server.url, headers={"x-test": "1"}, timeout=TIMEOUT, **kwargs)


async def test_keep_alive_reuses_one_connection_for_many_requests(nursery):
    """Sequential requests all travel over the same connection."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        for number in range(20):
            response = await client.post("/v1/chat/completions", json={"n": number})
            assert response.status_code == 200
            assert response.json() == {"ok": True}
    assert server.connections == 1
    assert len(server.requests) == 20
    assert server.requests[3].body == b'{"n":3}'


async def test_request_carries_method_target_and_headers(nursery):
    """What the server receives is the request httpx built: method, path, query, headers."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        await client.get("/v1/models", params={"a": "b c"}, headers={"Authorization": "Bearer k"})
    seen = server.requests[0]
    assert seen.method == b"GET"
    assert seen.target == b"/v1/models?a=b+c"
    assert seen.headers[b"authorization"] == b"Bearer k"
    assert seen.headers[b"x-test"] == b"1"
    assert seen.headers[b"host"] == f"127.0.0.1:{server.port}".encode()


async def test_response_status_headers_and_reason_reach_httpx(nursery):
    """Status, headers (case kept), reason phrase and HTTP version come through."""

    async def answer_429(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.respond(
                b"{}", status=429, headers=[(b"X-RateLimit-Remaining-Requests", b"0")]
            )

    server = await start_server(nursery, answer_429)
    async with client_for(server) as client:
        response = await client.get("/")
    assert response.status_code == 429
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.reason_phrase == "Too Many Requests"
    assert response.http_version == "HTTP/1.1"


async def test_next_request_reconnects_after_server_closed_idle_connection(nursery):
    """A connection the server closed while idle is replaced; the request succeeds."""

    async def answer_once_then_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.respond()
        await peer.close()

    server = await start_server(nursery, answer_once_then_close)
    async with client_for(server) as client:
        assert (await client.get("/first")).status_code == 200
        await trio.testing.wait_all_tasks_blocked()
        assert (await client.get("/second")).status_code == 200
    assert server.connections == 2
    assert [r.target for r in server.requests] == [b"/first", b"/second"]


async def test_stale_reused_connection_is_retried_once_on_a_new_one(nursery):
    """A reused connection closed with no response byte: the request goes out once more."""

    async def close_the_second_request_unanswered(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await peer.respond()
            await peer.read_request()
            await peer.close()
        else:
            await keep_answering(peer)

    server = await start_server(nursery, close_the_second_request_unanswered)
    async with client_for(server) as client:
        await client.get("/first")
        response = await client.get("/second")
    assert response.status_code == 200
    assert [(r.target, r.connection) for r in server.requests] == [
        (b"/first", 1),
        (b"/second", 1),
        (b"/second", 2),
    ]


async def test_fresh_connection_closed_without_response_is_not_retried(nursery):
    """On a new connection, a server that closes without answering yields an error, once."""

    async def read_then_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.close()

    server = await start_server(nursery, read_then_close)
    async with client_for(server) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post("/v1/chat/completions", content=b"{}")
    assert len(server.requests) == 1


async def test_drop_mid_response_raises_and_is_not_resent(nursery):
    """A server that drops the connection halfway through the body: an error, no re-send."""

    async def answer_then_drop_mid_body(peer: Peer) -> None:
        await peer.read_request()
        await peer.respond()
        await peer.read_request()
        await peer.send_raw(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial')
        await peer.close()

    server = await start_server(nursery, answer_then_drop_mid_body)
    async with client_for(server) as client:
        await client.get("/first")
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.post("/second", content=b"{}")
    assert [r.target for r in server.requests] == [b"/first", b"/second"]
    assert server.connections == 1


async def test_malformed_response_raises_remote_protocol_error(nursery):
    """Garbage instead of a status line is the server's protocol error."""

    async def answer_garbage(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"NOT HTTP AT ALL\r\n\r\n")
        await trio.sleep_forever()

    server = await start_server(nursery, answer_garbage)
    async with client_for(server) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


async def test_read_timeout_raises_read_timeout(nursery, autojump_clock):
    """A server that never answers trips the request's read timeout."""
    server = await start_server(nursery, never_answer)
    async with client_for(server) as client:
        start = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(10.0, read=3.0))
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)


@pytest.mark.parametrize("watched", [False, True], ids=["cancel-scope", "timeout-watch"])
async def test_read_timeout_applies_to_each_wait_not_the_whole_body(
    watched, nursery, autojump_clock
):
    """A body trickling in faster than the read timeout completes (scope or watch)."""

    async def trickle(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        for byte in b"hello":
            await trio.sleep(2.0)
            await peer.send_raw(bytes([byte]))
        await trio.sleep_forever()

    server = await start_server(nursery, trickle)
    watch = await running_watch(nursery) if watched else None
    async with client_for(server, watch=watch) as client:
        response = await client.get("/", timeout=httpx.Timeout(10.0, read=3.0))
    assert response.content == b"hello"


async def test_connect_refused_raises_connect_error():
    """Nothing listening on the port: ConnectError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_async_client(f"http://127.0.0.1:{port}", headers={}, timeout=TIMEOUT) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


async def test_cancellation_mid_request_leaves_transport_usable(nursery):
    """A request cancelled while waiting for its answer; the next one works on a new connection."""
    release = trio.Event()

    async def first_slow_then_fast(peer: Peer) -> None:
        if peer.index == 1:
            await peer.read_request()
            await release.wait()
            await peer.respond(b"late")
        else:
            await keep_answering(peer)

    server = await start_server(nursery, first_slow_then_fast)
    async with client_for(server) as client:
        with trio.CancelScope() as scope:
            nursery.start_soon(_cancel_when_blocked, scope)
            await client.get("/slow")
        assert scope.cancelled_caught
        release.set()
        response = await client.get("/fast")
    assert response.content == OK_BODY
    assert server.connections == 2


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


async def test_concurrent_caller_waits_for_the_connection(nursery):
    """Two tasks sharing one transport take turns on its single connection."""
    server = await start_server(nursery, keep_answering)
    results = []
    async with client_for(server) as client:

        async def get(path: str) -> None:
            results.append((await client.get(path)).status_code)

        async with trio.open_nursery() as inner:
            inner.start_soon(get, "/a")
            inner.start_soon(get, "/b")
    assert results == [200, 200]
    assert server.connections == 1


async def test_pool_timeout_when_connection_stays_busy(nursery, autojump_clock):
    """A caller that cannot get the connection within the pool timeout gets PoolTimeout."""

    async def never_answer(peer: Peer) -> None:
        await peer.read_request()
        await trio.sleep_forever()

    server = await start_server(nursery, never_answer)
    async with client_for(server) as client, trio.open_nursery() as hog:
        hog.start_soon(client.get, "/hog")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(httpx.PoolTimeout):
            await client.get("/", timeout=httpx.Timeout(10.0, pool=1.0))
        hog.cancel_scope.cancel()


async def test_multipart_upload_streams_whole_body(nursery):
    """A multipart file upload (an httpx stream) arrives complete and well-formed."""
    server = await start_server(nursery, keep_answering)
    payload = bytes(range(256)) * 1000
    async with client_for(server) as client:
        response = await client.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("call.mp3", payload, "audio/mpeg")},
        )
    assert response.status_code == 200
    seen = server.requests[0]
    assert seen.headers[b"content-type"].startswith(b"multipart/form-data; boundary=")
    assert int(seen.headers[b"content-length"]) == len(seen.body)
    assert payload in seen.body
    assert b'name="model"\r\n\r\nwhisper-1' in seen.body


async def test_chunked_request_body_from_async_iterator(nursery):
    """A body of unknown length goes out chunked and arrives whole."""
    server = await start_server(nursery, keep_answering)

    async def parts():
        for number in range(50):
            yield b"part%d;" % number

    async with client_for(server) as client:
        await client.post("/upload", content=parts())
    seen = server.requests[0]
    assert seen.headers[b"transfer-encoding"] == b"chunked"
    assert seen.body == b"".join(b"part%d;" % n for n in range(50))


async def test_chunked_response_is_read_whole_and_connection_reused(nursery):
    """A Transfer-Encoding: chunked answer is reassembled; keep-alive continues."""

    async def answer_chunked(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send_raw(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )

    server = await start_server(nursery, answer_chunked)
    async with client_for(server) as client:
        first = await client.get("/1")
        second = await client.get("/2")
    assert first.text == second.text == "hello world"
    assert server.connections == 1


async def test_connection_close_response_makes_next_request_reconnect(nursery):
    """After a Connection: close answer (body read to EOF), the next request connects anew."""

    async def answer_and_close(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end")
        await peer.close()

    server = await start_server(nursery, answer_and_close)
    async with client_for(server) as client:
        first = await client.get("/1")
        second = await client.get("/2")
    assert first.content == second.content == b"until the end"
    assert server.connections == 2


async def test_request_asking_connection_close_is_not_reused(nursery):
    """A request sent with Connection: close is its connection's last."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        await client.get("/1", headers={"connection": "close"})
        await client.get("/2")
    assert server.connections == 2


async def test_gzip_response_is_decoded(nursery):
    """A Content-Encoding: gzip body reaches the caller decoded."""

    async def answer_gzip(peer: Peer) -> None:
        await peer.read_request()
        await peer.respond(gzip.compress(OK_BODY), headers=[(b"content-encoding", b"gzip")])

    server = await start_server(nursery, answer_gzip)
    async with client_for(server) as client:
        response = await client.get("/")
    assert response.json() == {"ok": True}


async def test_head_response_has_no_body_and_keeps_connection(nursery):
    """A HEAD answer's Content-Length does not make the client wait for a body."""

    async def answer_head(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n")

    server = await start_server(nursery, answer_head)
    async with client_for(server) as client:
        first = await client.head("/")
        second = await client.head("/")
    assert first.content == second.content == b""
    assert first.headers["content-length"] == "42"
    assert server.connections == 1


async def test_informational_response_is_skipped(nursery):
    """A 103 Early Hints before the answer is skipped; the final response is returned."""

    async def answer_with_early_hints(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n")
        await peer.send_raw(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok")
        await trio.sleep_forever()

    server = await start_server(nursery, answer_with_early_hints)
    async with client_for(server) as client:
        response = await client.get("/")
    assert (response.status_code, response.content) == (201, b"ok")


async def test_header_with_newline_is_refused_before_sending(nursery):
    """A header value that would start a new line is a local protocol error; nothing is sent."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get("/", headers={"x-evil": "a\r\nx-injected: 1"})
        assert (await client.get("/")).status_code == 200
    assert len(server.requests) == 1


async def test_fast_post_refuses_a_header_that_would_start_a_new_line(nursery):
    """A bytes POST with CR/LF in a per-call header value is refused before sending."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.post("/chat", content=b"{}", headers={"x-id": "a\r\nx-injected: 1"})
        with pytest.raises(httpx.LocalProtocolError):
            await client.post("/chat", content=b"{}", headers={"x bad name": "1"})
        assert (await client.post("/chat", content=b"{}")).status_code == 200
    assert len(server.requests) == 1


async def test_fast_post_with_connection_close_closes_after_the_answer(nursery):
    """A per-call Connection: close header is honoured: the next POST opens a new connection."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        first = await client.post("/chat", content=b"{}", headers={"connection": "close"})
        second = await client.post("/chat", content=b"{}")
    assert (first.status_code, second.status_code) == (200, 200)
    assert server.connections == 2


async def test_closed_transport_refuses_requests():
    """After aclose(), a request fails instead of reconnecting."""
    transport = H11Transport()
    await transport.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await transport.handle_async_request(httpx.Request("GET", "http://127.0.0.1:1/"))


async def test_make_async_client_uses_given_transport():
    """A transport passed in (here httpx.MockTransport) replaces the H11Transport."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers["authorization"]))
        return httpx.Response(200, json={"ok": True})

    async with make_async_client(
        "http://api.test/v1",
        headers={"authorization": "Bearer k"},
        timeout=TIMEOUT,
        transport=httpx.MockTransport(handler),
    ) as client:
        response = await client.post("/chat/completions", json={})
    assert response.json() == {"ok": True}
    assert seen == [("http://api.test/v1/chat/completions", "Bearer k")]


async def test_make_async_client_builds_h11_transport_with_base_url_and_timeout():
    """By default the client sends through an H11Transport with the given defaults."""
    client = make_async_client("http://127.0.0.1:9/v1", headers={"a": "b"}, timeout=TIMEOUT)
    async with client:
        assert isinstance(client._transport, H11Transport)
        assert client.base_url == httpx.URL("http://127.0.0.1:9/v1/")
        assert client.timeout == TIMEOUT
        assert client.headers["a"] == "b"


def test_shared_ssl_context_is_built_once():
    """Every caller gets the same verifying TLS context."""
    assert shared_ssl_context() is shared_ssl_context()
    assert shared_ssl_context().verify_mode == ssl.CERT_REQUIRED


@pytest.fixture(scope="module")
def tls_certificate(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 made with the openssl command (skip without it)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
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
    return cert, key


async def test_https_keep_alive_over_tls(nursery, tls_certificate):
    """https URLs go through TLS (verified against the given context) and keep the connection."""
    cert, key = tls_certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=cert)
    server = await start_server(nursery, keep_answering, ssl_context=server_context)
    transport = H11Transport(ssl_context=client_context)
    async with client_for(server, transport=transport) as client:
        for _ in range(3):
            assert (await client.get("/")).content == OK_BODY
    assert server.connections == 1


async def test_https_with_untrusted_certificate_raises_connect_error(nursery, tls_certificate):
    """The default context verifies certificates: a self-signed one fails to connect."""
    cert, key = tls_certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    server = await start_server(nursery, keep_answering, ssl_context=server_context)
    async with client_for(server) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/")


async def test_response_head_split_across_reads_is_reassembled(nursery):
    """A status line and headers arriving in pieces still parse; keep-alive continues."""

    async def answer_in_pieces(peer: Peer) -> None:
        while await peer.read_request() is not None:
            for piece in (b"HTTP/1.1 200 O", b"K\r\ncontent-le", b"ngth: 2\r", b"\n\r", b"\nok"):
                await peer.send_raw(piece)
                await trio.sleep(0.01)

    server = await start_server(nursery, answer_in_pieces)
    async with client_for(server) as client:
        first = await client.get("/1")
        second = await client.get("/2")
    assert first.content == second.content == b"ok"
    assert server.connections == 1


async def test_bytes_after_the_body_make_the_connection_unused_again(nursery):
    """Data beyond Content-Length is not trusted: the next request opens a new connection."""

    async def answer_with_extra_bytes(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")

    server = await start_server(nursery, answer_with_extra_bytes)
    async with client_for(server) as client:
        assert (await client.get("/1")).content == b"ok"
        assert (await client.get("/2")).content == b"ok"
    assert server.connections == 2


async def test_http_1_0_response_is_read_and_connection_not_reused(nursery):
    """An HTTP/1.0 answer (read by h11) ends its connection."""

    async def answer_http_1_0(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await trio.sleep_forever()

    server = await start_server(nursery, answer_http_1_0)
    async with client_for(server) as client:
        assert (await client.get("/1")).content == b"ok"
        assert (await client.get("/2")).content == b"ok"
    assert server.connections == 2


async def test_invalid_content_length_raises_remote_protocol_error(nursery):
    """A Content-Length that is not a number is the server's protocol error."""

    async def answer_bad_length(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\nok")
        await trio.sleep_forever()

    server = await start_server(nursery, answer_bad_length)
    async with client_for(server) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


async def test_endless_response_head_raises_remote_protocol_error(nursery):
    """A head that never ends (here 100 KB of headers) is refused, not buffered forever."""

    async def answer_endless_head(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * 100_000)
        await trio.sleep_forever()

    server = await start_server(nursery, answer_endless_head)
    async with client_for(server) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get("/")


async def test_write_timeout_when_server_stops_reading(nursery, autojump_clock):
    """An endless upload to a server that never reads trips the write timeout."""

    async def never_read(peer: Peer) -> None:
        await trio.sleep_forever()

    async def endless_body():
        chunk = b"x" * 1_000_000
        while True:
            yield chunk

    server = await start_server(nursery, never_read)
    async with client_for(server) as client:
        with pytest.raises(httpx.WriteTimeout):
            await client.post("/", content=endless_body(), timeout=httpx.Timeout(10.0, write=2.0))


async def test_connect_timeout_when_server_never_accepts(autojump_clock):
    """A listener whose backlog is full never completes the handshake: ConnectTimeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later handshakes stall
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        async with make_async_client(
            f"http://127.0.0.1:{port}", headers={}, timeout=httpx.Timeout(10.0, connect=1.0)
        ) as client:
            with pytest.raises(httpx.ConnectTimeout):
                await client.get("/")
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_chunked_gzip_response_is_decoded(nursery):
    """A gzip body sent chunked (read by h11) reaches the caller decoded."""
    compressed = gzip.compress(OK_BODY)

    async def answer_chunked_gzip(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(compressed), compressed)
        )
        await trio.sleep_forever()

    server = await start_server(nursery, answer_chunked_gzip)
    async with client_for(server) as client:
        response = await client.get("/")
    assert response.json() == {"ok": True}


async def test_worker_client_joins_paths_to_base_url_every_time():
    """Repeated and varied paths keep resolving against the (possibly changed) base URL."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200)

    async with make_async_client(
        "http://api.test/v1", headers={}, timeout=TIMEOUT, transport=httpx.MockTransport(handler)
    ) as client:
        await client.get("/chat/completions")
        await client.get("/chat/completions")
        await client.get("models?limit=2")
        await client.get("http://other.test/x")
        client.base_url = "http://api.test/v2"
        await client.get("/chat/completions")
    assert seen == [
        "http://api.test/v1/chat/completions",
        "http://api.test/v1/chat/completions",
        "http://api.test/v1/models?limit=2",
        "http://other.test/x",
        "http://api.test/v2/chat/completions",
    ]


async def test_worker_client_ignores_response_cookies():
    """Set-Cookie from the server is not stored nor sent back."""
    sent_cookies = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_cookies.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=abc; Path=/"})

    async with make_async_client(
        "http://api.test/v1", headers={}, timeout=TIMEOUT, transport=httpx.MockTransport(handler)
    ) as client:
        await client.get("/a")
        await client.get("/b")
        assert not client.cookies
    assert sent_cookies == [None, None]


async def test_engine_post_fast_path_returns_a_raw_response(nursery):
    """A bytes POST to a path skips httpx's objects yet sends the same request."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        for _ in range(3):
            response = await client.post(
                "/v1/chat/completions",
                content=b'{"a":1}',
                headers={"content-type": "application/json"},
            )
            assert isinstance(response, RawResponse)
            assert response.status_code == 200
            assert response.content == OK_BODY and response.text == OK_BODY.decode()
            assert response.headers["content-length"] == str(len(OK_BODY))
    assert server.connections == 1
    seen = server.requests[0]
    assert (seen.method, seen.target, seen.body) == (b"POST", b"/v1/chat/completions", b'{"a":1}')
    assert seen.headers[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert seen.headers[b"x-test"] == b"1"
    assert seen.headers[b"content-type"] == b"application/json"
    assert seen.headers[b"content-length"] == b"7"
    assert b"accept-encoding" not in seen.headers


async def test_engine_post_fast_path_raises_httpx_errors(nursery):
    """A malformed answer on the fast path is still httpx.RemoteProtocolError."""

    async def answer_garbage(peer: Peer) -> None:
        await peer.read_request()
        await peer.send_raw(b"NOT HTTP AT ALL\r\n\r\n")
        await trio.sleep_forever()

    server = await start_server(nursery, answer_garbage)
    async with client_for(server) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/v1/chat/completions", content=b"{}")


async def test_engine_post_with_other_options_goes_through_httpx(nursery):
    """json=, files= or a non-h11 transport keep httpx's full behaviour."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        response = await client.post("/v1/x", json={"a": 1})
    assert isinstance(response, httpx.Response)


async def test_httpx_path_response_reads_like_any_httpx_response(nursery):
    """content, text, json(), iteration and streamed reads all see the body once read."""
    server = await start_server(nursery, keep_answering)
    async with client_for(server) as client:
        response = await client.get("/v1/x")
        assert isinstance(response, httpx.Response)
        assert response.content == OK_BODY and response.text == OK_BODY.decode()
        assert response.json() == {"ok": True}
        assert b"".join(response.iter_bytes()) == OK_BODY
        assert await response.aread() == OK_BODY
        assert response.raise_for_status() is response
        async with client.stream("GET", "/v1/y") as streamed:
            assert b"".join([chunk async for chunk in streamed.aiter_bytes()]) == OK_BODY
        async with client.stream("GET", "/v1/z") as streamed:
            assert await streamed.aread() == OK_BODY
            assert streamed.headers["content-length"] == str(len(OK_BODY))


# -- timeouts kept by a TimeoutWatch ----------------------------------------------


async def running_watch(nursery) -> TimeoutWatch:
    watch = TimeoutWatch()
    await nursery.start(watch.run)
    return watch


async def never_answer(peer: Peer) -> None:
    await peer.read_request()
    await trio.sleep_forever()


async def test_watch_ends_a_wait_for_an_answer_at_the_read_timeout(nursery, autojump_clock):
    """With a watch, a server that never answers trips ReadTimeout exactly on time."""
    watch = await running_watch(nursery)
    server = await start_server(nursery, never_answer)
    watched_during_the_wait: list[int] = []

    async def look() -> None:
        await trio.sleep(1.0)
        watched_during_the_wait.append(len(watch._connections))

    nursery.start_soon(look)
    async with client_for(server, watch=watch) as client:
        start = trio.current_time()
        with trio.fail_after(30), pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(10.0, read=3.0))
        assert trio.current_time() - start == pytest.approx(3.0, abs=0.01)
    assert watched_during_the_wait == [1]
    assert not watch._connections  # the dropped connection is forgotten


async def test_watch_ends_a_blocked_upload_at_the_write_timeout(nursery, autojump_clock):
    """With a watch, a bytes body larger than the socket buffers trips WriteTimeout."""

    async def never_read(peer: Peer) -> None:
        await trio.sleep_forever()

    watch = await running_watch(nursery)
    server = await start_server(nursery, never_read)
    async with client_for(server, watch=watch) as client:
        start = trio.current_time()
        with trio.fail_after(30), pytest.raises(httpx.WriteTimeout):
            await client.post(
                "/", content=b"x" * 64_000_000, timeout=httpx.Timeout(10.0, write=2.0)
            )
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)


async def test_one_watch_times_out_one_connection_and_leaves_the_others(nursery, autojump_clock):
    """Among clients sharing a watch, only the one whose server is silent times out."""

    async def slow_answer(peer: Peer) -> None:
        while True:
            await peer.read_request()
            await trio.sleep(4.0)
            await peer.send_raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    watch = await running_watch(nursery)
    silent = await start_server(nursery, never_answer)
    slow = await start_server(nursery, slow_answer)
    outcomes: dict[str, object] = {}

    async def call(name: str, server: Server, read: float) -> None:
        async with client_for(server, watch=watch) as client:
            try:
                response = await client.get("/", timeout=httpx.Timeout(10.0, read=read))
                outcomes[name] = (response.status_code, trio.current_time())
            except httpx.ReadTimeout:
                outcomes[name] = ("timeout", trio.current_time())

    start = trio.current_time()
    with trio.fail_after(60):
        async with trio.open_nursery() as calls:
            calls.start_soon(call, "silent", silent, 1.0)
            calls.start_soon(call, "slow-a", slow, 30.0)
            calls.start_soon(call, "slow-b", slow, 5.0)
    assert outcomes["silent"][0] == "timeout"
    assert outcomes["silent"][1] - start == pytest.approx(1.0, abs=0.01)
    assert outcomes["slow-a"][0] == 200 and outcomes["slow-b"][0] == 200
    assert not watch._connections


async def test_a_closed_watch_leaves_timeouts_to_cancel_scopes(nursery, autojump_clock):
    """After the watch is closed, its transports still time out (with a cancel scope)."""
    watch = await running_watch(nursery)
    watch.close()
    await trio.testing.wait_all_tasks_blocked()
    assert not watch.running
    server = await start_server(nursery, never_answer)
    async with client_for(server, watch=watch) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/", timeout=httpx.Timeout(10.0, read=3.0))


async def test_a_transports_turn_goes_to_waiters_in_order_and_never_to_a_cancelled_one():
    """_Turn goes to waiters first come, first served; one cancelled while waiting never has it."""
    from engine._http import _Turn

    turn = _Turn()
    order: list[str] = []
    turn.held = True  # the first caller has it

    async def wait(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await turn.wait()
            order.append(name)
            turn.give_back()

    gone = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "second", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "gone", gone)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "third", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        gone.cancel()
        await trio.testing.wait_all_tasks_blocked()
        turn.give_back()  # the first caller is done
    assert order == ["second", "third"]
    assert turn.held is False
