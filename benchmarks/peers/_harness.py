"""Process plumbing shared by the scenarios: mocks, pinned children, results.

Every scenario serves ``engine mock --server uvicorn`` in its own process
pinned to the server CPU(s), and runs each peer in a child process pinned to
the client CPU (``benchmarks._procs``: CPU 0 for clients, the rest for
servers; no pinning on a one-CPU machine).  Children write one JSON object to a
file; the parent reads it.  Every process is stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import attrs
import httpx

from benchmarks._procs import ServerProcess, pin, python_module, split_cpus, start_server

RESULTS_DIR = "bench-results"

CLIENT_CPUS, SERVER_CPUS = split_cpus()


def start_mock(args: Sequence[str]) -> ServerProcess:
    """Serve ``engine mock --server uvicorn *args`` on a free loopback port, pinned."""
    argv = python_module("engine", "mock", "--port", "0", "--server", "uvicorn", *args)
    return start_server(argv, cpus=SERVER_CPUS)


def control_url(base_url: str) -> str:
    """The mock's root (``/_mock/...`` lives there, not under ``/v1``)."""
    return base_url.removesuffix("/").removesuffix("/v1")


def mock_stats(base_url: str) -> dict[str, Any]:
    """``GET /_mock/stats`` of the mock at ``base_url``."""
    return httpx.get(control_url(base_url) + "/_mock/stats", timeout=30.0).json()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (psutil), or NaN when unavailable."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:  # psutil missing or the process gone
        return float("nan")


@attrs.define
class Child:
    """A benchmark child process writing its JSON result to ``output``."""

    process: subprocess.Popen
    output: str
    started: float
    timeout: float

    def finished(self) -> bool:
        """True once the child exited or was stopped for overrunning its timeout."""
        if self.process.poll() is not None:
            return True
        if time.monotonic() - self.started > self.timeout:
            self.process.kill()  # by PID: only this child
            self.process.wait()
            return True
        return False

    def stop(self) -> None:
        """Kill this child (by its PID) if it is still running."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def result(self) -> dict[str, Any] | None:
        """The child's JSON result; None if it wrote none (killed, crashed)."""
        try:
            with open(self.output) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
        finally:
            try:
                os.unlink(self.output)
            except OSError:
                pass


def start_child(module: str, args: Sequence[str], *, timeout: float) -> Child:
    """Run ``python -m module *args --out FILE`` pinned to the client CPU."""
    fd, output = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    process = subprocess.Popen(
        python_module(module, *args, "--out", output), stdin=subprocess.DEVNULL
    )
    pin(process.pid, CLIENT_CPUS)
    return Child(process, output, time.monotonic(), timeout)


def wait_all(children: Sequence[Child]) -> None:
    """Block until every child finished or overran its timeout (polls every 0.2 s).

    Interrupted (SIGTERM, Ctrl-C), it kills the children still running first.
    """
    try:
        while not all(child.finished() for child in children):
            time.sleep(0.2)
    except BaseException:
        for child in children:
            child.stop()
        raise


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPUs, load, Python, pinning."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "client_cpus": sorted(CLIENT_CPUS) if CLIENT_CPUS else None,
        "server_cpus": sorted(SERVER_CPUS) if SERVER_CPUS else None,
        "loadavg_at_start": [round(x, 2) for x in load],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _git_commit(),
    }


def _git_commit() -> str | None:
    """The checkout's HEAD (the engine under test changes between runs), or None."""
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def stop_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks stop the servers we started."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as indented JSON, creating the directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
