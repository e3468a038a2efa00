"""The mock server as a plain ASGI application (no web framework).

Answers are built once per distinct request body and cached as bytes; quota
arithmetic is O(1) (:mod:`engine.mock._quotas`); sleeps go through anyio, so the
same app runs in-process under trio (``httpx.ASGITransport``) and served by
the builtin server (:mod:`engine.mock._server`) or uvicorn on asyncio, or by
hypercorn's trio worker.

Checkpoints: the app awaits the server's ``receive`` / ``send`` and, when
latency, a streamed answer's timing (``ttft_ms``, ``ms_per_output_token``) or
a slow body is configured, ``anyio.sleep``; nothing else.  So with
no latency and no slow-body fault, a request whose body arrived in one
``http.request`` message runs to completion without ever suspending, if the
server's ``receive`` and ``send`` do not (``engine.mock._server`` relies on
this to answer without creating a task).

Two entries, one behaviour: the ASGI call, and :meth:`MockApp.respond_at_once`
for a server that holds the whole request (the builtin server) and wants the
answer as bytes without the ASGI machinery.  Both run the same synchronous
core (routing, ``_authorize``, ``_chat_reply`` / ``_transcription_reply``,
``_answer``), which returns a decided reply (status, body, headers, content
type; its status already counted) or, when a sleep or a cut body is to
follow, a :class:`_Later` that only the ASGI call carries on.

Per-request cost matters here (the mock must outrun the engine by 3x): one
pass over the request headers, answers cached by body bytes, response bytes
built by ``%`` formatting on a pre-serialized tail, no logging, O(1) stats.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import http
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, NamedTuple

import anyio
import attrs
import httpx
import orjson
from sniffio import thread_local as _sniffio_thread

from engine.mock._audio import MultipartError, audio_duration, parse_multipart
from engine.mock._config import FAULT_RATE_FIELDS, KeyMap, MockConfig, mask_key
from engine.mock._embeddings import plan_embeddings
from engine.mock._headers import (
    format_decimal_seconds,
    format_go_duration,
    rate_limit_headers,
    retry_after_headers,
    whole_seconds,
)
from engine.mock._plans import JSON as _JSON
from engine.mock._plans import Plan as _Plan
from engine.mock._plans import Reject as _Reject
from engine.mock._quotas import Semantics, ServerDecision, ServerQuota, ServerReservation
from engine.mock._responses import plan_response
from engine.mock._schema import instance_for_schema
from engine.mock._stats import Stats
from engine.mock._stream import SSE, StreamPlan, chat_stream, draw_median, due_offsets
from engine.mock._tokens import TokenCounter, output_budget

__all__ = [
    "DroppedConnection",
    "KeyCounts",
    "KeyedStats",
    "MockApp",
    "TimedStream",
    "create_app",
    "key_labels",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_TEXT = b"text/plain; charset=utf-8"
_PLAN_CACHE_MAX = 4096
_ALL_AT_ONCE, _STREAMS_AT_ONCE, _NEVER_AT_ONCE = 0, 1, 2  # MockApp._at_once
_PLAN_CACHE_BODY_MAX = 64 * 1024
_KEY_CACHE_MAX = 1024
# Keys counted one by one in the stats; later ones share one entry (_OTHER_KEYS).
_KEY_STATS_MAX = 1024
_OTHER_KEYS = "(other keys)"
_SNIPPET_CHARS = 200
_AUDIO_EXTENSIONS = ("flac", "m4a", "mp3", "mp4", "mpeg", "mpga", "oga", "ogg", "wav", "webm")
_TRANSCRIPTION_FORMATS = ("json", "verbose_json", "text", "srt", "vtt")
_AZURE_API_VERSION = "2024-10-21"
_UNPARSABLE_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON.)"
)


class DroppedConnection(httpx.RemoteProtocolError):
    """Raised by the app to drop a connection mid-response (the ``drop_rate`` fault).

    A server closes the connection; in-process, ``httpx.ASGITransport`` raises
    it to the client, which sees the same exception type as over a socket.
    """

    def __init__(self) -> None:
        super().__init__(
            "peer closed connection without sending complete message body (mock fault)"
        )


class _ClientGone(Exception):
    """The client disconnected before its request body was read."""


#: A decided answer: (status, body, headers after content-type and
#: content-length, content type).  Its status is already counted in the stats.
_Reply = tuple[int, bytes, list[tuple[bytes, bytes]], bytes]

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in http.HTTPStatus
}
# A stream says it is chunked, so that every server sends it so (even when the whole
# body goes out in one message, which would otherwise get a content-length).
_STREAM_HEADERS = (
    (b"content-type", SSE),
    (b"cache-control", b"no-cache"),
    (b"transfer-encoding", b"chunked"),
)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n" % SSE
)


class _Streamed(NamedTuple):
    """A whole streamed answer sent at once (no timing, no fault): a 200, already counted.

    Sent with chunked transfer coding and no content-length, as a stream is.
    """

    body: bytes
    headers: list[tuple[bytes, bytes]]


class TimedStream:
    """A streamed answer whose events the server writes itself, each batch when it is due.

    What :meth:`MockApp.respond_at_once` returns in place of a body when a
    streamed answer has a time to first token or gaps between tokens.

    Attributes:
        frames: ``(due, events)`` in order: ``due`` on ``time.monotonic()``'s
            clock, ``events`` the bytes of the events due then (not yet
            chunk-encoded).  The server writes every frame due when it wakes
            in one chunk, the last one followed by the last chunk.
        finish: call once when the stream ended or the connection was lost
            (corrects the quota charge to real usage).
    """

    __slots__ = ("finish", "frames")

    def __init__(self, frames: list[tuple[float, bytes]], finish: Callable[[], None]) -> None:
        self.frames = frames
        self.finish = finish


class _Later(NamedTuple):
    """What is left of an admitted answer that sleeps or is cut (latency, faults 3-5)."""

    number: int
    group: tuple[str, str]
    plan: _Plan
    reservation: ServerReservation | None
    fault: int | None
    now: float  # when it was admitted


_trio_current_time: Callable[[], float] | None = None


async def _sleep(seconds: float) -> None:
    """``anyio.sleep`` without its per-call backend look-up (as :func:`_now`).  Checkpoints."""
    global _trio_sleep
    if _sniffio_thread.name == "trio":
        if _trio_sleep is None:
            from trio import sleep

            _trio_sleep = sleep
        await _trio_sleep(seconds)
    else:
        await asyncio.sleep(seconds)


_trio_sleep: Callable[[float], Awaitable[None]] | None = None


def _now() -> float:
    """The current time on the running async library's clock.

    Under trio, ``trio.current_time()`` (so ``MockClock`` / ``autojump_clock``
    drive quotas in tests); otherwise ``time.monotonic()``, the clock asyncio's
    default loop reads.  Cheaper than ``anyio.current_time()``, which looks the
    backend up on every call.  Does not checkpoint.
    """
    global _trio_current_time
    if _sniffio_thread.name == "trio":
        if _trio_current_time is None:
            from trio import current_time

            _trio_current_time = current_time
        return _trio_current_time()
    return time.monotonic()


class _Head(NamedTuple):
    """The request headers the mock reads, found in one pass (a tuple: built per request).

    ``content_length`` is None when absent or not a number; the others are
    empty / None when absent.
    """

    authorization: bytes
    client_request_id: str | None
    content_length: int | None
    content_type: bytes


#: A POST endpoint's answer: (head, API key, rejection, body or None when too large,
#: request number) -> an answer to send now, or one that sleeps or is cut.
_ReplyFor = Callable[[_Head, str, _Reject | None, bytes | None, int], "_Reply | _Streamed | _Later"]


def _scan_headers(headers: Any) -> _Head:
    authorization = b""
    client_request_id = None
    content_length = None
    content_type = b""
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                content_length = None
        elif name == b"content-type":
            content_type = value
        elif name == b"x-client-request-id":
            client_request_id = value.decode("latin-1")
    # tuple.__new__ skips the NamedTuple's Python-level __new__ (one call per request).
    return tuple.__new__(_Head, (authorization, client_request_id, content_length, content_type))


def _error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


class KeyCounts:
    """One API key's requests, for ``per_key`` in ``GET /_mock/stats``.

    Attributes:
        admitted: requests the quota admitted (what ``revoke_after`` counts).
        rate_limited: 429s (of every cause: ``rate_limited_by``'s).
        revoked: 401s because the key was revoked (``revoke_after``).
        revoke_after: the key's ``revoke_after`` (None: never revoked).
    """

    __slots__ = ("admitted", "rate_limited", "revoke_after", "revoked")

    def __init__(self, revoke_after: int | None = None) -> None:
        self.admitted = 0
        self.rate_limited = 0
        self.revoked = 0
        self.revoke_after = revoke_after

    def as_dict(self) -> dict[str, int]:
        return {
            "admitted": self.admitted,
            "rate_limited": self.rate_limited,
            "revoked": self.revoked,
        }


class KeyedStats(Stats):
    """:class:`~engine.mock._stats.Stats` plus counts per API key.

    Attributes:
        keys: :class:`KeyCounts` per API key (whole keys: never shown; the
            first :data:`_KEY_STATS_MAX` keys seen, the keys of ``key_limits``
            and ``revoke_after`` always among them).
        other_keys: the counts of every key after those.
    """

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, KeyCounts] = {}
        self.other_keys = KeyCounts()

    def counts_for(self, key: str) -> KeyCounts:
        """``key``'s counts, made on its first request (or :attr:`other_keys`)."""
        counts = self.keys.get(key)
        if counts is None:
            if len(self.keys) >= _KEY_STATS_MAX:
                return self.other_keys
            counts = self.keys[key] = KeyCounts()
        return counts

    def as_dict(self) -> dict[str, Any]:
        """The JSON body of ``GET /_mock/stats``: the base one, plus ``per_key``.

        ``per_key`` maps each key, masked (:func:`~engine.mock._config.mask_key`;
        ``#2``, ``#3`` ... appended when masks collide, in order of first
        appearance), to its ``admitted``, ``rate_limited`` and ``revoked``.
        """
        result = super().as_dict()
        labels = key_labels(self.keys)
        per_key = {labels[key]: counts.as_dict() for key, counts in self.keys.items()}
        other = self.other_keys
        if other.admitted or other.rate_limited or other.revoked:
            per_key[_OTHER_KEYS] = other.as_dict()
        result["per_key"] = per_key
        return result


def key_labels(keys: Iterable[str]) -> dict[str, str]:
    """Each key's masked label: :func:`~engine.mock._config.mask_key`, ``#N`` on collisions."""
    labels: dict[str, str] = {}
    seen: collections.Counter[str] = collections.Counter()
    for key in keys:
        masked = mask_key(key)
        seen[masked] += 1
        labels[key] = masked if seen[masked] == 1 else f"{masked}#{seen[masked]}"
    return labels


def create_app(config: MockConfig | None = None) -> MockApp:
    """Return a new mock ASGI app for ``config`` (default: ``MockConfig()``)."""
    return MockApp(config or MockConfig())


class MockApp:
    """The ASGI callable.  See ``docs/mock.md`` for endpoints and behaviour.

    Attributes:
        config: the configuration in force (``POST /_mock/config`` replaces it).
        stats: counters since start or the last ``POST /_mock/reset``, per API
            key too (:class:`KeyedStats`; a key's admitted count is what its
            ``revoke_after`` counts, so a reset un-revokes it).
    """

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.stats = KeyedStats()
        self._book = ServerQuota(
            config.limits,
            key_limits=config.key_server_limits,
            wall_clock_offset=config.wall_clock_offset,
        )
        self._rng = random.Random(config.seed)
        self._numbers = itertools.count(1)
        self._plans: dict[bytes, _Plan | _Reject] = {}
        self._response_plans: dict[bytes, _Plan | _Reject] = {}  # another endpoint's bodies
        self._keys: dict[bytes, str] = {}  # Authorization header value -> API key
        self._routes: dict[str, dict[str, Callable[..., Awaitable[None]]]] = {
            "/v1/chat/completions": {"POST": functools.partial(self._post, self._chat_reply)},
            "/v1/audio/transcriptions": {
                "POST": functools.partial(self._post, self._transcription_reply)
            },
            "/v1/responses": {"POST": functools.partial(self._post, self._responses_reply)},
            "/v1/embeddings": {"POST": functools.partial(self._post, self._embeddings_reply)},
            "/v1/models": {"GET": self._models},
            "/_mock/stats": {"GET": self._get_stats},
            "/_mock/reset": {"POST": self._reset},
            "/_mock/config": {"GET": self._get_config, "POST": self._set_config},
        }
        # The endpoints respond_at_once answers (POST only: keep in step with _routes):
        # (head, key, rejection, body or None when too large, number) -> answer.
        self._replies: dict[str, _ReplyFor] = {
            "/v1/chat/completions": self._chat_reply,
            "/v1/audio/transcriptions": self._transcription_reply,
            "/v1/responses": self._responses_reply,
            "/v1/embeddings": self._embeddings_reply,
        }
        self._apply(config)

    def _apply(self, config: MockConfig) -> None:
        self.config = config
        self._counter = TokenCounter(rule=config.token_rule, skew=config.token_skew)
        self._plans.clear()  # answers depend on the token rule and the output budget
        self._response_plans.clear()
        self._quotas_on = config.quotas_on
        self._revoking = bool(config.revoke_after)
        self._count_configured_keys()
        # x-ratelimit-* on answers (200s, 5xx) and on 429s.
        self._headers_on = self._quotas_on and config.rate_limit_headers
        self._headers_on_429 = self._headers_on and config.rate_limit_headers_on_429
        hint = config.retry_hint_header
        self._retry_hint = None if hint is None else hint.encode("latin-1")
        thresholds = list(itertools.accumulate(getattr(config, name) for name in FAULT_RATE_FIELDS))
        self._fault_thresholds = thresholds if thresholds[-1] > 0 else None
        self._header_faults_on = (
            config.missing_headers_rate > 0 or config.missing_limit_headers_rate > 0
        )
        self._latency_on = config.latency_ms > 0 or config.ms_per_output_token > 0
        self._stream_timing_on = config.ttft_ms > 0 or config.ms_per_output_token > 0
        # What respond_at_once answers: everything, only streams (the others could
        # sleep), or nothing (any answer could be a fault).
        if self._fault_thresholds is not None:
            self._at_once = _NEVER_AT_ONCE
        elif self._latency_on or self._stream_timing_on:
            self._at_once = _STREAMS_AT_ONCE
        else:
            self._at_once = _ALL_AT_ONCE

    def _count_configured_keys(self) -> None:
        """Give each key of the config its counts (zeros until it is used) and its revocation."""
        config = self.config
        stats = self.stats
        revoke_after = config.revoke_after
        for counts in stats.keys.values():
            counts.revoke_after = None
        for key in (*config.key_limits, *revoke_after):
            configured = stats.keys.get(key)
            if configured is None:
                configured = stats.keys[key] = KeyCounts()
            configured.revoke_after = revoke_after.get(key)

    # -- ASGI entry ------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Inlined rather than one more coroutine: this runs for every request.
            path = scope["path"]
            method = scope["method"]
            number = next(self._numbers)
            methods = self._routes.get(path)
            if methods is None or method not in methods:
                reply = self._reject_reply(number, _route_reject(methods, method, path))
                await _send_reply(send, reply)
                return
            try:
                await methods[method](scope, receive, send, number)
            except (DroppedConnection, _ClientGone):
                raise
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as error:  # a bug in the mock must not look like a dropped socket
                await _send_reply(send, self._internal_error(number, error))
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    @staticmethod
    async def _lifespan(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the synchronous entry (servers that hold the whole request) ------------------

    def respond_at_once(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> tuple[bytes, bytes | TimedStream] | None:
        """Answer a complete request without suspending: ``(head, body)``, or None.

        For a server that has read the whole request body before answering
        (:mod:`engine.mock._server` calls this before building an ASGI scope):
        ``method`` and ``path`` as in the ASGI scope (``path`` percent-decoded),
        ``headers`` the request headers with lowercase names, ``body`` the
        whole request body.  ``head`` is the status line and the header lines,
        each ending in CRLF, without the blank line that ends the head: the
        server adds its own headers (``date``, ``connection``) and the blank
        line, then ``body`` unless the method is HEAD.

        Status, headers, body, stats, quota accounting and random draws are
        exactly those of the ASGI call for the same request; only the
        transport differs.  Returns None, having changed nothing (no request
        number, stats, quota or random draw used), when the ASGI call must
        answer instead: whenever latency or any fault rate is configured (the
        answer could suspend), and for endpoints other than chat completions
        and transcriptions (except the 404 / 405 of an unknown path or method,
        answered here).  A streamed answer's head says ``transfer-encoding:
        chunked`` and ``body`` is its events as one chunk and the last chunk;
        when the stream is timed (``ttft_ms``, ``ms_per_output_token``),
        ``body`` is a :class:`TimedStream` whose frames the server writes
        when due (latency configured: only such streams are answered here).
        Never checkpoints.
        """
        mode = self._at_once
        if mode and (mode == _NEVER_AT_ONCE or not self._streams(path, body)):
            return None
        handler = self._replies.get(path)
        reply: _Reply | _Streamed | _Later
        if handler is None or method != "POST":
            methods = self._routes.get(path)
            if methods is not None and method in methods:
                return None  # an endpoint left to the ASGI call
            reply = self._reject_reply(next(self._numbers), _route_reject(methods, method, path))
        else:
            number = next(self._numbers)
            try:
                head = _scan_headers(headers)
                key, reject = self._authorize(head)
                limit = self.config.max_body_bytes
                declared = head.content_length
                within = (declared is None or declared <= limit) and len(body) <= limit
                reply = handler(head, key, reject, body if within else None, number)
            except Exception as error:  # as in __call__: the mock's bug is this request's 500
                reply = self._internal_error(number, error)
            if isinstance(reply, _Later):
                stream = reply.plan.stream
                if stream is None or reply.fault is not None:  # excluded above
                    raise RuntimeError("respond_at_once reached an answer that suspends")
                return self._timed_stream(reply, stream)
            if isinstance(reply, _Streamed):
                events, extra = reply
                head_bytes = _STREAM_HEAD
                for name, value in extra:
                    head_bytes += b"%s: %s\r\n" % (name, value)
                return head_bytes, b"%x\r\n%s\r\n0\r\n\r\n" % (len(events), events)
        status, payload, extra, content_type = reply
        head_bytes = b"%scontent-type: %s\r\ncontent-length: %d\r\n" % (
            _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
            content_type,
            len(payload),
        )
        for name, value in extra:
            head_bytes += b"%s: %s\r\n" % (name, value)
        return head_bytes, payload

    def _streams(self, path: str, body: bytes) -> bool:
        """Whether ``body`` posted to ``path`` asks for a streamed answer (plans it; pure)."""
        if len(body) > self.config.max_body_bytes:
            return False
        if path == "/v1/chat/completions":
            plan = self._chat_plan(body)
        elif path == "/v1/responses":
            plan = self._cached_plan(self._response_plans, body, self._plan_response)
        else:
            return False
        return isinstance(plan, _Plan) and plan.stream is not None

    def _timed_stream(self, later: _Later, stream: StreamPlan) -> tuple[bytes, TimedStream]:
        """The head and frames of a timed streamed answer, for the server to write."""
        number = later.number
        head = _STREAM_HEAD + b"x-request-id: %s\r\n" % _request_id(number)
        for name, value in self._limit_headers(later.group, later.now):
            head += b"%s: %s\r\n" % (name, value)
        self.stats.status_counts[200] += 1
        plan = later.plan
        actual = plan.actual if self.config.correct_to_usage else plan.cost

        def finish() -> None:
            self._settle(later.reservation, plan.cost, actual, _now())

        return head, TimedStream(self._stream_frames(later, stream), finish)

    def _stream_frames(self, later: _Later, stream: StreamPlan) -> list[tuple[float, bytes]]:
        """``(due, events)`` of a streamed answer with no fault, on :func:`_now`'s clock.

        One frame per output token (the first also carries the leading
        events, the last the closing ones), due at the times
        :func:`engine.mock._stream.due_offsets` draws after admission; a
        single frame at the time to first token when there is no gap.
        """
        config = self.config
        start = later.now
        created = int(time.time())
        if config.ms_per_output_token <= 0 or stream.steps <= 1:
            ttft = draw_median(self._rng, config.ttft_ms, config.ttft_sigma) / 1000
            return [(start + ttft, stream.render_whole(later.number, created))]
        events = stream.render(later.number, created)
        offsets = due_offsets(
            stream.steps,
            self._rng,
            ttft_ms=config.ttft_ms,
            ttft_sigma=config.ttft_sigma,
            gap_ms=config.ms_per_output_token,
            gap_sigma=config.output_token_sigma,
        )
        frames = []
        index = 0
        for offset, end in zip(offsets, stream.frame_ends, strict=True):
            frames.append((start + offset, b"".join(events[index:end])))
            index = end
        return frames

    def _chat_plan(self, body: bytes) -> _Plan | _Reject:
        """The plan of a chat request body, from the cache or made (and cached)."""
        plan = self._plans.get(body)
        if plan is None:
            plan = _plan_chat(body, self.config.default_output_tokens, self._counter)
            if len(body) <= _PLAN_CACHE_BODY_MAX:
                if len(self._plans) >= _PLAN_CACHE_MAX:
                    self._plans.clear()
                self._plans[body] = plan
        return plan

    def _plan_response(self, body: bytes) -> _Plan | _Reject:
        return plan_response(
            body, default_output_tokens=self.config.default_output_tokens, counter=self._counter
        )

    @staticmethod
    def _cached_plan(
        cache: dict[bytes, _Plan | _Reject] | None,
        body: bytes,
        plan_for: Callable[[bytes], _Plan | _Reject],
    ) -> _Plan | _Reject:
        """``plan_for(body)``, kept in ``cache`` by body (None: not cached)."""
        if cache is None:
            return plan_for(body)
        plan = cache.get(body)
        if plan is None:
            plan = plan_for(body)
            if len(body) <= _PLAN_CACHE_BODY_MAX:
                if len(cache) >= _PLAN_CACHE_MAX:
                    cache.clear()
                cache[body] = plan
        return plan

    # -- helpers -----------------------------------------------------------------

    def _reply(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        content_type: bytes = _JSON,
    ) -> _Reply:
        """A counted answer: ``status`` is added to the stats here, once."""
        self.stats.status_counts[status] += 1
        return (status, body, headers, content_type)

    def _reject_reply(self, number: int, reject: _Reject) -> _Reply:
        body = _error_body(reject.message, reject.type, reject.param, reject.code)
        return self._reply(reject.status, body, [(b"x-request-id", _request_id(number))])

    def _internal_error(self, number: int, error: Exception) -> _Reply:
        body = _error_body(f"mock internal error: {type(error).__name__}: {error}", "server_error")
        return self._reply(500, body, [(b"x-request-id", _request_id(number))])

    async def _read_body(self, declared_length: int | None, receive: Receive) -> bytes | None:
        """The request body, or None when it exceeds ``max_body_bytes``.

        ``declared_length`` is the request's Content-Length (None: absent or
        unreadable); a larger declared body is refused before reading it.
        """
        limit = self.config.max_body_bytes
        if declared_length is not None and declared_length > limit:
            return None
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if not message.get("more_body", False):
            return body if len(body) <= limit else None
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> _Reject:
        return _Reject(
            413,
            f"Request body too large: the mock accepts at most {self.config.max_body_bytes} bytes.",
            code="request_too_large",
        )

    def _authorize(self, head: _Head) -> tuple[str, _Reject | None]:
        """(API key, rejection if the key is wrong); counts ``X-Client-Request-Id``."""
        if head.client_request_id is not None:
            self.stats.client_request_ids[head.client_request_id] += 1
        key = self._keys.get(head.authorization)
        if key is None:
            text = head.authorization.decode("latin-1")
            key = text[7:].strip() if text[:7].lower() == "bearer " else text.strip()
            if len(self._keys) >= _KEY_CACHE_MAX:
                self._keys.clear()
            self._keys[head.authorization] = key
        expected = self.config.api_key
        if expected is None or key == expected:
            if self._revoking:
                counts = self.stats.keys.get(key)
                if counts is not None and counts.revoke_after is not None:
                    if counts.admitted >= counts.revoke_after:
                        counts.revoked += 1
                        return key, _invalid_key(key)
            return key, None
        if not key:
            return (
                key,
                _Reject(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                ),
            )
        return key, _invalid_key(key)

    # -- the answer pipeline shared by chat and transcription ---------------------

    def _answer(self, number: int, key: str, plan: _Plan) -> _Reply | _Streamed | _Later:
        """Admit ``plan`` and answer it, or what is left to do after a suspension.

        Returns a reply when the answer needs no sleep (the common case, any
        refusal, a 5xx fault); a :class:`_Streamed` for a streamed answer
        sent at once; a :class:`_Later` when latency (or a streamed answer's
        timing) or a dropped, slow or malformed body is to follow
        (:meth:`_answer_later`).
        """
        config = self.config
        stats = self.stats
        counts = stats.keys.get(key)
        if counts is None:
            counts = stats.counts_for(key)  # a new key: never revoked
        elif counts.revoke_after is not None and counts.admitted >= counts.revoke_after:
            # Revoked while this request's body was read (_authorize let it in).
            counts.revoked += 1
            return self._reject_reply(number, _invalid_key(key))
        group = (key, plan.model)
        now = _now() if _sniffio_thread.name == "trio" else time.monotonic()  # _now(), inlined
        request_id = (b"x-request-id", b"req_mock%016x" % number)  # _request_id(), inlined
        if config.insufficient_quota_after is not None and (
            stats.admitted >= config.insufficient_quota_after
        ):
            body = _error_body(
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota",
                None,
                "insufficient_quota",
            )
            self.stats.rate_limited_by["insufficient_quota"] += 1
            counts.rate_limited += 1
            headers = [request_id]
            if self._headers_on_429:
                headers += self._limit_headers(group, now)
            return self._reply(429, body, headers)
        reservation: ServerReservation | None = None
        if self._quotas_on:
            decision = self._book.admit(group, plan.cost, now)
            if not decision.admitted:
                counts.rate_limited += 1
                return self._rate_limited(request_id, group, plan, decision, now)
            reservation = decision.reservation
        stats.admitted += 1
        counts.admitted += 1
        fault = None if self._fault_thresholds is None else self._draw_fault()
        stream = plan.stream
        if fault is None and not (self._latency_on if stream is None else self._stream_timing_on):
            # The common case, kept short: charge and correct at the same instant.
            actual = plan.actual if config.correct_to_usage else plan.cost
            if reservation is not None and actual != plan.cost:
                self._book.settle(reservation, actual, now)
            stats.tokens_charged += actual
            stats.window.add(now, 1, plan.cost, actual - plan.cost)
            stats.status_counts[200] += 1
            headers = [request_id]
            if self._headers_on:
                headers += self._limit_headers(group, now)
            if stream is not None:
                return _Streamed(stream.render_whole(number, int(time.time())), headers)
            return (200, plan.body(number), headers, plan.content_type)
        stats.window.add(now, 1, plan.cost)

        if fault is not None and fault < 3:
            self._settle(reservation, plan.cost, 0, now)
            status = (500, 502, 503)[fault]
            body = _error_body(
                {
                    500: "The server had an error while processing your request. Sorry about that!",
                    502: "Bad gateway.",
                    503: "The engine is currently overloaded, please try again later.",
                }[status],
                "server_error",
            )
            return self._reply(status, body, [request_id, *self._limit_headers(group, now)])
        return _Later(number, group, plan, reservation, fault, now)

    async def _answer_later(self, send: Send, later: _Later) -> None:
        """The rest of :meth:`_answer`: latency, then the answer or its fault."""
        config = self.config
        plan = later.plan
        if plan.stream is not None:
            await self._stream_later(send, later, plan.stream)
            return
        fault = later.fault
        now = later.now
        if self._latency_on:
            await anyio.sleep(self._latency(plan.output_tokens))
            now = _now()
        self._settle(
            later.reservation,
            plan.cost,
            plan.actual if config.correct_to_usage else plan.cost,
            now,
        )

        body = plan.body(later.number)
        headers = [(b"x-request-id", _request_id(later.number))]
        headers += self._limit_headers(later.group, now)
        if fault is None:
            await _send_reply(send, self._reply(200, body, headers, plan.content_type))
        elif fault == 3:  # dropped connection
            self.stats.status_counts[200] += 1
            await send(_start_message(200, body, headers, plan.content_type))
            await send(
                {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            )
            raise DroppedConnection
        elif fault == 4:  # slow body
            self.stats.status_counts[200] += 1
            await send(_start_message(200, body, headers, plan.content_type))
            pieces = 4
            step = math.ceil(len(body) / pieces)
            for index in range(pieces):
                await anyio.sleep(config.slow_body_ms / 1000 / pieces)
                await send(
                    {
                        "type": "http.response.body",
                        "body": body[index * step : (index + 1) * step],
                        "more_body": index < pieces - 1,
                    }
                )
        else:  # malformed JSON: a complete 200 whose body is cut in half
            reply = self._reply(200, body[: len(body) // 2], headers, plan.content_type)
            await _send_reply(send, reply)

    async def _stream_later(self, send: Send, later: _Later, stream: StreamPlan) -> None:
        """A streamed answer: the head now, each token's events when they are due, or a fault.

        Tokens are due at the times :func:`engine.mock._stream.due_offsets`
        draws, counted from admission; the events of every token due when the
        app wakes go out in one ``http.response.body`` message (with the last
        chunk when they end the answer).  The charge is corrected to real
        usage when the stream ends (or is cut).
        """
        config = self.config
        plan = later.plan
        number = later.number
        headers = [(b"x-request-id", _request_id(number))]
        headers += self._limit_headers(later.group, later.now)
        self.stats.status_counts[200] += 1
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_STREAM_HEADERS, *headers],
            }
        )
        if later.fault is not None:
            await self._stream_with_fault(send, later, stream, int(time.time()))
            return
        frames = self._stream_frames(later, stream)
        count = len(frames)
        index = 0
        try:
            while index < count:
                now = _now()
                due = frames[index][0]
                if due > now:
                    await _sleep(due - now)
                    now = _now()
                following = index + 1
                while following < count and frames[following][0] <= now:
                    following += 1
                body = (
                    frames[index][1]
                    if following == index + 1
                    else b"".join([frame[1] for frame in frames[index:following]])
                )
                more = following < count
                await send({"type": "http.response.body", "body": body, "more_body": more})
                index = following
        finally:  # also when the server cancels or refuses a send: the client left
            self._settle(
                later.reservation,
                plan.cost,
                plan.actual if config.correct_to_usage else plan.cost,
                _now(),
            )

    async def _stream_with_fault(
        self, send: Send, later: _Later, stream: StreamPlan, created: int
    ) -> None:
        """The events of a streamed answer on time, up to its fault (drop, stall, cut JSON).

        The fault hits after ``stream_fault_after`` events (default: half),
        capped so that the last event is never sent before it.
        """
        config = self.config
        plan = later.plan
        fault = later.fault
        events = stream.render(later.number, created)
        total = len(events)
        offsets = due_offsets(
            stream.steps,
            self._rng,
            ttft_ms=config.ttft_ms,
            ttft_sigma=config.ttft_sigma,
            gap_ms=config.ms_per_output_token,
            gap_sigma=config.output_token_sigma,
        )
        dues: list[float] = []  # per event
        for step, step_end in enumerate(stream.frame_ends):
            dues += [offsets[min(step, len(offsets) - 1)]] * (step_end - len(dues))
        after = config.stream_fault_after
        fault_at = min(total // 2 if after is None else after, total - 1)
        end = total
        if fault == 3:
            end = fault_at
        elif fault == 5:
            event = events[fault_at]
            events[fault_at] = event[: len(event) // 2] + b"\n\n"
        start = later.now
        index = 0
        sent_any = False
        try:
            while index < end:
                delay = start + dues[index] - _now()
                if delay > 0:
                    await _sleep(delay)
                now = _now()
                stop = fault_at if index < fault_at and fault == 4 else end
                following = index + 1
                while following < stop and start + dues[following] <= now:
                    following += 1
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"".join(events[index:following]),
                        "more_body": following < total,
                    }
                )
                sent_any = True
                index = following
                if index == fault_at and fault == 4:  # stall, then carry on where it was due
                    await _sleep(config.slow_body_ms / 1000)
                    start += config.slow_body_ms / 1000
        finally:  # also when the client left
            self._settle(
                later.reservation,
                plan.cost,
                plan.actual if config.correct_to_usage else plan.cost,
                _now(),
            )
        if end < total:
            if not sent_any:  # the head goes out with the first body message
                await send({"type": "http.response.body", "body": b"", "more_body": True})
            raise DroppedConnection

    def _settle(
        self, reservation: ServerReservation | None, cost: int, actual: int, now: float
    ) -> None:
        if reservation is not None and actual != cost:
            self._book.settle(reservation, actual, now)
        self.stats.tokens_charged += actual
        if actual != cost:
            self.stats.window.add(now, 0, actual - cost)

    def _draw_fault(self) -> int | None:
        thresholds = self._fault_thresholds
        if thresholds is None:
            return None
        draw = self._rng.random()
        for index, threshold in enumerate(thresholds):
            if draw < threshold:
                return index
        return None

    def _latency(self, output_tokens: int) -> float:
        config = self.config
        base = config.latency_ms
        if config.latency_sigma > 0 and base > 0:
            base = self._rng.lognormvariate(math.log(base), config.latency_sigma)
        return (base + config.ms_per_output_token * output_tokens) / 1000

    def _limit_headers(self, group: tuple[str, str], now: float) -> list[tuple[bytes, bytes]]:
        if not self._headers_on:
            return []
        include_limits = True
        if self._header_faults_on:
            draw = self._rng.random()
            if draw < self.config.missing_headers_rate:
                return []
            include_limits = draw >= self.config.missing_headers_rate + (
                self.config.missing_limit_headers_rate
            )
        return rate_limit_headers(
            self._book.snapshot(group, now),
            include_limits=include_limits,
            include_resets=self.config.reset_headers,
        )

    def _rate_limited(
        self,
        request_id: tuple[bytes, bytes],
        group: tuple[str, str],
        plan: _Plan,
        decision: ServerDecision,
        now: float,
    ) -> _Reply:
        """The 429 of a refused request, in the configured body shape."""
        kind, window = decision.kind, decision.window
        assert kind is not None and window is not None, "a refusal names its dimension"
        config = self.config
        unit = {
            ("requests", "minute"): "requests per min (RPM)",
            ("tokens", "minute"): "tokens per min (TPM)",
            ("requests", "day"): "requests per day (RPD)",
            ("tokens", "day"): "tokens per day (TPD)",
        }[(kind, window)]
        headers = [request_id]
        if self._headers_on_429:
            headers += self._limit_headers(group, now)
        by = self.stats.rate_limited_by
        if decision.too_large:  # OpenAI's shape whatever the configured one: no retry helps
            by["request_too_large"] += 1
            message = (
                f"Request too large for {plan.model} in organization {config.organization} on "
                f"{unit}: Limit {decision.limit}, Requested {decision.requested}. The input or "
                "output tokens must be reduced in order to run successfully. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            body = _error_body(message, kind, None, "rate_limit_exceeded")
            return self._reply(429, body, headers)
        if decision.subwindow:
            by["undeclared_subwindow"] += 1
        else:
            by["per_minute" if window == "minute" else "per_day"] += 1
        wait = decision.retry_after
        headers += retry_after_headers(
            wait, retry_after=config.retry_after_header, retry_after_ms=config.retry_after_ms_header
        )
        if self._retry_hint is not None:
            headers.append((self._retry_hint, format_decimal_seconds(wait).encode()))
        shape = config.rate_limit_body
        content_type = _JSON
        if shape == "openai":
            message = (
                f"Rate limit reached for {plan.model} in organization {config.organization} on "
                f"{unit}: Limit {decision.limit}, Used {decision.used}, Requested "
                f"{decision.requested}. Please try again in {_human_wait(wait)}. Visit "
                "https://platform.openai.com/account/rate-limits to learn more."
            )
            body = _error_body(message, kind, None, "rate_limit_exceeded")
        elif shape == "azure":
            which = "call" if kind == "requests" else "token"
            message = (
                f"Requests to the {plan.operation} Operation under Azure OpenAI API version "
                f"{_AZURE_API_VERSION} have exceeded {which} rate limit of your current OpenAI "
                f"S0 pricing tier. Please retry after {whole_seconds(wait)} "
                f"second{'' if whole_seconds(wait) == 1 else 's'}. Please go here: "
                "https://aka.ms/oai/quotaincrease if you would like to further increase the "
                "default rate limit."
            )
            body = orjson.dumps({"error": {"code": "429", "message": message}})
        elif shape == "generic":
            message = f"Rate limit exceeded, try again in {format_decimal_seconds(wait)}s"
            body = orjson.dumps(
                {
                    "error": {
                        "message": message,
                        "type": "rate_limit_error",
                        "code": "too_many_requests",
                    }
                }
            )
        elif shape == "bare":
            body = b'{"error":"Too Many Requests"}'
        else:  # "none"
            body, content_type = b"", _TEXT
        return self._reply(429, body, headers, content_type)

    # -- endpoints -----------------------------------------------------------------

    async def _post(
        self, reply_for: _ReplyFor, scope: Scope, receive: Receive, send: Send, number: int
    ) -> None:
        """A POST endpoint whose answer ``reply_for`` makes (see ``_replies``): the
        body read, the key checked, then the answer sent at once or later."""
        head = _scan_headers(scope["headers"])
        key, reject = self._authorize(head)
        body = await self._read_body(head.content_length, receive)
        reply = reply_for(head, key, reject, body, number)
        if isinstance(reply, _Later):
            await self._answer_later(send, reply)
        elif isinstance(reply, _Streamed):
            await _send_streamed(send, reply)
        else:
            await _send_reply(send, reply)

    def _chat_reply(
        self, head: _Head, key: str, reject: _Reject | None, body: bytes | None, number: int
    ) -> _Reply | _Streamed | _Later:
        """Chat, once the body is read (None: too large) and the key checked."""
        if reject is None and body is None:
            reject = self._too_large()
        if reject is not None:
            return self._reject_reply(number, reject)
        assert body is not None
        plan = self._plans.get(body)
        if plan is None:
            plan = self._chat_plan(body)
        if isinstance(plan, _Reject):
            return self._reject_reply(number, plan)
        return self._answer(number, key, plan)

    def _responses_reply(
        self, head: _Head, key: str, reject: _Reject | None, body: bytes | None, number: int
    ) -> _Reply | _Streamed | _Later:
        """Responses API, once the body is read (None: too large) and the key checked."""
        return self._json_reply(
            key,
            reject,
            body,
            number,
            self._plan_response,
            self._response_plans,
        )

    def _embeddings_reply(
        self, head: _Head, key: str, reject: _Reject | None, body: bytes | None, number: int
    ) -> _Reply | _Streamed | _Later:
        """Embeddings, once the body is read (None: too large) and the key checked."""
        return self._json_reply(
            key, reject, body, number, functools.partial(plan_embeddings, counter=self._counter)
        )

    def _json_reply(
        self,
        key: str,
        reject: _Reject | None,
        body: bytes | None,
        number: int,
        plan_for: Callable[[bytes], _Plan | _Reject],
        cache: dict[bytes, _Plan | _Reject] | None = None,
    ) -> _Reply | _Streamed | _Later:
        """A JSON endpoint's answer as ``plan_for`` plans it: refused, or charged and sent.

        Plans are cached by body in ``cache`` when one is given (default None:
        not cached, as embeddings, whose answer is as large as its vectors).
        """
        if reject is None and body is None:
            reject = self._too_large()
        if reject is not None:
            return self._reject_reply(number, reject)
        assert body is not None
        plan = self._cached_plan(cache, body, plan_for)
        if isinstance(plan, _Reject):
            return self._reject_reply(number, plan)
        return self._answer(number, key, plan)

    def _transcription_reply(
        self, head: _Head, key: str, reject: _Reject | None, body: bytes | None, number: int
    ) -> _Reply | _Streamed | _Later:
        """Transcription, once the body is read (None: too large) and the key checked."""
        if reject is None and body is None:
            reject = self._too_large()
        if reject is not None:
            return self._reject_reply(number, reject)
        assert body is not None
        plan = _plan_transcription(body, head.content_type.decode("latin-1"), self._counter)
        if isinstance(plan, _Reject):
            return self._reject_reply(number, plan)
        return self._answer(number, key, plan)

    async def _models(self, scope: Scope, receive: Receive, send: Send, number: int) -> None:
        _key, reject = self._authorize(_scan_headers(scope["headers"]))
        if reject is not None:
            await _send_reply(send, self._reject_reply(number, reject))
            return
        data = [
            {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "mock"}
            for model in self.config.models
        ]
        body = orjson.dumps({"object": "list", "data": data})
        await _send_reply(send, self._reply(200, body, [(b"x-request-id", _request_id(number))]))

    # The /_mock endpoints are not counted in the stats they report.

    async def _get_stats(self, scope: Scope, receive: Receive, send: Send, number: int) -> None:
        await _send_reply(send, (200, orjson.dumps(self.stats.as_dict()), [], _JSON))

    async def _reset(self, scope: Scope, receive: Receive, send: Send, number: int) -> None:
        await self._read_body(_scan_headers(scope["headers"]).content_length, receive)
        self.stats = KeyedStats()
        self._count_configured_keys()
        self._book.clear()
        self._rng = random.Random(self.config.seed)
        await _send_reply(send, (200, b'{"reset":true}', [], _JSON))

    async def _get_config(self, scope: Scope, receive: Receive, send: Send, number: int) -> None:
        await _send_reply(send, (200, orjson.dumps(_config_dict(self.config)), [], _JSON))

    async def _set_config(self, scope: Scope, receive: Receive, send: Send, number: int) -> None:
        body = await self._read_body(_scan_headers(scope["headers"]).content_length, receive)
        if body is None:
            await _send_reply(send, self._reject_reply(number, self._too_large()))
            return
        try:
            changes = orjson.loads(body) if body else {}
            if not isinstance(changes, dict):
                raise TypeError("expected a JSON object of MockConfig fields")
            known = {field.name for field in attrs.fields(MockConfig)}
            unknown = sorted(set(changes) - known)
            if unknown:
                raise TypeError(f"unknown config fields: {', '.join(unknown)}")
            config = attrs.evolve(self.config, **changes)
        except (orjson.JSONDecodeError, TypeError, ValueError) as error:
            reply = self._reject_reply(number, _Reject(400, f"invalid mock config: {error}"))
            await _send_reply(send, reply)
            return
        self._book.set_wall_clock_offset(config.wall_clock_offset)
        self._book.set_limits(config.limits, _now(), key_limits=config.key_server_limits)
        if config.seed != self.config.seed:
            self._rng = random.Random(config.seed)
        self._apply(config)
        await _send_reply(send, (200, orjson.dumps(_config_dict(config)), [], _JSON))


def _invalid_key(key: str) -> _Reject:
    """The 401 of a wrong or revoked key, the key masked."""
    return _Reject(
        401,
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def _route_reject(methods: dict[str, Any] | None, method: str, path: str) -> _Reject:
    if methods is None:
        return _Reject(404, f"Invalid URL ({method} {path})")
    return _Reject(405, f"Method {method} is not allowed for {path}")


def _start_message(
    status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: bytes
) -> dict[str, Any]:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            *headers,
        ],
    }


async def _send_reply(send: Send, reply: _Reply) -> None:
    """Send a decided answer as ASGI messages (head, then the whole body)."""
    status, body, headers, content_type = reply
    await send(_start_message(status, body, headers, content_type))
    await send({"type": "http.response.body", "body": body})


async def _send_streamed(send: Send, reply: _Streamed) -> None:
    """Send a whole streamed answer: head without content-length, the events, the end."""
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_STREAM_HEADERS, *reply.headers],
        }
    )
    await send({"type": "http.response.body", "body": reply.body, "more_body": False})


def _config_dict(config: MockConfig) -> dict[str, Any]:
    """``config`` as JSON for ``/_mock/config``; the keys of ``key_limits`` and
    ``revoke_after`` masked as in the stats."""

    def serialize(_instance: Any, _field: Any, value: Any) -> Any:
        if isinstance(value, KeyMap):
            labels = key_labels(value)
            return {
                labels[key]: attrs.asdict(item) if attrs.has(type(item)) else item
                for key, item in value.items()
            }
        return value.value if isinstance(value, Semantics) else value

    return attrs.asdict(config, value_serializer=serialize)


def _request_id(number: int) -> bytes:
    return b"req_mock%016x" % number


def _human_wait(seconds: float) -> str:
    """OpenAI's "Please try again in ..." wording: ``20ms``, ``1.5s``, ``6m0s``."""
    return format_go_duration(seconds)


# -- chat completions -------------------------------------------------------------


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def _positive_int(request: dict[str, Any], name: str, maximum: int | None = None) -> _Reject | None:
    value = request.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        return _Reject(
            400,
            f"Invalid type for '{name}': expected an integer, "
            f"but got a {type(value).__name__} instead.",
            name,
            "invalid_type",
        )
    if value < 1:
        return _Reject(
            400,
            f"Invalid '{name}': integer below minimum value. "
            f"Expected a value >= 1, but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    if maximum is not None and value > maximum:
        return _Reject(
            400,
            f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, "
            f"but got {value} instead.",
            name,
            "integer_above_max_value",
        )
    return None


def _answer_content(request: dict[str, Any], snippet: str) -> str | _Reject:
    response_format = request.get("response_format")
    if response_format is None:
        return f"Mock reply to: {snippet}"
    if not isinstance(response_format, dict):
        return _Reject(
            400, "Invalid 'response_format': expected an object.", "response_format", "invalid_type"
        )
    kind = response_format.get("type")
    if kind == "text":
        return f"Mock reply to: {snippet}"
    if kind == "json_object":
        return orjson.dumps({"reply": f"Mock reply to: {snippet}"}).decode()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            return _Reject(
                400,
                "Missing required parameter: 'response_format.json_schema.name'.",
                "response_format.json_schema.name",
                "missing_required_parameter",
            )
        schema = spec.get("schema") or {}
        if not isinstance(schema, dict):
            return _Reject(
                400, "Invalid schema: expected an object.", "response_format", "invalid_type"
            )
        try:
            instance = instance_for_schema(schema)
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as error:
            return _Reject(
                400,
                f"Invalid schema for response_format '{spec['name']}': {error}",
                "response_format",
                "invalid_json_schema",
            )
        return orjson.dumps(instance).decode()
    return _Reject(
        400,
        f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and 'text'.",
        "response_format.type",
        "invalid_value",
    )


def _plan_chat(body: bytes, default_output_tokens: int, counter: TokenCounter) -> _Plan | _Reject:
    """Validate a chat request and build its answer (cached by the caller)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _Reject(400, _UNPARSABLE_JSON)
    if not isinstance(request, dict):
        return _Reject(
            400, "Invalid type for request body: expected an object.", None, "invalid_type"
        )
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return _Reject(400, "you must provide a model parameter", "model", None)
    messages = request.get("messages")
    if messages is None:
        return _Reject(
            400, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not messages:
        return _Reject(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return _Reject(
                400,
                f"Invalid 'messages[{index}]': expected an object with a 'role'.",
                f"messages[{index}]",
                "invalid_type",
            )
    for name, maximum in (("n", 128), ("max_tokens", None), ("max_completion_tokens", None)):
        reject = _positive_int(request, name, maximum)
        if reject is not None:
            return reject
    stream = request.get("stream")
    stream_options = request.get("stream_options")
    if stream_options is not None:
        if not stream:
            return _Reject(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        if not isinstance(stream_options, dict):
            return _Reject(
                400,
                "Invalid type for 'stream_options': expected an object.",
                "stream_options",
                "invalid_type",
            )
    snippet = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            snippet = _message_text(message.get("content"))[:_SNIPPET_CHARS]
            break
    content = _answer_content(request, snippet)
    if isinstance(content, _Reject):
        return content
    try:
        prompt_tokens = counter.prompt_tokens(messages, model)
    except (TypeError, ValueError) as error:
        return _Reject(400, f"Invalid 'messages': {error}", "messages", "invalid_value")
    n = request.get("n") or 1
    per_choice_limit = request.get("max_completion_tokens") or request.get("max_tokens")
    original = content
    choice_tokens = counter.text_tokens(content, model)
    finish_reason = "stop"
    if per_choice_limit is not None and choice_tokens > per_choice_limit:
        content = counter.truncate(content, model, per_choice_limit)
        choice_tokens = per_choice_limit
        finish_reason = "length"
    completion_tokens = n * choice_tokens
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    cost = prompt_tokens + output_budget(request, default_output_tokens)
    if stream:
        pieces = counter.pieces(original, model, per_choice_limit)
        return _Plan(
            model=model,
            cost=cost,
            actual=prompt_tokens + n * len(pieces),
            output_tokens=len(pieces),
            content_type=SSE,
            body=_no_body,
            operation="ChatCompletions_Create",
            stream=chat_stream(
                model=model,
                choices=n,
                pieces=pieces,
                finish_reason=finish_reason,
                usage=usage if stream_options and stream_options.get("include_usage") else None,
            ),
        )
    message = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    tail = orjson.dumps(
        {
            "model": model,
            "choices": [
                {
                    "index": index,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for index in range(n)
            ],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
    )[1:]

    def build(number: int) -> bytes:
        return b'{"id":"chatcmpl-mock%x","object":"chat.completion","created":%d,%s' % (
            number,
            int(time.time()),
            tail,
        )

    return _Plan(
        model=model,
        cost=cost,
        actual=prompt_tokens + completion_tokens,
        output_tokens=choice_tokens,
        content_type=_JSON,
        body=build,
        operation="ChatCompletions_Create",
    )


def _no_body(_number: int) -> bytes:
    raise RuntimeError("a streamed answer is sent as its events, not as one body")


# -- transcriptions ------------------------------------------------------------------


def _plan_transcription(body: bytes, content_type: str, counter: TokenCounter) -> _Plan | _Reject:
    """Validate a transcription upload and build its answer."""
    try:
        fields = parse_multipart(body, content_type)
    except MultipartError as error:
        return _Reject(400, f"Invalid multipart body: {error}.", None, "invalid_value")
    model_field = fields.get("model")
    model = model_field.data.decode("utf-8", "replace").strip() if model_field else ""
    if not model:
        return _Reject(400, "you must provide a model parameter", "model", None)
    upload = fields.get("file")
    if upload is None:
        return _Reject(
            400, "Missing required parameter: 'file'.", "file", "missing_required_parameter"
        )
    stream_field = fields.get("stream")
    if stream_field is not None and stream_field.data.strip().lower() == b"true":
        return _Reject(
            400,
            "stream is not supported by the mock server for transcriptions.",
            "stream",
            "unsupported_value",
        )
    format_field = fields.get("response_format")
    response_format = (
        format_field.data.decode("utf-8", "replace").strip() if format_field else "json"
    )
    if response_format not in _TRANSCRIPTION_FORMATS:
        return _Reject(
            400,
            f"Invalid value: '{response_format}'. Supported values are: "
            + ", ".join(f"'{name}'" for name in _TRANSCRIPTION_FORMATS)
            + ".",
            "response_format",
            "invalid_value",
        )
    filename = upload.filename or "file"
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in _AUDIO_EXTENSIONS:
        return _Reject(
            400,
            f"Invalid file format. Supported formats: {list(_AUDIO_EXTENSIONS)}",
            "file",
            "invalid_value",
        )
    duration = audio_duration(upload.data)
    if duration is None:
        return _Reject(400, "Audio file might be corrupted or unsupported", "file", "invalid_value")
    text = f"Mock transcription of {filename}: {duration:.2f} seconds of audio."
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if response_format == "json":
        payload, kind = orjson.dumps({"text": text, "usage": usage}), _JSON
    elif response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": duration,
            "text": text,
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": -0.1,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.0,
        }
        payload = orjson.dumps(
            {
                "task": "transcribe",
                "language": "english",
                "duration": duration,
                "text": text,
                "segments": [segment],
                "usage": usage,
            }
        )
        kind = _JSON
    elif response_format == "text":
        payload, kind = (text + "\n").encode(), _TEXT
    else:
        end = _timestamp(duration, "," if response_format == "srt" else ".")
        start = _timestamp(0.0, "," if response_format == "srt" else ".")
        if response_format == "srt":
            payload = f"1\n{start} --> {end}\n{text}\n\n".encode()
        else:
            payload = f"WEBVTT\n\n{start} --> {end}\n{text}\n\n".encode()
        kind = _TEXT

    return _Plan(
        model=model,
        cost=0,
        actual=0,
        output_tokens=counter.text_tokens(text, "gpt-4o"),
        content_type=kind,
        body=lambda _number: payload,
        operation="Transcriptions_Create",
    )


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole:02d}{separator}{millis:03d}"
