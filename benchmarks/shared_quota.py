"""Shared quota: P processes on one key, sharing its quota through Redis.

One ``engine mock --server uvicorn`` holds a token-bucket quota of ``--rpm``
requests per minute (lognormal latency, median 200 ms); a throwaway
``redis-server`` on a free loopback port holds the shared quota.  P worker
processes (default 4, then 8) each open a client with
``shared=engine.RedisQuota(...)`` and the same ``Limits(rpm=...)`` and send
chat completions as fast as they are allowed for ``--duration`` seconds,
starting together.

What is checked (``L`` = the quota per minute, ``r = L / 60``; times are the
send times of attempts the mock answered 200, wall clock, shared by all the
processes of the machine; ``t = 0`` is the common start):

* **60 s windows.**  A token bucket starts full, so any server of this kind
  accepts up to ``2 L`` in a 60 s window that begins with a full bucket: the
  mock's own ``max_requests_per_60s`` (whole run, burst included) is reported
  against that bound.  The burst is spent when the admitted sends, replayed
  against a full bucket of ``L`` refilling at ``r``, leave less than 2% of
  it; from then on a 60 s window may hold at most about ``L``: the largest
  count over sliding windows starting from then is reported against ``L``.
  And over the whole run, for every window starting at a send ``t``: what it
  admitted beyond ``L`` plus what the bucket held at ``t`` (the sends
  replayed) — at most 0 means the processes together stayed within the quota
  (up to the jitter between send and arrival times).
* **Utilisation.**  Admitted requests in the steady state (from 5 s after the
  burst is spent to ``end - 5 s``) / (``r`` x its length).
* **429s.**  The mock's 429 count / all its answers (the direct proof: the
  server itself refused nothing more than this).
* **Redis commands per request.**  ``INFO commandstats`` before and after
  (every command, connection set-up included) / admitted requests; and in the
  steady state, from each worker's own count of Redis calls at ``t = 30 s`` and
  at the end.

    python -m benchmarks.shared_quota [--processes 4 8] [--rpm 6000] [--duration 120]
        [--concurrency 32] [--no-shared] [--out bench-results/shared_quota.json]

``--no-shared``: the same processes each limiting themselves alone (the
failure this fixes: P times the quota is sent, the server refuses the rest).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._procs import start_redis

RESULTS = Path("bench-results")
STEADY_FROM = 30.0


# -- the worker (one per process) ------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Send chats until the duration is over; write send times and counters to --out."""
    logging.basicConfig(
        level=args.log_level.upper(), format="%(relativeCreated)d %(process)d %(message)s"
    )
    for noisy in ("httpx", "httpcore", "coredis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import trio

    import engine

    async def main() -> dict[str, Any]:
        shared = None if args.no_shared else engine.RedisQuota(args.redis, namespace=args.namespace)
        sends: list[float] = []
        calls_at_steady: int | None = None
        ok_at_steady = 0

        def requests():
            i = 0
            while True:
                yield engine.ChatRequest(
                    id=f"{os.getpid()}-{i}",
                    messages="hi",
                    model="gpt-4o-mini",
                    params={"max_tokens": 8},
                )
                i += 1

        await trio.sleep_until(trio.current_time() + max(0.0, args.start_at - time.time()))
        end = args.start_at + args.duration
        async with engine.open_client(
            base_url=args.base_url,
            api_key="sk-bench",
            limits=engine.Limits(rpm=args.rpm),
            concurrency=args.concurrency,
            shared=shared,
        ) as client:
            with trio.move_on_at(trio.current_time() + (end - time.time())):
                async for result in client.map(requests()):
                    if result.ok and result.timings.sent_at is not None:
                        sends.append(result.timings.sent_at)
                    if calls_at_steady is None and time.time() >= args.start_at + STEADY_FROM:
                        stats = client.shared_statistics()
                        calls_at_steady = stats.redis_calls if stats else 0
                        ok_at_steady = len(sends)
            stats = client.shared_statistics()
            return {
                "sends": sends,
                "rate_limited": client.statistics().rate_limited,
                "redis_calls": stats.redis_calls if stats else 0,
                "redis_calls_at_steady": calls_at_steady or 0,
                "ok_at_steady": ok_at_steady,
                "clients_seen": stats.clients if stats else 0,
            }

    Path(args.out).write_text(json.dumps(trio.run(main)))


# -- the driver ----------------------------------------------------------------------


def redis_cli(port: int, *command: str) -> str:
    done = subprocess.run(
        ["redis-cli", "-p", str(port), *command], capture_output=True, text=True, check=False
    )
    return done.stdout


#: Commands clients send (INFO commandstats also counts the commands run
#: inside scripts: TIME, HGETALL, HSET, ... are left out).
CLIENT_COMMANDS = ("evalsha", "eval", "script|load", "ping", "hello", "client|setinfo")


def total_commands(port: int) -> int:
    """Commands sent by clients so far (``INFO commandstats``, INFO itself left out)."""
    total = 0
    for line in redis_cli(port, "INFO", "commandstats").splitlines():
        name, _, rest = line.partition(":")
        if name.removeprefix("cmdstat_") in CLIENT_COMMANDS:
            fields = dict(part.split("=") for part in rest.split(","))
            total += int(fields["calls"])
    return total


def sliding_max(times: list[float], width: float, start_from: float) -> int:
    """Most sends in any window [t, t + width) with t >= start_from (t at a send)."""
    times = sorted(t for t in times if t >= start_from)
    best = 0
    j = 0
    for i in range(len(times)):
        while j < len(times) and times[j] < times[i] + width:
            j += 1
        best = max(best, j - i)
    return best


def burst_spent_at(sends: list[float], limit: float, rate: float) -> float | None:
    """When the admitted sends, replayed against a full bucket of ``limit``, leave < 2% of it."""
    level, last = float(limit), 0.0
    for t in sends:
        level = min(limit, level + (t - last) * rate) - 1
        last = t
        if level < 0.02 * limit:
            return t
    return None


def worst_window_excess(sends: list[float], limit: float, rate: float, width: float) -> float:
    """Most a 60 s window holds beyond what a token bucket of ``limit`` allows it.

    For a window starting at a send ``t`` the bucket allows at most what it
    held at ``t`` (the sends replayed against a full bucket refilling at
    ``rate``) plus ``limit``; positive means more was admitted than that.
    """
    level, last = float(limit), 0.0
    held: list[float] = []
    for t in sends:
        level = min(limit, level + (t - last) * rate)
        last = t
        held.append(max(0.0, level))
        level -= 1
    worst = -math.inf
    j = 0
    for i, t in enumerate(sends):
        while j < len(sends) and sends[j] < t + width:
            j += 1
        worst = max(worst, (j - i) - held[i] - limit)
    return worst


def run_scenario(processes: int, args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.peers._harness import mock_stats
    from engine.mock import serve_in_subprocess

    mock_args = [
        "--server",
        "uvicorn",
        "--rpm",
        str(args.rpm),
        "--latency-ms",
        "200",
        "--latency-sigma",
        "0.5",
        "--seed",
        "7",
    ]
    with tempfile.TemporaryDirectory(prefix="shared-quota-") as directory:
        redis, port = start_redis(directory)
        try:
            with serve_in_subprocess(mock_args) as base_url:
                commands_before = total_commands(port)
                start_at = time.time() + 3.0 + 0.3 * processes  # every worker imported
                namespace = f"bench-{uuid.uuid4().hex[:8]}"
                children = []
                for index in range(processes):
                    out = os.path.join(directory, f"worker{index}.json")
                    command = [
                        sys.executable,
                        "-m",
                        "benchmarks.shared_quota",
                        "--worker",
                        "--base-url",
                        base_url,
                        "--redis",
                        f"redis://127.0.0.1:{port}/0",
                        "--namespace",
                        namespace,
                        "--rpm",
                        str(args.rpm),
                        "--duration",
                        str(args.duration),
                        "--concurrency",
                        str(args.concurrency),
                        "--start-at",
                        repr(start_at),
                        "--out",
                        out,
                        "--log-level",
                        args.log_level,
                    ]
                    if args.no_shared:
                        command.append("--no-shared")
                    children.append((subprocess.Popen(command), out))
                for child, _out in children:
                    child.wait(timeout=args.duration + 120)
                stats = mock_stats(base_url)
                commands = total_commands(port) - commands_before
                workers = [json.loads(Path(out).read_text()) for _child, out in children]
        finally:
            redis.kill()
            redis.wait()
    return summarise(processes, args, workers, stats, commands, start_at)


def summarise(
    processes: int,
    args: argparse.Namespace,
    workers: list[dict[str, Any]],
    stats: dict[str, Any],
    commands: int,
    start_at: float,
) -> dict[str, Any]:
    limit = args.rpm
    rate = limit / 60
    sends = sorted(t - start_at for w in workers for t in w["sends"])
    admitted = len(sends)
    spent = burst_spent_at(sends, limit, rate)
    steady_from = (spent if spent is not None else args.duration) + 5.0
    end = args.duration - 5.0
    steady = [t for t in sends if steady_from <= t < end]
    utilisation = len(steady) / (rate * (end - steady_from)) if end > steady_from else None
    per_worker_steady = [
        sum(1 for t in w["sends"] if steady_from <= t - start_at < end) for w in workers
    ]
    statuses = stats.get("status_counts", {})
    answered = sum(int(v) for v in statuses.values())
    refused = int(statuses.get("429", statuses.get(429, 0)))
    steady_calls = sum(w["redis_calls"] - w["redis_calls_at_steady"] for w in workers)
    steady_ok = sum(len(w["sends"]) - w["ok_at_steady"] for w in workers)
    per_worker = [len(w["sends"]) for w in workers]
    return {
        "processes": processes,
        "shared": not args.no_shared,
        "rpm": limit,
        "duration_s": args.duration,
        "concurrency_per_process": args.concurrency,
        "admitted": admitted,
        "per_process_admitted": per_worker,
        "mock_max_requests_per_60s": stats.get("max_requests_per_60s"),
        "token_bucket_bound_60s": 2 * limit,
        "burst_spent_at_s": None if spent is None else round(spent, 2),
        "max_60s_after_burst": None if spent is None else sliding_max(sends, 60.0, spent),
        "worst_60s_excess_over_token_bucket": round(
            worst_window_excess(sends, limit, rate, 60.0), 1
        ),
        "steady_state_s": [round(steady_from, 2), end],
        "utilisation_steady": None if utilisation is None else round(utilisation, 4),
        "per_process_steady_share": [
            round(n / max(1, sum(per_worker_steady)), 3) for n in per_worker_steady
        ],
        "responses_429": refused,
        "share_429": round(refused / answered, 5) if answered else None,
        "redis_commands_total": commands,
        "redis_commands_per_request": round(commands / admitted, 4) if admitted else None,
        "redis_calls_per_request_steady": round(steady_calls / steady_ok, 4) if steady_ok else None,
        "clients_seen": max(w["clients_seen"] for w in workers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--rpm", type=int, default=6000)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--no-shared", action="store_true")
    parser.add_argument("--log-level", default="warning", help="workers' log level")
    parser.add_argument("--out", default=str(RESULTS / "shared_quota.json"))
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    results = []
    for processes in args.processes:
        result = run_scenario(processes, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
