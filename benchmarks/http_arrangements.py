"""Which arrangement of HTTP clients drives the most requests/s from one core under trio?

Starts a server in its own process on loopback (``engine mock`` with quotas off
and no latency when its command exists, else uvicorn serving
``benchmarks._noop_app``), pins this process to one CPU and the server to the
other(s), and for each arrangement and each concurrency runs a closed loop:
``concurrency`` tasks each send a chat-completion POST, read the whole body,
and send the next. After a warm-up it counts completed requests for a fixed
window and reports requests/s, client CPU µs per request
(``time.process_time()`` delta / requests) and requests per client CPU-second
(the rate one free core would reach; steadier than requests/s when other
processes share the machine).

Arrangements (each one function taking a :class:`Run`; add one by writing a
function and listing it in ``ARRANGEMENTS``):

* ``shared_client``: one ``httpx.AsyncClient`` (default pool, limits raised to
  the concurrency) shared by every task.
* ``client_per_worker``: one single-connection ``httpx.AsyncClient`` per task,
  all sharing one SSL context.
* ``h11_plain_client``: one plain ``httpx.AsyncClient`` per task over its own
  ``engine._http.H11Transport``.
* ``h11_per_worker``: one client per task from ``engine._http.make_async_client``
  (``H11Transport``, no cookie jar): what the engine's workers use.
* ``engine_map`` (opt-in, ``--with-engine``): the whole engine,
  ``engine.open_client(...).map(...)``.

Usage::

    python -m benchmarks.http_arrangements [--concurrency 64 256] [--seconds 3]
        [--warmup 1] [--only NAME ...] [--with-engine] [--server auto|mock|noop]
        [--url URL] [--json PATH] [--skip-shapes]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import attrs
import httpx
import trio

from benchmarks._procs import pin, python_module, split_cpus, start_server
from engine._http import H11Transport, make_async_client, shared_ssl_context

REQUEST_BODY = json.dumps(
    {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 16,
    },
    separators=(",", ":"),
).encode()
REQUEST_HEADERS = {
    "authorization": "Bearer sk-benchmark-not-a-real-key",
    "content-type": "application/json",
}
PATH = "/chat/completions"


@attrs.define
class Run:
    """What an arrangement gets: where to send, how many in flight, and the tally.

    An arrangement keeps ``concurrency`` requests in flight against
    ``base_url`` until ``stopping`` turns True, adding each completed request
    (status 200, body read) to ``completed`` and each failure to ``errors``.
    It sets up its clients before its first request: the harness measures
    only after a warm-up, so setup cost does not count.
    """

    base_url: str
    concurrency: int
    completed: int = 0
    errors: int = 0
    stopping: bool = False


Arrangement = Callable[[Run], Awaitable[None]]


async def _closed_loop(run: Run, client: httpx.AsyncClient) -> None:
    """One task's loop: POST, read the body, repeat until the run stops.

    The URL is built once (absolute ``httpx.URL``), as the engine does: httpx
    then skips parsing and merging it with ``base_url`` on every request.
    """
    url = httpx.URL(run.base_url.rstrip("/") + PATH)
    while not run.stopping:
        try:
            response = await client.post(url, content=REQUEST_BODY)
        except httpx.HTTPError:
            run.errors += 1
            continue
        if response.status_code == 200:
            run.completed += 1
        else:
            run.errors += 1


async def shared_client(run: Run) -> None:
    """One ``httpx.AsyncClient`` with the default pool (limits = concurrency) for all tasks."""
    limits = httpx.Limits(
        max_connections=run.concurrency, max_keepalive_connections=run.concurrency
    )
    async with httpx.AsyncClient(
        base_url=run.base_url,
        headers=REQUEST_HEADERS,
        limits=limits,
        timeout=httpx.Timeout(30.0),
        trust_env=False,
    ) as client:
        async with trio.open_nursery() as nursery:
            for _ in range(run.concurrency):
                nursery.start_soon(_closed_loop, run, client)


async def client_per_worker(run: Run) -> None:
    """One single-connection ``httpx.AsyncClient`` per task, one shared SSL context."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    context = shared_ssl_context()
    clients = [
        httpx.AsyncClient(
            base_url=run.base_url,
            headers=REQUEST_HEADERS,
            limits=limits,
            timeout=httpx.Timeout(30.0),
            verify=context,
            trust_env=False,
        )
        for _ in range(run.concurrency)
    ]
    await _run_clients(run, clients)


async def h11_per_worker(run: Run) -> None:
    """One ``httpx.AsyncClient`` per task over its own ``H11Transport``."""
    clients = [
        make_async_client(run.base_url, headers=REQUEST_HEADERS, timeout=httpx.Timeout(30.0))
        for _ in range(run.concurrency)
    ]
    await _run_clients(run, clients)


async def h11_plain_client(run: Run) -> None:
    """A plain ``httpx.AsyncClient`` (cookie jar on) per task over ``H11Transport``.

    Separates the transport's gain from ``make_async_client``'s cookie-less client.
    """
    clients = [
        httpx.AsyncClient(
            base_url=run.base_url,
            headers=REQUEST_HEADERS,
            timeout=httpx.Timeout(30.0),
            transport=H11Transport(),
            trust_env=False,
        )
        for _ in range(run.concurrency)
    ]
    await _run_clients(run, clients)


async def _run_clients(run: Run, clients: list[httpx.AsyncClient]) -> None:
    try:
        async with trio.open_nursery() as nursery:
            for client in clients:
                nursery.start_soon(_closed_loop, run, client)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for client in clients:
                await client.aclose()


async def engine_map(run: Run) -> None:
    """The full engine: ``engine.open_client(...).map(...)`` at ``concurrency``, limits learned.

    Not in the default set (``--only engine_map`` or ``--with-engine``): it
    measures the whole engine (token counting, limiter, retries, results), not
    an HTTP arrangement.
    """
    import engine

    async def requests():
        number = 0
        while not run.stopping:
            yield engine.ChatRequest(
                messages="Say hi", model="gpt-4o-mini", id=str(number), params={"max_tokens": 16}
            )
            number += 1

    async with engine.open_client(
        base_url=run.base_url,
        api_key=REQUEST_HEADERS["authorization"].removeprefix("Bearer "),
        concurrency=run.concurrency,
    ) as client:
        async for result in client.map(requests()):
            if result.error is None:
                run.completed += 1
            else:
                run.errors += 1


ARRANGEMENTS: dict[str, Arrangement] = {
    "shared_client": shared_client,
    "client_per_worker": client_per_worker,
    "h11_plain_client": h11_plain_client,
    "h11_per_worker": h11_per_worker,
    "engine_map": engine_map,
}
DEFAULT_ARRANGEMENTS = ("shared_client", "client_per_worker", "h11_plain_client", "h11_per_worker")


@attrs.frozen
class Measurement:
    """One arrangement at one concurrency: throughput and client CPU per request."""

    arrangement: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_second: float
    cpu_us_per_request: float
    requests_per_cpu_second: float


async def measure(
    name: str,
    arrangement: Arrangement,
    base_url: str,
    concurrency: int,
    warmup: float,
    seconds: float,
) -> Measurement:
    """Run ``arrangement`` closed-loop; count requests in the window after ``warmup``."""
    run = Run(base_url=base_url, concurrency=concurrency)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(arrangement, run)
        await trio.sleep(warmup)
        count0, errors0 = run.completed, run.errors
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await trio.sleep(seconds)
        count1, errors1 = run.completed, run.errors
        wall1, cpu1 = time.perf_counter(), time.process_time()
        run.stopping = True
        # In-flight requests finish on their own; bound the wait all the same.
        nursery.cancel_scope.deadline = trio.current_time() + 10
    requests = count1 - count0
    elapsed = wall1 - wall0
    return Measurement(
        arrangement=name,
        concurrency=concurrency,
        requests=requests,
        errors=errors1 - errors0,
        seconds=round(elapsed, 3),
        requests_per_second=round(requests / elapsed, 1),
        cpu_us_per_request=round((cpu1 - cpu0) / max(requests, 1) * 1e6, 1),
        requests_per_cpu_second=round(requests / max(cpu1 - cpu0, 1e-9), 1),
    )


# -- how the transport hands the body to httpx ------------------------------------

_CANNED_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"288"),
    (b"x-request-id", b"req_canned"),
]
_CANNED_BODY = b"x" * 288


class _OneChunkStream(httpx.AsyncByteStream):
    """The body as an async stream of one chunk (what a streaming transport returns)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def __aiter__(self):
        yield self._data

    async def aclose(self) -> None:
        pass


class _CannedTransport(httpx.AsyncBaseTransport):
    """Answers at once, handing the body to httpx in one of three shapes."""

    def __init__(self, shape: str) -> None:
        self._shape = shape

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._shape == "async_stream":
            return httpx.Response(
                200, headers=_CANNED_HEADERS, stream=_OneChunkStream(_CANNED_BODY)
            )
        response = httpx.Response(
            200, headers=_CANNED_HEADERS, stream=httpx.ByteStream(_CANNED_BODY)
        )
        if self._shape == "read_in_transport":
            response.read()
        else:  # "content_preset", what H11Transport does for unencoded bodies
            response._content = _CANNED_BODY
        return response


async def measure_response_shapes(requests: int = 500, repeats: int = 30) -> dict[str, float]:
    """Client CPU µs per ``client.post`` (best of ``repeats``) for each body shape, no I/O.

    The shapes take turns within each repeat, so a noisy moment hits them alike.
    """
    url = httpx.URL("http://127.0.0.1:9/v1" + PATH)
    shapes = ("content_preset", "read_in_transport", "async_stream")
    clients = {
        shape: make_async_client(
            "http://127.0.0.1:9/v1",
            headers=REQUEST_HEADERS,
            timeout=httpx.Timeout(30.0),
            transport=_CannedTransport(shape),
        )
        for shape in shapes
    }
    best = dict.fromkeys(shapes, math.inf)
    for _ in range(repeats):
        for shape, client in clients.items():
            start = time.process_time()
            for _ in range(requests):
                await client.post(url, content=REQUEST_BODY)
            cpu_us = (time.process_time() - start) / requests * 1e6
            best[shape] = min(best[shape], cpu_us)
    for client in clients.values():
        await client.aclose()
    return {shape: round(cpu_us, 1) for shape, cpu_us in best.items()}


def _mock_command() -> list[str] | None:
    """``engine mock`` argv (uvicorn, no quotas, zero latency), or None if it is not there.

    The mock's quotas are off when no ``--rpm``/``--tpm``/... is given.
    """
    probe = subprocess.run(
        python_module("engine", "mock", "--help"), capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return None
    options = probe.stdout
    argv = python_module("engine", "mock", "--host", "127.0.0.1", "--port", "0")
    if "--server" in options and "uvicorn" in options:
        argv += ["--server", "uvicorn"]  # the fastest server: the client is what is measured
    for option in ("--latency-ms", "--latency-sigma", "--ms-per-output-token"):
        if option in options:
            argv += [option, "0"]
    for flag in ("--no-quotas", "--no-quota", "--unlimited"):
        if flag in options:
            argv.append(flag)
            break
    return argv


def _server_command(kind: str) -> tuple[str, list[str]]:
    if kind in ("auto", "mock"):
        argv = _mock_command()
        if argv is not None:
            return "engine mock", argv
        if kind == "mock":
            raise SystemExit("`python -m engine mock` is not available")
    return "uvicorn noop app", python_module("benchmarks._noop_app", "--port", "0")


def _print_table(results: list[Measurement]) -> None:
    best: dict[int, float] = {}
    for m in results:
        best[m.concurrency] = max(best.get(m.concurrency, 0.0), m.requests_per_second)
    header = (
        f"{'arrangement':<20} {'in flight':>9} {'req/s':>9} {'vs best':>8}"
        f" {'CPU µs/req':>11} {'req/CPU-s':>10} {'errors':>7}"
    )
    print(header)
    print("-" * len(header))
    for m in results:
        share = m.requests_per_second / best[m.concurrency] if best[m.concurrency] else 0.0
        print(
            f"{m.arrangement:<20} {m.concurrency:>9} {m.requests_per_second:>9.0f} "
            f"{share:>8.0%} {m.cpu_us_per_request:>11.1f} {m.requests_per_cpu_second:>10.0f}"
            f" {m.errors:>7}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table and optionally write JSON. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.http_arrangements")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured window (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured lead-in (default 1)")
    parser.add_argument("--only", nargs="+", choices=sorted(ARRANGEMENTS), default=None)
    parser.add_argument("--server", choices=("auto", "mock", "noop"), default="auto")
    parser.add_argument("--url", default=None, help="use this running server instead")
    parser.add_argument("--json", dest="json_path", default=None, help="write results here")
    parser.add_argument(
        "--with-engine", action="store_true", help="also measure engine_map (the full engine)"
    )
    parser.add_argument(
        "--skip-shapes",
        action="store_true",
        help="skip the in-process comparison of response body shapes",
    )
    args = parser.parse_args(argv)

    names = args.only or list(DEFAULT_ARRANGEMENTS)
    if args.with_engine and "engine_map" not in names:
        names.append("engine_map")
    client_cpus, server_cpus = split_cpus()
    pinned = pin(0, client_cpus)
    results: list[Measurement] = []
    server = None
    try:
        if args.url:
            server_name, base_url = "external", args.url
        else:
            server_name, command = _server_command(args.server)
            server = start_server(command, cpus=server_cpus)
            base_url = server.base_url
        print(
            f"server: {server_name} at {base_url}; client pinned to {sorted(client_cpus or [])}"
            f" (pinned={pinned}), server to {sorted(server_cpus or [])}",
            flush=True,
        )
        for concurrency in args.concurrency:
            for name in names:
                result = trio.run(
                    measure,
                    name,
                    ARRANGEMENTS[name],
                    base_url,
                    concurrency,
                    args.warmup,
                    args.seconds,
                )
                print(
                    f"  {name} @ {concurrency}: {result.requests_per_second:.0f} req/s, "
                    f"{result.cpu_us_per_request:.1f} µs CPU/req",
                    flush=True,
                )
                results.append(result)
    finally:
        if server is not None:
            server.stop()
    print()
    _print_table(results)
    shapes = {} if args.skip_shapes else trio.run(measure_response_shapes)
    if shapes:
        print("\nresponse body handed to httpx as (in-process, no I/O, client.post CPU µs):")
        for shape, cpu_us in shapes.items():
            print(f"  {shape:<20} {cpu_us:>7.1f}")
    if args.json_path:
        payload = {
            "benchmark": "http_arrangements",
            "server": server_name,
            "client_cpus": sorted(client_cpus or []),
            "server_cpus": sorted(server_cpus or []),
            "python": platform.python_version(),
            "httpx": httpx.__version__,
            "trio": trio.__version__,
            "warmup_seconds": args.warmup,
            "window_seconds": args.seconds,
            "cpu_count": os.cpu_count(),
            "results": [attrs.asdict(m) for m in results],
            "response_shape_cpu_us": shapes,
        }
        with open(args.json_path, "w") as out:
            json.dump(payload, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
