"""Limiter permit throughput, in process: how many acquire/settle round trips per second.

The limiter is the only owner of the quota book, so every request pays one
round trip to it; this measures that cost with no HTTP at all.  Workers acquire
a permit and settle it at once, with limits high enough never to bind (the
book's arithmetic still runs on every grant).

    python benchmarks/limiter_throughput.py [--workers 64] [--seconds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import trio

from engine._headers import RateLimitHeaders
from engine._limiter import Limiter
from engine._quota import Cost, Limits, QuotaBook


async def measure(workers: int, seconds: float, with_headers: bool) -> dict[str, float]:
    book = QuotaBook(Limits(rpm=10**12, tpm=10**15))
    limiter = Limiter(book, max_in_flight=workers)
    cost = Cost(tokens=500)
    snapshot = (
        RateLimitHeaders(
            limit_requests=10**12,
            remaining_requests=10**12 - 1,
            reset_requests=0.001,
            limit_tokens=10**15,
            remaining_tokens=10**15 - 500,
            reset_tokens=0.001,
        )
        if with_headers
        else None
    )
    count = 0
    deadline = trio.current_time() + seconds

    async def worker() -> None:
        nonlocal count
        while trio.current_time() < deadline:
            reservation = await limiter.acquire("gpt-4o-mini", cost)
            limiter.settle_nowait(reservation, headers=snapshot, used_tokens=300, latency=0.0)
            count += 1

    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        # the first response ends the probe phase
        limiter.settle_nowait(await limiter.acquire("gpt-4o-mini", cost), headers=snapshot)
        wall, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as workers_nursery:
            for _ in range(workers):
                workers_nursery.start_soon(worker)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        limiter.close()
    return {
        "workers": workers,
        "headers": with_headers,
        "permits": count,
        "permits_per_s": count / wall,
        "cpu_us_per_permit": cpu / count * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    results = []
    for workers in args.workers:
        for with_headers in (False, True):
            row = trio.run(measure, workers, args.seconds, with_headers)
            results.append(row)
            print(
                f"workers={workers:4d} headers={'yes' if with_headers else 'no ':3s} "
                f"{row['permits_per_s']:10,.0f} permits/s  "
                f"{row['cpu_us_per_permit']:.1f} µs CPU/permit"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
