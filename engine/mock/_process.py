"""Run ``engine mock`` in a child process, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

__all__ = ["serve_in_subprocess"]

_READY_PREFIX = "mock listening on "


@contextlib.contextmanager
def serve_in_subprocess(
    config_args: Sequence[str] = (), *, startup_timeout: float = 30.0
) -> Iterator[str]:
    """Start ``python -m engine mock --port 0 *config_args``; yield its base URL.

    The base URL ends in ``/v1`` (what the OpenAI SDK and the engine take).
    Blocks (no checkpoint) until the server prints its ready line, at most
    ``startup_timeout`` seconds (default 30).  On exit the child gets SIGTERM,
    then SIGKILL if it has not stopped within 5 seconds; only that PID is
    signalled.
    """
    command = [sys.executable, "-m", "engine", "mock", "--port", "0", *config_args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=False
    )
    try:
        yield _wait_ready(process, startup_timeout)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _wait_ready(process: subprocess.Popen[bytes], timeout: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"engine mock did not get ready within {timeout} s")
            if not selector.select(left):
                continue
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise RuntimeError(f"engine mock exited early with status {process.wait()}")
            buffer += chunk
            for line in buffer.decode("utf-8", "replace").splitlines():
                if line.startswith(_READY_PREFIX):
                    return line[len(_READY_PREFIX) :].strip()
