"""Client overhead: requests/s with quotas off and zero latency, at 32/128/512 in flight.

Each peer runs in its own process (forked from a server that imported every
peer once, :func:`benchmarks.peers._harness.fork_child`; what it imported is
frozen out of the garbage collector's way) pinned to the client CPU against one
``engine mock`` on its builtin server (the fastest: ~25k req/s on one core,
so it is never what limits a client here; no quotas, no latency, pinned to the
other CPU; with no quota and no latency it keeps no state between runs), with
``concurrency`` = 32, 128 and 512 requests in flight one after another in the
same process, each for ``--seconds`` after its first send (it is then cut off).  Reported per run:
requests/s (answered requests / time from first send to last answer), client
CPU µs per request (the child's CPU time over the run per answered request,
after a 50-request warm-up run before each level; the
measured run's own set-up — e.g. the engine's per-worker clients — is
included), the server's CPU seconds (a server near one CPU-second
per second is the bottleneck, not the client), and Little's law (mean in
flight = rate x mean latency).  The engine runs once here (known and learned
limits are the same thing with no quota); the seed approach's concurrency is
its semaphore.

    python -m benchmarks.overhead [--quick] [--concurrency 32 128 512] [--seconds 4]
    (--quick: 128 in flight only, 2 s)
        [--peers NAME ...] [--out bench-results/overhead.json]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

from benchmarks.peers import PEERS, PeerLimits, Record, prepare, run_peer, workload
from benchmarks.peers._harness import (
    RESULTS_DIR,
    fork_child,
    machine,
    percentile,
    process_cpu_seconds,
    start_fork_server,
    start_mock,
    stop_on_sigterm,
    wait_all,
    write_json,
)

CONCURRENCY = (32, 128, 512)
#: ``engine mock --server`` for this scenario.
MOCK_SERVER = "builtin"
OVERHEAD_PEERS = ("openai_sdk", "aiometer", "aiolimiter", "seed", "engine_known")
SECONDS = 4.0
QUICK_SECONDS = 2.0
#: ``--quick`` measures one concurrency only.
QUICK_CONCURRENCY = (128,)
#: Requests offered per run: more than any peer finishes in the time box.
OFFERED = 20_000
STARTUP_ALLOWANCE = 10.0
WARMUP_REQUESTS = 50


def summarise(records: Sequence[Record]) -> dict:
    """Rate, latency and Little's law of one time-boxed run."""
    ok = [r for r in records if r.status == 200 and r.last_sent is not None]
    if not ok:
        return {"answered": 0}
    first = min(r.sent for r in ok)
    last = max(r.finished for r in ok)
    span = max(last - first, 1e-9)
    latencies = [r.finished - r.last_sent for r in ok]
    mean_latency = sum(latencies) / len(latencies)
    rate = len(ok) / span
    return {
        "answered": len(ok),
        "failed": len(records) - len(ok),
        "span_s": span,
        "requests_per_s": rate,
        "latency_p50_ms": percentile(latencies, 0.5) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "littles_law": {
            "in_flight": sum(latencies) / span,
            "rate_x_latency": rate * mean_latency,
        },
    }


def child_main(args: argparse.Namespace) -> None:
    """Run one peer at each ``--concurrency`` for ``--seconds`` (child process); write summaries."""
    prepare(args.child)
    runs = []
    for level in args.concurrency:
        # A short warm-up run first, so one-time costs (lazy imports, first
        # connections' setup code paths) are not charged to the measured requests.
        run_peer(
            args.child,
            args.base_url,
            "sk-bench-overhead",
            workload(WARMUP_REQUESTS),
            PeerLimits(),
            concurrency=min(level, WARMUP_REQUESTS),
            deadline=10.0,
        )
        server_cpu = process_cpu_seconds(args.server_pid)
        cpu = time.process_time()
        records = run_peer(
            args.child,
            args.base_url,
            "sk-bench-overhead",
            workload(OFFERED),
            PeerLimits(),
            concurrency=level,
            deadline=args.deadline,
        )
        cpu = time.process_time() - cpu
        summary = summarise(records)
        summary["concurrency"] = level
        summary["client_cpu_s"] = cpu
        summary["server_cpu_s"] = process_cpu_seconds(args.server_pid) - server_cpu
        if summary.get("answered"):
            summary["client_cpu_us_per_request"] = cpu / summary["answered"] * 1e6
        runs.append(summary)
    write_json(args.out, {"runs": runs})


def run(
    *,
    quick: bool = False,
    concurrency: Sequence[int] | None = None,
    seconds: float | None = None,
    peers: Sequence[str] = OVERHEAD_PEERS,
    out: str = f"{RESULTS_DIR}/overhead.json",
) -> dict:
    """Run every peer at every concurrency, one peer at a time; write and return the results."""
    seconds = seconds or (QUICK_SECONDS if quick else SECONDS)
    concurrency = concurrency or (QUICK_CONCURRENCY if quick else CONCURRENCY)
    started = time.time()
    rows = []
    # The fork server imports every peer while the mock starts.
    warm = threading.Thread(target=start_fork_server, daemon=True)
    warm.start()
    server = start_mock([], pin_after_start=True, server=MOCK_SERVER)
    warm.join()
    try:
        for peer in peers:
            child = fork_child(
                "benchmarks.overhead",
                [
                    "--child",
                    peer,
                    "--base-url",
                    server.base_url,
                    "--server-pid",
                    str(server.pid),
                    "--concurrency",
                    *map(str, concurrency),
                    "--deadline",
                    str(seconds + _startup(peer)),
                ],
                timeout=len(concurrency) * (seconds + STARTUP_ALLOWANCE + 10.0) + 30.0,
            )
            wait_all([child])
            result = child.result() or {}
            for summary in result.get("runs", []):
                row = {"peer": peer, "label": PEERS[peer].label, **summary}
                rows.append(row)
                print(
                    f"{peer:15s} c={row['concurrency']:4d} "
                    f"{row.get('requests_per_s', 0):8,.0f} req/s "
                    f"cpu={row.get('client_cpu_us_per_request', float('nan')):7.0f} µs/req "
                    f"server_cpu={row.get('server_cpu_s', float('nan')):.2f}s "
                    f"p50={row.get('latency_p50_ms', float('nan')):.1f}ms",
                    flush=True,
                )
    finally:
        server.stop()
    result = {
        "scenario": "overhead",
        "machine": machine(),
        "config": {
            "seconds": seconds,
            "concurrency": list(concurrency),
            "quick": quick,
            "mock_server": MOCK_SERVER,
        },
        "runs": rows,
        "duration_s": time.time() - started,
    }
    write_json(out, result)
    return result


def _startup(peer: str) -> float:
    # The deadline counts from the peer's start; the engine opens one HTTP
    # client per worker before its first send (~1-3 s for 512 workers).
    return 3.0 if peer.startswith("engine") else 0.5


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--concurrency", type=int, nargs="+")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(OVERHEAD_PEERS))
    parser.add_argument("--out", default=f"{RESULTS_DIR}/overhead.json")
    parser.add_argument("--child", choices=list(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.concurrency = args.concurrency or list(CONCURRENCY)
        child_main(args)
        return
    stop_on_sigterm()
    run(
        quick=args.quick,
        concurrency=args.concurrency,
        seconds=args.seconds,
        peers=args.peers,
        out=args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
