"""A pytest plugin for applications that use quota-engine: the ``engine_mock`` fixture.

Installing quota-engine registers this module with pytest (entry point
``pytest11``), so an application's tests need no conftest and no import::

    @pytest.mark.trio
    async def test_my_app(engine_mock, autojump_clock):
        engine_mock.configure(rpm=600, latency_ms=300)
        async with engine_mock.open_client() as client:
            result = await client.chat("hi", model="gpt-4o-mini")
        assert engine_mock.stats().status_counts == {200: 1}

The fixture serves the bundled mock (:mod:`engine.mock`, docs/mock.md) in
the test's own process through ``httpx.ASGITransport``: no port, no
subprocess, and every wait — the mock's latency, the engine's rate limiting,
retry backoff — is a trio sleep, so under pytest-trio's ``autojump_clock``
virtual time runs them in no real time.  Trio tests need pytest-trio
(``@pytest.mark.trio``, or ``trio_mode = true``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import httpx
import orjson
import pytest

from engine._client import Client, open_client
from engine.mock import MockApp, MockConfig, create_app
from engine.mock._stats import RATE_LIMIT_CAUSES

__all__ = ["MOCK_API_KEY", "MOCK_BASE_URL", "EngineMock", "MockStats", "engine_mock"]

#: The base URL clients of the fixture use.  Nothing connects to it: the
#: transport hands requests to the mock app in-process.  Loopback, so the
#: engine does not warn about plain http.
MOCK_BASE_URL = "http://127.0.0.1/v1"
#: The API key clients of the fixture send unless the test gives another.
MOCK_API_KEY = "sk-engine-mock"

#: Client options that would take the client away from the mock.
_FIXED_OPTIONS = ("base_url", "transport")


@attrs.frozen
class MockStats:
    """What the mock has received since the test started (or ``reset()``).

    Attributes:
        requests: responses sent, every status counted.
        status_counts: responses per HTTP status, e.g. ``{200: 998, 429: 2}``.
        client_request_ids: requests received per ``X-Client-Request-Id``
            (the engine sends each request's ``id``): a retried or rate-limited
            request counts once per attempt.
        admitted: requests the mock's quota admitted (answered or faulted).
        tokens_charged: tokens charged to the quotas, corrected to the real
            usage of each answer (prompt + completion, by the mock's count).
        max_requests_per_60s / max_tokens_per_60s: the most admitted in any
            sliding 60 s window (on the mock's clock: virtual under
            ``autojump_clock``).
        rate_limited_by: 429s per cause (``per_minute``, ``per_day``,
            ``undeclared_subwindow``, ``request_too_large``,
            ``insufficient_quota``).
    """

    requests: int
    status_counts: dict[int, int]
    client_request_ids: dict[str, int]
    admitted: int
    tokens_charged: int
    max_requests_per_60s: int
    max_tokens_per_60s: int
    rate_limited_by: dict[str, int]


class EngineMock:
    """The mock API of one test, served in-process; what ``engine_mock`` gives.

    ``config`` is the mock's starting configuration (default: ``MockConfig()``
    — no limits, no latency, no faults).  Nothing here checkpoints except
    the client :meth:`open_client` opens.
    """

    def __init__(self, config: MockConfig | None = None) -> None:
        self._app = create_app(config)

    @property
    def app(self) -> MockApp:
        """The mock ASGI app being served."""
        return self._app

    @property
    def config(self) -> MockConfig:
        """The mock's configuration in force."""
        return self._app.config

    def configure(self, **options: Any) -> MockConfig:
        """Change how the mock behaves from now on; return the new configuration.

        ``options`` are :class:`~engine.mock.MockConfig` fields, the options
        of ``engine mock`` (``--rpm`` is ``rpm``, ``--error-503-rate`` is
        ``error_503_rate``, ``--no-retry-after`` is ``retry_after_header=False``):
        for example ``configure(rpm=600, tpm=150_000, latency_ms=300,
        error_503_rate=0.05)``.  Fields not given keep their values.  Changed
        limits keep what each quota has used, as ``POST /_mock/config`` does.

        Raises:
            TypeError: an option that is not a ``MockConfig`` field.
            ValueError: a value the mock refuses (a rate above 1, ...).
        """
        known = {field.name for field in attrs.fields(MockConfig)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                f"engine_mock.configure() got unknown options {', '.join(unknown)}; "
                "the options are engine.mock.MockConfig's fields"
            )
        status, body = self._control("POST", "/_mock/config", orjson.dumps(options))
        if status != 200:
            raise ValueError(_error_message(body))
        return self._app.config

    def reset(self) -> None:
        """Zero the statistics and refill every quota (``POST /_mock/reset``)."""
        status, body = self._control("POST", "/_mock/reset", b"")
        if status != 200:  # the mock answers a reset with 200 whatever its state
            raise RuntimeError(f"the mock refused a reset: {_error_message(body)}")

    def stats(self) -> MockStats:
        """A snapshot of what the mock has received (see :class:`MockStats`)."""
        stats = self._app.stats
        return MockStats(
            requests=sum(stats.status_counts.values()),
            status_counts=dict(sorted(stats.status_counts.items())),
            client_request_ids=dict(stats.client_request_ids),
            admitted=stats.admitted,
            tokens_charged=stats.tokens_charged,
            max_requests_per_60s=stats.window.max_requests,
            max_tokens_per_60s=stats.window.max_tokens,
            rate_limited_by={cause: stats.rate_limited_by[cause] for cause in RATE_LIMIT_CAUSES},
        )

    def client_options(self, **client_kwargs: Any) -> dict[str, Any]:
        """Keyword arguments for :func:`engine.open_client` that reach this mock.

        For application code that opens its own client: pass these through.
        ``client_kwargs`` are added (``limits``, ``concurrency``, ``api_key``,
        ...); ``api_key`` defaults to the mock's configured key, else
        :data:`MOCK_API_KEY`.

        Raises:
            TypeError: ``base_url`` or ``transport`` given (they would leave the mock).
        """
        fixed = sorted(set(client_kwargs) & set(_FIXED_OPTIONS))
        if fixed:
            raise TypeError(
                f"engine_mock clients always reach the mock: {', '.join(fixed)} cannot be set"
            )
        options: dict[str, Any] = {
            "base_url": MOCK_BASE_URL,
            "api_key": self._app.config.api_key or MOCK_API_KEY,
            "transport": httpx.ASGITransport(self._app),
        }
        options.update(client_kwargs)
        return options

    def open_client(self, **client_kwargs: Any) -> AbstractAsyncContextManager[Client]:
        """``engine.open_client(**client_kwargs)`` wired to this mock.

        Use as ``async with engine_mock.open_client(limits=...) as client:``;
        the options are :func:`engine.open_client`'s, except ``base_url`` and
        ``transport`` (see :meth:`client_options`).  Entering checkpoints.
        """
        return open_client(**self.client_options(**client_kwargs))

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """Call one of the mock's ``/_mock`` endpoints synchronously: (status, body).

        The mock's control endpoints await nothing but the ASGI ``receive`` and
        ``send`` (engine/mock/_app.py says so), and these never suspend, so
        the coroutine finishes on its first step: ``configure`` and ``reset``
        need no event loop and can be called from sync code and fixtures.
        """
        messages: list[Mapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Mapping[str, Any]) -> None:
            messages.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("ascii"),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
            "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 80),
        }
        call = self._app(scope, receive, send)
        try:
            call.send(None)
        except StopIteration:
            pass
        else:
            call.close()
            raise RuntimeError(f"the mock's {path} endpoint suspended; it must answer at once")
        status = next(m["status"] for m in messages if m["type"] == "http.response.start")
        content = b"".join(
            m.get("body", b"") for m in messages if m["type"] == "http.response.body"
        )
        return status, content


def _error_message(body: bytes) -> str:
    """The message of an OpenAI-shaped error body, else the body as text."""
    try:
        return str(orjson.loads(body)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body.decode("utf-8", "replace")


@pytest.fixture
def engine_mock() -> EngineMock:
    """The OpenAI-compatible mock, served in-process for this test (an :class:`EngineMock`).

    ``async with engine_mock.open_client(**options) as client`` opens a client
    wired to it; ``engine_mock.configure(rpm=..., latency_ms=...,
    error_503_rate=...)`` changes its behaviour; ``engine_mock.stats()`` tells
    what it received.  Each test gets a fresh mock: no limits, no latency, no
    faults until configured.
    """
    return EngineMock()
