"""Start and stop benchmark server processes, each pinned to its own CPU.

:func:`start_server` runs a command, waits for the line that names its URL
(``... listening on http://HOST:PORT/v1``), and returns a :class:`ServerProcess`
that the caller stops by its PID (:meth:`ServerProcess.stop`, or use it as a
context manager). Nothing here kills by name.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import attrs

READY_LINE = re.compile(r"listening on (https?://\S+)")


def available_cpus() -> list[int]:
    """The CPUs this process may run on, sorted (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))  # pragma: no cover


def pin(pid: int, cpus: set[int] | None) -> bool:
    """Restrict ``pid`` (0: this process) to ``cpus``; False where unsupported or None."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(client CPUs, server CPUs): the first CPU for the client, the rest for the server.

    Both None on a single-CPU machine (nothing to separate).
    """
    cpus = available_cpus()
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


@attrs.define
class ServerProcess:
    """A running server process and the base URL it printed.

    Attributes:
        process: the ``subprocess.Popen`` handle.
        base_url: the URL from its ready line, e.g. ``http://127.0.0.1:39211/v1``.
    """

    process: subprocess.Popen
    base_url: str

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self, grace: float = 5.0) -> None:
        """Send SIGTERM to this PID, wait up to ``grace`` seconds, then SIGKILL it."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(
    argv: Sequence[str],
    *,
    cpus: set[int] | None = None,
    ready_timeout: float = 30.0,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``argv``, pin it to ``cpus``, and wait for its ``listening on URL`` line.

    The server's stdout and stderr (merged) are read until that line; lines
    before it are kept for the error message, and everything after it is
    read and discarded by a daemon thread so a chatty server never blocks on a
    full pipe. Raises ``RuntimeError`` if the process exits or
    ``ready_timeout`` (default 30 s) passes first; the process is stopped then.
    """
    process = subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    pin(process.pid, cpus)
    server = ServerProcess(process, "")
    fd = process.stdout.fileno()
    pending = b""
    seen: list[str] = []
    deadline = time.monotonic() + ready_timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw_line in lines:
                line = raw_line.decode(errors="replace").rstrip()
                seen.append(line)
                match = READY_LINE.search(line)
                if match:
                    server.base_url = match.group(1)
                    _drain_in_background(process)
                    return server
    server.stop()
    tail = "\n".join(seen[-20:])
    raise RuntimeError(f"server {argv!r} did not become ready:\n{tail}")


def _drain_in_background(process: subprocess.Popen) -> None:
    import threading

    def drain() -> None:
        while os.read(process.stdout.fileno(), 65536):
            pass

    threading.Thread(target=drain, daemon=True).start()


def python_module(module: str, *args: str) -> list[str]:
    """``[sys.executable, "-m", module, *args]``."""
    return [sys.executable, "-m", module, *args]


def start_redis(directory: str, *, timeout: float = 10.0) -> tuple[subprocess.Popen, int]:
    """Start a throwaway ``redis-server`` on a free loopback port; return (process, port).

    No persistence (its files, if any, go to ``directory``).  Blocks until the
    server answers PING, at most ``timeout`` seconds; raises RuntimeError
    (after killing it) if it does not.  The caller stops it by its PID.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", directory, "--loglevel", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("redis-server did not start")
