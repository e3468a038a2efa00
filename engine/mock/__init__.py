"""An OpenAI-compatible mock server: faithful quotas, headers and faults, and fast.

``create_app(config)`` returns a plain ASGI app (usable in-process through
``httpx.ASGITransport`` under trio); ``engine mock`` serves it over loopback;
``serve_in_subprocess(args)`` runs ``engine mock`` for tests and benchmarks.
See ``docs/mock.md``.
"""

from engine.mock._app import DroppedConnection, MockApp, create_app
from engine.mock._config import MockConfig
from engine.mock._process import serve_in_subprocess
from engine.mock._quotas import Semantics, ServerLimits, ServerQuota

__all__ = [
    "DroppedConnection",
    "MockApp",
    "MockConfig",
    "Semantics",
    "ServerLimits",
    "ServerQuota",
    "create_app",
    "serve_in_subprocess",
]
