"""A small HTTP/1.1 server for the mock app: asyncio (uvloop) + httptools, no framework.

Why it exists: the mock must outrun the engine by 3x, and on the 2-core dev
machine the general-purpose servers spend most of each request on themselves.
Hypercorn's trio worker runs ~1,900 Python function calls per keep-alive
request (a task spawned per request with a memory channel, the idle-timeout
task restarted through ``nursery.start`` under a lock, a lock and a shielded
cancel scope around every write, h11's event validation); uvicorn with uvloop
and httptools does far less, but still builds a request-cycle object, a task
and a keep-alive timer per request.  This server keeps only what the mock
needs:

* HTTP/1.1 and 1.0 over plain TCP, keep-alive, pipelining (requests on one
  connection are answered in order), ``Expect: 100-continue``, request bodies
  with Content-Length or chunked transfer coding (httptools decodes them),
  HEAD (the body is not sent).
* The whole request body is read before the app is called, at most
  ``max_request_bytes`` (default 64 MiB; larger: 413 and the connection is
  closed).  The app then receives it as one ``http.request`` message.
* **The synchronous path.**  When the app has a ``respond_at_once(method,
  path, headers, body)`` method (:meth:`engine.mock.MockApp.respond_at_once`),
  each complete request is offered to it first, before any ASGI scope is
  built: it returns ``(head, body)`` bytes (the status line and header
  lines) and the server appends ``date``, ``connection: close`` when
  closing, the blank line and the body (not for HEAD), in one
  ``transport.write``.  No scope dict, no ``receive``/``send`` coroutines,
  no message dicts, no header-list join.  It returns None, having done
  nothing, when the answer could suspend (latency, faults) or for endpoints
  it leaves to ASGI; the request then takes the ASGI path below, unchanged.
  Responses, stats and quota accounting are the same on both paths (tests
  compare the bytes on the wire).  Other servers (uvicorn, hypercorn,
  ``httpx.ASGITransport``) only ever use the ASGI call.
* **Timed streams.**  When ``respond_at_once`` returns a timed stream
  (:class:`engine.mock._app.TimedStream`: a streamed answer with a time to
  first token or gaps between tokens) in place of the body, the server
  writes its frames itself from ``loop.call_later`` callbacks, each batch of
  due frames in one chunk (the head with the first, the last chunk with the
  last), then answers the requests pipelined behind it; a lost connection
  cancels the timer and calls the stream's ``finish``.  No coroutine, task or
  sleep per stream; per chunk, one timer and one ``write``.
* Otherwise the app is *stepped* directly from the protocol callback
  instead of being wrapped in a task: when it never suspends (no latency,
  no slow-body fault: :mod:`engine.mock._app` guarantees that), the
  response is written in the same callback with one ``transport.write``.
  When it does suspend (an ``anyio.sleep``, a full write buffer), the
  coroutine is handed, mid-flight, to an asyncio task that resumes it
  exactly where it stopped.  Requests pipelined behind it wait, then take
  whichever path applies to them.
* The response head and a complete body go out in one write; a streamed
  body without Content-Length uses chunked coding.  Headers added: ``date``
  (cached per second) and ``connection: close`` when the connection ends.
* No idle timeout (a mock's clients hold their connections on purpose), no
  lifespan messages (the mock app needs none), no TLS, no HTTP/2, no
  WebSocket (an ``Upgrade`` request gets 400 and the connection is closed),
  no per-request logging.  An exception from the app is logged (except
  :class:`~engine.mock.DroppedConnection`, the injected fault) and, if no
  response was started, answered with a 500; the connection is then closed,
  which is how a dropped connection is injected.

What a request costs (2026-11-29, 2-core dev machine; ``docs/mock.md``,
"Throughput", has the series and the commands): in-process, fed the wire
bytes without sockets, the server plus the mock app run ~10 µs of Python per
chat answer through ``respond_at_once`` (25-40 µs through the ASGI call
before it existed), the server plus a fixed-answer app ~4 µs.  Served to
wrk over loopback, 17,450 requests per server CPU-second median at load
3.4-6.7 (the server got 21-55% of its core; 17,390 req/s wall clock in a
run where it had 93% of it), against 26,810 for the fixed answer.  The
kernel (one ``read`` and one ``write`` per request), httptools and uvloop
now take about half of the CPU (perf: ~37% kernel, ~12% httptools and
uvloop, ~48% the interpreter).

:func:`serve` is the entry point; it runs until its ``stop`` event is set.
It needs httptools (uvloop is optional), both in the ``fast-mock`` extra;
without them ``engine mock`` serves with hypercorn instead
(:func:`engine.mock._cli.choose_server`).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Generator, MutableMapping
from typing import Any, cast

import httptools
import sniffio

__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "serve"]

#: Request bodies above this get 413 from the server itself (the app's own
#: ``max_body_bytes`` is usually smaller and answered by the app).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024

_logger = logging.getLogger("engine.mock.server")
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_PENDING_MAX = 64  # pipelined requests queued on one connection before reading pauses
_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# uvloop's timers count whole milliseconds and may fire up to one early: a timed
# stream's frame due within this many seconds is written now rather than waking
# again (the ASGI path, sleeping with asyncio.sleep, is as early).
_TIMER_SLACK = 0.001

App = Callable[[MutableMapping[str, Any], Any, Any], Coroutine[Any, Any, None]]
#: ``app.respond_at_once(method, path, headers, body)``: (head, body or timed stream) or None.
Respond = Callable[[str, str, list[tuple[bytes, bytes]], bytes], "tuple[bytes, Any] | None"]
#: A parsed request waiting for its answer: (method, (path, raw_path,
#: query_string), headers, body, keep-alive, HTTP version).
_Request = tuple[bytes, tuple[str, bytes, bytes], list[tuple[bytes, bytes]], bytes, bool, str]
_METHODS = {name.encode(): name for name in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS")}
_TARGETS_MAX = 1024


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class _Date:
    """The ``date`` header line, rebuilt at most once a second, and head endings with it."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""
        self._endings = (b"", b"")

    def _update(self, now: float) -> None:
        self._second = int(now)
        self._line = b"date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
        self._endings = (self._line + b"connection: close\r\n\r\n", self._line + b"\r\n")

    def line(self) -> bytes:
        now = time.time()
        if int(now) != self._second:
            self._update(now)
        return self._line

    def ending(self, keep_alive: bool) -> bytes:
        """The date line, ``connection: close`` unless ``keep_alive``, and the blank line."""
        now = time.time()
        if int(now) != self._second:
            self._update(now)
        return self._endings[keep_alive]


_date = _Date()


def _parse_target(url: bytes) -> tuple[str, bytes, bytes]:
    """(path, raw_path, query_string) of a request target, origin or absolute form."""
    raw_path, _, query = url.partition(b"?")
    if raw_path[:1] != b"/":  # absolute form: http://host/path
        parsed = httptools.parse_url(url)
        raw_path, query = parsed.path or b"/", parsed.query or b""
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return path, raw_path, query


def _simple_response(status: int, message: str) -> bytes:
    body = message.encode()
    return (
        _status_line(status)
        + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body)
        + b"connection: close\r\n\r\n"
        + body
    )


class _Continuation:
    """Awaitable that carries on a coroutine which has already yielded ``first``.

    Awaited from a new task, it passes ``first`` (the future the coroutine is
    waiting on) up to that task, then relays every value, result and thrown
    exception (cancellation included) between the task and the coroutine, as
    ``await`` would have done had the coroutine run in a task from the start.
    """

    __slots__ = ("_coroutine", "_first")

    def __init__(self, coroutine: Any, first: Any) -> None:
        self._coroutine = coroutine
        self._first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine = self._coroutine
        pending = self._first
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # relayed to the coroutine, not handled here
                try:
                    pending = coroutine.throw(error)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value


class _Exchange:
    """One request and its response on a connection: the app's ``receive`` and ``send``."""

    __slots__ = (
        "_body",
        "_body_delivered",
        "_chunked",
        "_connection",
        "_head_only",
        "_headers",
        "_status",
        "_waiter",
        "complete",
        "disconnected",
        "keep_alive",
        "started",
    )

    def __init__(
        self, connection: _Connection, body: bytes, keep_alive: bool, head_only: bool
    ) -> None:
        self._connection = connection
        self._body = body
        self._body_delivered = False
        self._head_only = head_only
        self._chunked = False
        self._status = 200
        self._headers: Any = ()
        self._waiter: asyncio.Future[None] | None = None
        self.keep_alive = keep_alive
        self.started = False
        self.complete = False
        self.disconnected = False

    async def receive(self) -> dict[str, Any]:
        """The body as one message, then ``http.disconnect`` once the exchange is over."""
        if not self._body_delivered:
            self._body_delivered = True
            body, self._body = self._body, b""
            return {"type": "http.request", "body": body, "more_body": False}
        if not (self.disconnected or self.complete):
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return {"type": "http.disconnect"}

    def end(self) -> None:
        """The response is finished or the client is gone: wake a waiting ``receive``."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(self, message: MutableMapping[str, Any]) -> None:
        """Write the response; checkpoints only when the write buffer is full."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self._status = message["status"]
            self._headers = message.get("headers", ())
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message type {kind!r}")
        if not self.started or self.complete:
            raise RuntimeError("http.response.body sent before start or after the last body")
        if self.disconnected:
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        connection = self._connection
        head = self._head(more, len(body)) if self._headers is not None else None
        # One write per message, the last chunk included (a streamed answer's
        # events due together go out in one write, not two).
        last = b"" if more or not self._chunked or self._head_only else b"0\r\n\r\n"
        if head is not None:
            self._headers = None  # the head is on its way
            if self._head_only:
                connection.write(head)
            elif self._chunked:
                chunk = b"%x\r\n%s\r\n%s" % (len(body), body, last) if body else last
                connection.write(head + chunk)
            else:
                connection.write(head + body)
        elif not self._head_only and (body or last):
            if self._chunked:
                connection.write(b"%x\r\n%s\r\n%s" % (len(body), body, last) if body else last)
            else:
                connection.write(body)
        if not more:
            self.complete = True
            self.end()
        elif connection.write_paused:
            await connection.drained()

    def _head(self, more_body: bool, body_length: int) -> bytes:
        # ASGI requires lowercase response header names, so exact comparison is enough.
        parts = [_status_line(self._status)]
        has_length = False
        for name, value in self._headers:
            if name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding":  # the app asks for chunks (a stream)
                has_length = self._chunked = True
            parts += (name, b": ", value, b"\r\n")
        if not has_length:
            if more_body:
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                parts.append(b"content-length: %d\r\n" % body_length)
        parts.append(_date.line())
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parse requests with httptools, answer them in order."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop, server: _Server) -> None:
        self._app = app
        self._respond: Respond | None = getattr(app, "respond_at_once", None)
        self._targets = server.targets
        self._loop = loop
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client: tuple[str, int] | None = None
        self._sockname: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._pending: collections.deque[_Request] = collections.deque()
        self._current: _Exchange | None = None  # answered asynchronously, by a task
        # A timed stream being written by timer callbacks (see _write_timed):
        # its frames, the next one's index, the head not yet written, keep-alive.
        self._timed: Any = None
        self._timed_index = 0
        self._timed_head = b""
        self._timed_keep_alive = True
        self._timed_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.write_paused = False

    # -- transport events ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self._client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self._sockname = (sock[0], sock[1]) if isinstance(sock, tuple) else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        self._pending.clear()
        self._end_timed()
        if self._current is not None:
            self._current.disconnected = True
            self._current.end()
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported by the mock server")
        except httptools.HttpParserError as error:
            if self._too_large:
                self._fail(413, "request body too large")
            else:
                self._fail(400, f"malformed HTTP request: {error}")

    def pause_writing(self) -> None:
        # A client that does not read its answers gets no more of them computed.
        self.write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        self._update_reading()

    # -- httptools callbacks -----------------------------------------------------

    # No on_message_begin / on_headers_complete: httptools skips callbacks a
    # protocol does not define, and each costs a call per request.  State is
    # reset when a message completes.

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        if name == b"expect" and value.lower() == b"100-continue":
            # Sent before the rest of the head is parsed: harmless, as the
            # client holds its body back until it reads this.
            self.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._server.max_request_bytes:
            self._too_large = True
            raise ValueError("request body too large")  # stops the parser
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._closed:  # requests pipelined after one that closed the connection
            return
        parser = self._parser
        body = self._body
        targets = self._targets
        target = targets.get(self._url)
        if target is None:
            target = _parse_target(self._url)
            if len(targets) >= _TARGETS_MAX:
                targets.clear()
            targets[self._url] = target
        request = (
            parser.get_method(),
            target,
            self._headers,
            body[0] if len(body) == 1 else b"".join(body),
            parser.should_keep_alive(),
            parser.get_http_version(),
        )
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        if self._current is not None or self._pending or self._timed is not None:
            self._pending.append(request)
            self._update_reading()
        else:
            self._start(request)

    # -- answering -----------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Write ``data`` unless the connection is closed."""
        if not self._closed:
            assert self._transport is not None
            self._transport.write(data)

    async def drained(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.write_paused and not self._closed:
            if self._drain is None or self._drain.done():
                self._drain = self._loop.create_future()
            await self._drain

    def _wake_writer(self) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _start(self, request: _Request) -> None:
        """Answer requests, this one and then those queued behind it, while none suspends.

        Each is offered to the app's ``respond_at_once`` first (when it has
        one), else stepped as an ASGI call; an ASGI call that suspends is
        handed to a task, which carries on with the queue when it is done.
        """
        respond = self._respond
        while True:
            raw_method, (path, raw_path, query), headers, body, keep_alive, http_version = request
            method = _METHODS.get(raw_method) or raw_method.decode("ascii")
            answer = None
            if respond is not None:
                try:
                    answer = respond(method, path, headers, body)
                except BaseException as error:  # as from an ASGI call: this request's 500
                    self._app_failed(False, False, error)
                    return
            if answer is not None:
                head, payload = answer
                if payload.__class__ is not bytes:  # a timed stream: written by timers
                    self._timed = payload
                    self._timed_index = 0
                    self._timed_head = head + _date.ending(keep_alive)
                    self._timed_keep_alive = keep_alive
                    self._write_timed()
                    return
                if not self._closed:
                    assert self._transport is not None
                    self._transport.write(
                        head + _date.ending(keep_alive)
                        if method == "HEAD"
                        else b"".join((head, _date.ending(keep_alive), payload))
                    )
                if not keep_alive:
                    self._close()
                    return
                if self._closed:
                    return
            else:
                scope = {
                    "type": "http",
                    "asgi": _ASGI,
                    "http_version": http_version,
                    "method": method,
                    "scheme": "http",
                    "path": path,
                    "raw_path": raw_path,
                    "query_string": query,
                    "root_path": "",
                    "headers": headers,
                    "client": self._client,
                    "server": self._sockname,
                }
                exchange = _Exchange(self, body, keep_alive, method == "HEAD")
                coroutine = self._app(scope, exchange.receive, exchange.send)
                try:
                    waiting_on = coroutine.send(None)
                except StopIteration:
                    pass
                except BaseException as error:  # the app's failure is this request's 500
                    self._app_failed(exchange.started, exchange.disconnected, error)
                    return
                else:
                    self._current = exchange
                    self._task = self._loop.create_task(
                        self._carry_on(exchange, coroutine, waiting_on)
                    )
                    return
                if not self._finish(exchange):
                    return
            if not self._pending:
                return
            request = self._pending.popleft()
            self._update_reading()

    def _write_timed(self) -> None:
        """Write the timed stream's frames that are due, then wait for the next one.

        Runs from ``_start`` and then from timer callbacks.  Every frame due
        now goes out in one chunk (the first with the head, the last with
        the last chunk); when the stream is done, the requests pipelined
        behind it are answered.
        """
        self._timed_handle = None
        stream = self._timed
        if stream is None:
            return
        frames = stream.frames
        index = self._timed_index
        count = len(frames)
        now = time.monotonic()
        due = frames[index][0]
        if due > now + _TIMER_SLACK:
            self._timed_handle = self._loop.call_later(due - now, self._write_timed)
            return
        now = max(now, due)
        following = index + 1
        while following < count and frames[following][0] <= now:
            following += 1
        data = (
            frames[index][1]
            if following == index + 1
            else b"".join([frame[1] for frame in frames[index:following]])
        )
        last = b"0\r\n\r\n" if following == count else b""
        self.write(b"%s%x\r\n%s\r\n%s" % (self._timed_head, len(data), data, last))
        self._timed_head = b""
        if following < count:
            self._timed_index = following
            self._timed_handle = self._loop.call_later(
                frames[following][0] - now, self._write_timed
            )
            return
        self._timed = None
        stream.finish()
        if not self._timed_keep_alive:
            self._close()
        elif self._pending and not self._closed:
            request = self._pending.popleft()
            self._update_reading()
            self._start(request)

    def _end_timed(self) -> None:
        """The connection is gone: stop the timed stream and let the app settle it."""
        stream = self._timed
        if stream is not None:
            self._timed = None
            if self._timed_handle is not None:
                self._timed_handle.cancel()
                self._timed_handle = None
            stream.finish()

    async def _carry_on(self, exchange: _Exchange, coroutine: Any, waiting_on: Any) -> None:
        try:
            await _Continuation(coroutine, waiting_on)
        except asyncio.CancelledError:
            self._close()
            raise
        except BaseException as error:
            self._app_failed(exchange.started, exchange.disconnected, error)
            return
        finally:
            self._current = None
            self._task = None
        if self._finish(exchange) and self._pending:
            request = self._pending.popleft()
            self._update_reading()
            self._start(request)

    def _finish(self, exchange: _Exchange) -> bool:
        """After the app returned: True if the connection goes on to the next request."""
        if not exchange.started:
            self.write(_simple_response(500, "the app sent no response"))
            self._close()
            return False
        if not exchange.complete or not exchange.keep_alive:
            self._close()
            return False
        return not self._closed

    def _app_failed(self, started: bool, disconnected: bool, error: BaseException) -> None:
        """The app raised ``error``: log it, answer 500 if nothing was sent, close."""
        if not _is_injected_drop(error):
            _logger.error("mock app failed", exc_info=error)
        if not started and not disconnected:
            self.write(_simple_response(500, "internal server error"))
        self._close()
        if not isinstance(error, Exception):
            raise error

    def _update_reading(self) -> None:
        """Pause reading while writes are blocked or too many requests wait; else resume."""
        if self._closed or self._transport is None:
            return
        pause = self.write_paused or len(self._pending) >= _PENDING_MAX
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _fail(self, status: int, message: str) -> None:
        if self._current is None and self._timed is None:
            self.write(_simple_response(status, message))
        self._close()

    def _close(self) -> None:
        """Close after what was written has been sent (a half-sent body is cut there)."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            assert self._transport is not None
            self._transport.close()

    def shut(self) -> None:
        """Server shutdown: stop the answer in progress and close."""
        if self._task is not None:
            self._task.cancel()
        self._end_timed()
        self._close()


def _is_injected_drop(error: BaseException) -> bool:
    from engine.mock._app import DroppedConnection

    return isinstance(error, DroppedConnection)


class _Server:
    """The listening socket's shared state: open connections and limits."""

    def __init__(self, max_request_bytes: int) -> None:
        self.max_request_bytes = max_request_bytes
        self.connections: set[_Connection] = set()
        #: request target -> (path, raw_path, query), shared by the connections
        #: (emptied when it holds ``_TARGETS_MAX``: a mock sees few distinct targets).
        self.targets: dict[bytes, tuple[str, bytes, bytes]] = {}


async def serve(
    app: App,
    sockets: list[Any],
    *,
    stop: asyncio.Event,
    ready: Callable[[], None] | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> None:
    """Serve ``app`` on the listening ``sockets`` until ``stop`` is set.

    Calls ``ready()`` (default: nothing) once the sockets accept connections.
    On stop, the listeners close, answers in progress are cancelled and every
    connection is closed.  Must run on an asyncio loop (uvloop recommended);
    while it runs, ``sniffio`` reports ``"asyncio"`` for this thread, so the
    app's anyio calls work when stepped outside a task.
    """
    loop = asyncio.get_running_loop()
    state = _Server(max_request_bytes)
    previous_library = sniffio.thread_local.name
    sniffio.thread_local.name = "asyncio"
    servers = []
    try:
        for sock in sockets:
            servers.append(
                await loop.create_server(lambda: _Connection(app, loop, state), sock=sock)
            )
        if ready is not None:
            ready()
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        for connection in list(state.connections):
            connection.shut()
        for server in servers:
            await server.wait_closed()
        sniffio.thread_local.name = previous_library
