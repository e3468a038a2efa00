"""Throwaway redis-server processes on free loopback ports (for tests/test_shared.py).

Started only when a test asks for it; killed at the end of the session.  Tests
that need it are skipped when ``redis-server`` is not installed (``make test``
installs it).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import attrs
import pytest


@attrs.define
class RedisServer:
    """A redis-server child process on 127.0.0.1:``port`` with no persistence."""

    port: int
    directory: str
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait (at most 10 s) until it accepts connections."""
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.directory,
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kill the server (its data is gone: nothing is saved)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A running redis-server for the whole session (restartable with stop/start)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="quota-engine-redis-") as directory:
        server = RedisServer(port=_free_port(), directory=directory)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for one test alone, free to stop and restart."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="quota-engine-redis-") as directory:
        server = RedisServer(port=_free_port(), directory=directory)
        server.start()
        try:
            yield server
        finally:
            server.stop()
