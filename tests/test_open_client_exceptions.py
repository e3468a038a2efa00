"""open_client raises one plain exception, never an exception group (issue 18)."""

from __future__ import annotations

import socket
import traceback

import httpx
import pytest
import trio

import engine
from engine._limiter import Limiter
from engine.testing import EngineMock

MODEL = "gpt-4o-mini"


class AppError(Exception):
    """An exception of the application's own."""


def _closed_loopback_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_failed_chat_is_caught_by_except_engine_error():
    """The issue's example: connection refused on every attempt is one RetriesExhaustedError."""
    caught = None
    try:
        async with engine.open_client(
            base_url=f"http://127.0.0.1:{_closed_loopback_port()}/v1",
            api_key="sk-x",
            max_attempts=2,
            retry_base_delay=0,
            concurrency=1,
        ) as client:
            await client.chat("hi", model=MODEL)
    except engine.EngineError as error:
        caught = error
    assert isinstance(caught, engine.RetriesExhaustedError)


async def test_an_engine_error_from_the_body_leaves_as_the_same_object(autojump_clock):
    """client.chat's error leaves open_client unchanged: same object, same cause and context."""
    mock = EngineMock()
    mock.configure(error_503_rate=1.0)
    raised: list[BaseException | None] = []
    with pytest.raises(engine.RetriesExhaustedError) as caught:
        async with mock.open_client(max_attempts=2) as client:
            try:
                await client.chat("hi", model=MODEL)
            except engine.RetriesExhaustedError as error:
                raised.extend([error, error.__cause__, error.__context__])
                raise
    assert [caught.value, caught.value.__cause__, caught.value.__context__] == raised


async def test_the_callers_own_exception_keeps_its_cause_and_context(autojump_clock):
    """An application's exception raised in the body is caught by its own type, chain intact."""
    cause, context, error = KeyError("cause"), LookupError("context"), AppError("mine")
    with pytest.raises(AppError) as caught:
        async with EngineMock().open_client() as client:
            await client.chat("hi", model=MODEL)
            try:
                raise context
            except LookupError:
                raise error from cause
    assert caught.value is error
    assert error.__cause__ is cause and error.__context__ is context
    text = "".join(traceback.format_exception(error))
    assert "KeyError: 'cause'" in text and "ExceptionGroup" not in text


async def test_an_exception_leaving_a_map_loop_is_caught_by_its_type(autojump_clock):
    """raise_for_error() inside `async for ... in client.map` reaches the caller unwrapped."""
    mock = EngineMock()
    mock.configure(error_503_rate=1.0)
    requests = [engine.ChatRequest(id=f"r{i}", messages="hi", model=MODEL) for i in range(5)]
    with pytest.raises(engine.RetriesExhaustedError):
        async with mock.open_client(max_attempts=2) as client:
            async for result in client.map(requests):
                result.raise_for_error()


async def test_a_fatal_error_from_map_is_caught_by_its_type(autojump_clock):
    """A wrong key stops map with AuthenticationError, caught as such outside open_client."""
    mock = EngineMock()
    mock.configure(api_key="sk-the-right-key-123")
    requests = [engine.ChatRequest(id=f"r{i}", messages="hi", model=MODEL) for i in range(5)]
    with pytest.raises(engine.AuthenticationError):
        async with mock.open_client(api_key="sk-a-wrong-key-456") as client:
            async for _result in client.map(requests):
                pass


async def test_failures_in_the_callers_own_nursery_reach_except_star(autojump_clock):
    """open_client does not take the caller's nursery group for its own failure."""
    mock = EngineMock()
    mock.configure(error_503_rate=1.0)

    async def ask(client, prompt):
        await client.chat(prompt, model=MODEL)

    refused = []
    try:
        async with mock.open_client(max_attempts=1) as client, trio.open_nursery() as nursery:
            nursery.start_soon(ask, client, "first")
            nursery.start_soon(ask, client, "second")
    except* engine.RetriesExhaustedError as group:
        refused = list(group.exceptions)
    assert len(refused) == 2


class _BrokenTransport(httpx.AsyncBaseTransport):
    """A transport with a bug: not a network failure, so no retry can help."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("transport bug")


async def test_a_worker_failure_is_one_background_task_error_with_its_cause(autojump_clock):
    """A bug under a worker ends the body and leaves as BackgroundTaskError caused by the group."""
    with pytest.raises(engine.BackgroundTaskError) as caught:
        async with engine.open_client(
            base_url="http://127.0.0.1/v1", api_key="sk-x", transport=_BrokenTransport()
        ) as client:
            await client.chat("hi", model=MODEL)
    error = caught.value
    assert isinstance(error, engine.EngineError) and error.owner == "open_client"
    group = error.__cause__
    assert isinstance(group, BaseExceptionGroup)
    assert [str(leaf) for leaf in _leaves(group)] == ["transport bug"]
    text = "".join(traceback.format_exception(error))
    assert "handle_async_request" in text and "RuntimeError: transport bug" in text


async def test_a_limiter_failure_is_one_background_task_error(autojump_clock, monkeypatch):
    """The limiter task (in the outer nursery) failing is a BackgroundTaskError too, not a group."""

    def broken(self, now):
        raise ZeroDivisionError("limiter bug")

    monkeypatch.setattr(Limiter, "_grant_ready", broken)
    with pytest.raises(engine.BackgroundTaskError) as caught:
        async with EngineMock().open_client() as client:
            await client.chat("hi", model=MODEL)
    leaves = list(_leaves(caught.value.__cause__))
    assert [type(leaf) for leaf in leaves] == [ZeroDivisionError]


async def test_cancelling_an_enclosing_scope_ends_the_client_quietly(autojump_clock):
    """move_on_after around open_client cancels a slow chat; nothing is raised past the scope."""
    mock = EngineMock()
    mock.configure(latency_ms=60_000)
    started = trio.current_time()
    with trio.move_on_after(5) as scope:
        async with mock.open_client() as client:
            await client.chat("slow", model=MODEL)
    assert scope.cancelled_caught
    assert trio.current_time() - started == pytest.approx(5, abs=0.5)


async def test_cancellation_reaches_the_enclosing_scope_as_one_cancelled(autojump_clock):
    """What leaves open_client on an outer cancellation is a plain trio.Cancelled."""
    mock = EngineMock()
    mock.configure(latency_ms=60_000)
    seen: list[BaseException] = []
    with trio.move_on_after(5):
        try:
            async with mock.open_client() as client:
                await client.chat("slow", model=MODEL)
        except BaseException as exc:
            seen.append(exc)
            raise
    assert len(seen) == 1 and type(seen[0]) is trio.Cancelled


async def test_a_keyboard_interrupt_in_the_body_leaves_as_itself(autojump_clock):
    """KeyboardInterrupt raised in the body comes out as that KeyboardInterrupt."""
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as caught:
        async with EngineMock().open_client() as client:
            await client.chat("hi", model=MODEL)
            raise interrupt
    assert caught.value is interrupt


def _leaves(error: BaseException):
    if isinstance(error, BaseExceptionGroup):
        for member in error.exceptions:
            yield from _leaves(member)
    else:
        yield error
