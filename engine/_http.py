"""A thin HTTP/1.1 transport for httpx: one keep-alive connection, h11 over trio sockets.

Why: httpx's default transport (httpcore's pool) rescans every pooled connection
whenever one is added or closed, so one shared ``AsyncClient`` collapses at high
concurrency under trio (DESIGN.md §8). The engine gives each worker its own
client whose transport is an :class:`H11Transport`: one connection, one request
at a time, no pool, and as little per-request CPU as the httpx interface allows.

What it does:

* ``http`` and ``https`` (TLS through :class:`trio.SSLStream` with one shared,
  lazily created ``ssl.create_default_context()``: building a context loads the
  CA bundle, ~17 ms of CPU, so it is done once per process, not per client).
* Keep-alive: the connection is reused until the server closes it or answers
  ``Connection: close``; the next request then connects again.
* The stale keep-alive race: before reusing an idle connection it checks,
  without blocking, whether the server already closed it, and connects afresh if
  so. If a reused connection is closed by the peer before a single byte of the
  response arrived, the request is sent once more on a new connection (at most
  once). A request is never re-sent after any byte of a response arrived, nor
  when it failed on a fresh connection.
* Per-request timeouts from ``request.extensions["timeout"]`` (what httpx puts
  there from ``httpx.Timeout``): ``connect`` bounds TCP connect plus TLS
  handshake (:class:`httpx.ConnectTimeout`), ``write`` bounds each send
  (:class:`httpx.WriteTimeout`), ``read`` bounds each wait for response bytes
  (:class:`httpx.ReadTimeout`), ``pool`` bounds the wait for the connection
  when another task is using this transport (:class:`httpx.PoolTimeout`).
  ``None`` means no bound.
* Failures map onto httpx's exceptions: refused / unreachable / TLS failures
  -> :class:`httpx.ConnectError`; a broken socket while sending ->
  :class:`httpx.WriteError`; while receiving -> :class:`httpx.ReadError`; a
  malformed or truncated response (including a peer that closes mid-response)
  -> :class:`httpx.RemoteProtocolError`; a request h11 refuses to send ->
  :class:`httpx.LocalProtocolError`.
* Cancellation (or any error) in the middle of a request closes the connection,
  so the next request starts on a clean one.
* The response body is read completely before :meth:`handle_async_request`
  returns (the engine reads every body; this measured faster than handing
  httpx an async stream, see benchmarks/http_arrangements.py). The
  ``Response`` therefore comes back already read; as with
  :class:`httpx.MockTransport`, httpx leaves ``response.elapsed`` unset.

What it does not do: proxies (no ``HTTP(S)_PROXY`` support; connect directly),
HTTP/2, ``Expect: 100-continue``, client certificates, or more than one
request at a time per transport (concurrent callers queue for the connection).
"""

from __future__ import annotations

import functools
import math
import re
import select
import socket
import ssl
from collections.abc import Callable, Mapping

import h11
import httpx
import trio

__all__ = ["H11Transport", "make_async_client", "shared_ssl_context"]

# Bytes asked of the socket per receive: a chat completion fits in one read.
_RECEIVE_SIZE = 65536
# Request-body chunks are gathered up to this size before each send, so a
# multipart stream of many small parts costs few system calls.
_SEND_BATCH = 65536
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HTTP_VERSION_EXTENSION = b"HTTP/1.1"
_INF = math.inf
_END_OF_MESSAGE = h11.EndOfMessage()
# An HTTP token (RFC 9110 §5.6.2): what a header name may be made of.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
# Header names already checked against _TOKEN (names repeat on every request).
_valid_header_names: set[bytes] = set()
# Request-side events fed to h11 in place of the real request, keyed by
# (method, connection-close): see _serialize_request.
_framing_events: dict[tuple[bytes, bool], h11.Request] = {}


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """Return the process-wide TLS context (``ssl.create_default_context()``), built once."""
    return ssl.create_default_context()


class _PeerClosedEarly(Exception):
    """The peer closed a connection before sending any byte of a response.

    Internal: carries the httpx error to raise if the request is not retried.
    """

    def __init__(self, error: httpx.TransportError) -> None:
        super().__init__(str(error))
        self.error = error


class _PlainConnection:
    """A plain TCP connection: a non-blocking stdlib socket driven by trio's I/O waits.

    Going around ``trio.SocketStream`` saves its per-call wrappers; every wait
    still goes through trio (``wait_readable`` / ``wait_writable``), so
    cancellation and deadlines work as usual.
    """

    __slots__ = ("origin", "poller", "sock", "state")

    def __init__(self, origin: tuple[bytes, str, int], sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock
        self.state = h11.Connection(h11.CLIENT)
        self.poller = _make_poller(sock.fileno())

    async def send_all(self, data: bytes) -> None:
        """Send every byte; checkpoints only when the socket buffer is full."""
        sock = self.sock
        while True:
            try:
                sent = sock.send(data)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            if sent == len(data):
                return
            data = memoryview(data)[sent:]

    async def receive_after_wait(self) -> bytes:
        """Wait until readable, then receive (b"" at end of stream). Checkpoints."""
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(_RECEIVE_SIZE)
            except BlockingIOError:
                continue

    def close(self) -> None:
        """Close the socket at once (never checkpoints)."""
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class _TLSConnection:
    """A TLS connection: a ``trio.SSLStream`` over a trio TCP stream."""

    __slots__ = ("origin", "poller", "raw_socket", "state", "stream")

    def __init__(self, origin: tuple[bytes, str, int], stream: trio.SSLStream, raw_socket) -> None:
        self.origin = origin
        self.stream = stream
        self.raw_socket = raw_socket
        self.state = h11.Connection(h11.CLIENT)
        self.poller = _make_poller(raw_socket.fileno())

    async def send_all(self, data: bytes) -> None:
        """Send every byte. Checkpoints."""
        await self.stream.send_all(data)

    async def receive_after_wait(self) -> bytes:
        """Receive some bytes (b"" at end of stream). Checkpoints."""
        return await self.stream.receive_some(_RECEIVE_SIZE)

    def close(self) -> None:
        """Close the socket at once, without a TLS goodbye (never checkpoints)."""
        self.raw_socket.close()


_Connection = _PlainConnection | _TLSConnection


def _make_poller(fd: int) -> Callable[[], bool]:
    """Return a no-wait 'is ``fd`` readable?' probe (poll() where available)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        return lambda: bool(poller.poll(0))
    return lambda: bool(select.select([fd], [], [], 0)[0])  # pragma: no cover


class H11Transport(httpx.AsyncBaseTransport):
    """An httpx transport holding one keep-alive HTTP/1.1 connection (h11 on trio sockets).

    Each engine worker owns one transport (through :func:`make_async_client`)
    and sends one request at a time; a second concurrent caller waits for the
    connection (bounded by the request's ``pool`` timeout). See the module
    docstring for the behaviour on reuse, timeouts, errors and cancellation.

    Args:
        ssl_context: TLS context for ``https`` URLs; default
            :func:`shared_ssl_context` (certificate verification on).
    """

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl_context = ssl_context
        self._connection: _Connection | None = None
        self._turn = trio.Semaphore(1)
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return its response, body already read. Checkpoints."""
        timeouts = request.extensions.get("timeout") or {}
        turn = self._turn
        if turn.value:
            turn.acquire_nowait()
        else:
            await self._wait_for_turn(request, timeouts.get("pool"))
        try:
            if self._closed:
                raise RuntimeError("transport is closed")
            return await self._send_with_one_retry(request, timeouts)
        finally:
            turn.release()

    async def aclose(self) -> None:
        """Close the connection; later requests fail. Checkpoints."""
        self._closed = True
        self._drop_connection()
        await trio.lowlevel.checkpoint()

    async def _wait_for_turn(self, request: httpx.Request, pool_timeout: float | None) -> None:
        with trio.move_on_after(_INF if pool_timeout is None else pool_timeout):
            await self._turn.acquire()
            return
        raise httpx.PoolTimeout("timed out waiting for the connection", request=request)

    def _drop_connection(self) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            connection.close()

    async def _send_with_one_retry(
        self, request: httpx.Request, timeouts: Mapping[str, float | None]
    ) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        origin = (scheme, url.host, url.port or _DEFAULT_PORTS.get(scheme, 80))
        connection = self._connection
        if connection is not None and (connection.origin != origin or connection.poller()):
            # Readable while idle: the server closed it (or sent junk).
            self._drop_connection()
            connection = None
        reused = connection is not None
        if connection is None:
            connection = await self._connect(request, origin, timeouts.get("connect"))
        try:
            return await self._exchange(connection, request, timeouts)
        except _PeerClosedEarly as early:
            if not reused or not isinstance(request.stream, httpx.ByteStream):
                raise early.error from None
        # The classic stale keep-alive race: the server closed the idle
        # connection as the request went out, and answered nothing.
        connection = await self._connect(request, origin, timeouts.get("connect"))
        try:
            return await self._exchange(connection, request, timeouts)
        except _PeerClosedEarly as early:
            raise early.error from None

    async def _connect(
        self,
        request: httpx.Request,
        origin: tuple[bytes, str, int],
        connect_timeout: float | None,
    ) -> _Connection:
        scheme, host, port = origin
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {scheme.decode(errors='replace')!r}", request=request
            )
        tcp: trio.SocketStream | None = None
        connection: _Connection
        with trio.move_on_after(_INF if connect_timeout is None else connect_timeout):
            try:
                tcp = await trio.open_tcp_stream(host, port)
                if scheme == b"https":
                    context = self._ssl_context or shared_ssl_context()
                    tls = trio.SSLStream(tcp, context, server_hostname=host, https_compatible=True)
                    await tls.do_handshake()
                    connection = _TLSConnection(origin, tls, tcp.socket)
                else:
                    sock = socket.socket(fileno=tcp.socket.detach())
                    sock.setblocking(False)
                    connection = _PlainConnection(origin, sock)
            except (OSError, trio.BrokenResourceError) as exc:
                if tcp is not None:
                    tcp.socket.close()
                raise httpx.ConnectError(_describe(exc), request=request) from exc
            except BaseException:
                if tcp is not None:
                    tcp.socket.close()
                raise
            self._connection = connection
            return connection
        if tcp is not None:
            tcp.socket.close()
        raise httpx.ConnectTimeout("timed out connecting", request=request)

    async def _exchange(
        self,
        connection: _Connection,
        request: httpx.Request,
        timeouts: Mapping[str, float | None],
    ) -> httpx.Response:
        """Write ``request`` and read its whole response on ``connection``."""
        write_timeout = timeouts.get("write")
        read_timeout = timeouts.get("read")
        if write_timeout is None:
            write_timeout = _INF
        if read_timeout is None:
            read_timeout = _INF
        state = connection.state
        sending = True
        received_any = False
        try:
            with trio.CancelScope(deadline=trio.current_time() + write_timeout) as scope:
                await _write_request(connection, request, scope, write_timeout)
                sending = False
                chunks: list[bytes] = []
                next_event = state.next_event
                receive = connection.receive_after_wait
                while True:
                    event = next_event()
                    if event is h11.NEED_DATA:
                        scope.deadline = trio.current_time() + read_timeout
                        data = await receive()
                        if data:
                            received_any = True
                        state.receive_data(data)
                        continue
                    event_type = type(event)
                    if event_type is h11.Data:
                        chunks.append(event.data)
                    elif event_type is h11.Response:
                        head = event
                    elif event_type is h11.EndOfMessage:
                        break
                    # InformationalResponse (1xx) is skipped: the final response follows.
            if scope.cancelled_caught:
                self._drop_connection()
                if sending:
                    raise httpx.WriteTimeout("timed out sending the request", request=request)
                raise httpx.ReadTimeout("timed out waiting for the response", request=request)
        except h11.RemoteProtocolError as exc:
            self._drop_connection()
            if not received_any:
                raise _PeerClosedEarly(
                    httpx.RemoteProtocolError(
                        "server disconnected without sending a response", request=request
                    )
                ) from exc
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except h11.LocalProtocolError as exc:
            self._drop_connection()
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._drop_connection()
            if sending:
                error: httpx.TransportError = httpx.WriteError(_describe(exc), request=request)
            else:
                error = httpx.ReadError(_describe(exc), request=request)
            if not received_any:
                raise _PeerClosedEarly(error) from exc
            raise error from exc
        except BaseException:
            # Cancelled, or anything unexpected: the connection is mid-message.
            self._drop_connection()
            raise
        if state.our_state is h11.DONE and state.their_state is h11.DONE:
            state.start_next_cycle()
        else:
            self._drop_connection()
        return _build_response(head, chunks)


def _build_response(head: h11.Response, chunks: list[bytes]) -> httpx.Response:
    content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    response = httpx.Response(
        head.status_code,
        headers=head.headers.raw_items(),
        stream=httpx.ByteStream(content),
        extensions={"http_version": _HTTP_VERSION_EXTENSION, "reason_phrase": head.reason},
    )
    if response.headers.get("content-encoding"):
        # Decodes gzip/deflate/... and marks the body read.
        response.read()
    else:
        # The body as received is the content: skip httpx's chain of decoder
        # and chunker generators. ``aread()`` and ``.content`` see it as read.
        response._content = content
    return response


def _serialize_request(request: httpx.Request) -> tuple[bytes, bool, bool]:
    """Return (request head bytes, body is chunked, connection closes after).

    httpx has already built every header (Host, Content-Length or
    Transfer-Encoding, ...); this writes them out as they are, refusing
    header names that are not tokens and any CR, LF or NUL that would let a
    value start a new line.
    """
    parts = [_method_bytes(request.method), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    append = parts.append
    chunked = False
    close = False
    for name, value in request.headers.raw:
        if name not in _valid_header_names:
            if _TOKEN.fullmatch(name) is None:
                raise h11.LocalProtocolError(f"illegal header name {name!r}")
            _valid_header_names.add(name)
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lowered == b"connection":
            close = b"close" in value.lower()
        append(name)
        append(b": ")
        append(value)
        append(b"\r\n")
    append(b"\r\n")
    head = b"".join(parts)
    lines = len(parts) // 4
    if head.count(b"\n") != lines + 1 or head.count(b"\r") != lines + 1 or b"\0" in head:
        raise h11.LocalProtocolError("illegal character in request line or header")
    return head, chunked, close


@functools.cache
def _method_bytes(method: str) -> bytes:
    """``"POST"`` -> ``b"POST"``, refusing anything that is not a token."""
    encoded = method.encode("ascii", "replace")
    if _TOKEN.fullmatch(encoded) is None:
        raise h11.LocalProtocolError(f"illegal method {method!r}")
    return encoded


def _framing_event(method: bytes, close: bool) -> h11.Request:
    """The h11 event that stands for a request of ``method`` in h11's state machine.

    The transport writes request bytes itself (h11's per-header validation
    is the costliest step of a request) and tells h11 only what matters for
    reading the response: the method (HEAD answers have no body) and whether
    the connection closes after.
    """
    key = (method, close)
    event = _framing_events.get(key)
    if event is None:
        headers = [(b"host", b"_")]
        if close:
            headers.append((b"connection", b"close"))
        event = _framing_events[key] = h11.Request(method=method, target=b"/", headers=headers)
    return event


async def _write_request(
    connection: _Connection,
    request: httpx.Request,
    scope: trio.CancelScope,
    write_timeout: float,
) -> None:
    """Send the request line, headers and body; keep h11's state in step."""
    state = connection.state
    head, chunked, close = _serialize_request(request)
    state.send(_framing_event(_method_bytes(request.method), close))
    state.send(_END_OF_MESSAGE)
    send = connection.send_all
    body_stream = request.stream
    body: bytes | None = None
    if isinstance(body_stream, httpx.ByteStream):
        try:
            # httpx reads bytes content at construction: no need to iterate.
            body = request.content
        except httpx.RequestNotRead:
            body = None
    if body is not None and not chunked:
        await send(head + body if body else head)
        return
    pending = [head]
    pending_size = len(head)
    async for chunk in body_stream:
        if not chunk:
            continue
        if chunked:
            pending.append(b"%x\r\n" % len(chunk))
            pending.append(chunk)
            pending.append(b"\r\n")
        else:
            pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= _SEND_BATCH:
            scope.deadline = trio.current_time() + write_timeout
            await send(b"".join(pending))
            pending.clear()
            pending_size = 0
    if chunked:
        pending.append(b"0\r\n\r\n")
    if pending:
        scope.deadline = trio.current_time() + write_timeout
        await send(b"".join(pending))


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    return str(cause or exc) or type(cause or exc).__name__


def make_async_client(
    base_url: str,
    *,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """Return an ``httpx.AsyncClient`` for one worker, on its own :class:`H11Transport`.

    Args:
        base_url: prefix of every request URL, e.g. ``"https://api.openai.com/v1"``.
        headers: sent with every request (authorization, user agent, ...).
        timeout: per-request timeouts, honoured by the transport.
        transport: use this instead of a new ``H11Transport`` (tests pass
            ``httpx.ASGITransport(app)`` or ``httpx.MockTransport``).

    Environment proxies are ignored (``trust_env=False``): the transport connects
    directly. Building the client does not create an SSL context.
    """
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        transport=transport if transport is not None else H11Transport(),
        trust_env=False,
    )
