"""Memory: peak RSS against the number of requests queued, per peer.

Each peer gets a lazy generator of N requests (10k, 100k, 1M) against a slow
mock (every answer takes 120 s, no quotas), so after the first few hundred
calls are in flight everything else is *queued* — in whatever form the peer
keeps it (the engine pulls from the iterator as workers free up; the seed
approach makes a coroutine per input up front; aiometer needs a list).  The
peer runs for ``--seconds`` after start, then is cut off.  The parent samples
the child's RSS every 0.1 s (psutil) and reports the peak, next to the child's
RSS just before the run (after imports) — the difference is what queueing N
requests cost.  A child still alive ``--seconds + 20`` s after start (``--quick``:
``+ 10`` s) is killed by its PID (it is then reported with the peak seen so far).  Memory is not a
timing: :data:`PARALLEL` children run at a time, free to use any CPU (the slow
mock only holds connections), each sampled on its own.

    python -m benchmarks.memory [--quick] [--sizes 10000 100000 1000000]
        [--seconds 6] [--peers NAME ...] [--out bench-results/memory.json]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Sequence

from benchmarks.peers import PEERS, PeerLimits, prepare, run_peer, workload
from benchmarks.peers._harness import (
    RESULTS_DIR,
    Child,
    machine,
    start_child,
    start_mock,
    stop_on_sigterm,
    write_json,
)

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (100_000,)
MEMORY_PEERS = ("openai_sdk", "aiometer", "aiolimiter", "seed", "engine_known")
SECONDS = 6.0
QUICK_SECONDS = 3.0
SLOW_LATENCY_MS = 120_000
#: Seconds after a child's deadline before it is killed (``--quick``: sooner).
KILL_AFTER = 20.0
QUICK_KILL_AFTER = 10.0
#: Children measured at the same time.
PARALLEL = 2


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def child_main(args: argparse.Namespace) -> None:
    """Run one peer until its deadline (child process); write RSS figures."""
    prepare(args.child)
    before = _rss_bytes()
    records = run_peer(
        args.child,
        args.base_url,
        "sk-bench-memory",
        workload(args.size),
        PeerLimits(),
        deadline=args.deadline,
    )
    write_json(
        args.out,
        {
            "rss_before_bytes": before,
            # ru_maxrss is in KiB on Linux
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "answered": len(records),
        },
    )


def _row(peer: str, size: int, peak: int, result: dict) -> dict:
    """One result row from the sampled peak and the child's own figures."""
    peak = max(peak, result.get("ru_maxrss_bytes", 0))
    before = result.get("rss_before_bytes")
    row = {
        "peer": peer,
        "label": PEERS[peer].label,
        "queued": size,
        "peak_rss_mb": peak / 2**20,
        "rss_before_mb": before / 2**20 if before else None,
        "queue_cost_mb": (peak - before) / 2**20 if before else None,
        "finished_cleanly": bool(result),
    }
    print(
        f"{peer:15s} N={size:9,d} peak={row['peak_rss_mb']:8.1f} MB "
        f"(+{row['queue_cost_mb'] or float('nan'):.1f} MB over start)"
        f"{'' if result else ' KILLED'}",
        flush=True,
    )
    return row


def run(
    *,
    quick: bool = False,
    sizes: Sequence[int] | None = None,
    seconds: float | None = None,
    peers: Sequence[str] = MEMORY_PEERS,
    out: str = f"{RESULTS_DIR}/memory.json",
) -> dict:
    """Measure every peer at every size, :data:`PARALLEL` at a time; write and return results."""
    import psutil

    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    seconds = seconds or (QUICK_SECONDS if quick else SECONDS)
    started = time.time()
    rows = []
    server = start_mock(["--latency-ms", str(SLOW_LATENCY_MS)], pin_after_start=True)
    todo = [(peer, size) for peer in peers for size in sizes]
    running: list[tuple[str, int, Child, psutil.Process, list[int]]] = []
    try:
        while todo or running:
            while todo and len(running) < PARALLEL:
                peer, size = todo.pop(0)
                child = start_child(
                    "benchmarks.memory",
                    [
                        "--child",
                        peer,
                        "--base-url",
                        server.base_url,
                        "--size",
                        str(size),
                        "--deadline",
                        str(seconds),
                    ],
                    timeout=seconds + (QUICK_KILL_AFTER if quick else KILL_AFTER),
                    cpus=None,
                )
                running.append((peer, size, child, psutil.Process(child.process.pid), [0]))
            for peer, size, child, handle, peak in list(running):
                if child.finished():
                    running.remove((peer, size, child, handle, peak))
                    child.stop()
                    rows.append(_row(peer, size, peak[0], child.result() or {}))
                    continue
                try:
                    peak[0] = max(peak[0], handle.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.1)
    finally:
        for _peer, _size, child, _handle, _peak in running:
            child.stop()
        server.stop()
    order = {(peer, size): i for i, (peer, size) in enumerate((p, s) for p in peers for s in sizes)}
    rows.sort(key=lambda row: order[(row["peer"], row["queued"])])
    result = {
        "scenario": "memory",
        "machine": machine(),
        "config": {"sizes": list(sizes), "seconds": seconds, "latency_ms": SLOW_LATENCY_MS},
        "runs": rows,
        "duration_s": time.time() - started,
    }
    write_json(out, result)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(MEMORY_PEERS))
    parser.add_argument("--out", default=f"{RESULTS_DIR}/memory.json")
    parser.add_argument("--child", choices=list(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    stop_on_sigterm()
    run(quick=args.quick, sizes=args.sizes, seconds=args.seconds, peers=args.peers, out=args.out)


if __name__ == "__main__":
    sys.exit(main())
