"""The client: ``open_client``, workers, the request loop and the failure policy.

Shape (docs/design.md: the diagram, "The limiter"): ``open_client`` owns a
nursery holding the limiter task and a pool of worker tasks.  Callers hand
*jobs* to the workers over a bounded channel (backpressure: a slow API slows
the producer, memory stays flat); each worker asks the limiter for a permit,
sends the request on its own HTTP connection, reports the outcome to the
limiter and hands the result back.

A streamed request (``client.stream``, a ``"stream": true`` body) takes the
same path; its worker reads the event stream (:mod:`engine._sse`, the
assemblers of :mod:`engine.endpoints._stream`) and, for ``client.stream``,
hands each piece of text to the caller over a channel of its own.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import time
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar, final, overload

import attrs
import httpx
import orjson
import pydantic
import trio

from engine._audio import ProbedAudio, probe_audio, read_upload, source_name
from engine._budget import (
    Budget,
    Price,
    PriceTable,
    UnknownPriceError,
    load_prices,
    worst_case_input,
)
from engine._errors import (
    EngineError,
    FatalError,
    InputError,
    RateLimitWaitExceeded,
    RequestError,
    ResponseValidationError,
    RunStoppedError,
    StreamInterruptedError,
    redact,
)
from engine._headers import parse_rate_limit_headers
from engine._http import TimeoutWatch, make_async_client
from engine._limiter import Limiter, LimiterStatistics
from engine._nurseries import open_service_nursery
from engine._pool import Endpoint, EndpointStatistics, Pool, _Member
from engine._quota import Cost, Limits, QuotaBook, Reservation
from engine._requests import DEFAULT_MIN_SECONDS, ChatRequest, TranscriptionRequest
from engine._results import ChatResult, ErrorInfo, Timings, TranscriptionResult, Usage
from engine._retry import (
    Action,
    Verdict,
    backoff_delay,
    classify_response,
    classify_transport_error,
    error_from_verdict,
)
from engine._shared import LeaseManager, LimiterCallbacks, RedisQuota, SharedQuotaStatistics
from engine._sse import SSEDecoder
from engine._tokens import DEFAULT_OUTPUT_TOKENS, output_budget
from engine._version import __version__
from engine.endpoints import (
    JSON_ENDPOINTS,
    Answer,
    AnyRequest,
    EmbeddingRequest,
    EmbeddingResult,
    JsonEndpoint,
    Parsed,
    ResponseRequest,
    ResponseResult,
    ResponseUsage,
    coerce_request,
    input_kind,
)
from engine.endpoints._stream import (
    ChatStreamAssembler,
    ResponseStreamAssembler,
    StreamAssembler,
    TokenClock,
    with_usage_requested,
)
from engine.endpoints.transcription import TRANSCRIPTION_PATH, parse_transcription

__all__ = [
    "ChatStream",
    "Client",
    "ClientStatistics",
    "ResponseStream",
    "open_client",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Per-request HTTP timeouts: long reads (big completions), quick connects.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
#: Workers started when ``concurrency`` is None; the limiter then bounds the
#: requests actually in flight to what the quota needs at the observed latency.
AUTO_MAX_CONCURRENCY = 512
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_pool_logger = logging.getLogger("engine.pool")
_new_tuple = tuple.__new__

#: What ``chat``, ``respond``, ``embed``, ``transcribe`` and ``map`` hand back.
Result = ChatResult | TranscriptionResult | ResponseResult | EmbeddingResult
_Value = TypeVar("_Value")


class ResponseLike(Protocol):
    """What the engine reads of an HTTP response.

    Both kinds of response a worker gets satisfy it: an ``httpx.Response``
    (uploads, injected transports) and the fast path's
    :class:`engine._http.RawResponse` (the engine's own chat requests).
    """

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    @property
    def text(self) -> str: ...


class _WorkerHTTP(Protocol):
    """What a worker needs of its HTTP client: :func:`engine._http.make_async_client`'s
    has it (its ``post`` may answer with a :class:`engine._http.RawResponse`, its
    ``stream_post`` reads a body as it arrives)."""

    def stream_post(
        self, url: str, *, content: bytes, headers: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[StreamedResponse]: ...

    async def post(
        self,
        url: str,
        *,
        content: bytes | None = None,
        data: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ResponseLike: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's counters (see :meth:`Client.statistics`).

    Attributes:
        limiter: the limiter's own counters (granted, waiting, in flight, ...).
        sent: HTTP attempts sent.
        succeeded: requests that ended without an error (a transcription
            skipped for being short counts here, and in ``skipped``).
        failed: requests that ended with an error.
        retries: attempts repeated after 408/409/5xx/transport errors.
        rate_limited: 429 ``rate_limit_exceeded`` responses received.
        prompt_tokens / completion_tokens: tokens reported by the server
            (chat's prompt and completion tokens, a response's input and
            output tokens, an embedding's input tokens as prompt tokens).
        skipped: transcriptions skipped below ``min_seconds`` (never sent).
        audio_seconds: audio seconds transcribed, as the server billed them.
        spent: dollars spent by the answers' usage at the client's prices
            (0 without ``max_cost``; ``limiter.cost_reserved`` is what
            permits in flight hold).
        max_cost: the spending cap (None: none).
        endpoints: a pool's per-member counters, in the pool's order (empty
            without ``endpoints=``).
    """

    limiter: LimiterStatistics
    sent: int
    succeeded: int
    failed: int
    retries: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int
    skipped: int = 0
    audio_seconds: float = 0.0
    spent: float = 0.0
    max_cost: float | None = None
    endpoints: tuple[EndpointStatistics, ...] = ()


async def _send_soon(channel: trio.MemorySendChannel[_Value], value: _Value) -> None:
    """Send ``value``; checkpoints only when it has to wait for room.

    ``MemorySendChannel.send`` yields to the scheduler even when the value goes
    straight through, one task switch per message.  Every caller here
    checkpoints soon after anyway (a worker in its next acquire or HTTP read,
    the feeder when the unbuffered jobs channel has no idle worker), so the
    switch is saved: about a tenth of the engine's CPU per request.
    """
    try:
        channel.send_nowait(value)
    except trio.WouldBlock:
        await channel.send(value)


async def _receive_soon(channel: trio.MemoryReceiveChannel[_Value]) -> _Value:
    """Receive the next value; checkpoints only when it has to wait for one.

    See :func:`_send_soon`: a buffered value is taken without a task switch.
    """
    try:
        return channel.receive_nowait()
    except trio.WouldBlock:
        return await channel.receive()


@attrs.define(eq=False)
class _Run:
    """One ``chat`` call or one ``map`` iteration: its jobs can be cancelled together."""

    #: Results, and None: a map's feeder waking the consumer (see ``Client._feed``).
    results: trio.MemorySendChannel[Result | None]
    scopes: set[trio.CancelScope] = attrs.field(factory=set)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        for scope in list(self.scopes):
            scope.cancel()


@attrs.define(eq=False, slots=True)
class _Job:
    """One request on its way through a worker.

    ``endpoint`` knows the request's path and how to build each attempt and
    read the answer.  ``content`` is a body sent as is on every attempt (JSON
    endpoints: encoded once); None means the endpoint builds each attempt anew
    (multipart uploads: an httpx file stream is read only once).  ``cost`` is
    None until the endpoint's local checks (``prepare``) have run.
    """

    request: AnyRequest
    endpoint: _Endpoint
    content: bytes | None
    cost: Cost | None
    group: str
    run: _Run
    queued_at: float
    audio: ProbedAudio | None = None
    form: dict[str, Any] | None = None
    #: Set for a streamed request (``client.stream``, a ``"stream": true`` body).
    stream: _StreamSink | None = None
    #: The model's price when the client has a spending cap.
    price: Price | None = None
    #: A pool's (member, member group) pairs that may serve it (None: no pool);
    #: ``group`` is then the queue it waits in (see Limiter.acquire).
    choices: tuple[tuple[str, str], ...] | None = None


@attrs.define(eq=False, slots=True)
class _StreamSink:
    """Where a streamed job's text goes, and how its caller knows the worker is done.

    ``deltas`` is None when nobody reads the text as it comes (``map``, whose
    result holds the assembled answer); ``client.stream`` reads it.  The
    caller leaving its block waits for ``finished`` once ``started`` is set,
    so that the stream is closed and its permit settled when it leaves.
    """

    deltas: trio.MemorySendChannel[str] | None = None
    started: bool = False
    finished: trio.Event = attrs.field(factory=trio.Event)


@attrs.frozen
class _Tries:
    """Where a request's attempts stand, for :meth:`Client._refused`."""

    started: float
    attempts: int
    failures: int
    sent_wall: float
    latency: float | None


class _Head(Protocol):
    """The status and headers of an answer (a buffered or a streamed one)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


#: Text deltas a stream holds for a caller that reads slower than they arrive;
#: beyond that the worker waits, and so reads the body no faster than the caller.
_STREAM_BUFFER = 256
_ResultT = TypeVar("_ResultT", ChatResult, ResponseResult)


class _Stream(Generic[_ResultT]):
    """A streamed answer as its caller reads it (see :class:`ChatStream`)."""

    _result_type: type[_ResultT]

    def __init__(
        self,
        deltas: trio.MemoryReceiveChannel[str],
        results: trio.MemoryReceiveChannel[Result | None],
    ) -> None:
        self._deltas = deltas
        self._results = results
        self._texts: list[str] = []
        self._result: _ResultT | None = None

    def __repr__(self) -> str:
        state = "ended" if self._result is not None else "open"
        return f"<engine.{type(self).__name__} {state}, {len(self._texts)} deltas>"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> str:
        """The next piece of text; at the end the result is kept (:attr:`result`).

        Raises:
            EngineError: the request failed (the result's error), at the end.
        """
        if self._result is not None:
            self._result.raise_for_error()
            raise StopAsyncIteration
        try:
            delta = await self._deltas.receive()
        except trio.EndOfChannel:
            received = await self._results.receive()
            assert isinstance(received, self._result_type)
            self._result = received
            received.raise_for_error()
            raise StopAsyncIteration from None
        except trio.ClosedResourceError:
            raise RuntimeError("the stream was read after its block was left") from None
        self._texts.append(delta)
        return delta

    async def get_result(self) -> _ResultT:
        """Read the rest of the stream; return its result.  Checkpoints.

        Raises:
            EngineError: the request failed.
        """
        async for _ in self:
            pass
        return self.result

    @property
    def ended(self) -> bool:
        """True once the stream has been read to its end (or its failure)."""
        return self._result is not None

    @property
    def result(self) -> _ResultT:
        """The result, once the stream ended: the same as a non-streamed call's,
        with ``timings.ttft`` and ``timings.itl``; a failed one has ``.error``.

        Raises:
            RuntimeError: the stream has not been read to its end yet.
        """
        if self._result is None:
            raise RuntimeError("the stream has not ended: read it to its end, or get_result()")
        return self._result

    @property
    def text(self) -> str:
        """The text received so far (all of it, once the stream ended)."""
        return "".join(self._texts)

    @property
    def timings(self) -> Timings:
        """The result's timings (``ttft``, ``itl``, ``itl_summary``, ``latency``)."""
        return self.result.timings

    @property
    def model(self) -> str:
        """The model that answered."""
        return self.result.model


class ChatStream(_Stream[ChatResult]):
    """A streamed chat completion (what ``client.stream(...)`` enters).

    ``async for delta in s`` yields the first choice's content text as it
    arrives (empty pieces left out).  After the loop:

    * ``s.result``: the :class:`~engine.ChatResult` assembled from the chunks,
      as a non-streamed call returns it (``output``, ``usage``, ``response``:
      a ``chat.completion`` object);
    * ``s.text``, ``s.usage``, ``s.model``, ``s.finish_reason``;
    * ``s.timings.ttft`` (seconds to the first output), ``s.timings.itl``
      (the gaps between outputs) and ``s.timings.itl_summary``.

    Reading ``result`` (and what comes from it) before the end raises
    ``RuntimeError``; ``await s.get_result()`` reads to the end first.
    """

    _result_type = ChatResult

    @property
    def usage(self) -> Usage:
        """Tokens used, from the final usage chunk (zeros when the server sent none)."""
        return self.result.usage

    @property
    def finish_reason(self) -> str | None:
        """Why the first choice ended (``stop``, ``length``, ...), or None."""
        body = self.result.response or {}
        choices = body.get("choices") or [{}]
        reason = choices[0].get("finish_reason")
        return reason if isinstance(reason, str) else None


class ResponseStream(_Stream[ResponseResult]):
    """A streamed Responses API request (what ``client.stream_response(...)`` enters).

    ``async for delta in s`` yields the ``response.output_text.delta`` texts.
    After the loop, as :class:`ChatStream`: ``s.result`` (a
    :class:`~engine.ResponseResult`), ``s.text``, ``s.usage``, ``s.model``,
    ``s.status`` and ``s.timings``.
    """

    _result_type = ResponseResult

    @property
    def usage(self) -> ResponseUsage:
        """Tokens used, from the final ``response.completed`` event."""
        return self.result.usage

    @property
    def status(self) -> str | None:
        """The response's status (``completed``, ``incomplete``), or None."""
        return self.result.status


_StreamT = TypeVar("_StreamT", ChatStream, ResponseStream)


@final
class _PoolHTTP:
    """One worker's connections to a pool's members, each opened at its first request.

    ``factories`` makes a member's connection (an HTTP client with that
    member's base URL and key) by member name.  Leaving closes those opened.
    """

    def __init__(self, factories: Mapping[str, Callable[[], _WorkerHTTP]]) -> None:
        self._factories = factories
        self._open: dict[str, _WorkerHTTP] = {}

    def for_member(self, name: str) -> _WorkerHTTP:
        """The connection to member ``name`` (made now if it is the first).  Never checkpoints."""
        http = self._open.get(name)
        if http is None:
            http = self._open[name] = self._factories[name]()
        return http

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for http in self._open.values():
            await http.__aexit__(None, None, None)


class Client:
    """A running quota-engine client.  Get one from :func:`open_client`.

    Methods that send requests checkpoint; ``statistics`` does not.
    """

    def __init__(
        self,
        *,
        nursery: trio.Nursery,
        limiter: Limiter,
        jobs: trio.MemorySendChannel[_Job],
        groups: Mapping[str, str],
        max_attempts: int,
        retry_base_delay: float,
        retry_max_delay: float,
        rate_limit_wait_budget: float,
        default_output_tokens: int,
        base_url: str,
        audio_tokens_per_second: float = 0.0,
        prices: PriceTable | None = None,
        pool: Pool | None = None,
    ) -> None:
        self._nursery = nursery
        self._prices = prices
        self._pool = pool
        # trio.current_time() is three calls deep; the run's clock is one (and
        # a client never outlives its trio run).
        self._now = trio.lowlevel.current_clock().current_time
        #: No cap and no pool: JSON jobs take _job's short way.
        self._plain_jobs = prices is None and pool is None
        self._limiter = limiter
        self._jobs = jobs
        self._groups = dict(groups)
        self._max_attempts = max_attempts
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._wait_budget = rate_limit_wait_budget
        self._default_output_tokens = default_output_tokens
        self._audio_tokens_per_second = audio_tokens_per_second
        self._base_url = base_url
        self._fatal: FatalError | None = None
        self._rng = random.Random()
        self._sent = 0
        self._succeeded = 0
        self._failed = 0
        self._retries = 0
        self._rate_limited = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._skipped = 0
        self._audio_seconds = 0.0
        self._feeders: set[_Feeder] = set()
        self._leases: LeaseManager | None = None

    def __repr__(self) -> str:
        if self._pool is not None:
            return f"<engine.Client endpoints={[e.name for e in self._pool.endpoints]!r}>"
        return f"<engine.Client base_url={self._base_url!r}>"

    # -- public API -----------------------------------------------------------

    async def chat(
        self,
        messages: str | Iterable[Mapping[str, Any]],
        *,
        model: str,
        response_model: type[pydantic.BaseModel] | None = None,
        id: str | None = None,
        endpoint: str | None = None,
        **params: Any,
    ) -> ChatResult:
        """Run one chat completion and return its :class:`~engine.ChatResult`.

        ``messages`` is a prompt string or OpenAI-style message dicts;
        ``params`` are passed through in the request body (``temperature``,
        ``max_tokens``, ...).  With ``response_model`` the answer is parsed
        into that pydantic model (``result.output``).  ``endpoint`` pins the
        request to one member of the client's pool (default None: any).

        Raises:
            EngineError: a subclass saying why, once retries are spent;
                :class:`~engine.ResponseValidationError` for a refusal, a
                truncated answer or one that does not fit ``response_model``.
        """
        return await self._call(
            _chat_request(messages, model, response_model, id, params, endpoint)
        )

    async def respond(
        self,
        input: str | Iterable[Mapping[str, Any]],
        *,
        model: str,
        instructions: str | None = None,
        response_model: type[pydantic.BaseModel] | None = None,
        id: str | None = None,
        endpoint: str | None = None,
        **params: Any,
    ) -> ResponseResult:
        """Run one Responses API request; return its :class:`~engine.ResponseResult`.

        ``input`` is a prompt string or input items; ``instructions`` the
        system message (default None: none).  ``params`` are passed through
        in the body (``max_output_tokens``, ``temperature``, ...).  With
        ``response_model`` the answer is asked for as strict JSON through
        ``text.format`` and parsed into that pydantic model (``result.output``).
        ``id`` defaults to ``"response"``; ``endpoint`` pins it to one pool
        member (default None: any).

        Raises:
            EngineError: a subclass saying why, once retries are spent;
                :class:`~engine.ResponseValidationError` for a refusal, an
                incomplete answer or one that does not fit ``response_model``.
        """
        request = _response_request(
            input, model, instructions, response_model, id, params, endpoint
        )
        return await self._call(request)

    def stream(
        self,
        messages: str | Iterable[Mapping[str, Any]],
        *,
        model: str,
        response_model: type[pydantic.BaseModel] | None = None,
        id: str | None = None,
        endpoint: str | None = None,
        **params: Any,
    ) -> AbstractAsyncContextManager[ChatStream]:
        """Stream one chat completion: ``async with client.stream(...) as s``.

        Arguments as for :meth:`chat`; the body is sent with ``"stream": true``
        and, unless ``params`` set ``stream_options``, with
        ``stream_options: {"include_usage": true}`` so that the final usage
        chunk settles the permit with the tokens really used.  ``async for
        delta in s`` yields the answer's text as it arrives; after the loop
        ``s.result`` is the :class:`~engine.ChatResult` a non-streamed call
        would have returned, with ``timings.ttft`` and ``timings.itl``.

        Entering takes a worker (it waits while all are busy) and sends the
        request; the permit is acquired exactly as for :meth:`chat` and held
        until the stream ends or the block is left.  Leaving the block early,
        or cancelling the task, closes the stream and settles the permit
        before the block is left (the estimate stays charged: the server
        may have spent it).  Entering, iterating and leaving checkpoint.

        Raises (while iterating, or from :meth:`ChatStream.get_result`):
            EngineError: a subclass saying why, once retries are spent, as
                :meth:`chat` (429s and 5xx before the body's first byte are
                retried); :class:`~engine.StreamInterruptedError` when the
                stream broke off after it had begun (never retried).
        """
        request = _chat_request(
            messages, model, response_model, id, {**params, "stream": True}, endpoint
        )
        return self._open_stream(request, ChatStream)

    def stream_response(
        self,
        input: str | Iterable[Mapping[str, Any]],
        *,
        model: str,
        instructions: str | None = None,
        response_model: type[pydantic.BaseModel] | None = None,
        id: str | None = None,
        endpoint: str | None = None,
        **params: Any,
    ) -> AbstractAsyncContextManager[ResponseStream]:
        """Stream one Responses API request: ``async with client.stream_response(...) as s``.

        Arguments as for :meth:`respond`; the body is sent with ``"stream":
        true``.  ``async for delta in s`` yields the text of the
        ``response.output_text.delta`` events; after the loop ``s.result`` is
        the :class:`~engine.ResponseResult` of the final ``response.completed``
        event (its usage settles the permit).  Permits, retries, leaving
        early and errors as for :meth:`stream`.
        """
        request = _response_request(
            input, model, instructions, response_model, id, {**params, "stream": True}, endpoint
        )
        return self._open_stream(request, ResponseStream)

    @asynccontextmanager
    async def _open_stream(
        self, request: ChatRequest | ResponseRequest, kind: type[_StreamT]
    ) -> AsyncIterator[_StreamT]:
        deltas_send, deltas_receive = trio.open_memory_channel[str](_STREAM_BUFFER)
        results_send, results_receive = trio.open_memory_channel[Result | None](1)
        run = _Run(results_send)
        sink = _StreamSink(deltas_send)
        job = self._job(request, run, sink)
        try:
            await self._jobs.send(job)
            yield kind(deltas_receive, results_receive)
        finally:
            run.cancel()
            deltas_receive.close()
            if sink.started and not sink.finished.is_set():
                # Cancelled promptly: the worker closes the stream and settles
                # the permit at its next checkpoint.
                with trio.CancelScope(shield=True):
                    await sink.finished.wait()

    async def embed(
        self,
        input: Any,
        *,
        model: str,
        dimensions: int | None = None,
        id: str | None = None,
        endpoint: str | None = None,
        **params: Any,
    ) -> EmbeddingResult:
        """Embed one input or a list of inputs; return its :class:`~engine.EmbeddingResult`.

        ``input`` is a string, a list of strings, a list of token ids or a
        list of token-id lists.  OpenAI's limits are checked before any
        permit: at most 2,048 inputs, 8,192 tokens per input (text-embedding-3
        models) and 300,000 tokens in all.  ``dimensions`` (default None: the
        model's length) and ``params`` (``encoding_format``, ``user``) are
        passed through; a ``base64`` answer is decoded.  ``id`` defaults to
        ``"embedding"``; ``endpoint`` pins it to one pool member (default
        None: any).

        Raises:
            InputError: the input breaks a limit or is empty (nothing is sent).
            EngineError: another subclass saying why, once retries are spent.
        """
        request = EmbeddingRequest(
            input=input,
            model=model,
            dimensions=dimensions,
            id=id if id is not None else "embedding",
            params=params,
            endpoint=endpoint,
        )
        return await self._call(request)

    async def transcribe(
        self,
        source: Any,
        *,
        model: str = "whisper-1",
        response_format: str = "json",
        language: str | None = None,
        prompt: str | None = None,
        temperature: float | None = None,
        min_seconds: float = DEFAULT_MIN_SECONDS,
        id: str | None = None,
        filename: str | None = None,
        endpoint: str | None = None,
        **params: Any,
    ) -> TranscriptionResult:
        """Transcribe one recording; return its :class:`~engine.TranscriptionResult`.

        ``source`` is a path, the file's bytes, or a binary file object.  Its
        size and duration are checked locally first (in a worker thread):
        a recording shorter than ``min_seconds`` (default 5.0; 0 disables) is
        *skipped* — the result has ``skipped=True`` and no request is sent.
        ``response_format`` (``json`` default, ``verbose_json``, ``text``,
        ``srt``, ``vtt``), ``language``, ``prompt`` and ``temperature`` are
        passed through (None: left out); so are other ``params`` as form
        fields.  ``id`` defaults to the file name; ``filename`` overrides the
        name uploaded (see :class:`~engine.TranscriptionRequest`);
        ``endpoint`` pins it to one pool member (default None: any).

        Raises:
            InputError: the file is unreadable, not audio, or over 25 MB.
            EngineError: another subclass saying why, once retries are spent.
        """
        request = TranscriptionRequest(
            source=source,
            model=model,
            id=id if id is not None else (source_name(source, filename) or "transcription"),
            response_format=response_format,
            language=language,
            prompt=prompt,
            temperature=temperature,
            min_seconds=min_seconds,
            filename=filename,
            params=params,
            endpoint=endpoint,
        )
        return await self._call(request)

    @overload
    async def _call(self, request: ChatRequest) -> ChatResult: ...
    @overload
    async def _call(self, request: TranscriptionRequest) -> TranscriptionResult: ...
    @overload
    async def _call(self, request: ResponseRequest) -> ResponseResult: ...
    @overload
    async def _call(self, request: EmbeddingRequest) -> EmbeddingResult: ...
    async def _call(self, request: AnyRequest) -> Result:
        send, receive = trio.open_memory_channel[Result | None](1)
        run = _Run(send)
        try:
            job = self._job(request, run)
            await self._jobs.send(job)
            result = await receive.receive()
        finally:
            run.cancel()
        assert result is not None, "only a map's feeder sends None"
        result.raise_for_error()
        return result

    async def map(self, requests: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Result]:
        """Run many requests; yield one result per input, in completion order.

        ``requests`` is any iterable or async iterable of
        :class:`~engine.ChatRequest`, :class:`~engine.ResponseRequest`,
        :class:`~engine.EmbeddingRequest` and
        :class:`~engine.TranscriptionRequest` objects or Batch-API input
        dicts (``url`` ``/v1/chat/completions``, ``/v1/responses``,
        ``/v1/embeddings`` or ``/v1/audio/transcriptions``), mixed freely.
        It is consumed lazily, as workers free up, so it may be endless.  A
        failed request is a result of its kind with ``.error`` set, never an
        exception.

        Leaving the ``async for`` early (break, exception, cancellation)
        cancels this map's requests still waiting or in flight and returns
        their reservations.

        Raises:
            FatalError: after yielding the results already finished, if the
                client stopped (401/403, insufficient_quota).
        """
        send, receive = trio.open_memory_channel[Result | None](64)
        run = _Run(send)
        feeder = _Feeder()
        self._feeders.add(feeder)
        self._nursery.start_soon(self._feed, requests, run, feeder)
        try:
            async with receive:
                while not (feeder.done and feeder.delivered == feeder.submitted):
                    result = await _receive_soon(receive)
                    if result is None:  # the feeder's wake-up call
                        continue
                    feeder.delivered += 1
                    yield result
            if feeder.error is not None:
                raise feeder.error
            if self._fatal is not None:
                raise self._fatal
        finally:
            feeder.scope.cancel()
            self._feeders.discard(feeder)
            run.cancel()

    def _stop_feeders(self) -> None:
        for feeder in list(self._feeders):
            feeder.scope.cancel()

    def statistics(self) -> ClientStatistics:
        """Return a :class:`ClientStatistics` snapshot.  Does not checkpoint."""
        limiter = self._limiter.statistics()
        return ClientStatistics(
            limiter=limiter,
            sent=self._sent,
            succeeded=self._succeeded,
            failed=self._failed,
            retries=self._retries,
            rate_limited=self._rate_limited,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            skipped=self._skipped,
            audio_seconds=self._audio_seconds,
            spent=limiter.spent,
            max_cost=limiter.max_cost,
            endpoints=()
            if self._pool is None
            else self._pool.statistics(limiter.granted_by_member),
        )

    def shared_statistics(self) -> SharedQuotaStatistics | None:
        """The shared quota's counters (None without ``shared=``).  Does not checkpoint."""
        return None if self._leases is None else self._leases.statistics()

    @property
    def fatal_error(self) -> FatalError | None:
        """The error that stopped this client, or None while it runs."""
        return self._fatal

    # -- feeding --------------------------------------------------------------

    def _job(self, request: AnyRequest, run: _Run, stream: _StreamSink | None = None) -> _Job:
        if isinstance(request, TranscriptionRequest):
            # Size, duration and cost are known only after reading the file,
            # which the worker does in a thread (``_TranscriptionEndpoint.prepare``).
            group, choices = self._route(request)
            return _Job(
                request=request,
                endpoint=_TRANSCRIPTION,
                content=None,
                cost=None,
                group=group,
                run=run,
                queued_at=time.time(),
                choices=choices,
            )
        endpoint = _JSON_BY_TYPE.get(type(request)) or _json_endpoint_of(request)
        # Only what the caller gave can fail here (a response_model strict mode
        # cannot express, an input over a limit, a body that is not JSON): an
        # InputError for that item.  Anything else is a bug and propagates.
        body = endpoint.spec.body(request)
        if body.get("stream") is True and endpoint.assembler is not None:
            if endpoint.spec.kind == "chat":
                body = with_usage_requested(body)
            if stream is None:
                stream = _StreamSink()
        try:
            content = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise InputError(f"request {request.id!r}: {exc}") from None
        # counted once here, never again on retries
        tokens = endpoint.spec.estimate_tokens(
            body, default_output_tokens=self._default_output_tokens
        )
        if self._plain_jobs is False or request.endpoint is not None:
            return self._priced_job(request, endpoint, body, content, tokens, run, stream)
        return _Job(
            request=request,
            endpoint=endpoint,
            content=content,
            cost=Cost(tokens=tokens),
            group=self._groups.get(request.model, request.model),
            run=run,
            queued_at=time.time(),
            stream=stream,
        )

    def _priced_job(
        self,
        request: AnyRequest,
        endpoint: _JsonEndpoint,
        body: Mapping[str, Any],
        content: bytes,
        tokens: int,
        run: _Run,
        stream: _StreamSink | None,
    ) -> _Job:
        """A JSON job of a client with a spending cap or a pool (the plain one is :meth:`_job`'s).

        With a cap, its cost also holds its worst-case dollars: the input
        estimate with a margin (:func:`~engine._budget.worst_case_input`) at
        the input price, plus the whole output budget (``max_tokens`` /
        ``max_completion_tokens`` / ``max_output_tokens`` times ``n``, else
        ``default_output_tokens``) at the output price; embeddings have no
        output.  In a pool, it carries the members that may serve it.

        Raises:
            InputError: the model has no price; no member serves it, or it is
                pinned to a member the pool does not have.
        """
        price = None
        worst = 0.0
        if self._prices is not None:
            try:
                price = self._prices.require(request.model)
            except UnknownPriceError as exc:
                raise InputError(f"request {request.id!r}: {exc}") from None
            worst = _worst_case(endpoint, body, tokens, price, self._default_output_tokens)
        group, choices = self._route(request)
        return _Job(
            request=request,
            endpoint=endpoint,
            content=content,
            cost=Cost(tokens=tokens, dollars=worst),
            group=group,
            run=run,
            queued_at=time.time(),
            stream=stream,
            price=price,
            choices=choices,
        )

    def _route(self, request: AnyRequest) -> tuple[str, tuple[tuple[str, str], ...] | None]:
        """The queue ``request`` waits in, and the pool members that may serve it.

        Without a pool: its limit group and None.  In a pool: its limit group
        and every member serving its model, or, pinned (``endpoint=``), that
        member's group and that member alone.

        Raises:
            InputError: pinned without a pool, or to a member the pool has not
                (or that does not serve the model); no member serves the model.
        """
        group = self._groups.get(request.model, request.model)
        pool = self._pool
        pin = request.endpoint
        if pool is None:
            if pin is None:
                return group, None
            raise InputError(
                f"request {request.id!r}: endpoint {pin!r} asked for, but the client has "
                "no pool (open it with endpoints=[engine.Endpoint(...), ...])"
            )
        if pin is not None:
            try:
                choices = pool.pinned(pin, request.model, group)
            except KeyError as exc:
                raise InputError(f"request {request.id!r}: {exc.args[0]}") from None
            return choices[0][1], choices
        choices = pool.choices(request.model, group)
        if not choices:
            raise InputError(
                f"request {request.id!r}: no endpoint of the pool serves model {request.model!r}"
            )
        return group, choices

    def _acquire_failed(self, job: _Job, exc: RequestError, attempts: int) -> Result:
        """The result of a job refused a permit; a spent budget stops the client."""
        if self._fatal is None and self._limiter.budget_error is not None:
            self._fatal = self._limiter.budget_error
        return self._failure(job, exc, attempts)

    async def _feed(
        self, requests: Iterable[Any] | AsyncIterable[Any], run: _Run, feeder: _Feeder
    ) -> None:
        with feeder.scope:
            try:
                index = 0
                if isinstance(requests, AsyncIterable):
                    async for item in requests:
                        if not await self._feed_one(item, index, run, feeder):
                            break
                        index += 1
                else:
                    for item in requests:
                        if not await self._feed_one(item, index, run, feeder):
                            break
                        index += 1
            except trio.ClosedResourceError:
                pass  # the client is closing
            except Exception as exc:  # the caller's iterable failed: tell the caller
                feeder.error = exc
        feeder.done = True
        try:
            run.results.send_nowait(None)  # wake the consumer so it sees `done`
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # it is busy receiving results and will see `done` after them

    async def _feed_one(self, item: Any, index: int, run: _Run, feeder: _Feeder) -> bool:
        if self._fatal is not None or run.cancelled:
            return False
        feeder.submitted += 1
        try:
            request = coerce_request(item, index)
            job = self._job(request, run)
        except EngineError as exc:
            await self._deliver(run, self._input_failure(item, index, exc))
            return True
        await _send_soon(self._jobs, job)
        return True

    async def _deliver(self, run: _Run, result: Result) -> None:
        try:
            await _send_soon(run.results, result)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller left; nobody wants this result

    # -- workers --------------------------------------------------------------

    async def _worker(
        self, jobs: trio.MemoryReceiveChannel[_Job], http: _WorkerHTTP | _PoolHTTP
    ) -> None:
        async with jobs, http:
            job: _Job | None = None
            while True:
                if job is None:
                    try:
                        job = await _receive_soon(jobs)
                    except trio.EndOfChannel:
                        break
                run = job.run
                if run.cancelled:
                    job = None
                    continue
                # One cancel scope per streak of jobs from the same run (a map
                # is one run): entering and leaving a scope for every job cost
                # about a twentieth of the engine's CPU per request.
                with trio.CancelScope() as scope:
                    run.scopes.add(scope)
                    try:
                        job = await self._streak(job, jobs, http)
                    finally:
                        run.scopes.discard(scope)
                if scope.cancelled_caught:
                    job = None  # the run was cancelled; its result is not wanted

    async def _streak(
        self, job: _Job, jobs: trio.MemoryReceiveChannel[_Job], http: _WorkerHTTP | _PoolHTTP
    ) -> _Job | None:
        """Run ``job`` and the next ones of the same run; return the first of another run.

        Returns None when the jobs channel is closed.  Checkpoints.  Called
        inside the run's cancel scope: cancelling the run cancels the job in
        hand, or the wait for the next one (no job is taken then).
        """
        run = job.run
        while True:
            result = await self._execute(job, http)
            if result.ok:
                self._succeeded += 1
            else:
                self._failed += 1
            await self._deliver(run, result)
            try:
                job = await _receive_soon(jobs)
            except trio.EndOfChannel:
                return None
            if job.run is not run:
                return job
            if run.cancelled:
                return None

    async def _execute(self, job: _Job, http: _WorkerHTTP | _PoolHTTP) -> Result:
        """Run one job to its result: local checks, permits, attempts, retries."""
        if job.stream is not None:
            return await self._execute_stream(job, job.stream, http)
        endpoint = job.endpoint
        if job.cost is None:
            # Local checks (transcriptions) may settle the job before any permit.
            early = await endpoint.prepare(self, job)
            if early is not None:
                return early
            assert job.cost is not None
        request = job.request
        path = endpoint.path
        now = self._now
        started = now()
        attempts = 0
        failures = 0
        headers = _request_headers(endpoint, request)
        content = job.content
        while True:
            if self._fatal is not None:
                return self._failure(job, RunStoppedError(self._fatal.message), attempts)
            try:
                reservation = await self._limiter.acquire(job.group, job.cost, job.choices)
            except RequestError as exc:
                return self._acquire_failed(job, exc, attempts)
            conn = self._member_http(http, reservation) if type(http) is _PoolHTTP else http
            files = None
            if content is None:
                # Multipart: built again for every attempt, so a retry re-sends
                # the whole file (an httpx upload stream is consumed once).
                try:
                    files = await endpoint.build(job)
                except InputError as exc:
                    self._limiter.release_nowait(reservation)
                    return self._failure(job, exc, attempts)
                except BaseException:
                    self._limiter.release_nowait(reservation)
                    raise
            attempts += 1
            self._sent += 1
            sent_wall = time.time()
            sent_at = now()
            try:
                if files is None:
                    response = await conn.post(path, content=content, headers=headers)
                else:
                    response = await conn.post(path, data=job.form, files=files, headers=headers)
            except BaseException as exc:
                failures += 1
                final = await self._after_failed_send(
                    job, reservation, exc, failures, attempts, sent_wall
                )
                if final is not None:
                    return final
                continue
            latency = now() - sent_at
            status = response.status_code
            parsed = parse_rate_limit_headers(response.headers)
            limits = None if parsed.is_empty else parsed
            verdict = classify_response(status, response.headers, response.content)
            if verdict.action is Action.SUCCESS:
                return self._success(
                    job, response, reservation, limits, attempts, sent_wall, latency
                )
            final, failures = await self._refused(
                job,
                response,
                response.content,
                reservation,
                limits,
                verdict,
                _Tries(started, attempts, failures, sent_wall, latency),
            )
            if final is not None:
                return final

    async def _execute_stream(
        self, job: _Job, sink: _StreamSink, http: _WorkerHTTP | _PoolHTTP
    ) -> Result:
        """Run one streamed job to its result; the caller reading it learns when it is over."""
        sink.started = True
        try:
            return await self._stream_attempts(job, sink, http)
        finally:
            if sink.deltas is not None:
                sink.deltas.close()
            sink.finished.set()

    async def _stream_attempts(
        self, job: _Job, sink: _StreamSink, http: _WorkerHTTP | _PoolHTTP
    ) -> Result:
        """Attempts of a streamed job: permits and retries as in :meth:`_execute`.

        What fails before the body's first byte (connect, a 429 or 5xx
        answer, the wait for the head) is retried under the usual policy;
        what fails after it is the job's failed result, never retried (see
        :meth:`_read_stream`).
        """
        endpoint = job.endpoint
        assert isinstance(endpoint, _JsonEndpoint) and endpoint.assembler is not None
        assert job.content is not None and job.cost is not None
        make_assembler = endpoint.assembler
        headers = _request_headers(endpoint, job.request)
        headers["accept"] = "text/event-stream"
        started = trio.current_time()
        attempts = 0
        failures = 0
        while True:
            if self._fatal is not None:
                return self._failure(job, RunStoppedError(self._fatal.message), attempts)
            try:
                reservation = await self._limiter.acquire(job.group, job.cost, job.choices)
            except RequestError as exc:
                return self._acquire_failed(job, exc, attempts)
            conn = self._member_http(http, reservation) if type(http) is _PoolHTTP else http
            attempts += 1
            self._sent += 1
            sent_wall = time.time()
            reading = _Reading(make_assembler(), TokenClock(trio.current_time()), sink.deltas)
            result: Result | None = None
            try:
                async with _stream_post(conn, endpoint.path, job.content, headers) as response:
                    parsed = parse_rate_limit_headers(response.headers)
                    limits = None if parsed.is_empty else parsed
                    status = response.status_code
                    if 200 <= status < 300:
                        read = self._read_stream
                        if "json" in response.headers.get("content-type", ""):
                            read = self._read_whole  # the server would not stream
                        result = await read(
                            job, response, reservation, limits, reading, attempts, sent_wall
                        )
                    else:
                        content = await response.read_rest()
            except BaseException as exc:
                if reading.settled:
                    # Read and settled: only closing the connection failed, which
                    # costs the connection, not the answer; cancellation goes on.
                    if result is not None and classify_transport_error(exc) is not None:
                        return result
                    raise
                failures += 1
                final = await self._after_failed_send(
                    job, reservation, exc, failures, attempts, sent_wall
                )
                if final is not None:
                    return final
                continue
            if result is not None:
                return result
            latency = trio.current_time() - reading.clock.sent_at
            verdict = classify_response(status, response.headers, content)
            final, failures = await self._refused(
                job,
                response,
                content,
                reservation,
                limits,
                verdict,
                _Tries(started, attempts, failures, sent_wall, latency),
            )
            if final is not None:
                return final

    async def _read_whole(
        self,
        job: _Job,
        response: StreamedResponse,
        reservation: Reservation,
        limits: Any,
        reading: _Reading,
        attempts: int,
        sent_wall: float,
    ) -> Result:
        """Read a 2xx JSON answer to a streamed request (a server that does not
        stream) as a non-streamed one; its text goes to the caller in one piece.
        Checkpoints.

        Raises:
            httpx.TransportError: the body failed (nothing was handed on: the
                caller retries).
        """
        content = await response.read_rest()
        reading.settled = True
        latency = trio.current_time() - reading.clock.sent_at
        answer = _BufferedAnswer(response.status_code, response.headers, content)
        result = self._success(job, answer, reservation, limits, attempts, sent_wall, latency)
        if result.ok and isinstance(result.output, str) and result.output:
            await reading.forward(result.output)
        return result

    async def _read_stream(
        self,
        job: _Job,
        response: StreamedResponse,
        reservation: Reservation,
        limits: Any,
        reading: _Reading,
        attempts: int,
        sent_wall: float,
    ) -> Result:
        """Read a 2xx event stream to its result; settle the permit.  Checkpoints.

        The usage the stream reported settles the permit; without it (cut
        off, the caller's ``stream_options`` left it out) the estimate stays
        charged.  A failure after the body's first byte is the job's failed
        result (:class:`~engine.StreamInterruptedError`, or the
        :class:`~engine.ResponseValidationError` of an unusable event).

        Raises:
            httpx.TransportError (and whatever else a transport raises): the
                body failed before its first byte, or was empty: the caller
                retries.
        """
        assembler = reading.assembler
        clock = reading.clock
        request_id = response.headers.get("x-request-id")
        decoder = SSEDecoder()
        received = False
        try:
            while not assembler.done:
                data = await response.receive_some()
                if not data:
                    break
                received = True
                now = trio.current_time()
                for event in decoder.feed(data):
                    text, output = assembler.feed(event.event, event.data)
                    if output:
                        clock.mark(now)
                    if text:
                        await reading.forward(text)
                    if assembler.done:
                        break
            if not received:
                raise httpx.RemoteProtocolError("the event stream ended before its first byte")
            decoder.close()
            if not assembler.complete():
                raise StreamInterruptedError(
                    "the event stream ended before the answer was complete",
                    raw=assembler.text,
                )
        except Exception as exc:
            if not received and classify_transport_error(exc) is not None:
                raise
            reading.settled = True
            self._limiter.settle_nowait(reservation, headers=limits)
            error = exc if isinstance(exc, EngineError) else _interrupted(exc, assembler.text)
            error.status_code = error.status_code or response.status_code
            error.request_id = error.request_id or request_id
            failed = self._failure(
                job,
                error,
                attempts,
                sent_wall,
                last=(response.status_code, request_id),
                latency=trio.current_time() - clock.sent_at,
            )
            # what did arrive was timed like any stream's
            failed.timings.ttft = clock.ttft
            failed.timings.itl = clock.itl
            return failed
        if assembler.done:
            await _drain(response)
        reading.settled = True
        latency = trio.current_time() - clock.sent_at
        timings = Timings(
            queued_at=job.queued_at,
            sent_at=sent_wall,
            latency=latency,
            finished_at=time.time(),
            ttft=clock.ttft,
            itl=clock.itl,
        )
        answer = Answer(
            orjson.dumps(assembler.body()), response.status_code, request_id, attempts, timings
        )
        endpoint = job.endpoint
        assert isinstance(endpoint, _JsonEndpoint)
        try:
            result, used_tokens, input_tokens, output_tokens = endpoint.spec.parse(
                job.request, answer
            )
        except ResponseValidationError as error:
            self._limiter.settle_nowait(reservation, headers=limits, latency=latency)
            self._count_member_error(reservation)
            return self._failure(
                job,
                error,
                attempts,
                sent_wall,
                latency=latency,
                last=(response.status_code, request_id),
            )
        self._limiter.settle_nowait(
            reservation,
            headers=limits,
            used_tokens=used_tokens if assembler.usage_reported else None,
            latency=latency,
            spent=(
                _spent(job.price, result, input_tokens, output_tokens)
                if job.price is not None and assembler.usage_reported
                else None
            ),
        )
        self._prompt_tokens += input_tokens
        self._completion_tokens += output_tokens
        if self._pool is not None:
            self._count_member_usage(reservation, input_tokens, output_tokens)
        typed: Result = result
        return typed

    async def _after_failed_send(
        self,
        job: _Job,
        reservation: Reservation,
        exc: BaseException,
        failures: int,
        attempts: int,
        sent_wall: float,
    ) -> Result | None:
        """After sending (or reading) raised ``exc``: settle, then retry or give up.

        The estimate stays charged: the request may have reached the server.
        ``exc`` is raised again unless it is a transport error; then the failed
        result once ``failures`` reached ``max_attempts``, else None after
        backing off (the caller tries again).  Checkpoints when it backs off.
        """
        self._limiter.settle_nowait(reservation)
        self._count_member_error(reservation)
        verdict = classify_transport_error(exc)
        if verdict is None:
            raise exc
        if self._pool is not None:
            self._cool_unreachable_member(reservation)
        if failures >= self._max_attempts:
            return self._failure(
                job,
                error_from_verdict(verdict, status_code=None, request_id=None, attempts=attempts),
                attempts,
                sent_wall,
            )
        self._retries += 1
        await self._backoff(failures)
        return None

    async def _refused(
        self,
        job: _Job,
        head: _Head,
        content: bytes,
        reservation: Reservation,
        limits: Any,
        verdict: Verdict,
        tries: _Tries,
    ) -> tuple[Result | None, int]:
        """Act on an answer that is not a success: a 429 cools the group down, a
        retryable status backs off; returns the failed result, or None to try
        again, and the failures counted so far.  Checkpoints when it backs off.

        ``head`` is the answer's status and headers, ``content`` its body.
        """
        status = head.status_code
        request_id = head.headers.get("x-request-id")
        last = (status, request_id)
        action = verdict.action
        attempts = tries.attempts
        failures = tries.failures
        member = None if self._pool is None else self._pool.member(reservation.group)
        if action is Action.RATE_LIMITED:
            self._rate_limited += 1
            if member is not None:
                member.rate_limited += 1
            self._limiter.rate_limited_nowait(
                reservation,
                headers=limits,
                retry_after=verdict.retry_after,
                limit_type=verdict.limit_type,
            )
            if trio.current_time() - tries.started > self._wait_budget:
                error: EngineError = RateLimitWaitExceeded(
                    f"still rate limited after waiting {self._wait_budget:g} s: {verdict.message}",
                    status_code=status,
                    request_id=request_id,
                )
                return self._failure(
                    job,
                    error,
                    attempts,
                    tries.sent_wall,
                    response=_json_or_none(content),
                    last=last,
                ), failures
            return None, failures
        # An error status is not billed (OpenAI's policy): its worst case goes back.
        self._limiter.settle_nowait(reservation, headers=limits, latency=tries.latency, spent=0.0)
        if member is not None:
            member.errors += 1
        if action is Action.RETRY:
            failures += 1
            if failures < self._max_attempts:
                self._retries += 1
                await self._backoff(failures, verdict)
                return None, failures
        error = error_from_verdict(
            verdict, status_code=status, request_id=request_id, attempts=attempts
        )
        if isinstance(error, FatalError):
            if member is not None and self._retire(member, error):
                # Sent again: the limiter routes around the retired member (a
                # request pinned to it is refused there, endpoint_retired).
                return None, failures
            self._stop(error)
        return self._failure(
            job,
            error,
            attempts,
            tries.sent_wall,
            response=_json_or_none(content),
            last=last,
            latency=tries.latency,
        ), failures

    async def _backoff(self, failures: int, verdict: Verdict | None = None) -> None:
        delay = backoff_delay(
            failures, base=self._retry_base_delay, cap=self._retry_max_delay, rng=self._rng
        )
        if verdict is not None and verdict.retry_after is not None:
            delay = max(delay, min(verdict.retry_after, self._retry_max_delay))
        if delay > 0:
            await trio.sleep(delay)

    def _retire(self, member: _Member, error: FatalError) -> bool:
        """Retire a pool member that answered ``error`` (401/403, ``insufficient_quota``).

        Returns True while other members serve (the request goes to them),
        False when it was the last (the client stops).  Warns once per member.
        """
        assert self._pool is not None
        name = member.endpoint.name
        if member.retired is None:
            member.retired = error
            serving = self._pool.serving()
            self._limiter.retire_nowait(name, error.message)
            _pool_logger.warning(
                "endpoint %r retired (%s); %s",
                name,
                error.message,
                f"its work goes to {', '.join(serving)}" if serving else "no endpoint is left",
            )
        return bool(self._pool.serving())

    def _count_member_usage(
        self, reservation: Reservation, input_tokens: int, output_tokens: int
    ) -> None:
        """In a pool: count a usable answer and its tokens for its member."""
        assert self._pool is not None
        member = self._pool.member(reservation.group)
        member.unreachable_streak = 0
        member.succeeded += 1
        member.prompt_tokens += input_tokens
        member.completion_tokens += output_tokens

    def _count_member_error(self, reservation: Reservation) -> None:
        """In a pool: count an attempt that failed (unusable answer, transport error)."""
        if self._pool is not None:
            self._pool.member(reservation.group).errors += 1

    def _cool_unreachable_member(self, reservation: Reservation) -> None:
        """A pool member the request could not reach (or lost) cools down: the others take the work.

        The pause doubles with each such failure in a row, from
        ``retry_base_delay`` (at least 50 ms) up to ``retry_max_delay``; an
        answer from the member ends the streak.
        """
        assert self._pool is not None
        member = self._pool.member(reservation.group)
        member.unreachable_streak += 1
        pause = max(self._retry_base_delay, 0.05) * 2 ** min(member.unreachable_streak - 1, 16)
        until = self._now() + min(pause, max(self._retry_max_delay, 0.05))
        self._limiter.cool_down_nowait(reservation.group, until, refused=False)

    def _member_http(self, http: _PoolHTTP, reservation: Reservation) -> _WorkerHTTP:
        """The worker's connection to the pool member ``reservation`` was granted on."""
        assert self._pool is not None
        member = self._pool.member(reservation.group)
        member.sent += 1
        return http.for_member(member.endpoint.name)

    def _stop(self, error: FatalError) -> None:
        if self._fatal is None:
            self._fatal = error
            self._limiter.stop_nowait(error)

    def _success(
        self,
        job: _Job,
        response: ResponseLike,
        reservation: Reservation,
        limits: Any,
        attempts: int,
        sent_wall: float,
        latency: float,
    ) -> Result:
        try:
            result, used_tokens, input_tokens, output_tokens = job.endpoint.succeed(
                self, job, response, attempts, sent_wall, latency
            )
        except ResponseValidationError as error:
            # A 2xx whose body is unusable: the item fails, the run goes on.
            self._limiter.settle_nowait(reservation, headers=limits, latency=latency)
            self._count_member_error(reservation)
            return self._failure(
                job,
                error,
                attempts,
                sent_wall,
                latency=latency,
                last=(response.status_code, response.headers.get("x-request-id")),
            )
        self._limiter.settle_nowait(
            reservation,
            headers=limits,
            used_tokens=used_tokens,
            latency=latency,
            spent=None
            if job.price is None
            else _spent(job.price, result, input_tokens, output_tokens),
        )
        self._prompt_tokens += input_tokens
        self._completion_tokens += output_tokens
        if self._pool is not None:
            self._count_member_usage(reservation, input_tokens, output_tokens)
        return result

    def _failure(
        self,
        job: _Job,
        error: EngineError,
        attempts: int = 0,
        sent_wall: float | None = None,
        *,
        response: dict[str, Any] | None = None,
        last: tuple[int | None, str | None] = (None, None),
        latency: float | None = None,
    ) -> Result:
        result = job.endpoint.result(
            job,
            job.request.id or "",
            job.request.model,
            attempts=attempts,
            timings=Timings(
                queued_at=job.queued_at, sent_at=sent_wall, latency=latency, finished_at=time.time()
            ),
            error=ErrorInfo.from_exception(error),
            status_code=last[0] if last[0] is not None else error.status_code,
            request_id=last[1] if last[1] is not None else error.request_id,
            response=response,
            raw=getattr(error, "raw", None),
        )
        return result

    def _input_failure(self, item: Any, index: int, error: EngineError) -> Result:
        """The result for a ``map`` input that never became a request."""
        endpoint = _BY_KIND[input_kind(item)]
        now = time.time()
        result = endpoint.result(
            None,
            _input_id(item, index),
            "",
            timings=Timings(queued_at=now, finished_at=now),
            error=ErrorInfo.from_exception(error),
            status_code=error.status_code,
            request_id=error.request_id,
        )
        return result


class _Endpoint:
    """How one kind of request travels: its path, its attempts, its answers.

    Endpoints hold no state; one instance of each serves every client.
    """

    path: str = ""
    #: The headers of every request of this kind (the client adds its own);
    #: read-only, copied per job.
    base_headers: Mapping[str, str] = {}

    async def prepare(self, client: Client, job: _Job) -> Result | None:
        """Local checks before any permit; set ``job.cost``.  Checkpoints.

        Returns a final result (skipped, or failed locally) or None to go on.
        """
        raise NotImplementedError

    async def build(self, job: _Job) -> dict[str, Any]:
        """The ``files`` of one multipart attempt.  Checkpoints.

        Raises:
            InputError: the upload cannot be read any more.
        """
        raise NotImplementedError

    def succeed(
        self,
        client: Client,
        job: _Job,
        response: ResponseLike,
        attempts: int,
        sent_wall: float,
        latency: float,
    ) -> Parsed[Result]:
        """The result of a 2xx answer with the tokens it used (:class:`engine.endpoints.Parsed`).

        Raises:
            ResponseValidationError: the body is malformed or misses fields.
        """
        raise NotImplementedError

    def result(
        self, job: _Job | None, id: str, model: str, *, raw: str | None = None, **fields: Any
    ) -> Result:
        """A result of this kind with ``fields`` (for failures); ``job`` may be None.

        ``raw`` is the unusable content of a :class:`ResponseValidationError`,
        kept where the result kind has room for it.
        """
        raise NotImplementedError


#: Endpoint kind -> the assembler of its streamed answers (see engine/endpoints/_stream.py).
_ASSEMBLERS: dict[str, Callable[[], StreamAssembler]] = {
    "chat": ChatStreamAssembler,
    "responses": ResponseStreamAssembler,
}


class _JsonEndpoint(_Endpoint):
    """A JSON endpoint of :mod:`engine.endpoints` (chat, responses, embeddings) in the loop.

    Its body is encoded once, when the job is made (``Client._job``), so it
    needs neither ``prepare`` nor ``build``; ``spec`` builds, prices and
    reads the requests.
    """

    def __init__(self, spec: JsonEndpoint[Any, Any]) -> None:
        self.spec = spec
        self.path = spec.path
        # Bound once: one attribute lookup fewer per answer on the chat fast path.
        self._parse = spec.parse
        #: Makes the assembler of a streamed answer; None: this endpoint does not stream.
        self.assembler: Callable[[], StreamAssembler] | None = _ASSEMBLERS.get(spec.kind)

    base_headers: Mapping[str, str] = {"content-type": "application/json"}

    def succeed(
        self,
        client: Client,
        job: _Job,
        response: ResponseLike,
        attempts: int,
        sent_wall: float,
        latency: float,
    ) -> Parsed[Result]:
        answer = _answer(job, response, attempts, sent_wall, latency)
        parsed: Parsed[Result] = self._parse(job.request, answer)
        return parsed

    def result(
        self, job: _Job | None, id: str, model: str, *, raw: str | None = None, **fields: Any
    ) -> Result:
        result: Result = self.spec.failed(
            None if job is None else job.request, id=id, model=model, raw=raw, **fields
        )
        return result


class _TranscriptionEndpoint(_Endpoint):
    path = TRANSCRIPTION_PATH

    async def prepare(self, client: Client, job: _Job) -> Result | None:
        request = job.request
        assert isinstance(request, TranscriptionRequest)
        try:
            # mutagen and file reads block: keep them off the event loop.
            audio = await trio.to_thread.run_sync(
                functools.partial(probe_audio, request.source, filename=request.filename)
            )
        except InputError as exc:
            return client._failure(job, exc)
        job.audio = audio
        if request.min_seconds and audio.duration < request.min_seconds:
            client._skipped += 1
            now = time.time()
            return TranscriptionResult(
                id=request.id or "",
                file=audio.name,
                duration_seconds=audio.duration,
                model=request.model,
                timings=Timings(queued_at=job.queued_at, finished_at=now),
                skipped=True,
                skip_reason=(
                    f"{audio.duration:.2f} s of audio is shorter than "
                    f"min_seconds={request.min_seconds:g}"
                ),
            )
        job.form = request.form_fields()
        job.cost = Cost(tokens=math.ceil(audio.duration * client._audio_tokens_per_second))
        return None

    async def build(self, job: _Job) -> dict[str, Any]:
        audio = job.audio
        assert audio is not None
        data = audio.data
        if data is None:
            data = await trio.to_thread.run_sync(read_upload, audio)
        return {"file": (audio.name, data, audio.mime_type)}

    def succeed(
        self,
        client: Client,
        job: _Job,
        response: ResponseLike,
        attempts: int,
        sent_wall: float,
        latency: float,
    ) -> Parsed[Result]:
        request = job.request
        audio = job.audio
        assert isinstance(request, TranscriptionRequest) and audio is not None
        answer = _answer(job, response, attempts, sent_wall, latency)
        # text, srt and vtt answers are kept as text; json ones are parsed from the bytes
        text = "" if request.response_format in ("json", "verbose_json") else response.text
        parsed = parse_transcription(request, audio, answer, text)
        client._audio_seconds += parsed.result.usage.seconds
        return Parsed(*parsed)

    def result(
        self, job: _Job | None, id: str, model: str, *, raw: str | None = None, **fields: Any
    ) -> TranscriptionResult:
        file = ""
        duration = None
        if job is not None:
            request = job.request
            if job.audio is not None:
                file, duration = job.audio.name, job.audio.duration
            elif isinstance(request, TranscriptionRequest):
                file = source_name(request.source, request.filename)
        return TranscriptionResult(
            id=id,
            model=model or "whisper-1",
            file=file,
            duration_seconds=duration,
            **fields,
        )


_TRANSCRIPTION = _TranscriptionEndpoint()
_JSON_ENDPOINTS = tuple(_JsonEndpoint(spec) for spec in JSON_ENDPOINTS)
#: Request class -> its endpoint: one dict lookup per job on the chat fast path.
_JSON_BY_TYPE: dict[type[Any], _JsonEndpoint] = {
    endpoint.spec.request_type: endpoint for endpoint in _JSON_ENDPOINTS
}
#: ``engine.endpoints.input_kind`` -> endpoint, for inputs that never became a request.
_BY_KIND: dict[str, _Endpoint] = {
    "transcription": _TRANSCRIPTION,
    **{endpoint.spec.kind: endpoint for endpoint in _JSON_ENDPOINTS},
}


@attrs.define(eq=False, slots=True)
class _Reading:
    """One streamed attempt as it is read: what arrived, when, and who reads the text.

    ``settled`` is set once the attempt's permit is settled, so that an error
    while closing the stream does not settle it twice.
    """

    assembler: StreamAssembler
    clock: TokenClock
    deltas: trio.MemorySendChannel[str] | None
    settled: bool = False

    async def forward(self, text: str) -> None:
        """Hand ``text`` to the caller reading the stream, if one still is.  Checkpoints
        only when the caller has fallen behind (the body is then read no faster)."""
        if self.deltas is None:
            return
        try:
            await _send_soon(self.deltas, text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The caller left its block; the cancellation that follows ends the read.
            self.deltas = None


@attrs.frozen
class _BufferedAnswer:
    """A whole answer read from a :class:`StreamedResponse`, as a :class:`ResponseLike`."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


class StreamedResponse(Protocol):
    """A response whose body is read as it arrives (``engine._http``'s ``stream_post``)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    async def receive_some(self) -> bytes: ...
    async def read_rest(self) -> bytes: ...


def _stream_post(
    http: _WorkerHTTP, path: str, content: bytes, headers: Mapping[str, str]
) -> AbstractAsyncContextManager[StreamedResponse]:
    """POST ``content`` and read the answer as it arrives (see :class:`StreamedResponse`)."""
    return http.stream_post(path, content=content, headers=headers)


#: Seconds a body may go on after its stream said it is over (``[DONE]``) before
#: the connection is dropped instead of kept for the next request.
_DRAIN_SECONDS = 1.0


async def _drain(response: StreamedResponse) -> None:
    """Read what is left after the stream said it is over, so the connection can be
    used again (the body ends right after, from any server seen so far; one that
    does not within ``_DRAIN_SECONDS`` loses its connection).  A failure here is
    of no consequence to the answer.  Checkpoints."""
    with trio.move_on_after(_DRAIN_SECONDS):
        try:
            while await response.receive_some():
                pass
        except Exception as exc:
            if classify_transport_error(exc) is None:
                raise


def _interrupted(exc: Exception, text: str) -> StreamInterruptedError:
    """The error for a stream that broke off with ``exc`` after its first byte."""
    detail = redact(str(exc))
    return StreamInterruptedError(
        f"the event stream broke off after it had begun ({type(exc).__name__}"
        + (f": {detail})" if detail else ")")
        + "; not retried",
        raw=text,
    )


def _request_headers(endpoint: _Endpoint, request: AnyRequest) -> dict[str, str]:
    """The headers of one job's attempts: the endpoint's, and the request's id when
    it can travel as ``x-client-request-id`` (printable ASCII, at most 512 characters)."""
    headers = {**endpoint.base_headers}
    if (
        request.id is not None
        and request.id.isascii()
        and request.id.isprintable()
        and len(request.id) <= 512
    ):
        headers["x-client-request-id"] = request.id
    return headers


def _chat_request(
    messages: str | Iterable[Mapping[str, Any]],
    model: str,
    response_model: type[pydantic.BaseModel] | None,
    id: str | None,
    params: dict[str, Any],
    endpoint: str | None = None,
) -> ChatRequest:
    """The request :meth:`Client.chat` and :meth:`Client.stream` send (``id``: ``"chat"``)."""
    return ChatRequest(
        messages=messages,
        model=model,
        id=id if id is not None else "chat",
        response_model=response_model,
        params=params,
        endpoint=endpoint,
    )


def _response_request(
    input: str | Iterable[Mapping[str, Any]],
    model: str,
    instructions: str | None,
    response_model: type[pydantic.BaseModel] | None,
    id: str | None,
    params: dict[str, Any],
    endpoint: str | None = None,
) -> ResponseRequest:
    """The request :meth:`Client.respond` and :meth:`Client.stream_response` send
    (``id`` default ``"response"``)."""
    return ResponseRequest(
        input=input,
        model=model,
        instructions=instructions,
        id=id if id is not None else "response",
        response_model=response_model,
        params=params,
        endpoint=endpoint,
    )


def _json_endpoint_of(request: AnyRequest) -> _JsonEndpoint:
    """The endpoint of a request whose class is a subclass of an endpoint's request class."""
    for endpoint in _JSON_ENDPOINTS:
        if isinstance(request, endpoint.spec.request_type):
            return endpoint
    raise TypeError(f"no endpoint serves {type(request).__name__}")


@attrs.define(eq=False)
class _Feeder:
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    submitted: int = 0
    delivered: int = 0
    done: bool = False
    error: Exception | None = None


def _worst_case(
    endpoint: _JsonEndpoint,
    body: Mapping[str, Any],
    tokens: int,
    price: Price,
    default_output_tokens: int,
) -> float:
    """Dollars a request may cost at most: its input with a margin, its whole output budget."""
    output = _output_budget(endpoint.spec.kind, body, default_output_tokens)
    return price.cost(worst_case_input(max(0, tokens - output)), output)


def worst_case_cost(
    item: Any, prices: PriceTable, *, default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> float | None:
    """The most one ``map`` input (a request or a Batch-API line) may cost, in dollars.

    What a client with ``max_cost`` reserves for it.  None for an input that
    is not a priced request (a transcription, an unreadable line, a model
    without a price).  Does not checkpoint; counts tokens, so it takes about
    as long as building the request.
    """
    try:
        request = coerce_request(item, 0)
    except EngineError:
        return None
    if isinstance(request, TranscriptionRequest):
        return None
    endpoint = _JSON_BY_TYPE.get(type(request)) or _json_endpoint_of(request)
    price = prices.price_for(request.model)
    if price is None:
        return None
    try:
        body = endpoint.spec.body(request)
    except EngineError:
        return None
    tokens = endpoint.spec.estimate_tokens(body, default_output_tokens=default_output_tokens)
    return _worst_case(endpoint, body, tokens, price, default_output_tokens)


def _spent(price: Price, result: Any, input_tokens: int, output_tokens: int) -> float:
    """Dollars an answer cost: its usage, cached prompt tokens at the cached price.

    The cached count is read from the answer's body (chat's
    ``usage.prompt_tokens_details.cached_tokens``, the Responses API's
    ``usage.input_tokens_details.cached_tokens``) only here, when a cap is
    set; without it every prompt token is charged the input price.
    """
    cached = 0
    body = getattr(result, "response", None)
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict):
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        if isinstance(details, dict):
            given = details.get("cached_tokens")
            if isinstance(given, int) and 0 < given <= input_tokens:
                cached = given
    return price.cost(input_tokens, output_tokens, cached_tokens=cached)


def _output_budget(kind: str, body: Mapping[str, Any], default: int) -> int:
    """Output tokens a request of ``kind`` may be billed for at most."""
    if kind == "chat":
        return output_budget(body, default)
    if kind == "responses":
        given = body.get("max_output_tokens")
        return int(given) if isinstance(given, int) else default
    return 0  # embeddings have no output


def _input_id(item: Any, index: int) -> str:
    if (
        isinstance(item, ChatRequest | TranscriptionRequest | ResponseRequest | EmbeddingRequest)
        and item.id is not None
    ):
        return item.id
    if isinstance(item, Mapping) and item.get("custom_id") is not None:
        return str(item["custom_id"])
    return str(index)


def _json_or_none(content: bytes) -> dict[str, Any] | None:
    """An error response's body as a dict (None unless a JSON object), keys masked.

    The body is kept on the result and written to OUTPUT, and some servers echo
    the Authorization header in it: API-key-shaped text is redacted first
    (masking inside a JSON string keeps the JSON valid).
    """
    try:
        value = orjson.loads(redact(content.decode("utf-8")))
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _answer(
    job: _Job, response: ResponseLike, attempts: int, sent_wall: float, latency: float
) -> Answer:
    """A 2xx answer as the endpoints read it, with its timings (ended now)."""
    timings = Timings(
        queued_at=job.queued_at, sent_at=sent_wall, latency=latency, finished_at=time.time()
    )
    # tuple.__new__, not Answer(...): the named tuple's own __new__ is a
    # Python call, one per answer on the chat fast path.
    return _new_tuple(
        Answer,
        (
            response.content,
            response.status_code,
            response.headers.get("x-request-id"),
            attempts,
            timings,
        ),
    )


def _client_headers(api_key: str | None) -> dict[str, str]:
    """The headers every request of a client (or of one pool member) carries."""
    headers = {"user-agent": f"quota-engine/{__version__}"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return headers


def _check_base_url(base_url: str) -> str:
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https"):
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if url.scheme == "http" and url.host not in _LOOPBACK_HOSTS:
        warnings.warn(
            f"base_url {base_url!r} is plain http to a non-loopback host: "
            "the API key would travel unencrypted",
            stacklevel=3,
        )
    return base_url.rstrip("/")


@asynccontextmanager
async def open_client(
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    limits: Limits | Mapping[str, Limits] | None = None,
    concurrency: int | None = None,
    max_attempts: int = 5,
    groups: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    http_timeout: httpx.Timeout = DEFAULT_TIMEOUT,
    default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    retry_base_delay: float = 0.5,
    retry_max_delay: float = 20.0,
    rate_limit_wait_budget: float = 600.0,
    audio_tokens_per_second: float = 0.0,
    shared: RedisQuota | None = None,
    max_cost: float | None = None,
    prices: PriceTable | str | os.PathLike[str] | None = None,
    latency_histogram: bool = False,
    endpoints: Sequence[Endpoint] | None = None,
) -> AsyncIterator[Client]:
    """Open a client; leaving the block waits for its work and closes connections.

    Args:
        base_url: OpenAI-SDK-style base URL ending in ``/v1``.  Default:
            ``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.  Plain
            http to a non-loopback host warns.
        api_key: default ``$OPENAI_API_KEY``.  Never logged or shown.
        limits: an :class:`~engine.Limits` for every model, a mapping from
            model (or group) to :class:`~engine.Limits`, or None (default) to
            learn the limits from the server's ``x-ratelimit-*`` headers.
        concurrency: the most requests in flight.  None (default): up to 512,
            bounded by what the quota needs at the observed latency.
        max_attempts: attempts per request for 408/409/5xx/transport errors
            (default 5); 429 waits do not count.
        groups: model -> limit group name, for models that share limits
            (default: each model is its own group).
        transport: an httpx transport shared by all workers (tests pass
            ``httpx.ASGITransport(engine.mock.create_app(...))``).  Default:
            one keep-alive connection per worker.
        http_timeout: per-request HTTP timeouts (default 600 s, connect 10 s).
        default_output_tokens: output budget reserved per choice when a
            request sets no ``max_tokens`` (default 512).
        retry_base_delay / retry_max_delay: full-jitter backoff bounds in
            seconds (defaults 0.5 and 20); 0 makes retries instant.
        rate_limit_wait_budget: seconds one request may keep drawing 429s
            before it fails with ``RateLimitWaitExceeded`` (default 600).
        audio_tokens_per_second: tokens a transcription reserves per second
            of audio against a tokens-per-minute limit (default 0: a
            transcription costs one request and no tokens).
        shared: an :class:`~engine.RedisQuota` to share the quota with other
            processes through Redis (default None: this process alone).
            See docs/shared-quota.md.
        max_cost: a spending cap in US dollars for everything this client
            sends, across models and limit groups (default None: no cap).
            Each permit reserves its request's worst case and settles with
            the usage its answer reports; no permit is granted that could
            take spending over the cap; once the next request cannot fit,
            the client stops (:class:`~engine.BudgetExhaustedError`) and
            requests not sent come back ``run_stopped``.  A request whose
            worst case alone exceeds the cap fails with
            :class:`~engine.OverBudgetError`.  Chat, responses and
            embeddings are priced; transcriptions are not (they cost 0
            against the cap).  See docs/guide.md, "A spending cap".
        prices: the prices ``max_cost`` is counted in: a
            :class:`~engine.PriceTable`, or the path of a JSON prices file
            (models it names override the shipped table), or None (default:
            the table shipped in ``engine/prices.json``).  A request for a
            model without a price fails as an input error, unsent.
        latency_histogram: count every answered attempt's latency in
            buckets from the start (``statistics().limiter.latency_counts``,
            the metrics' histogram); default False: only once
            :mod:`engine.metrics` is given the client.
        endpoints: a pool of :class:`~engine.Endpoint` members (several keys,
            deployments or providers) instead of ``base_url`` / ``api_key``
            / ``limits`` (default None: no pool).  Each member's limit
            groups are quota groups of their own; a request goes to the
            member serving its model that can take it soonest (ties: the
            fewest granted per unit of ``weight``), or to the one it is
            pinned to (``endpoint=``; pinned to a member retired since, it
            fails unsent with code ``endpoint_retired``).  A member answering 401/403 or
            ``insufficient_quota`` is retired with a warning (logger
            ``engine.pool``) and its requests go to the others; the client
            stops only when none is left.  Per-member counters:
            ``statistics().endpoints``.  With ``shared``, each member's
            quota is shared on its own.  See docs/guide.md, "A pool of keys".

    Entering checkpoints (it starts the client's tasks); leaving waits for
    the work in flight.  Exceptions leave one at a time, never as an
    exception group: whatever the body raises (``client.chat``'s
    :class:`~engine.EngineError`, your own) comes out unchanged, the same
    object with its ``__cause__`` and ``__context__``; ``trio.Cancelled``
    from an enclosing cancel scope and ``KeyboardInterrupt`` pass through.

    Raises:
        ValueError: an option is out of range (before anything starts).
        BackgroundTaskError: one of the client's own tasks (limiter,
            workers, timeout watch, shared-quota leases) failed — a bug or a
            broken dependency; the exception group is its ``__cause__``.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if not audio_tokens_per_second >= 0:
        raise ValueError("audio_tokens_per_second must be >= 0")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    pool: Pool | None = None
    if endpoints is not None:
        if base_url is not None or api_key is not None or limits is not None:
            raise ValueError(
                "with endpoints=, give base_url, api_key and limits on each engine.Endpoint"
            )
        pool = Pool([attrs.evolve(e, base_url=_check_base_url(e.base_url)) for e in endpoints])
        limits = pool.limits
    budget = Budget(max_cost) if max_cost is not None else None
    price_table: PriceTable | None = None
    if budget is not None:
        price_table = prices if isinstance(prices, PriceTable) else load_prices(prices)
    if pool is None:
        base_url = _check_base_url(
            base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        )
        api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    else:
        base_url = pool.endpoints[0].base_url
    headers = _client_headers(api_key)
    workers = concurrency or AUTO_MAX_CONCURRENCY
    leases = LeaseManager(shared, limits) if shared is not None else None
    limiter = Limiter(
        QuotaBook(
            limits,
            shared=leases is not None,
            shared_pace=leases is not None,
            wall_offset=time.time() - trio.current_time(),
        ),
        max_in_flight=workers,
        auto_in_flight=concurrency is None,
        budget=budget,
        weights=None if pool is None else pool.weights,
        **(leases.callbacks() if leases is not None else LimiterCallbacks()),
    )
    if latency_histogram:
        limiter.count_latencies()
    jobs_send, jobs_receive = trio.open_memory_channel[_Job](0)
    watch = TimeoutWatch()
    # Service nurseries: what the caller's body raises leaves unchanged, not
    # wrapped in an exception group by each of the two nurseries.
    async with open_service_nursery("open_client") as nursery:
        await nursery.start(limiter.run)
        if transport is None:
            await nursery.start(watch.run)
        if leases is not None:
            leases.attach(limiter)
            await nursery.start(leases.run)
        try:
            async with open_service_nursery("open_client") as work:
                client = Client(
                    nursery=work,
                    limiter=limiter,
                    jobs=jobs_send,
                    groups=groups or {},
                    max_attempts=max_attempts,
                    retry_base_delay=retry_base_delay,
                    retry_max_delay=retry_max_delay,
                    rate_limit_wait_budget=rate_limit_wait_budget,
                    default_output_tokens=default_output_tokens,
                    base_url=base_url,
                    audio_tokens_per_second=audio_tokens_per_second,
                    prices=price_table,
                    pool=pool,
                )
                client._leases = leases
                connect = functools.partial(
                    make_async_client, timeout=http_timeout, transport=transport, watch=watch
                )
                members = {
                    member.name: functools.partial(
                        connect, member.base_url, headers=_client_headers(member.api_key)
                    )
                    for member in (pool.endpoints if pool is not None else ())
                }
                with jobs_receive:
                    for _ in range(workers):
                        http: _WorkerHTTP | _PoolHTTP = (
                            connect(base_url, headers=headers)
                            if pool is None
                            else _PoolHTTP(members)
                        )
                        work.start_soon(client._worker, jobs_receive.clone(), http)
                async with jobs_send:
                    yield client
                # Maps abandoned without being exhausted stop feeding; the
                # workers finish the jobs they hold, then see the channel close.
                client._stop_feeders()
        finally:
            if leases is not None:
                # Hand unused capacity back to the other processes (bounded).
                with trio.CancelScope(shield=True):
                    await leases.aclose()
            limiter.close()
            watch.close()
