"""Throughput of the served mock (200 answers, quotas off), per server; prints JSON.

Serves ``engine mock --server NAME`` in its own process pinned to one CPU
(``--server-cpu``, default 0) and drives it from a second process pinned to
another (``--client-cpu``, default 1): ``wrk`` when it is on PATH (Debian
package ``wrk``), else a raw-socket keep-alive Python load generator on
epoll.  Either way ``--connections`` keep-alive connections each keep one
request in flight.  Reported per server: req/s (wall clock), the server's CPU
seconds (utime + stime from /proc) and requests per server CPU-second (less
sensitive to other load on the machine), and the load generator's own CPU
use (a generator at ~100% of its core is the bottleneck, not the server).
``noop`` and ``noop-asgi`` are floors: the builtin server answering a fixed
body of the same size through ``respond_at_once`` (the mock's own path) or
through the ASGI call.

Also reported, in-process and without sockets: the app's cost through its
ASGI call (fake receive/send on asyncio: what uvicorn and hypercorn pay for
the app), through ``MockApp.respond_at_once`` (what the builtin server pays),
and the builtin server plus app fed the request's wire bytes through
``data_received`` (all the Python per request, no syscalls).

    .venv/bin/python benchmarks/mock_throughput.py [--seconds 5] [--connections 64]
        [--servers builtin uvicorn hypercorn noop noop-asgi] [--generator auto|wrk|python]
        [--server-cpu 0] [--client-cpu 1] [--repeat 1] [--quotas]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from engine.mock import serve_in_subprocess

MODEL = "gpt-4o-mini"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
).encode()
SERVERS = ("builtin", "uvicorn", "hypercorn", "noop", "noop-asgi")
NOOPS = ("noop", "noop-asgi")  # fixed answers on the builtin server: the floors
QUOTAS_NEVER_LIMITING = ("--rpm", "1000000000", "--tpm", "1000000000000")
SATURATED = 0.9  # share of a core above which a process counts as using all of it

# wrk: POST the chat body; print one JSON line of totals when done.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%%d,"duration_us":%%d,"non_2xx":%%d,"socket_errors":%%d,' ..
    '"latency_p50_ms":%%.3f,"latency_p99_ms":%%.3f}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


# -- load generators ---------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pin_self(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def run_wrk(url: str, connections: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    """Run wrk (one thread) against ``url``; its totals and its own CPU seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT % BODY.decode())
    try:
        before = _children_cpu()
        completed = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
            preexec_fn=lambda: _pin_self(cpu),
        )
        cpu_used = _children_cpu() - before
    finally:
        os.unlink(script.name)
    totals = json.loads(completed.stdout.strip().splitlines()[-1])
    elapsed = totals["duration_us"] / 1e6
    return {
        "ok": totals["requests"] - totals["non_2xx"],
        "non_200": totals["non_2xx"],
        "socket_errors": totals["socket_errors"],
        "seconds": elapsed,
        "latency_p50_ms": totals["latency_p50_ms"],
        "latency_p99_ms": totals["latency_p99_ms"],
        "generator_cpu_s": cpu_used,
    }


def _request(host: str, port: int) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


def _python_load(
    host: str, port: int, connections: int, seconds: float, cpu: int | None, out: Any
) -> None:
    """Drive the server from this process; send (ok, other, elapsed, reconnects) to ``out``."""
    _pin_self(cpu)
    request = _request(host, port)
    selector = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytearray] = {}

    def connect() -> None:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        buffers[sock] = bytearray()
        selector.register(sock, selectors.EVENT_READ)
        sock.send(request)

    for _ in range(connections):
        connect()
    ok = other = reconnects = 0
    start = time.perf_counter()
    deadline = start + seconds
    while (now := time.perf_counter()) < deadline:
        for key, _ in selector.select(deadline - now):
            sock = key.fileobj
            data = sock.recv(65536)
            if not data:  # the server closed a keep-alive connection: open a new one
                reconnects += 1
                selector.unregister(sock)
                del buffers[sock]
                sock.close()
                connect()
                continue
            buffer = buffers[sock]
            buffer += data
            while (head_end := buffer.find(b"\r\n\r\n")) >= 0:
                head = bytes(buffer[:head_end]).lower()
                at = head.find(b"content-length:")
                end = head.find(b"\r\n", at)
                length = int(head[at + 15 : end if end >= 0 else len(head)]) if at >= 0 else 0
                total = head_end + 4 + length
                if len(buffer) < total:
                    break
                if head.startswith(b"http/1.1 200"):
                    ok += 1
                else:
                    other += 1
                del buffer[:total]
                sock.send(request)
    elapsed = time.perf_counter() - start
    for sock in buffers:
        sock.close()
    out.send((ok, other, elapsed, reconnects))


def run_python(
    host: str, port: int, connections: int, seconds: float, cpu: int | None
) -> dict[str, Any]:
    """Run the Python load generator in a child process; its totals and CPU seconds."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    before = _children_cpu()
    driver = multiprocessing.Process(
        target=_python_load, args=(host, port, connections, seconds, cpu, sender)
    )
    driver.start()
    ok, other, elapsed, reconnects = receiver.recv()
    driver.join()
    return {
        "ok": ok,
        "non_200": other,
        "reconnects": reconnects,
        "seconds": elapsed,
        "generator_cpu_s": _children_cpu() - before,
    }


# -- the server side -------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` (from /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _child_pids() -> list[int]:
    """PIDs of this process's children (found via /proc, by parent PID)."""
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            pids.append(int(entry))
    return pids


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST")).read()


# -- the floor: a no-op app on the builtin server ------------------------------------------


_NOOP_PAYLOAD = b'{"id":"chatcmpl-noop",' + b'"x":"' + b"." * 520 + b'"}'
_NOOP_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_NOOP_PAYLOAD)),
        (b"x-request-id", b"req_noop"),
    ],
}
_NOOP_BODY = {"type": "http.response.body", "body": _NOOP_PAYLOAD}
_NOOP_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
    b"x-request-id: req_noop\r\n" % len(_NOOP_PAYLOAD)
)


async def _noop_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers every request with a fixed body the size of the mock's chat answer."""
    await receive()
    await send(_NOOP_START)
    await send(_NOOP_BODY)


class NoopApp:
    """:func:`_noop_app` that also answers through the builtin server's synchronous path.

    ``respond_at_once`` returns the same head and body the ASGI call sends,
    so this is the floor for the mock's own path on the builtin server.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _noop_app(scope, receive, send)

    def respond_at_once(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[bytes, bytes]:
        return _NOOP_HEAD, _NOOP_PAYLOAD


def serve_noop(asgi_only: bool) -> None:
    """Serve a no-op app with the mock's builtin server on a free port until SIGTERM.

    ``asgi_only``: the plain ASGI app (every request stepped as an ASGI call);
    otherwise :class:`NoopApp`, answered through ``respond_at_once``.
    """
    import uvloop

    from engine.mock._server import serve

    sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
    port = sock.getsockname()[1]
    app = _noop_app if asgi_only else NoopApp()

    async def main() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        ready = lambda: print(f"noop listening on http://127.0.0.1:{port}/v1", flush=True)  # noqa: E731
        await serve(app, [sock], stop=stop, ready=ready)

    uvloop.run(main())


@contextlib.contextmanager
def _noop_server(asgi_only: bool) -> Iterator[str]:
    """Run :func:`serve_noop` in a child process; yield its base URL; stop it by PID."""
    kind = "asgi" if asgi_only else "fast"
    process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve-noop", kind],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on " not in line:
            raise RuntimeError(f"no-op server did not start: {line!r}")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def measure(
    server: str,
    generator: str,
    seconds: float,
    connections: int,
    server_cpu: int | None,
    client_cpu: int | None,
    mock_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Serve with ``server``, warm it up, drive it for ``seconds``; one result record.

    ``server`` is an ``engine mock --server`` choice, or ``noop`` /
    ``noop-asgi`` for the builtin server answering with a fixed body through
    ``respond_at_once`` / the ASGI call (the HTTP + kernel floors).
    ``mock_args`` (default none) are added to the ``engine mock`` command.
    """
    started = time.perf_counter()
    serving = (
        _noop_server(server == "noop-asgi")
        if server in NOOPS
        else serve_in_subprocess(["--server", server, *mock_args])
    )
    with serving as base_url:
        startup_s = time.perf_counter() - started
        parsed = urllib.parse.urlsplit(base_url)
        root = f"{parsed.scheme}://{parsed.netloc}"
        (pid,) = _child_pids()
        if server_cpu is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(pid, {server_cpu})
        chat_url = f"{base_url}/chat/completions"
        assert parsed.hostname is not None and parsed.port is not None

        def drive(run_seconds: float, run_connections: int) -> dict[str, Any]:
            if generator == "wrk":
                return run_wrk(chat_url, run_connections, run_seconds, client_cpu)
            return run_python(
                parsed.hostname, parsed.port, run_connections, run_seconds, client_cpu
            )

        drive(1.0, 4)  # warm up: first-request costs, answer cache
        if server not in NOOPS:
            _post(f"{root}/_mock/reset")
        load_before = os.getloadavg()[0]
        cpu_before = _cpu_seconds(pid)
        result = drive(seconds, connections)
        server_cpu_s = _cpu_seconds(pid) - cpu_before
        stats = (
            {"status_counts": {}}
            if server in NOOPS
            else json.loads(urllib.request.urlopen(f"{root}/_mock/stats").read())
        )
    elapsed = result.pop("seconds")
    ok = result["ok"]
    return {
        "server": server,
        "mock_args": list(mock_args) if server not in NOOPS else [],
        "generator": generator,
        "connections": connections,
        "seconds": round(elapsed, 2),
        **result,
        "req_per_s": round(ok / elapsed),
        "server_cpu_s": round(server_cpu_s, 2),
        "server_cpu_share": round(server_cpu_s / elapsed, 2),
        "req_per_server_cpu_s": round(ok / server_cpu_s) if server_cpu_s > 0 else None,
        "generator_cpu_s": round(result["generator_cpu_s"], 2),
        "generator_cpu_share": round(result["generator_cpu_s"] / elapsed, 2),
        # A generator near 100% of its core was the bottleneck; a server well
        # below 100% of its core was not given it (other load on the machine).
        "generator_saturated": result["generator_cpu_s"] / elapsed > SATURATED,
        "server_core_contended": server_cpu_s / elapsed < SATURATED,
        "server_counted_200": stats["status_counts"].get("200", 0),
        "startup_s": round(startup_s, 2),
        "load_average_before": round(load_before, 2),
    }


# -- the app alone -------------------------------------------------------------------------


def app_cost_us(requests: int = 20_000, repeats: int = 3) -> float:
    """Best-of-``repeats`` µs per chat request calling the ASGI app directly on asyncio.

    The receive/send callables are no-op coroutines, so this is the app's own
    cost (routing, headers, cached answer, stats) with quotas off: the ceiling
    for any server is ``1e6 / app_cost_us`` requests per CPU-second.
    """
    from engine._tokens import encoding_for_model
    from engine.mock import create_app

    encoding_for_model(MODEL)
    app = create_app()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", b"Bearer sk-bench"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(BODY)),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_message: Any) -> None:
        return None

    async def timed() -> float:
        for _ in range(200):  # warm the answer cache
            await app(scope, receive, send)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(requests):
                await app(scope, receive, send)
            best = min(best, (time.perf_counter() - start) / requests)
        return best * 1e6

    return asyncio.run(timed())


def at_once_cost_us(requests: int = 20_000, repeats: int = 3) -> float:
    """Best-of-``repeats`` µs per chat request through ``MockApp.respond_at_once``.

    The synchronous path the builtin server takes (quotas off, no faults):
    the same request as :func:`app_cost_us`, answered as (head, body) bytes.
    """
    from engine._tokens import encoding_for_model
    from engine.mock import create_app

    encoding_for_model(MODEL)
    app = create_app()
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", b"Bearer sk-bench"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(BODY)),
    ]
    respond = app.respond_at_once
    for _ in range(200):
        respond("POST", "/v1/chat/completions", headers, BODY)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(requests):
            respond("POST", "/v1/chat/completions", headers, BODY)
        best = min(best, (time.perf_counter() - start) / requests)
    return best * 1e6


class _NullTransport:
    """Stands in for a socket: the server's writes are counted, not sent."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str) -> tuple[str, int]:
        return ("127.0.0.1", 50000)

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def server_cost_us(server: str, requests: int = 20_000, repeats: int = 3) -> float:
    """Best-of-``repeats`` µs per request for the builtin server plus app, without sockets.

    ``server`` is ``builtin`` (the mock app), ``noop`` or ``noop-asgi``.  The
    wire bytes of the benchmark's chat request are fed to one connection's
    ``data_received`` on a uvloop loop, as the event loop would after a
    ``read``; the answer goes to a transport that only counts writes.  The
    Python the server runs per request, without syscalls or the event loop.
    """
    import uvloop

    from engine._tokens import encoding_for_model
    from engine.mock import create_app
    from engine.mock._server import _Connection, _Server

    encoding_for_model(MODEL)
    app: Any = {"builtin": create_app, "noop": NoopApp, "noop-asgi": lambda: _noop_app}[server]()
    request = _request("127.0.0.1", 8000)

    async def timed() -> float:
        connection = _Connection(app, asyncio.get_running_loop(), _Server(1 << 26))
        transport = _NullTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        for _ in range(200):
            connection.data_received(request)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(requests):
                connection.data_received(request)
            best = min(best, (time.perf_counter() - start) / requests)
        if transport.writes != 200 + repeats * requests:
            raise RuntimeError(f"{server}: {transport.writes} writes, expected one per request")
        return best * 1e6

    return uvloop.run(timed())


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per server: runs, median and best req/s and req per server CPU-second."""
    summary: dict[str, dict[str, Any]] = {}
    for server in dict.fromkeys(result["server"] for result in results):
        runs = [result for result in results if result["server"] == server]
        rates = sorted(result["req_per_s"] for result in runs)
        per_cpu = sorted(result["req_per_server_cpu_s"] or 0 for result in runs)
        summary[server] = {
            "runs": len(runs),
            "req_per_s_median": statistics.median(rates),
            "req_per_s_best": rates[-1],
            "req_per_server_cpu_s_median": statistics.median(per_cpu),
            "req_per_server_cpu_s_best": per_cpu[-1],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured run per server")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument(
        "--servers",
        nargs="+",
        default=list(SERVERS),
        choices=SERVERS,
        help="engine mock --server choices; noop / noop-asgi: a fixed answer on the builtin "
        "server through respond_at_once / through the ASGI call (floors)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure the servers this many times, interleaved (median and best reported)",
    )
    parser.add_argument(
        "--quotas",
        action="store_true",
        help="serve with RPM/TPM limits too high to refuse anything: quota arithmetic and "
        "x-ratelimit-* headers on every answer (default: quotas off)",
    )
    parser.add_argument("--serve-noop", choices=("fast", "asgi"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk when it is on PATH, else the Python load generator",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the server is pinned to")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU the generator is pinned to")
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop(args.serve_noop == "asgi")
        return
    generator = args.generator
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu = args.server_cpu if args.server_cpu in cpus else None
    client_cpu = (
        args.client_cpu if args.client_cpu in cpus and args.client_cpu != server_cpu else None
    )
    if args.client_cpu == args.server_cpu:
        client_cpu = None
    app_us = app_cost_us()
    at_once_us = at_once_cost_us()
    server_us = {name: round(server_cost_us(name), 2) for name in ("builtin", "noop", "noop-asgi")}
    results = [
        measure(
            server,
            generator,
            args.seconds,
            args.connections,
            server_cpu,
            client_cpu,
            QUOTAS_NEVER_LIMITING if args.quotas else (),
        )
        for _ in range(args.repeat)
        for server in args.servers
    ]
    print(
        json.dumps(
            {
                "benchmark": "mock_throughput",
                "cpus": os.cpu_count(),
                "server_cpu": server_cpu,
                "client_cpu": client_cpu,
                "generator": generator,
                "quotas": args.quotas,
                "app_in_process_us_per_request": round(app_us, 2),
                "app_in_process_ceiling_req_per_cpu_s": round(1e6 / app_us),
                "app_at_once_us_per_request": round(at_once_us, 2),
                "server_in_process_us_per_request": server_us,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "summary": summarize(results),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
