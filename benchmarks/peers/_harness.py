"""Process plumbing shared by the scenarios: mocks, pinned children, results.

Every scenario serves ``engine mock --server uvicorn`` in its own process
pinned to the server CPU(s), and runs each peer in a child process pinned to
the client CPU (``benchmarks._procs``: CPU 0 for clients, the rest for
servers; no pinning on a one-CPU machine).  Children write one JSON object to a
file; the parent reads it.  Every process is stopped by its own PID.
"""

from __future__ import annotations

import gc
import importlib
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
import httpx

from benchmarks._procs import ServerProcess, pin, python_module, split_cpus, start_server

RESULTS_DIR = "bench-results"

CLIENT_CPUS, SERVER_CPUS = split_cpus()


def start_mock(
    args: Sequence[str], *, pin_after_start: bool = False, server: str = "uvicorn"
) -> ServerProcess:
    """Serve ``engine mock --server SERVER *args`` on a free loopback port, pinned.

    ``server`` is an ``engine mock --server`` choice (default ``uvicorn``).
    ``pin_after_start=True`` (default False) lets the mock import on any CPU
    and pins it to the server CPUs once it is listening: many mocks started
    side by side before a run then use every core for their seconds of imports.
    """
    argv = python_module("engine", "mock", "--port", "0", "--server", server, *args)
    if not pin_after_start:
        return start_server(argv, cpus=SERVER_CPUS)
    server = start_server(argv)
    pin(server.pid, SERVER_CPUS)
    return server


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


def start_child(
    module: str, args: Sequence[str], *, timeout: float, cpus: set[int] | None = CLIENT_CPUS
) -> Child:
    """Run ``python -m module *args --out FILE`` pinned to ``cpus`` (default: the client CPU).

    ``cpus=None`` leaves it free to run on any CPU.
    """
    fd, output = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    process = subprocess.Popen(
        python_module(module, *args, "--out", output), stdin=subprocess.DEVNULL
    )
    pin(process.pid, cpus)
    return Child(process, output, time.monotonic(), timeout)


class _ForkedProcess:
    """``subprocess.Popen``'s poll/kill/wait over a ``multiprocessing.Process``."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def kill(self) -> None:
        self._process.kill()  # by PID: only this child

    def wait(self) -> int | None:
        self._process.join()
        return self._process.exitcode


_fork_context: Any = None


def _forked_main(module: str | None, args: Sequence[str], cpus: set[int] | None) -> None:
    pin(0, cpus)
    # What the fork server imported for every peer is never garbage: keep the
    # collector from walking it (a fresh process would not have it at all).
    gc.freeze()
    if module is not None:
        importlib.import_module(module).main(list(args))


def _fork_server() -> Any:
    global _fork_context
    if _fork_context is None:
        _fork_context = multiprocessing.get_context("forkserver")
        _fork_context.set_forkserver_preload(["benchmarks.peers._preload"])
    return _fork_context


def start_fork_server() -> None:
    """Start :func:`fork_child`'s fork server now and wait until it has imported everything.

    Its imports take seconds; a wave whose children must start together
    should not pay them after the first fork.
    """
    process = _fork_server().Process(target=_forked_main, args=(None, [], None), daemon=True)
    process.start()
    process.join()


def fork_child(
    module: str, args: Sequence[str], *, timeout: float, cpus: set[int] | None = CLIENT_CPUS
) -> Child:
    """:func:`start_child`, but forked from a server that imported every peer once.

    The fork server (``multiprocessing``'s ``forkserver``, started on first use,
    stopped with this process) preloads :mod:`benchmarks.peers._preload`, so a
    child starts in milliseconds; it pins itself to ``cpus`` (default: the
    client CPU) and runs ``module.main([*args, "--out", FILE])``.
    """
    fd, output = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    process = _fork_server().Process(
        target=_forked_main, args=(module, [*args, "--out", output], cpus), daemon=True
    )
    process.start()
    return Child(_ForkedProcess(process), output, time.monotonic(), timeout)


class CpuSampler:
    """Samples how busy the CPUs are, in a daemon thread.

    Every ``interval`` seconds (default 0.5) it records the wall time, the busy
    share (0..1) of the client CPUs and of the server CPUs, by any process on
    the machine (all CPUs for both on a one-CPU machine), and the CPU the
    processes passed to :meth:`watch` (our client children) used, in cores.
    Use as a context manager; :meth:`summary` then gives means and highest
    1-second values over a wall-clock span.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float, float]] = []
        self._watched: dict[int, float | None] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, pid: int) -> None:
        """Count ``pid``'s CPU time as ours from now until it exits."""
        with self._lock:
            self._watched[pid] = None

    def _ours(self) -> float:
        """CPU seconds our watched processes used since the last call."""
        import psutil

        used = 0.0
        with self._lock:
            for pid, before in list(self._watched.items()):
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    del self._watched[pid]
                    continue
                now = times.user + times.system
                if before is not None:
                    used += now - before
                self._watched[pid] = now
        return used

    def _run(self) -> None:
        import psutil

        client = sorted(CLIENT_CPUS) if CLIENT_CPUS else None
        server = sorted(SERVER_CPUS) if SERVER_CPUS else None
        psutil.cpu_percent(percpu=True)
        last = time.monotonic()
        while not self._stop.wait(self.interval):
            per_cpu = psutil.cpu_percent(percpu=True)
            now = time.monotonic()
            ours = self._ours() / max(now - last, 1e-6)
            last = now
            every = sum(per_cpu) / len(per_cpu)
            busy_client = sum(per_cpu[i] for i in client) / len(client) if client else every
            busy_server = sum(per_cpu[i] for i in server) / len(server) if server else every
            self.samples.append((time.time(), busy_client / 100.0, busy_server / 100.0, ours))

    def summary(self, start: float, end: float) -> dict[str, float] | None:
        """Means and highest 1-second values of each sampled series in [start, end].

        ``client`` / ``server``: busy share of those CPUs (any process);
        ``ours``: CPU our watched client processes used, in cores.
        """
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return None
        per = max(1, round(1.0 / self.interval))

        def peak(column: int) -> float:
            values = [s[column] for s in inside]
            if len(values) < per:
                return max(values)
            return max(sum(values[i : i + per]) / per for i in range(len(values) - per + 1))

        return {
            "client_mean": sum(s[1] for s in inside) / len(inside),
            "client_max_1s": peak(1),
            "server_mean": sum(s[2] for s in inside) / len(inside),
            "server_max_1s": peak(2),
            "ours_mean": sum(s[3] for s in inside) / len(inside),
            "ours_max_1s": peak(3),
        }


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
