"""One client wired in-process to a fresh mock app, for the client tests of each endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

import engine
from engine.mock import MockApp, MockConfig, create_app

#: The API key the clients send (long enough to show that it never leaks).
KEY = "sk-test-secret-key-0123456789"


@asynccontextmanager
async def mock_client(
    config: MockConfig, **options: Any
) -> AsyncIterator[tuple[engine.Client, MockApp]]:
    """``open_client`` on ``httpx.ASGITransport`` to a new mock app; yields (client, app).

    Retries wait 0.01 s unless ``options`` say otherwise.
    """
    app = create_app(config)
    options.setdefault("retry_base_delay", 0.01)
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=httpx.ASGITransport(app),
        **options,
    ) as client:
        yield client, app
