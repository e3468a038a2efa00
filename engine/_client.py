"""The client: ``open_client``, workers, the request loop and the failure policy.

Shape (DESIGN.md §1): ``open_client`` owns a nursery holding the limiter task
and a pool of worker tasks.  Callers hand *jobs* to the workers over a bounded
channel (backpressure: a slow API slows the producer, memory stays flat); each
worker asks the limiter for a permit, sends the request on its own HTTP
connection, reports the outcome to the limiter and hands the result back.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import orjson
import pydantic
import trio

from engine._errors import (
    EngineError,
    FatalError,
    RateLimitWaitExceeded,
    RequestError,
    ResponseValidationError,
    RunStoppedError,
    redact,
)
from engine._headers import parse_rate_limit_headers
from engine._http import make_async_client
from engine._limiter import Limiter, LimiterStatistics
from engine._quota import Cost, Limits, QuotaBook, Reservation
from engine._requests import CHAT_PATH, ChatRequest, coerce_request
from engine._results import ChatResult, ErrorInfo, Timings, Usage
from engine._retry import (
    Action,
    Verdict,
    backoff_delay,
    classify_response,
    classify_transport_error,
    error_from_verdict,
)
from engine._schema import parse_structured, response_format_for
from engine._tokens import DEFAULT_OUTPUT_TOKENS, estimate_chat_tokens

__all__ = ["Client", "ClientStatistics", "open_client"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Per-request HTTP timeouts: long reads (big completions), quick connects.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
#: Workers started when ``concurrency`` is None; the limiter then bounds the
#: requests actually in flight to what the quota needs at the observed latency.
AUTO_MAX_CONCURRENCY = 512
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


@attrs.frozen
class ClientStatistics:
    """A snapshot of a client's counters (see :meth:`Client.statistics`).

    Attributes:
        limiter: the limiter's own counters (granted, waiting, in flight, ...).
        sent: HTTP attempts sent.
        succeeded: requests that ended with a usable answer.
        failed: requests that ended with an error.
        retries: attempts repeated after 408/409/5xx/transport errors.
        rate_limited: 429 ``rate_limit_exceeded`` responses received.
        prompt_tokens / completion_tokens: tokens reported by the server.
    """

    limiter: LimiterStatistics
    sent: int
    succeeded: int
    failed: int
    retries: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int


@attrs.define(eq=False)
class _Run:
    """One ``chat`` call or one ``map`` iteration: its jobs can be cancelled together."""

    results: trio.MemorySendChannel
    scopes: set[trio.CancelScope] = attrs.field(factory=set)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        for scope in list(self.scopes):
            scope.cancel()


@attrs.define(eq=False, slots=True)
class _Job:
    request: ChatRequest
    body: bytes
    cost: Cost
    group: str
    run: _Run
    queued_at: float


class Client:
    """A running quota-engine client.  Get one from :func:`open_client`.

    Methods that send requests checkpoint; ``statistics`` does not.
    """

    def __init__(
        self,
        *,
        nursery: trio.Nursery,
        limiter: Limiter,
        jobs: trio.MemorySendChannel,
        groups: Mapping[str, str],
        max_attempts: int,
        retry_base_delay: float,
        retry_max_delay: float,
        rate_limit_wait_budget: float,
        default_output_tokens: int,
        base_url: str,
    ) -> None:
        self._nursery = nursery
        self._limiter = limiter
        self._jobs = jobs
        self._groups = dict(groups)
        self._max_attempts = max_attempts
        self._retry_base_delay = retry_base_delay
        self._retry_max_delay = retry_max_delay
        self._wait_budget = rate_limit_wait_budget
        self._default_output_tokens = default_output_tokens
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
        self._feeders: set[_Feeder] = set()

    def __repr__(self) -> str:
        return f"<engine.Client base_url={self._base_url!r}>"

    # -- public API -----------------------------------------------------------

    async def chat(
        self,
        messages: str | Iterable[Mapping[str, Any]],
        *,
        model: str,
        response_model: type[pydantic.BaseModel] | None = None,
        id: str | None = None,
        **params: Any,
    ) -> ChatResult:
        """Run one chat completion and return its :class:`~engine.ChatResult`.

        ``messages`` is a prompt string or OpenAI-style message dicts;
        ``params`` are passed through in the request body (``temperature``,
        ``max_tokens``, ...).  With ``response_model`` the answer is parsed
        into that pydantic model (``result.output``).

        Raises:
            EngineError: a subclass saying why, once retries are spent.
        """
        request = ChatRequest(
            messages=messages,
            model=model,
            id=id if id is not None else "chat",
            response_model=response_model,
            params=params,
        )
        send, receive = trio.open_memory_channel[ChatResult](1)
        run = _Run(send)
        try:
            job = self._job(request, run)
            await self._jobs.send(job)
            result = await receive.receive()
        finally:
            run.cancel()
        result.raise_for_error()
        return result

    async def map(self, requests: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[ChatResult]:
        """Run many requests; yield one result per input, in completion order.

        ``requests`` is any iterable or async iterable of
        :class:`~engine.ChatRequest` objects or Batch-API input dicts.  It is
        consumed lazily, as workers free up, so it may be endless.  A failed
        request is a result with ``.error`` set, never an exception.

        Leaving the ``async for`` early (break, exception, cancellation)
        cancels this map's requests still waiting or in flight and returns
        their reservations.

        Raises:
            FatalError: after yielding the results already finished, if the
                client stopped (401/403, insufficient_quota).
        """
        send, receive = trio.open_memory_channel[ChatResult](64)
        run = _Run(send)
        feeder = _Feeder()
        self._feeders.add(feeder)
        self._nursery.start_soon(self._feed, requests, run, feeder)
        try:
            async with receive:
                while not (feeder.done and feeder.delivered == feeder.submitted):
                    result = await receive.receive()
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
        return ClientStatistics(
            limiter=self._limiter.statistics(),
            sent=self._sent,
            succeeded=self._succeeded,
            failed=self._failed,
            retries=self._retries,
            rate_limited=self._rate_limited,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
        )

    @property
    def fatal_error(self) -> FatalError | None:
        """The error that stopped this client, or None while it runs."""
        return self._fatal

    # -- feeding --------------------------------------------------------------

    def _job(self, request: ChatRequest, run: _Run) -> _Job:
        response_format = (
            response_format_for(request.response_model) if request.response_model else None
        )
        body = request.body(response_format)
        return _Job(
            request=request,
            body=orjson.dumps(body),
            # counted once here, never again on retries
            cost=Cost(
                tokens=estimate_chat_tokens(body, default_output_tokens=self._default_output_tokens)
            ),
            group=self._groups.get(request.model, request.model),
            run=run,
            queued_at=time.time(),
        )

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
            await self._deliver(run, self._failure(_input_id(item, index), "", exc, time.time()))
            return True
        except (TypeError, ValueError) as exc:
            error = RequestError(f"item {index}: {exc}", code="invalid_input")
            await self._deliver(run, self._failure(_input_id(item, index), "", error, time.time()))
            return True
        await self._jobs.send(job)
        return True

    async def _deliver(self, run: _Run, result: ChatResult) -> None:
        try:
            await run.results.send(result)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the caller left; nobody wants this result

    # -- workers --------------------------------------------------------------

    async def _worker(self, jobs: trio.MemoryReceiveChannel, http: httpx.AsyncClient) -> None:
        async with jobs, http:
            async for job in jobs:
                run = job.run
                if run.cancelled:
                    continue
                with trio.CancelScope() as scope:
                    run.scopes.add(scope)
                    try:
                        result = await self._execute(job, http)
                    finally:
                        run.scopes.discard(scope)
                if scope.cancelled_caught:
                    continue
                if result.ok:
                    self._succeeded += 1
                else:
                    self._failed += 1
                await self._deliver(run, result)

    async def _execute(self, job: _Job, http: httpx.AsyncClient) -> ChatResult:
        request = job.request
        started = trio.current_time()
        attempts = 0
        failures = 0
        headers = {"content-type": "application/json"}
        if request.id is not None and request.id.isascii() and len(request.id) <= 512:
            headers["x-client-request-id"] = request.id
        last: tuple[int | None, str | None] = (None, None)
        while True:
            if self._fatal is not None:
                return self._failure(
                    request.id, request.model, RunStoppedError(self._fatal.message), job.queued_at
                )
            try:
                reservation = await self._limiter.acquire(job.group, job.cost)
            except RequestError as exc:
                return self._failure(request.id, request.model, exc, job.queued_at, attempts)
            attempts += 1
            self._sent += 1
            sent_wall = time.time()
            sent_at = trio.current_time()
            try:
                response = await http.post(CHAT_PATH, content=job.body, headers=headers)
            except BaseException as exc:
                # It may have reached the server: keep the estimate charged.
                self._limiter.settle_nowait(reservation)
                verdict = classify_transport_error(exc)
                if verdict is None:
                    raise
                failures += 1
                if failures >= self._max_attempts:
                    return self._failure(
                        request.id,
                        request.model,
                        error_from_verdict(
                            verdict, status_code=None, request_id=None, attempts=attempts
                        ),
                        job.queued_at,
                        attempts,
                        sent_wall,
                    )
                self._retries += 1
                await self._backoff(failures)
                continue
            latency = trio.current_time() - sent_at
            status = response.status_code
            request_id = response.headers.get("x-request-id")
            last = (status, request_id)
            limits = parse_rate_limit_headers(response.headers)
            limits = None if limits.is_empty else limits
            verdict = classify_response(status, response.headers, response.content)
            action = verdict.action
            if action is Action.SUCCESS:
                return self._success(
                    job, response, reservation, limits, attempts, sent_wall, latency
                )
            if action is Action.RATE_LIMITED:
                self._rate_limited += 1
                self._limiter.rate_limited_nowait(
                    reservation,
                    headers=limits,
                    retry_after=verdict.retry_after,
                    limit_type=verdict.limit_type,
                )
                if trio.current_time() - started > self._wait_budget:
                    error = RateLimitWaitExceeded(
                        f"still rate limited after waiting {self._wait_budget:g} s: "
                        f"{verdict.message}",
                        status_code=status,
                        request_id=request_id,
                    )
                    return self._failure(
                        request.id,
                        request.model,
                        error,
                        job.queued_at,
                        attempts,
                        sent_wall,
                        response=_json_or_none(response.content),
                        last=last,
                    )
                continue
            self._limiter.settle_nowait(reservation, headers=limits, latency=latency)
            if action is Action.RETRY:
                failures += 1
                if failures < self._max_attempts:
                    self._retries += 1
                    await self._backoff(failures, verdict)
                    continue
            error = error_from_verdict(
                verdict, status_code=status, request_id=request_id, attempts=attempts
            )
            if isinstance(error, FatalError):
                self._stop(error)
            return self._failure(
                request.id,
                request.model,
                error,
                job.queued_at,
                attempts,
                sent_wall,
                response=_json_or_none(response.content),
                last=last,
                latency=latency,
            )

    async def _backoff(self, failures: int, verdict: Verdict | None = None) -> None:
        delay = backoff_delay(
            failures, base=self._retry_base_delay, cap=self._retry_max_delay, rng=self._rng
        )
        if verdict is not None and verdict.retry_after is not None:
            delay = max(delay, min(verdict.retry_after, self._retry_max_delay))
        if delay > 0:
            await trio.sleep(delay)

    def _stop(self, error: FatalError) -> None:
        if self._fatal is None:
            self._fatal = error
            self._limiter.stop_nowait(error)

    def _success(
        self,
        job: _Job,
        response: httpx.Response,
        reservation: Reservation,
        limits: Any,
        attempts: int,
        sent_wall: float,
        latency: float,
    ) -> ChatResult:
        request = job.request
        request_id = response.headers.get("x-request-id")
        status = response.status_code
        try:
            body = orjson.loads(response.content)
            if not isinstance(body, dict):
                raise TypeError("the body is not a JSON object")
            usage = Usage.model_validate(body.get("usage") or {})
            choice = body["choices"][0]
            message = choice["message"]
            content = message.get("content")
        except (
            orjson.JSONDecodeError,
            KeyError,
            IndexError,
            TypeError,
            pydantic.ValidationError,
        ) as exc:
            self._limiter.settle_nowait(reservation, headers=limits, latency=latency)
            error = ResponseValidationError(
                f"request {request.id!r}: malformed response body ({type(exc).__name__}: "
                f"{redact(str(exc))[:200]})",
                raw=response.text[:2000],
                status_code=status,
                request_id=request_id,
            )
            return self._failure(
                request.id,
                request.model,
                error,
                job.queued_at,
                attempts,
                sent_wall,
                latency=latency,
                last=(status, request_id),
            )
        self._limiter.settle_nowait(
            reservation, headers=limits, used_tokens=usage.total_tokens, latency=latency
        )
        self._prompt_tokens += usage.prompt_tokens
        self._completion_tokens += usage.completion_tokens
        timings = Timings(
            queued_at=job.queued_at, sent_at=sent_wall, latency=latency, finished_at=time.time()
        )
        output: Any = content
        if request.response_model is not None:
            try:
                output = parse_structured(
                    content,
                    request.response_model,
                    finish_reason=choice.get("finish_reason"),
                    refusal=message.get("refusal"),
                    request_id=request_id,
                )
            except ResponseValidationError as exc:
                exc.message = f"request {request.id!r}: {exc.message}"
                result = ChatResult(
                    id=request.id,
                    model=body.get("model") or request.model,
                    usage=usage,
                    attempts=attempts,
                    timings=timings,
                    error=ErrorInfo.from_exception(exc),
                    status_code=status,
                    request_id=request_id,
                    response=body,
                    raw_content=content,
                )
                result._exception = exc
                return result
        return ChatResult(
            id=request.id,
            output=output,
            model=body.get("model") or request.model,
            usage=usage,
            attempts=attempts,
            timings=timings,
            status_code=status,
            request_id=request_id,
            response=body,
            raw_content=content if request.response_model is not None else None,
        )

    def _failure(
        self,
        id: str | None,
        model: str,
        error: EngineError,
        queued_at: float,
        attempts: int = 0,
        sent_wall: float | None = None,
        *,
        response: dict[str, Any] | None = None,
        last: tuple[int | None, str | None] = (None, None),
        latency: float | None = None,
    ) -> ChatResult:
        result = ChatResult(
            id=id or "",
            model=model,
            attempts=attempts,
            timings=Timings(
                queued_at=queued_at, sent_at=sent_wall, latency=latency, finished_at=time.time()
            ),
            error=ErrorInfo.from_exception(error),
            status_code=last[0] if last[0] is not None else error.status_code,
            request_id=last[1] if last[1] is not None else error.request_id,
            response=response,
        )
        result._exception = error
        return result


@attrs.define(eq=False)
class _Feeder:
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    submitted: int = 0
    delivered: int = 0
    done: bool = False
    error: Exception | None = None


def _input_id(item: Any, index: int) -> str:
    if isinstance(item, ChatRequest) and item.id is not None:
        return item.id
    if isinstance(item, Mapping) and item.get("custom_id") is not None:
        return str(item["custom_id"])
    return str(index)


def _json_or_none(content: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


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
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    base_url = _check_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
    api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    headers = {"user-agent": "quota-engine/0.1"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    workers = concurrency or AUTO_MAX_CONCURRENCY
    limiter = Limiter(QuotaBook(limits), max_in_flight=workers, auto_in_flight=concurrency is None)
    jobs_send, jobs_receive = trio.open_memory_channel[_Job](0)
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        try:
            async with trio.open_nursery() as work:
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
                )
                with jobs_receive:
                    for _ in range(workers):
                        http = make_async_client(
                            base_url, headers=headers, timeout=http_timeout, transport=transport
                        )
                        work.start_soon(client._worker, jobs_receive.clone(), http)
                async with jobs_send:
                    yield client
                # Maps abandoned without being exhausted stop feeding; the
                # workers finish the jobs they hold, then see the channel close.
                client._stop_feeders()
        finally:
            limiter.close()
