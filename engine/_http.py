"""A thin HTTP/1.1 transport for httpx: one keep-alive connection, h11 over trio sockets.

Why: httpx's default transport (httpcore's pool) rescans every pooled connection
whenever one is added or closed, so one shared ``AsyncClient`` collapses at high
concurrency under trio (docs/design.md, "HTTP"; figures in docs/benchmarks.md).
The engine gives each worker its own client whose transport is an
:class:`H11Transport`: one connection, one request at a time, no pool, and as
little per-request CPU as the httpx interface allows.

How: the wire format lives in :mod:`engine._wire` (sans-IO: bytes in, bytes
out); this module is the trio driver around it.  The request is written
straight from httpx's headers (after checking that no header can start a new
line), and the common response (HTTP/1.1, a final status, a body framed by one
Content-Length or by chunked coding) is read by ``_wire``'s own parser; every
other response (close-delimited, 1xx, HTTP/1.0, anything irregular) is read by
h11, which stays the authority on the protocol's corners (``tests/test_wire.py``
holds the two to the same answers).  h11 reads a response in ~70 µs of CPU on
the dev machine, the plain path in ~5 µs.

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
  once, and only when its body is bytes: a consumed stream cannot be replayed).
  A request is never re-sent after any byte of a response arrived, nor when it
  failed on a fresh connection. (Strictly, a server could have read the request
  and closed without answering; the engine's own retry policy treats that case
  the same way: docs/design.md, "Failure policy".)
* Per-request timeouts from ``request.extensions["timeout"]`` (what httpx puts
  there from ``httpx.Timeout``): ``connect`` bounds TCP connect plus TLS
  handshake (:class:`httpx.ConnectTimeout`), ``write`` bounds each send
  (:class:`httpx.WriteTimeout`), ``read`` bounds each wait for response bytes
  (:class:`httpx.ReadTimeout`), ``pool`` bounds the wait for the connection
  when another task is using this transport (:class:`httpx.PoolTimeout`).
  ``None`` means no bound.  Read and write bounds are kept by a cancel scope
  per exchange, or, for plain-TCP requests whose body is bytes, by a shared
  :class:`TimeoutWatch` task when the transport has one (the engine's clients
  do): same behaviour, without a scope's cost on every request.
* Failures map onto httpx's exceptions: refused / unreachable / TLS failures
  -> :class:`httpx.ConnectError`; a broken socket while sending ->
  :class:`httpx.WriteError`; while receiving -> :class:`httpx.ReadError`; a
  malformed or truncated response (including a peer that closes mid-response)
  -> :class:`httpx.RemoteProtocolError`; a request that cannot be written
  safely (a header name that is not a token, CR/LF/NUL in a value) ->
  :class:`httpx.LocalProtocolError`, before anything is sent.
* Cancellation (or any error) in the middle of a request closes the connection,
  so the next request starts on a clean one.
* The response body is read completely before :meth:`handle_async_request`
  returns (the engine reads every body; this measured faster than handing
  httpx an async stream, see benchmarks/http_arrangements.py). The
  ``Response`` therefore comes back already read; as with
  :class:`httpx.MockTransport`, httpx leaves ``response.elapsed`` unset.
* Streamed answers (server-sent events) go through the worker client's
  :meth:`_WorkerClient.stream_post` instead: the request is sent as the fast
  POST path sends it (same retry of a stale keep-alive connection, same
  timeouts), the head is read, and the body is handed out piece by piece as
  the socket delivers it (:class:`engine._wire.BodyReader`); the connection is
  the stream's until the caller leaves it, and is kept only if the body was
  read to its end.

What it does not do: proxies (no ``HTTP(S)_PROXY`` support; it connects
directly), HTTP/2, ``Expect: 100-continue``, reading an early answer that
arrives while the request body is still being sent (that is a WriteError),
streaming responses through httpx's own ``client.stream`` (that reads the
whole body first), client certificates, or more than one request at a time
per transport (concurrent callers queue for the connection).
"""

from __future__ import annotations

import contextlib
import functools
import math
import select
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast, final, overload

import httpx
import trio

from engine import _wire

__all__ = [
    "H11Transport",
    "RawResponse",
    "StreamedResponse",
    "TimeoutWatch",
    "make_async_client",
    "shared_ssl_context",
]

#: What a reader hands back once it has read enough (a whole response, or a head).
_Read = TypeVar("_Read")
#: What a ResponseReader gives an exchange: the whole response (``feed``), or the
#: head, the body's reader and the body bytes that came with the head (``feed_head``).
_Answer = _wire.ResponseMessage | tuple[_wire.ResponseMessage, _wire.BodyReader, bytes]

# Bytes asked of the socket per receive: a chat completion fits in one read.
_RECEIVE_SIZE = 65536
# Request-body chunks are gathered up to this size before each send, so a
# multipart stream of many small parts costs few system calls.
_SEND_BATCH = 65536
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
#: What the fast path keeps per path: merged URL, request line and fixed headers,
#: their (chunked, close) framing, and the origin.
_FastTarget = tuple[httpx.URL, bytes, tuple[bool, bool], tuple[bytes, str, int]]
_HTTP_VERSION_EXTENSION = b"HTTP/1.1"
_INF = math.inf
# Headers that change how a request is framed: the fast POST path never sends them.
_FRAMING_HEADERS = frozenset((b"transfer-encoding", b"connection", b"content-length"))
# The context of an exchange whose timeouts a TimeoutWatch keeps.
_NO_SCOPE = contextlib.nullcontext()
_wait_readable = trio.lowlevel.wait_readable


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

    __slots__ = ("deadline", "expired", "origin", "poller", "sock")

    def __init__(self, origin: tuple[bytes, str, int], sock: socket.socket) -> None:
        self.origin = origin
        self.sock = sock
        self.poller = _make_poller(sock.fileno())
        # Kept by a TimeoutWatch: when the current wait must end, and whether it overran.
        self.deadline = _INF
        self.expired = False

    def send_now(self, data: bytes) -> bytes | memoryview:
        """Send what the socket buffer takes at once; return the rest (empty: all sent).

        Never checkpoints.  Raises OSError when the connection is broken.
        """
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            return data
        return memoryview(data)[sent:] if sent < len(data) else b""

    async def send_all(self, data: bytes | memoryview) -> None:
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

    __slots__ = ("origin", "poller", "raw_socket", "stream")

    def __init__(
        self,
        origin: tuple[bytes, str, int],
        stream: trio.SSLStream[trio.SocketStream],
        raw_socket: trio.socket.SocketType,
    ) -> None:
        self.origin = origin
        self.stream = stream
        self.raw_socket = raw_socket
        self.poller = _make_poller(raw_socket.fileno())

    def send_now(self, data: bytes) -> bytes | memoryview:
        """TLS cannot send without checkpointing: returns ``data``, unsent."""
        return data

    async def send_all(self, data: bytes | memoryview) -> None:
        """Send every byte. Checkpoints."""
        await self.stream.send_all(data)

    async def receive_after_wait(self) -> bytes:
        """Receive some bytes (b"" at end of stream). Checkpoints."""
        data = await self.stream.receive_some(_RECEIVE_SIZE)
        # trio's streams may answer a bytearray; its SSLStream answers bytes (what
        # ssl.MemoryBIO.read returns), so this copies nothing in practice.
        return data if isinstance(data, bytes) else bytes(data)

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


class TimeoutWatch:
    """Read and write timeouts for many :class:`H11Transport` connections, from one task.

    A cancel scope per request (enter, a deadline in trio's deadline heap,
    exit) was the costliest single step of the engine's request path.  With a
    watch, a plain-TCP exchange whose body is already bytes only records on its
    connection when the current wait must end (``deadline``); this task sleeps
    until the earliest recorded moment, and wakes a connection that overran it
    with :func:`trio.lowlevel.notify_closing` on its socket: the wait raises
    ``ClosedResourceError`` and the transport raises :class:`httpx.ReadTimeout`
    or :class:`httpx.WriteTimeout`, as a cancel scope would have.  Timeouts
    fire on time (the watch sleeps until exactly the earliest deadline); with
    every connection using the same timeout the watch wakes about once per
    timeout period, not once per request.

    TLS connections and streamed request bodies (which may wait on something
    other than the socket) keep a cancel scope per exchange.

    Start it with ``await nursery.start(watch.run)`` and pass it to
    :func:`make_async_client`; :meth:`close` ends :meth:`run`.  Transports
    given a watch that is not running use cancel scopes.
    """

    def __init__(self) -> None:
        self._connections: set[_PlainConnection] = set()
        self._wake_at = _INF
        self._scope: trio.CancelScope | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        """True between the start of :meth:`run` and :meth:`close`."""
        return self._scope is not None

    def arm(self, connection: _PlainConnection, deadline: float) -> None:
        """End ``connection``'s current wait at ``deadline`` (trio clock). Never checkpoints."""
        connection.deadline = deadline
        if deadline < self._wake_at:
            self._connections.add(connection)
            self._wake_at = deadline
            if self._scope is not None:
                self._scope.deadline = deadline
        elif connection not in self._connections:
            self._connections.add(connection)

    def disarm(self, connection: _PlainConnection) -> None:
        """``connection`` waits for nothing any more. Never checkpoints."""
        connection.deadline = _INF

    def forget(self, connection: _PlainConnection) -> None:
        """``connection`` is closed: stop watching it. Never checkpoints."""
        connection.deadline = _INF
        self._connections.discard(connection)

    def close(self) -> None:
        """End :meth:`run`; transports fall back to cancel scopes."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The watch task: expire overdue waits until :meth:`close`."""
        scope = self._scope = trio.CancelScope(deadline=self._wake_at)
        task_status.started()
        try:
            while not self._closed:
                with scope:
                    await trio.sleep_forever()
                if self._closed:
                    break
                now = trio.current_time()
                wake_at = _INF
                for connection in self._connections:
                    deadline = connection.deadline
                    if deadline <= now:
                        connection.deadline = _INF
                        connection.expired = True
                        trio.lowlevel.notify_closing(connection.sock)
                    elif deadline < wake_at:
                        wake_at = deadline
                self._wake_at = wake_at
                scope = self._scope = trio.CancelScope(deadline=wake_at)
        finally:
            self._scope = None


class _WatchTimer:
    """One exchange's ``deadline``, kept by a :class:`TimeoutWatch` (stands in for a scope)."""

    __slots__ = ("_connection", "_watch")

    def __init__(self, watch: TimeoutWatch, connection: _PlainConnection) -> None:
        self._watch = watch
        self._connection = connection

    @property
    def deadline(self) -> float:
        return self._connection.deadline

    @deadline.setter
    def deadline(self, deadline: float) -> None:
        self._watch.arm(self._connection, deadline)


# What an exchange moves its deadline on: a cancel scope, or a connection's watch.
_Deadline = trio.CancelScope | _WatchTimer


class _Turn:
    """Whose turn it is to use a transport's one connection: a FIFO lock.

    ``held`` is taken directly when it is free (``turn.held = True``); a task
    that finds it held waits (:meth:`wait`) and is handed the turn by
    :meth:`give_back`.  trio.Semaphore did the same with KI-protected calls:
    about 0.2 us more per request, on every request.
    """

    __slots__ = ("_lot", "held")

    def __init__(self) -> None:
        self.held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def wait(self) -> None:
        """Wait for the turn, held by another task; it is ours on return.  Checkpoints.

        Cancelled while waiting, the caller never held it.
        """
        await self._lot.park()

    def give_back(self) -> None:
        """End our turn: the longest waiter's now, else free."""
        if self._lot:
            self._lot.unpark()  # ``held`` stays True: it is the waiter's turn
        else:
            self.held = False


class H11Transport(httpx.AsyncBaseTransport):
    """An httpx transport holding one keep-alive HTTP/1.1 connection (h11 on trio sockets).

    Each engine worker owns one transport (through :func:`make_async_client`)
    and sends one request at a time; a second concurrent caller waits for the
    connection (bounded by the request's ``pool`` timeout). See the module
    docstring for the behaviour on reuse, timeouts, errors and cancellation.

    Args:
        ssl_context: TLS context for ``https`` URLs; default
            :func:`shared_ssl_context` (certificate verification on).
        watch: a running :class:`TimeoutWatch` that keeps the read and write
            timeouts of plain-TCP exchanges with a bytes body (default None:
            a cancel scope per exchange).
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, watch: TimeoutWatch | None = None
    ) -> None:
        self._ssl_context = ssl_context
        self._watch = watch
        self._connection: _Connection | None = None
        self._turn = _Turn()
        self._closed = False

    @overload
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...
    @overload
    async def handle_async_request(self, request: _RawRequest) -> httpx.Response | RawResponse: ...
    async def handle_async_request(self, request: _Request) -> httpx.Response | RawResponse:
        """Send ``request`` and return its response, body already read. Checkpoints.

        An ``httpx.Request`` (httpx's own path) gets an ``httpx.Response``; a
        :class:`_RawRequest` (the worker client's fast path) a
        :class:`RawResponse`, or an ``httpx.Response`` when the body came
        compressed and needs httpx's decoders.
        """
        timeouts = request.extensions.get("timeout") or {}
        turn = self._turn
        if turn.held:
            await self._wait_for_turn(request, timeouts.get("pool"))
        else:
            turn.held = True
        try:
            if self._closed:
                raise RuntimeError("transport is closed")
            response = await self._send_with_one_retry(request, timeouts)
            assert response is not None  # None answers a stream only
            return response
        finally:
            turn.give_back()

    async def aclose(self) -> None:
        """Close the connection; later requests fail. Checkpoints."""
        self._closed = True
        self._drop_connection()
        await trio.lowlevel.checkpoint()

    async def _wait_for_turn(self, request: _Request, pool_timeout: float | None) -> None:
        with trio.move_on_after(_INF if pool_timeout is None else pool_timeout):
            await self._turn.wait()
            return
        raise httpx.PoolTimeout(
            "timed out waiting for the connection", request=_error_request(request)
        )

    def _drop_connection(self) -> None:
        connection = self._connection
        if connection is not None:
            self._connection = None
            if self._watch is not None and type(connection) is _PlainConnection:
                self._watch.forget(connection)
            connection.close()

    async def _send_with_one_retry(
        self,
        request: _Request,
        timeouts: Mapping[str, float | None],
        stream: _H11Stream | None = None,
    ) -> httpx.Response | RawResponse | None:
        """Send ``request`` and read its response (see :meth:`_exchange`), on the
        idle connection or a new one, sent once more if a reused connection
        turns out stale.  With ``stream``, only the head is read and the body
        handed to it (then None).  Checkpoints."""
        # The fast path's origin was found once per path: httpx.URL's properties
        # cost a microsecond and a half per request.
        origin = request.origin if type(request) is _RawRequest else _origin(request.url)
        connection = self._connection
        if connection is not None and (connection.origin != origin or connection.poller()):
            # Readable while idle: the server closed it (or sent junk).
            self._drop_connection()
            connection = None
        reused = connection is not None
        if connection is None:
            connection = await self._connect(request, origin, timeouts.get("connect"))
        try:
            return await self._exchange(connection, request, timeouts, stream)
        except _PeerClosedEarly as early:
            if not reused or not (
                type(request) is _RawRequest or isinstance(request.stream, httpx.ByteStream)
            ):
                raise early.error from None
        # The classic stale keep-alive race: the server closed the idle
        # connection as the request went out, and answered nothing.
        connection = await self._connect(request, origin, timeouts.get("connect"))
        try:
            return await self._exchange(connection, request, timeouts, stream)
        except _PeerClosedEarly as early:
            raise early.error from None

    async def _connect(
        self,
        request: _Request,
        origin: tuple[bytes, str, int],
        connect_timeout: float | None,
    ) -> _Connection:
        scheme, host, port = origin
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(
                f"unsupported URL scheme {scheme.decode(errors='replace')!r}",
                request=_error_request(request),
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
                raise httpx.ConnectError(_describe(exc), request=_error_request(request)) from exc
            except BaseException:
                if tcp is not None:
                    tcp.socket.close()
                raise
            self._connection = connection
            return connection
        if tcp is not None:
            tcp.socket.close()
        raise httpx.ConnectTimeout("timed out connecting", request=_error_request(request))

    async def _exchange(
        self,
        connection: _Connection,
        request: _Request,
        timeouts: Mapping[str, float | None],
        stream: _H11Stream | None = None,
    ) -> httpx.Response | RawResponse | None:
        """Write ``request`` and read its whole response on ``connection``. Checkpoints.

        With ``stream``, read only the head, hand the connection and the body's
        reading to ``stream`` (:meth:`_H11Stream.begin`) and return None.
        Failures are raised as httpx's exceptions (see the module docstring);
        a peer that closed before sending any byte of the answer raises
        :class:`_PeerClosedEarly`, so the caller can decide to send again.
        """
        # Inline, not a helper: two calls fewer per request on the hot path.
        write_timeout = timeouts.get("write")
        if write_timeout is None:
            write_timeout = _INF
        read_timeout = timeouts.get("read")
        if read_timeout is None:
            read_timeout = _INF
        sending = True
        reader: _wire.ResponseReader | None = None
        watched: _PlainConnection | None = None
        try:
            head, method, chunked, close = _serialize_request(request)
            body = _buffered_body(request)
            if body is not None and not chunked:
                # Most requests fit the socket buffer: sent here, the exchange
                # starts with the read deadline and needs no second deadline
                # (each costs a registration in trio's deadline heap).
                unsent = connection.send_now(head + body if body else head)
            else:
                unsent = None  # a streamed body
            deadline = trio.current_time() + (read_timeout if unsent == b"" else write_timeout)
            # What keeps the read and write deadlines: a running TimeoutWatch for a
            # plain-TCP connection whose body is already bytes (only socket waits
            # follow, which the watch can end; it may expire the socket), else a
            # cancel scope.  Inline: one call fewer per request.
            watch = self._watch
            timer: _Deadline
            scope: trio.CancelScope | None
            if (
                watch is not None
                and watch.running
                and unsent is not None
                and type(connection) is _PlainConnection
            ):
                watched = connection
                connection.expired = False
                timer = _WatchTimer(watch, connection)
                timer.deadline = deadline
                scope = None
            else:
                timer = scope = trio.CancelScope(deadline=deadline)
            reader = _wire.ResponseReader(method, close)
            with scope or _NO_SCOPE:
                if unsent is None:
                    await _write_streamed(connection, request, head, chunked, timer, write_timeout)
                elif unsent:
                    await connection.send_all(unsent)
                sending = False
                if unsent != b"":
                    timer.deadline = trio.current_time() + read_timeout
                # The first read here, not in _read_until: most answers arrive
                # whole in it, and skip a coroutine of their own.
                data = await connection.receive_after_wait()
                feed: Callable[[bytes], _Answer | None] = (
                    reader.feed if stream is None else reader.feed_head
                )
                read: _Answer | None = feed(data) if data else None
                if read is None:
                    read = await _read_until(
                        data, connection.receive_after_wait, feed, timer, read_timeout, request
                    )
            if scope is not None and scope.cancelled_caught:
                self._drop_connection()
                raise _timeout_error(request, sending)
        except _wire.RemoteProtocolError as exc:
            self._drop_connection()
            raise httpx.RemoteProtocolError(str(exc), request=_error_request(request)) from exc
        except _wire.LocalProtocolError as exc:
            self._drop_connection()
            raise httpx.LocalProtocolError(str(exc), request=_error_request(request)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._drop_connection()
            if watched is not None and watched.expired:
                raise _timeout_error(request, sending) from None
            error = _broken_connection_error(exc, request, sending)
            if reader is None or not reader.received_any:
                raise _PeerClosedEarly(error) from exc
            raise error from exc
        except BaseException:
            # Cancelled, or anything unexpected: the connection is mid-message.
            self._drop_connection()
            raise
        finally:
            if watched is not None:
                watched.deadline = _INF  # TimeoutWatch.disarm, inlined
        if stream is not None:
            assert isinstance(read, tuple)  # feed_head's (head, body reader, body bytes)
            stream.begin(connection, *read, read_timeout)
            return None
        message = read
        assert isinstance(message, _wire.ResponseMessage)
        if not message.keep_alive:
            self._drop_connection()
        if type(request) is _RawRequest and not message.content_encoded:
            return RawResponse(message.status_code, message.headers, message.body)
        return _httpx_response(message)


async def _read_until(
    first: bytes,
    receive: Callable[[], Awaitable[bytes]],
    feed: Callable[[bytes], _Read | None],
    timer: _Deadline,
    read_timeout: float,
    request: _Request,
) -> _Read:
    """Give ``feed`` what ``receive`` returns until it returns something. Checkpoints.

    ``first`` is what the exchange's first read returned, already given to
    ``feed`` when not empty (an answer that arrives whole never comes here).
    ``feed`` is a :class:`engine._wire.ResponseReader`'s ``feed`` (the whole
    response) or ``feed_head`` (up to the end of the head).  Each wait gets
    ``read_timeout`` from its start.  Raises :class:`_PeerClosedEarly` when
    the peer closed before the first byte (``first`` is empty).
    """
    if not first:
        raise _PeerClosedEarly(
            httpx.RemoteProtocolError(
                "server disconnected without sending a response", request=_error_request(request)
            )
        )
    read = None
    while read is None:
        timer.deadline = trio.current_time() + read_timeout
        read = feed(await receive())
    return read


def _timeout_error(request: _Request, sending: bool) -> httpx.TimeoutException:
    """The httpx timeout for an exchange whose deadline passed while ``sending`` or not."""
    if sending:
        return httpx.WriteTimeout("timed out sending the request", request=_error_request(request))
    return httpx.ReadTimeout("timed out waiting for the response", request=_error_request(request))


def _broken_connection_error(
    exc: BaseException, request: _Request, sending: bool
) -> httpx.TransportError:
    """The httpx error for a connection that broke while ``sending`` or receiving."""
    if sending:
        return httpx.WriteError(_describe(exc), request=_error_request(request))
    return httpx.ReadError(_describe(exc), request=_error_request(request))


@final  # so that `type(request) is _RawRequest` tells the two request kinds apart
class _RawRequest:
    """A POST built by :class:`_WorkerClient` without ``httpx.Request``.

    It carries what :class:`H11Transport` reads (url, method, bytes body,
    extensions) plus the request head in two parts: ``prefix``, the request
    line and the client's fixed headers, checked once per path (see
    :meth:`_WorkerClient._fast_target`; ``framing`` says whether they ask for
    chunked coding and connection close), and ``extra``, this request's own
    headers, checked on every request.  The transport answers it with a
    :class:`RawResponse`.  Building ``httpx.Request`` and ``httpx.Response``
    objects cost more CPU than the HTTP exchange itself.
    """

    __slots__ = ("content", "extensions", "extra", "framing", "origin", "prefix", "url")

    method = "POST"

    def __init__(
        self,
        url: httpx.URL,
        prefix: bytes,
        framing: tuple[bool, bool],
        extra: list[tuple[bytes, bytes]],
        content: bytes,
        extensions: dict[str, Any],
        origin: tuple[bytes, str, int],
    ) -> None:
        self.url = url
        self.origin = origin
        self.prefix = prefix
        self.framing = framing
        self.extra = extra
        self.content = content
        self.extensions = extensions

    @property
    def stream(self) -> httpx.ByteStream:
        """The body as httpx would stream it."""
        return httpx.ByteStream(self.content)


#: What the transport sends: httpx's requests, and the worker client's fast-path POSTs.
_Request = httpx.Request | _RawRequest


def _error_request(request: _Request) -> httpx.Request:
    """``request`` as the ``request=`` of one of httpx's exceptions.

    httpx types that argument ``httpx.Request``; a :class:`_RawRequest` stands
    in for one there (it has the url, method, extensions and stream that code
    handling the error reads), which is the one place the types are told so.
    """
    return cast(httpx.Request, request)


class RawResponse:
    """A fully read response, as light as the engine needs it.

    Attributes:
        status_code: the HTTP status.
        headers: names lower-cased to values (the first of repeated headers);
            a plain ``dict``, so ``headers.get("x-request-id")`` works.
        content: the body bytes.
    """

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, raw_headers: list[tuple[bytes, bytes]], content: bytes):
        self.status_code = status_code
        self.headers = _first_values(raw_headers)
        self.content = content

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<RawResponse [{self.status_code}]>"


def _httpx_response(message: _wire.ResponseMessage) -> httpx.Response:
    """``message`` as an ``httpx.Response``, already read (gzip and the like decoded).

    ``read()`` runs httpx's decoder and chunker over the body: 8-13 µs more per
    response than setting the private ``_content``, which this module no
    longer touches.  The engine's chat requests take the fast path and never
    come here; its transcriptions do, and their uploads dwarf that.
    """
    response = httpx.Response(
        message.status_code,
        headers=message.headers,
        stream=httpx.ByteStream(message.body),
        extensions={"http_version": _HTTP_VERSION_EXTENSION, "reason_phrase": message.reason},
    )
    response.read()
    return response


def _origin(url: httpx.URL) -> tuple[bytes, str, int]:
    """(scheme, host, port) of the connection ``url`` goes over (the port filled in)."""
    scheme = url.raw_scheme
    # raw_host is the IDNA-encoded (ASCII) name, as DNS and TLS want it.
    return (scheme, url.raw_host.decode("ascii"), url.port or _DEFAULT_PORTS.get(scheme, 80))


def _serialize_request(request: _Request) -> tuple[bytes, bytes, bool, bool]:
    """Return (request head bytes, method, body is chunked, connection closes after).

    httpx has already built every header (Host, Content-Length or
    Transfer-Encoding, ...); they are written out as they are, through
    :mod:`engine._wire`'s checks (:class:`_wire.LocalProtocolError` for what
    could start a new line).  A :class:`_RawRequest` brings its request line
    and fixed headers already checked: only its per-request headers are.
    """
    if type(request) is _RawRequest:
        block, chunked, close = _wire.header_block(request.extra)
        fixed_chunked, fixed_close = request.framing
        return (
            request.prefix + block + b"\r\n",
            b"POST",
            chunked or fixed_chunked,
            close or fixed_close,
        )
    method = _wire.method_token(request.method)
    line = _wire.request_line(method, request.url.raw_path)
    block, chunked, close = _wire.header_block(request.headers.raw)
    return line + block + b"\r\n", method, chunked, close


def _buffered_body(request: _Request) -> bytes | None:
    """The request body when httpx already holds all of it as bytes, else None."""
    if type(request) is _RawRequest:
        return request.content
    if isinstance(request.stream, httpx.ByteStream):
        try:
            # httpx reads bytes content at construction: no need to iterate.
            return request.content
        except httpx.RequestNotRead:
            return None
    return None


async def _write_streamed(
    connection: _Connection,
    request: _Request,
    head: bytes,
    chunked: bool,
    scope: _Deadline,
    write_timeout: float,
) -> None:
    """Send the request head, then its body as the stream yields it (chunked or not)."""
    send = connection.send_all
    pending = [head]
    pending_size = len(head)
    stream = request.stream
    if not isinstance(stream, httpx.AsyncByteStream):  # an AsyncClient's always is
        raise TypeError("an async transport needs a request body it can read asynchronously")
    async for chunk in stream:
        if not chunk:
            continue
        pending.append(_wire.chunk(chunk) if chunked else chunk)
        pending_size += len(chunk)
        if pending_size >= _SEND_BATCH:
            scope.deadline = trio.current_time() + write_timeout
            await send(b"".join(pending))
            pending.clear()
            pending_size = 0
    if chunked:
        pending.append(_wire.LAST_CHUNK)
    if pending:
        scope.deadline = trio.current_time() + write_timeout
        await send(b"".join(pending))


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    return str(cause or exc) or type(cause or exc).__name__


class StreamedResponse(Protocol):
    """A response whose body is handed out as it arrives (:meth:`_WorkerClient.stream_post`).

    Attributes:
        status_code: the HTTP status.
        headers: names lower-cased to values (the first of repeated headers).
    """

    status_code: int
    headers: Mapping[str, str]

    async def receive_some(self) -> bytes:
        """The next piece of the body (without transfer coding) as it arrives; ``b""``
        once the body is complete.  Checkpoints.

        Raises httpx's exceptions (:class:`httpx.ReadTimeout` when a wait for
        more bytes outlasts the read timeout, :class:`httpx.RemoteProtocolError`
        when the peer closes before the body's end, ...).
        """
        ...

    async def read_rest(self) -> bytes:
        """The rest of the body, all of it (for error answers). Checkpoints."""
        ...


def _first_values(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Header names lower-cased to values, the first of repeated headers kept."""
    # Built backwards, so the first of a repeated header is the one left.
    return {
        name.decode("latin-1").lower(): value.decode("latin-1")
        for name, value in reversed(raw_headers)
    }


class _HttpxStreamedResponse:
    """An ``httpx.Response`` read as it streams, as a :class:`StreamedResponse`.

    The fallback for transports other than :class:`H11Transport` (test doubles
    such as ``httpx.ASGITransport``, which hands out the body only once the
    app finished: behaviour is the same, timings are the double's), and the
    wrapper of a content-encoded :class:`_H11Stream`.  The pieces are httpx's
    decoded bytes (gzip and the like undone).
    """

    __slots__ = ("_pieces", "headers", "status_code")

    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.headers: Mapping[str, str] = _first_values(response.headers.raw)
        self._pieces: AsyncIterator[bytes] | None = response.aiter_bytes()

    async def receive_some(self) -> bytes:
        """See :meth:`StreamedResponse.receive_some`. Checkpoints."""
        # httpx's iterator over a body already in memory never yields to trio.
        await trio.lowlevel.checkpoint()
        pieces = self._pieces
        if pieces is None:
            return b""
        async for piece in pieces:
            if piece:
                return piece
        self._pieces = None
        return b""

    async def read_rest(self) -> bytes:
        """See :meth:`StreamedResponse.read_rest`. Checkpoints."""
        parts = []
        while piece := await self.receive_some():
            parts.append(piece)
        return b"".join(parts)


class _HttpxStream(contextlib.AbstractAsyncContextManager[StreamedResponse]):
    """``client.stream("POST", ...)`` wrapped to hand out a :class:`StreamedResponse`."""

    __slots__ = ("_client", "_content", "_context", "_headers", "_url")

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: httpx.URL | str,
        content: bytes,
        headers: Mapping[str, str] | None,
    ) -> None:
        self._client = client
        self._url = url
        self._content = content
        self._headers = headers
        self._context: contextlib.AbstractAsyncContextManager[httpx.Response] | None = None

    async def __aenter__(self) -> StreamedResponse:
        context = self._client.stream(
            "POST", self._url, content=self._content, headers=self._headers
        )
        response = await context.__aenter__()
        self._context = context
        return _HttpxStreamedResponse(response)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        context = self._context
        if context is not None:
            self._context = None
            await context.__aexit__(exc_type, exc, traceback)


@final
class _H11Stream(contextlib.AbstractAsyncContextManager[StreamedResponse]):
    """``stream_post`` on an :class:`H11Transport`: the context and the response in one.

    Entering takes the transport's turn (its one connection), sends the
    request and reads the head; :meth:`receive_some` then reads the body from
    the socket as it arrives, through :class:`engine._wire.BodyReader`.
    Leaving gives the turn back, and keeps the connection only when the body
    was read to its end and both sides allow reuse.  A body that came
    content-encoded is decoded by httpx (through an ``httpx.Response`` over
    these pieces): entering then gives that wrapper.

    The read timeout bounds each wait for body bytes from its start: a
    running :class:`TimeoutWatch` keeps it on plain TCP (no cancel scope per
    wait); otherwise a cancel scope per wait.
    """

    __slots__ = (
        "_body",
        "_connection",
        "_encoded",
        "_keep_alive",
        "_pending",
        "_raw_headers",
        "_read_timeout",
        "_transport",
        "_turn_held",
        "headers",
        "request",
        "status_code",
    )

    def __init__(self, transport: H11Transport, request: _RawRequest) -> None:
        self._transport = transport
        self.request = request
        self.status_code = 0
        self.headers: Mapping[str, str] = {}
        # Set by begin(): the connection, the body's reader (None once the
        # stream failed or was left), body bytes not handed out yet, whether
        # the head allows reuse, the read timeout.
        self._connection: _Connection | None = None
        self._body: _wire.BodyReader | None = None
        self._pending = b""
        self._keep_alive = False
        self._read_timeout = _INF
        self._turn_held = False
        self._encoded = False
        self._raw_headers: list[tuple[bytes, bytes]] = []

    async def __aenter__(self) -> StreamedResponse:
        transport = self._transport
        request = self.request
        timeouts = request.extensions.get("timeout") or {}
        turn = transport._turn
        if turn.held:
            await transport._wait_for_turn(request, timeouts.get("pool"))
        else:
            turn.held = True
        self._turn_held = True
        try:
            if transport._closed:
                raise RuntimeError("transport is closed")
            await transport._send_with_one_retry(request, timeouts, self)
        except BaseException:
            self._turn_held = False
            turn.give_back()
            raise
        if self._encoded:
            response = httpx.Response(
                self.status_code, headers=self._raw_headers, stream=_PiecesStream(self)
            )
            return _HttpxStreamedResponse(response)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._turn_held:
            return
        body = self._body
        transport = self._transport
        if (
            (body is None or not body.done or not self._keep_alive or not body.keep_alive)
            and self._connection is not None
            and self._connection is transport._connection
        ):
            # Left mid-body, or the connection may not carry another request.
            transport._drop_connection()
        self._body = None
        self._connection = None
        self._turn_held = False
        transport._turn.give_back()

    def begin(
        self,
        connection: _Connection,
        head: _wire.ResponseMessage,
        body: _wire.BodyReader,
        first: bytes,
        read_timeout: float,
    ) -> None:
        """Take over ``connection`` after the head: ``body`` reads the rest. Never checkpoints."""
        self._connection = connection
        self.status_code = head.status_code
        self.headers = _first_values(head.headers)
        self._raw_headers = head.headers
        self._encoded = head.content_encoded
        self._keep_alive = head.keep_alive
        self._body = body
        self._pending = first
        self._read_timeout = read_timeout

    async def receive_some(self) -> bytes:
        """See :meth:`StreamedResponse.receive_some`. Checkpoints."""
        pending = self._pending
        if pending:
            self._pending = b""
            await trio.lowlevel.checkpoint()
            return pending
        body = self._body
        if body is None:
            raise httpx.StreamClosed()
        if body.done:
            await trio.lowlevel.checkpoint()
            return b""
        connection = self._connection
        assert connection is not None
        transport = self._transport
        watch = transport._watch
        read_timeout = self._read_timeout
        try:
            while True:
                if watch is not None and type(connection) is _PlainConnection and watch.running:
                    # The hot path, once per event of a stream: the wait and the
                    # receive of _PlainConnection.receive_after_wait and the
                    # common case of TimeoutWatch.arm, inlined.
                    deadline = trio.current_time() + read_timeout
                    connection.expired = False
                    connection.deadline = deadline
                    if deadline < watch._wake_at or connection not in watch._connections:
                        watch.arm(connection, deadline)
                    sock = connection.sock
                    try:
                        await _wait_readable(sock)
                    finally:
                        connection.deadline = _INF  # TimeoutWatch.disarm, inlined
                    try:
                        data = sock.recv(_RECEIVE_SIZE)
                    except BlockingIOError:
                        continue
                elif read_timeout == _INF:
                    data = await connection.receive_after_wait()
                else:
                    with trio.CancelScope(deadline=trio.current_time() + read_timeout) as scope:
                        data = await connection.receive_after_wait()
                    if scope.cancelled_caught:
                        self._fail()
                        raise httpx.ReadTimeout(
                            "timed out waiting for the response body",
                            request=_error_request(self.request),
                        )
                if not data:
                    # The peer closed: whatever the body reader says, not reusable.
                    self._keep_alive = False
                piece = body.feed(data)
                if piece or body.done:
                    return piece
        except _wire.RemoteProtocolError as exc:
            self._fail()
            raise httpx.RemoteProtocolError(str(exc), request=_error_request(self.request)) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail()
            if type(connection) is _PlainConnection and connection.expired:
                raise httpx.ReadTimeout(
                    "timed out waiting for the response body",
                    request=_error_request(self.request),
                ) from None
            raise httpx.ReadError(_describe(exc), request=_error_request(self.request)) from exc

    async def read_rest(self) -> bytes:
        """See :meth:`StreamedResponse.read_rest`. Checkpoints."""
        parts = []
        while piece := await self.receive_some():
            parts.append(piece)
        return b"".join(parts)

    def _fail(self) -> None:
        """The stream broke: drop its connection; later reads raise ``httpx.StreamClosed``."""
        if self._connection is self._transport._connection:
            self._transport._drop_connection()
        self._body = None


class _PiecesStream(httpx.AsyncByteStream):
    """The raw body pieces of an :class:`_H11Stream`, for httpx's decoders."""

    def __init__(self, stream: _H11Stream) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while piece := await self._stream.receive_some():
            yield piece


class _ResponseCookiesIgnored(httpx.Cookies):
    """A cookie jar that never stores cookies from responses.

    httpx runs every response through ``http.cookiejar`` (building a
    ``urllib`` request and an ``email.message.Message`` of its headers), which
    costs more CPU than parsing the response itself. The APIs this engine
    calls authenticate with a key, not cookies, so worker clients skip it.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        """Ignore the response's ``Set-Cookie`` headers."""


# Most distinct URL strings a worker client remembers merged with its base URL.
_MERGED_URLS_KEPT = 64


class _WorkerClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` tuned for a worker that calls a few endpoints again and again.

    * Its cookie jar ignores ``Set-Cookie`` (see :class:`_ResponseCookiesIgnored`);
      cookies given per request (``cookies=`` on a call) are still sent.
    * It remembers the URL each path string merges to with ``base_url`` (up
      to 64 strings): httpx otherwise parses and joins the URL on every
      request, a quarter of its per-request CPU.

    It uses httpx's public interface only (``build_request`` is overridden
    to pass httpx the merged URL), so any httpx release with that interface
    works.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        transport = kwargs.get("transport")
        # The transport the fast POST path hands its requests to (None: no fast path).
        self._fast_transport = transport if type(transport) is H11Transport else None
        self._response_cookies_ignored = _ResponseCookiesIgnored()
        self._merged_urls: dict[str, httpx.URL] = {}
        self._merged_urls_base: httpx.URL | None = None
        self._fast_targets: dict[str, _FastTarget] = {}
        self._fast_extensions: dict[str, Any] = {"timeout": self.timeout.as_dict()}
        self._fast_base: httpx.URL | None = None

    # The override widens httpx's return type: the fast path answers with a RawResponse.
    # That is the point of it, so the checker is told here; the engine's workers
    # type their client by what they read of either answer (engine._client's
    # _WorkerHTTP and ResponseLike).
    async def post(  # type: ignore[override]
        self,
        url: httpx.URL | str,
        *,
        content: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response | RawResponse:
        """``httpx.AsyncClient.post``, with a fast path for the engine's own calls.

        A bytes body sent to a path string on an :class:`H11Transport`, with
        no other options, skips ``httpx.Request`` / ``httpx.Response``: the
        transport gets the headers as bytes and returns a :class:`RawResponse`
        (status_code, headers dict with lower-case names, content, text).
        The fast path asks for no compression (``accept-encoding`` is not
        sent), so the body arrives as it is. Anything else goes through httpx.
        The client's own headers are read once per path: change them before
        the first request, not after.
        """
        if (
            kwargs
            or type(content) is not bytes
            or type(url) is not str
            or self._fast_transport is None
        ):
            return await super().post(url, content=content, headers=headers, **kwargs)
        request = self._raw_request(url, content, headers)
        if request is None:
            # Framing the caller chose: httpx's own path honours it.
            return await super().post(url, content=content, headers=headers)
        return await self._fast_transport.handle_async_request(request)

    def _raw_request(
        self, url: str, content: bytes, headers: Mapping[str, str] | None
    ) -> _RawRequest | None:
        """The fast path's POST of ``content`` to ``url``; None when ``headers``
        name a framing header (Content-Length, Transfer-Encoding, Connection)."""
        if self._fast_base is not self.base_url:
            self._fast_targets.clear()  # base_url was set since
            self._fast_base = self.base_url
        target = self._fast_targets.get(url)
        if target is None:
            target = self._fast_target(url)
        merged_url, prefix, framing, origin = target
        extra = []
        if headers:
            for name, value in headers.items():
                encoded = name.encode("ascii")
                if encoded.lower() in _FRAMING_HEADERS:
                    return None
                extra.append((encoded, value.encode("latin-1")))
        extra.append((b"content-length", b"%d" % len(content)))
        return _RawRequest(
            merged_url, prefix, framing, extra, content, self._fast_extensions, origin
        )

    def stream_post(
        self,
        url: httpx.URL | str,
        *,
        content: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> contextlib.AbstractAsyncContextManager[StreamedResponse]:
        """A POST whose response body is read as it arrives: ``async with`` gives a
        :class:`StreamedResponse` once the response head is in.

        Entering sends the request and waits for the head only (the connect,
        write and pool timeouts as for :meth:`post`; the read timeout bounds
        the wait for the head, then each wait for more of the body).  Leaving
        before the body ended (the caller broke out, was cancelled, or an
        error) drops the connection; a body read to its end leaves it open for
        the next request.  Errors are httpx's exceptions, as for :meth:`post`.
        Entering and the response's methods checkpoint.

        On an :class:`H11Transport`, a bytes body to a path string goes without
        httpx's objects (as :meth:`post`'s fast path does; no compression is
        asked for) and the body is handed out as the socket delivers it; the
        transport's connection is this stream's from entering to leaving.
        Otherwise (other transports, framing headers) this is httpx's own
        ``client.stream("POST", ...)`` wrapped to the same interface (on an
        :class:`H11Transport`, that reads the whole body before the first
        piece).
        """
        transport = self._fast_transport
        if transport is not None and type(url) is str and type(content) is bytes:
            request = self._raw_request(url, content, headers)
            if request is not None:
                return _H11Stream(transport, request)
        return _HttpxStream(self, url, content, headers)

    def _fast_target(self, url: str) -> _FastTarget:
        """The URL ``url`` merges to, its checked request line and fixed headers,
        whether those headers ask for (chunked transfer coding, connection close),
        and the origin its connection goes to (see :func:`_origin`)."""
        merged = self._merged_url(url)
        host = merged.raw_host
        if b":" in host:
            host = b"[%s]" % host  # an IPv6 literal
        port = merged.port
        host_header = host if port is None else b"%s:%d" % (host, port)
        base = [(b"host", host_header)]
        for name, value in self.headers.raw:
            lowered = name.lower()
            if lowered not in (b"host", b"accept-encoding", b"content-length"):
                base.append((name, value))
        line = _wire.request_line(b"POST", merged.raw_path)
        block, chunked, close = _wire.header_block(base)
        target = (merged, line + block, (chunked, close), _origin(merged))
        if len(self._fast_targets) < _MERGED_URLS_KEPT:
            self._fast_targets[url] = target
        return target

    def build_request(self, method: str, url: httpx.URL | str, **kwargs: Any) -> httpx.Request:
        """``httpx.AsyncClient.build_request``, given the merged URL for a path string."""
        if type(url) is str:
            url = self._merged_url(url)
        return super().build_request(method, url, **kwargs)

    def _merged_url(self, url: str) -> httpx.URL:
        """``url`` joined to ``base_url`` as httpx joins them, remembered per string."""
        if self._merged_urls_base is not self.base_url:
            # base_url was set since: what was merged with the old one is stale.
            self._merged_urls.clear()
            self._merged_urls_base = self.base_url
        merged = self._merged_urls.get(url)
        if merged is None:
            merged = httpx.URL(url)
            if merged.is_relative_url:
                # httpx keeps base_url ending in "/" and appends the path without
                # its leading "/": a base path prefixes every request path.
                base = self.base_url
                merged = base.copy_with(raw_path=base.raw_path + merged.raw_path.lstrip(b"/"))
            if len(self._merged_urls) < _MERGED_URLS_KEPT:
                self._merged_urls[url] = merged
        return merged

    @property
    def cookies(self) -> httpx.Cookies:
        """Always empty: this client keeps no cookies."""
        return self._response_cookies_ignored

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        raise AttributeError("worker clients keep no cookies; pass cookies= per request")


def make_async_client(
    base_url: str,
    *,
    headers: Mapping[str, str],
    timeout: httpx.Timeout,
    transport: httpx.AsyncBaseTransport | None = None,
    watch: TimeoutWatch | None = None,
) -> _WorkerClient:
    """Return an ``httpx.AsyncClient`` for one worker, on its own :class:`H11Transport`.

    Args:
        base_url: prefix of every request URL, e.g. ``"https://api.openai.com/v1"``.
        headers: sent with every request (authorization, user agent, ...).
        timeout: per-request timeouts, honoured by the transport.
        transport: use this instead of a new ``H11Transport`` (tests pass
            ``httpx.ASGITransport(app)`` or ``httpx.MockTransport``).
        watch: the :class:`TimeoutWatch` the new ``H11Transport`` keeps its
            timeouts with (default None: a cancel scope per exchange).

    The client keeps no cookies from responses and remembers how its path
    strings join ``base_url`` (both save CPU on every request; API keys, not
    cookies, authenticate), and ignores environment proxies
    (``trust_env=False``): the transport connects directly. Building it
    creates no SSL context.
    """
    return _WorkerClient(
        base_url=base_url,
        headers=headers,
        timeout=timeout,
        transport=transport if transport is not None else H11Transport(watch=watch),
        trust_env=False,
    )
