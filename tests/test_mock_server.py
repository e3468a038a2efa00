"""The mock's builtin HTTP/1.1 server (``engine mock --server builtin``) over raw sockets.

One served mock for the module; faults are switched on and off through
``POST /_mock/config``.  Plus, on plain asyncio without sockets, one
connection fed bytes through a fake transport, and the coroutine hand-over
that lets the server step the app without a task.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import types
import urllib.parse

import httpx
import pytest
from audio_fixtures import mp3_bytes

import engine.mock._app as mock_app_module
from engine.mock import MockApp, MockConfig, create_app, serve_in_subprocess
from engine.mock._server import DEFAULT_MAX_REQUEST_BYTES, _Connection, _Continuation, _Server

MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def address():
    """(host, port) of one builtin-served mock for this module."""
    with serve_in_subprocess(["--server", "builtin"]) as url:
        parsed = urllib.parse.urlsplit(url)
        yield parsed.hostname, parsed.port


@pytest.fixture
def connect(address):
    """Open keep-alive connections to the mock; all closed after the test."""
    sockets = []

    def open_connection() -> socket.socket:
        sock = socket.create_connection(address, timeout=10)
        sockets.append(sock)
        return sock

    yield open_connection
    for sock in sockets:
        sock.close()


@pytest.fixture
def configure(connect):
    """Change MockConfig fields for one test; the defaults are restored after it."""
    changed: dict[str, object] = {}

    def apply(**fields: object) -> None:
        changed.update(fields)
        response = roundtrip(connect(), "POST", "/_mock/config", json.dumps(fields).encode())
        assert response.status == 200

    yield apply
    if changed:
        defaults = MockConfig()
        apply(**{name: getattr(defaults, name) for name in changed})


class Response:
    """One parsed HTTP/1.1 response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> dict:
        return json.loads(self.body)


class Reader:
    """Reads responses off one socket, keeping bytes that belong to the next one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError("connection closed mid-line")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise EOFError(f"connection closed after {len(self.buffer)} of {size} bytes")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def head(self) -> tuple[int, dict[str, str]]:
        status = int(self._take_line().split()[1])
        headers = {}
        while line := self._take_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def response(self, *, head_only: bool = False) -> Response:
        status, headers = self.head()
        if head_only:
            return Response(status, headers, b"")
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while size := int(self._take_line(), 16):
                chunks.append(self._take(size))
                self._take_line()
            self._take_line()
            return Response(status, headers, b"".join(chunks))
        return Response(status, headers, self._take(int(headers["content-length"])))

    def at_eof(self) -> bool:
        return not self.buffer and not self._fill()


def request_bytes(
    method: str, path: str, body: bytes = b"", extra: str = "", version: str = "1.1"
) -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return (f"{method} {path} HTTP/{version}\r\nHost: mock\r\n{length}{extra}\r\n").encode() + body


def chat_body(text: str) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}]}).encode()


def roundtrip(sock: socket.socket, method: str, path: str, body: bytes = b"") -> Response:
    sock.sendall(request_bytes(method, path, body))
    return Reader(sock).response()


def reply_text(response: Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


# -- HTTP/1.1 ---------------------------------------------------------------------------


def test_pipelined_requests_are_answered_in_order(connect):
    """Three requests written at once get three answers, in request order."""
    sock = connect()
    sock.sendall(
        b"".join(
            request_bytes("POST", "/v1/chat/completions", chat_body(f"number {n}"))
            for n in range(3)
        )
    )
    reader = Reader(sock)
    texts = [reply_text(reader.response()) for _ in range(3)]
    assert texts == [f"Mock reply to: number {n}" for n in range(3)]


def test_chunked_request_body_is_decoded(connect):
    """A request body sent with chunked transfer coding reaches the app whole."""
    body = chat_body("sent in chunks")
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        body[:half],
        len(body) - half,
        body[half:],
    )
    sock = connect()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunked
    )
    assert reply_text(Reader(sock).response()) == "Mock reply to: sent in chunks"


def test_expect_100_continue_is_answered_before_the_body(connect):
    """A client that asks ``Expect: 100-continue`` gets 100 Continue, then its answer."""
    body = chat_body("after continue")
    sock = connect()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: mock\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    reader = Reader(sock)
    assert reader.head()[0] == 100
    sock.sendall(body)
    assert reply_text(reader.response()) == "Mock reply to: after continue"


def test_head_response_has_no_body(connect):
    """HEAD gets the head only: the next response on the connection parses cleanly."""
    sock = connect()
    sock.sendall(request_bytes("HEAD", "/v1/models") + request_bytes("GET", "/v1/models"))
    reader = Reader(sock)
    head = reader.response(head_only=True)
    assert head.status == 405
    assert int(head.headers["content-length"]) > 0
    following = reader.response()
    assert following.status == 200
    assert following.json()["object"] == "list"


def test_connection_close_is_honoured(connect):
    """``Connection: close`` gets ``connection: close`` back and the server hangs up."""
    sock = connect()
    sock.sendall(request_bytes("GET", "/v1/models", extra="Connection: close\r\n"))
    reader = Reader(sock)
    response = reader.response()
    assert response.headers["connection"] == "close"
    assert reader.at_eof()


def test_http_10_without_keep_alive_closes(connect):
    """An HTTP/1.0 request without keep-alive is answered, then the connection closes."""
    sock = connect()
    sock.sendall(request_bytes("GET", "/v1/models", version="1.0"))
    reader = Reader(sock)
    assert reader.response().status == 200
    assert reader.at_eof()


def test_malformed_request_gets_400_and_close(connect):
    """Bytes that are not HTTP get a 400 and the connection is closed."""
    sock = connect()
    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    reader = Reader(sock)
    assert reader.response().status == 400
    assert reader.at_eof()


def test_every_response_has_a_date(connect):
    """Responses carry a ``date`` header, as OpenAI's do."""
    assert roundtrip(connect(), "GET", "/v1/models").headers["date"].endswith("GMT")


# -- faults and the hand-over to a task ----------------------------------------------


def test_dropped_connection_cuts_the_body(connect, configure):
    """With drop_rate 1 the status line and part of the body arrive, then EOF."""
    configure(drop_rate=1.0)
    sock = connect()
    sock.sendall(request_bytes("POST", "/v1/chat/completions", chat_body("dropped")))
    reader = Reader(sock)
    status, headers = reader.head()
    assert status == 200
    with pytest.raises(EOFError):
        reader._take(int(headers["content-length"]))


def test_slow_body_arrives_whole(connect, configure):
    """A slow body (sent from a task, in pieces over time) arrives complete and valid."""
    configure(slow_body_rate=1.0, slow_body_ms=20.0)
    sock = connect()
    response = roundtrip(sock, "POST", "/v1/chat/completions", chat_body("slowly"))
    assert reply_text(response) == "Mock reply to: slowly"


def test_latency_keeps_pipelined_answers_in_order(connect, configure):
    """With latency (answers finished by tasks) pipelined requests still answer in order."""
    configure(latency_ms=5.0)
    sock = connect()
    sock.sendall(
        b"".join(
            request_bytes("POST", "/v1/chat/completions", chat_body(f"late {n}")) for n in range(3)
        )
    )
    reader = Reader(sock)
    assert [reply_text(reader.response()) for _ in range(3)] == [
        f"Mock reply to: late {n}" for n in range(3)
    ]


# -- the coroutine hand-over (plain asyncio) -------------------------------------------


def test_continuation_finishes_a_coroutine_stepped_outside_a_task():
    """A coroutine suspended once by hand is finished by a task and returns its value."""

    async def app() -> str:
        await asyncio.sleep(0.001)
        await asyncio.sleep(0)
        return "done"

    async def main() -> str:
        coroutine = app()
        waiting_on = coroutine.send(None)

        async def carry_on() -> str:
            return await _Continuation(coroutine, waiting_on)

        return await asyncio.get_running_loop().create_task(carry_on())

    assert asyncio.run(main()) == "done"


def test_continuation_relays_cancellation_to_the_coroutine():
    """Cancelling the task that carries the coroutine cancels the coroutine itself."""
    seen: list[str] = []

    async def app() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main() -> None:
        coroutine = app()
        waiting_on = coroutine.send(None)

        async def carry_on() -> None:
            await _Continuation(coroutine, waiting_on)

        task = asyncio.get_running_loop().create_task(carry_on())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["cancelled"]


# -- one connection, fed bytes through a fake transport --------------------------------


class FakeTransport:
    """Collects what the server writes; records closing and paused reading."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


async def ok_app(scope, receive, send) -> None:
    """Answers 200 with the request path as body."""
    await receive()
    body = scope["path"].encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def feed(app, *chunks: bytes, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
    """Feed ``chunks`` to a new connection inside one event-loop callback; its transport."""

    async def main() -> FakeTransport:
        connection = _Connection(app, asyncio.get_running_loop(), _Server(max_request_bytes))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            connection.data_received(chunk)
        return transport

    return asyncio.run(main())


def test_an_app_that_never_suspends_is_answered_within_the_callback():
    """Without one event-loop turn the whole response is already written."""
    transport = feed(ok_app, request_bytes("GET", "/now"))
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(b"\r\n\r\n/now")
    assert not transport.closed


def test_body_above_the_server_limit_gets_413_and_close():
    """A body larger than max_request_bytes is refused by the server itself."""
    transport = feed(ok_app, request_bytes("POST", "/big", b"x" * 100), max_request_bytes=10)
    assert transport.written.startswith(b"HTTP/1.1 413 ")
    assert transport.closed


def test_requests_pipelined_after_connection_close_are_ignored():
    """Nothing after a ``Connection: close`` request reaches the app."""
    calls: list[str] = []

    async def counting_app(scope, receive, send) -> None:
        calls.append(scope["path"])
        await ok_app(scope, receive, send)

    transport = feed(
        counting_app,
        request_bytes("GET", "/first", extra="Connection: close\r\n")
        + request_bytes("GET", "/second"),
    )
    assert calls == ["/first"]
    assert transport.written.count(b"HTTP/1.1 ") == 1
    assert transport.closed


def test_app_failure_before_its_response_gives_500_and_close():
    """An exception from the app before it starts a response becomes a 500."""

    async def failing_app(scope, receive, send) -> None:
        raise RuntimeError("boom")

    transport = feed(failing_app, request_bytes("GET", "/fails"))
    assert transport.written.startswith(b"HTTP/1.1 500 ")
    assert transport.closed


def test_reading_pauses_while_writes_are_blocked():
    """pause_writing pauses reading; resume_writing resumes it."""

    async def main() -> list[bool]:
        connection = _Connection(ok_app, asyncio.get_running_loop(), _Server(1024))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.pause_writing()
        paused = transport.reading
        connection.resume_writing()
        return [paused, transport.reading]

    assert asyncio.run(main()) == [False, True]


# -- the synchronous path (respond_at_once) against the ASGI call -------------------------


class AsgiOnly:
    """A mock app seen through its ASGI call only: the server cannot use respond_at_once."""

    def __init__(self, app: MockApp) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


class CountingFastPath(AsgiOnly):
    """A mock app with respond_at_once, counting the answers it gave that way."""

    def __init__(self, app: MockApp) -> None:
        super().__init__(app)
        self.answered = 0

    def respond_at_once(self, method, path, headers, body):
        answer = self.app.respond_at_once(method, path, headers, body)
        self.answered += answer is not None
        return answer


@pytest.fixture
def frozen_app_clock(monkeypatch):
    """The app's clocks stand still: the same requests give the same bytes twice."""
    monkeypatch.setattr(
        mock_app_module,
        "time",
        types.SimpleNamespace(monotonic=lambda: 5_000.0, time=lambda: 1_800_000_000.0),
    )


DATE_LINE = re.compile(rb"date: [^\r]*GMT\r\n")


def both_paths(config: MockConfig, requests: list[bytes]) -> tuple[bytes, bytes, int, MockApp]:
    """Wire bytes (date lines removed) via respond_at_once and via ASGI; fast answers; the app.

    The two runs use two fresh apps with the same config; each request is
    fed as its own ``data_received`` call.  Checks that both runs wrote one
    date line per response.
    """
    fast = CountingFastPath(create_app(config))
    asgi = AsgiOnly(create_app(config))
    written = []
    for app in (fast, asgi):
        wire = bytes(feed(app, *requests).written)
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", wire)
        assert len(DATE_LINE.findall(wire)) == len(statuses) > 0
        written.append(DATE_LINE.sub(b"", wire))
    assert fast.app.stats.as_dict() == asgi.app.stats.as_dict()
    return written[0], written[1], fast.answered, fast.app


def chat_request(text: str = "same", key: str = "sk-test", extra: str = "") -> bytes:
    return request_bytes(
        "POST",
        "/v1/chat/completions",
        chat_body(text),
        extra=f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n{extra}",
    )


def transcription_request(response_format: str = "json") -> bytes:
    request = httpx.Request(
        "POST",
        "http://mock/v1/audio/transcriptions",
        data={"model": "whisper-1", "response_format": response_format},
        files={"file": ("call.mp3", mp3_bytes(0.5), "audio/mpeg")},
    )
    body = request.read()
    return request_bytes(
        "POST",
        "/v1/audio/transcriptions",
        body,
        extra=f"Content-Type: {request.headers['content-type']}\r\n",
    )


SAME_BYTES_CASES = {
    "chat, quotas off": (
        MockConfig(),
        [chat_request(), chat_request(), chat_request("other")],
    ),
    "chat, quotas on, then 429 (requests)": (
        MockConfig(rpm=2, tpm=1_000_000),
        [chat_request(), chat_request("other"), chat_request()],
    ),
    "429 for tokens and request too large": (
        MockConfig(tpm=40),
        [chat_request(), chat_request(), chat_request("x " * 100)],
    ),
    "missing rate-limit headers drawn from the seeded generator": (
        MockConfig(rpm=1000, seed=7, missing_headers_rate=0.3, missing_limit_headers_rate=0.3),
        [chat_request(str(n)) for n in range(8)],
    ),
    "429 bodies of other servers, headers left out or renamed": (
        MockConfig(
            rpm=1,
            tpm=1_000_000,
            rate_limit_body="azure",
            rate_limit_headers_on_429=False,
            reset_headers=False,
            retry_hint_header="x-ratelimit-retry-after-seconds",
        ),
        [chat_request(), chat_request("other")],
    ),
    "429 with an empty body and no rate-limit headers anywhere": (
        MockConfig(rpm=1, rate_limit_body="none", rate_limit_headers=False),
        [chat_request(), chat_request("other")],
    ),
    "no correction to usage": (
        MockConfig(tpm=100_000, correct_to_usage=False),
        [chat_request(), chat_request()],
    ),
    "insufficient quota": (
        MockConfig(insufficient_quota_after=1),
        [chat_request(), chat_request()],
    ),
    "401 wrong key and no key": (
        MockConfig(api_key="sk-right-key-123"),
        [
            chat_request(key="sk-wrong-key-456"),
            request_bytes("POST", "/v1/chat/completions", chat_body("no key")),
            chat_request(key="sk-right-key-123"),
        ],
    ),
    "404, 405 and HEAD": (
        MockConfig(),
        [
            request_bytes("POST", "/v1/nothing", b"{}"),
            request_bytes("GET", "/v1/chat/completions"),
            request_bytes("HEAD", "/v1/chat/completions"),
            chat_request(),
        ],
    ),
    "400 bad JSON and bad fields": (
        MockConfig(),
        [
            request_bytes("POST", "/v1/chat/completions", b"{not json"),
            request_bytes("POST", "/v1/chat/completions", b'{"model": "gpt-4o-mini"}'),
            request_bytes("POST", "/v1/chat/completions", b'{"messages": []}'),
        ],
    ),
    "413 body above max_body_bytes": (
        MockConfig(max_body_bytes=50),
        [chat_request("a long message " * 10), chat_request()],
    ),
    "client request ids are counted": (
        MockConfig(),
        [chat_request(extra="X-Client-Request-Id: one\r\n") for _ in range(2)],
    ),
    "transcription, json and text": (
        MockConfig(rpm=100),
        [transcription_request("json"), transcription_request("text")],
    ),
    "connection: close ends the run": (
        MockConfig(),
        [chat_request(extra="Connection: close\r\n"), chat_request()],
    ),
}


@pytest.mark.parametrize("case", list(SAME_BYTES_CASES))
def test_respond_at_once_writes_the_same_bytes_as_the_asgi_call(case, frozen_app_clock):
    """Both paths write identical responses (date aside) and leave identical stats."""
    config, requests = SAME_BYTES_CASES[case]
    fast, asgi, answered, _app = both_paths(config, requests)
    assert fast == asgi
    assert answered == len(re.findall(rb"HTTP/1\.1 \d{3} ", fast))


def test_the_fast_path_answers_the_benchmark_request_in_one_write():
    """A chat answer with quotas off is one write: status, headers, date, body."""
    transport = feed(CountingFastPath(create_app(MockConfig())), chat_request())
    head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert [line.split(b":")[0] for line in lines[1:]] == [
        b"content-type",
        b"content-length",
        b"x-request-id",
        b"date",
    ]
    assert int(lines[2].split(b": ")[1]) == len(body)
    assert json.loads(body)["object"] == "chat.completion"


@pytest.mark.parametrize(
    "fields",
    [{"latency_ms": 5.0}, {"ms_per_output_token": 1.0}, {"error_500_rate": 0.5}],
    ids=["latency", "per-token latency", "a fault rate"],
)
def test_configs_that_can_suspend_are_left_to_the_asgi_call(fields):
    """With latency or faults configured respond_at_once declines and changes nothing."""
    app = create_app(MockConfig(**fields))
    headers = [(b"content-length", b"%d" % len(chat_body("hi")))]
    assert app.respond_at_once("POST", "/v1/chat/completions", headers, chat_body("hi")) is None
    assert app.respond_at_once("GET", "/nowhere", [], b"") is None
    assert app.stats.as_dict() == create_app(MockConfig()).stats.as_dict()
    assert next(app._numbers) == 1


def test_endpoints_other_than_chat_and_transcription_are_left_to_the_asgi_call():
    """/v1/models and the /_mock endpoints are answered by the ASGI call, not counted twice."""
    app = create_app(MockConfig())
    for method, path in [("GET", "/v1/models"), ("GET", "/_mock/stats"), ("POST", "/_mock/reset")]:
        assert app.respond_at_once(method, path, [], b"") is None
    assert next(app._numbers) == 1
    transport = feed(CountingFastPath(app), request_bytes("GET", "/v1/models"))
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert app.stats.status_counts == {200: 1}


def test_an_exception_in_respond_at_once_gives_500_and_close():
    """A respond_at_once that raises is answered like a failing ASGI call."""

    class Broken(AsgiOnly):
        def respond_at_once(self, method, path, headers, body):
            raise RuntimeError("broken fast path")

    transport = feed(Broken(create_app(MockConfig())), chat_request())
    assert transport.written.startswith(b"HTTP/1.1 500 ")
    assert transport.closed


def responses_in(wire: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each complete Content-Length-framed response in ``wire``, in order."""
    found = []
    while wire:
        head, _, rest = wire.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head).group(1))
        if len(rest) < length:  # still arriving
            break
        found.append((int(head.split()[1]), rest[:length]))
        wire = rest[length:]
    return found


def test_pipelined_requests_mix_fast_answers_and_tasks_in_order():
    """Queued behind an answer that suspends, requests answered at once still come in order."""

    async def main() -> bytes:
        app = CountingFastPath(create_app(MockConfig(slow_body_rate=1.0, slow_body_ms=4.0)))
        connection = _Connection(app, asyncio.get_running_loop(), _Server(1 << 20))
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(chat_request("first"))  # a slow body: finished by a task
        app.app._apply(MockConfig())  # the two queued behind it are answered at once
        connection.data_received(chat_request("second") + chat_request("third"))
        for _ in range(200):
            if len(responses_in(bytes(transport.written))) == 3:
                break
            await asyncio.sleep(0.005)
        assert app.answered == 2
        return bytes(transport.written)

    answers = responses_in(asyncio.run(main()))
    assert [status for status, _ in answers] == [200, 200, 200]
    assert [json.loads(body)["choices"][0]["message"]["content"] for _, body in answers] == [
        f"Mock reply to: {word}" for word in ("first", "second", "third")
    ]
