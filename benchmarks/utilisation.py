"""Quota utilisation: every peer against the same mock, per quota semantics and binding limit.

For each quota semantics (``token_bucket``, ``fixed_window``, ``per_second``)
and each binding limit (requests per minute, then tokens per minute with the
request limit twice as loose), every peer runs the same N chat completions
against its own ``engine mock --server uvicorn`` (lognormal latency, median
300 ms, sigma 0.5, seeded), in its own process pinned to the client CPU, the
mocks pinned to the other.  Peers run side by side (each has its own mock and
its own quota).  Peers run one at a time, except in the fixed-window scenarios
(60 s windows would otherwise dominate the run time) and in ``--quick`` mode,
where they run side by side — each with its own mock and quota, all starting
at the same moment (``--side-by-side none|fixed_window|all``).  A peer still
running ``1.5 x ideal + 10 s`` after the start is cut off and marked so.

Definitions (``L`` = the binding limit per minute, in its unit — requests, or
tokens — and ``r = L / 60`` per second; ``t = 0`` is the peer's first send;
an *admitted send* is the send time of an attempt the server answered 200):

* **steady state**: token bucket — from the moment the admitted sends,
  replayed against a bucket of ``L`` refilled at ``r``, have brought it below
  2% of ``L`` (the burst is spent) to the last admitted send (a peer that never
  spends the burst has no steady state: utilisation "—", its wall time says
  how much burst it left unused); fixed window — the first whole window
  ``[0, 60 s)``; per second — whole seconds from ``t = 2 s`` to the second in
  which the last admitted send falls (sub-windows are aligned on the first
  request, i.e. on ``t = 0``); each window counts sends in ``[start, end)``.
* **utilisation**: units admitted in the steady state / what the quota
  allowed in it (``r`` x its length, plus for the token bucket what the
  replayed bucket still held when it began);
  for the fixed window, units admitted in ``[0, 60 s)`` / ``L``.
* a steady state shorter than 8 s is not measured ("—"): a few requests'
  timing at its edges would decide the ratio.
* **ideal wall time** for N requests of cost ``c`` (``n = L / c`` requests per
  window): token bucket ``max(0, N - n) / (n / 60)``; fixed window
  ``floor((N - 1) / n) x 60 s``; per second ``(ceil(N / (n / 60)) - 1) x 1 s``;
  each plus the median latency.  Wall time = last answer - first send.
* **429s**: from the mock's ``status_counts`` (every attempt), share of all attempts.
* **Little's law**: mean requests in flight over the steady state (from the
  send/answer intervals) against admitted rate x mean latency there.

    python -m benchmarks.utilisation [--quick] [--rpm 1200] [--peers NAME ...]
        [--semantics ...] [--bindings rpm tpm] [--side-by-side none|fixed_window|all]
        [--out bench-results/utilisation.json]

``--quick``: requests/min binding only, token bucket and per-second, 10 s of
steady state each (under a minute).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs

from benchmarks.peers import PEERS, PeerLimits, Record, prepare, run_peer, workload
from benchmarks.peers._common import DEFAULT_MAX_TOKENS, BenchRequest
from benchmarks.peers._harness import (
    RESULTS_DIR,
    machine,
    mock_stats,
    percentile,
    process_cpu_seconds,
    start_child,
    start_mock,
    stop_on_sigterm,
    wait_all,
    write_json,
)
from engine._tokens import estimate_chat_tokens

SEMANTICS = ("token_bucket", "fixed_window", "per_second")
BINDINGS = ("rpm", "tpm")
LATENCY_MEDIAN_MS = 300.0
LATENCY_SIGMA = 0.5
DEFAULT_RPM = 1200
#: Seconds of steady state after the burst (token bucket) or from the start (per second).
STEADY_SECONDS = 20.0
QUICK_STEADY_SECONDS = 10.0
#: Token bucket: N covers this many times ``steady`` seconds of refill.
TOKEN_BUCKET_STRETCH = 1.5
#: A steady state shorter than this (seconds) is too short to measure: "—".
MIN_STEADY = 8.0
#: Seconds children get to import before they all start together.
STARTUP_ALLOWANCE = 10.0
#: A token bucket's burst counts as spent once its level is below this share of L.
BURST_SPENT = 0.02
#: Seconds after a fresh start during which the per-second probe/detection settles.
PER_SECOND_SETTLE = 2.0


@attrs.frozen
class Plan:
    """One scenario: the mock's quota, the binding limit and the workload size.

    Attributes:
        semantics: the mock's quota semantics.
        binding: ``"rpm"`` or ``"tpm"``: which limit binds.
        rpm: the mock's requests per minute.
        tpm: the mock's tokens per minute (None: unlimited).
        cost: tokens one request costs (prompt + max_tokens; all requests alike).
        count: N, the requests to send.
    """

    semantics: str
    binding: str
    rpm: int
    tpm: int | None
    cost: int
    count: int

    @property
    def limit_units(self) -> float:
        """``L``: the binding limit per minute, in its own unit."""
        return float(self.rpm if self.binding == "rpm" else self.tpm)

    @property
    def requests_per_window(self) -> float:
        """``n``: requests the binding limit admits per minute."""
        return self.limit_units / (1 if self.binding == "rpm" else self.cost)

    def ideal_wall(self) -> float:
        """Seconds N requests need at best under this semantics (plus median latency)."""
        n = self.requests_per_window
        latency = LATENCY_MEDIAN_MS / 1000.0
        if self.semantics == "token_bucket":
            return max(0.0, self.count - n) / (n / 60.0) + latency
        if self.semantics == "fixed_window":
            return math.floor((self.count - 1) / n) * 60.0 + latency
        return (math.ceil(self.count / (n / 60.0)) - 1) + latency

    def cutoff(self) -> float:
        """Seconds after which a peer is cut off: 1.5 x ideal + 10."""
        return 1.5 * self.ideal_wall() + 10.0

    def mock_args(self) -> list[str]:
        """``engine mock`` options for this scenario."""
        args = [
            "--rpm",
            str(self.rpm),
            "--quota-semantics",
            self.semantics,
            "--latency-ms",
            str(LATENCY_MEDIAN_MS),
            "--latency-sigma",
            str(LATENCY_SIGMA),
            "--seed",
            "1",
        ]
        if self.tpm is not None:
            args += ["--tpm", str(self.tpm)]
        return args


def request_cost() -> int:
    """Tokens one workload request costs at the server's arrival check."""
    first: BenchRequest = next(workload(1))
    return estimate_chat_tokens(first.body())


def make_plan(semantics: str, binding: str, rpm: int, steady: float) -> Plan:
    """The scenario for ``semantics`` x ``binding`` at ``rpm`` with ``steady`` seconds."""
    cost = request_cost()
    tpm = None if binding == "rpm" else (rpm // 2) * cost
    n = rpm if binding == "rpm" else rpm // 2
    per_second = n / 60.0
    if semantics == "token_bucket":
        # Room for the burst to be spent at a finite speed and still leave
        # ``steady`` seconds of refill-bound sending after it.
        count = int(n + per_second * steady * TOKEN_BUCKET_STRETCH)
    elif semantics == "fixed_window":
        count = int(n * 1.25)
    else:
        count = int(per_second * steady)
    return Plan(semantics, binding, rpm, tpm, cost, count)


# -- analysis (pure: records and stats in, numbers out) -----------------------


def analyse(plan: Plan, records: Sequence[Record], stats: dict[str, Any]) -> dict[str, Any]:
    """Every metric of one peer's run (see the module docstring for definitions)."""
    sent = [r.sent for r in records if r.sent is not None]
    out: dict[str, Any] = {"completed": len(records), "requests": plan.count}
    if not sent:
        return out
    t0 = min(sent)
    unit = (lambda r: 1.0) if plan.binding == "rpm" else (lambda r: float(r.tokens or plan.cost))
    ok = sorted(
        (r for r in records if r.status == 200 and r.last_sent is not None),
        key=lambda r: r.last_sent,
    )
    admitted = [(r.last_sent - t0, unit(r)) for r in ok]
    rate_units = plan.limit_units / 60.0
    start, end, left = steady_window(plan, admitted)
    out["steady_start_s"], out["steady_end_s"] = start, end
    if start is not None and end is not None and end - start >= MIN_STEADY:
        units = sum(u for at, u in admitted if start <= at < end)
        if plan.semantics == "fixed_window":
            out["utilisation"] = units / plan.limit_units
        else:
            # What the quota allowed in the window: its refill, plus whatever
            # was still in the bucket when the window opened.
            out["utilisation"] = units / (rate_units * (end - start) + left)
        out["littles_law"] = littles_law(ok, t0, start, end)
    finished_all = len(records) >= plan.count and all(r.status == 200 for r in records)
    out["succeeded"] = len(ok)
    out["failed"] = len(records) - len(ok)
    wall = max(r.finished for r in records) - t0
    # A wall time counts only when every request got its answer: a peer that
    # gives up on some (the SDK after its retries) would otherwise look fast.
    out["wall_s"] = wall if finished_all else None
    out["cut_off"] = len(records) < plan.count
    out["elapsed_s"] = wall
    out["ideal_wall_s"] = plan.ideal_wall()
    out["wall_ratio"] = wall / plan.ideal_wall() if finished_all else None
    out["all_ok"] = finished_all
    latencies = [r.finished - r.last_sent for r in ok]
    out["latency_p50_s"] = percentile(latencies, 0.5)
    out["latency_p99_s"] = percentile(latencies, 0.99)
    counts = stats.get("status_counts", {})
    attempts = sum(int(v) for v in counts.values())
    out["server_attempts"] = attempts
    out["server_429"] = int(counts.get("429", 0))
    out["share_429"] = out["server_429"] / attempts if attempts else 0.0
    out["client_429"] = sum(len(r.throttled) for r in records)
    out["max_requests_per_60s"] = stats.get("max_requests_per_60s")
    out["max_tokens_per_60s"] = stats.get("max_tokens_per_60s")
    out["series"] = series(records, ok, t0, plan)
    return out


def steady_window(
    plan: Plan, admitted: Sequence[tuple[float, float]]
) -> tuple[float | None, float | None, float]:
    """(start, end, units left in the bucket at start) of the steady state.

    Times are seconds after the first send (None: no steady state).
    """
    if not admitted:
        return None, None, 0.0
    last = admitted[-1][0]
    if plan.semantics == "fixed_window":
        return (0.0, 60.0, 0.0) if last >= 60.0 else (None, None, 0.0)
    if plan.semantics == "per_second":
        # Whole sub-windows only: a window ending mid-second would count that
        # second's allowance against a fraction of its time.
        return PER_SECOND_SETTLE, float(math.floor(last)), 0.0
    # Token bucket: replay the admitted sends against a bucket of L refilled at
    # L / 60 per second; the steady state starts once the burst is spent.
    capacity = plan.limit_units
    level, previous = capacity, 0.0
    for at, units in admitted:
        level = min(capacity, level + (at - previous) * capacity / 60.0) - units
        previous = at
        if level <= BURST_SPENT * capacity:
            return at, last, max(0.0, level)
    return None, None, 0.0


def littles_law(ok: Sequence[Record], t0: float, start: float, end: float) -> dict[str, float]:
    """Mean in flight over [start, end] vs admitted rate x mean latency there."""
    busy = 0.0
    latencies = []
    for r in ok:
        s, f = r.last_sent - t0, r.finished - t0
        overlap = min(f, end) - max(s, start)
        if overlap > 0:
            busy += overlap
        if start < s <= end:
            latencies.append(f - s)
    duration = end - start
    rate = len(latencies) / duration
    mean_latency = sum(latencies) / len(latencies) if latencies else 0.0
    return {
        "in_flight": busy / duration,
        "rate_per_s": rate,
        "mean_latency_s": mean_latency,
        "rate_x_latency": rate * mean_latency,
    }


def series(records: Sequence[Record], ok: Sequence[Record], t0: float, plan: Plan) -> dict:
    """Per-second admitted units and 429s, for the plots."""
    if not records:
        return {}
    seconds = int(max(r.finished for r in records) - t0) + 1
    admitted = [0.0] * seconds
    throttled = [0] * seconds
    for r in ok:
        index = min(seconds - 1, int(r.last_sent - t0))
        admitted[index] += 1.0 if plan.binding == "rpm" else float(r.tokens or plan.cost)
    for r in records:
        for at in r.throttled:
            index = int(at - t0)
            if 0 <= index < seconds:
                throttled[index] += 1
    return {"admitted_per_s": admitted, "throttled_per_s": throttled}


# -- running ------------------------------------------------------------------


def side_by_side(plan: Plan, mode: str) -> bool:
    """Whether ``plan``'s peers run at the same time under ``--side-by-side mode``."""
    return mode == "all" or (mode == "fixed_window" and plan.semantics == "fixed_window")


def run_scenario(plan: Plan, peers: Sequence[str], *, serial: bool = True) -> list[dict]:
    """Run every peer on ``plan``, one at a time or (``serial=False``) side by side."""
    rows = []
    batches = [[p] for p in peers] if serial else [list(peers)]
    for batch in batches:
        # Start the mocks side by side: each takes seconds to import and bind.
        with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
            started = list(pool.map(lambda _: start_mock(plan.mock_args()), batch))
        servers = dict(zip(batch, started, strict=True))
        try:
            children = {}
            # Every child imports, then waits for the same moment to start, so
            # start-up (seconds under load) neither staggers peers nor eats the cut-off.
            start_at = time.time() + (STARTUP_ALLOWANCE if len(batch) > 1 else 3.0)
            for peer in batch:
                args = [
                    "--child",
                    peer,
                    "--base-url",
                    servers[peer].base_url,
                    "--count",
                    str(plan.count),
                    "--rpm",
                    str(plan.rpm),
                    "--deadline",
                    # counted from the common start; the engine first opens a
                    # client per worker (seconds under load), so allow for it
                    str(plan.cutoff() + STARTUP_ALLOWANCE),
                    "--start-at",
                    str(start_at),
                ]
                if plan.tpm is not None:
                    args += ["--tpm", str(plan.tpm)]
                children[peer] = start_child(
                    "benchmarks.utilisation",
                    args,
                    timeout=plan.cutoff() + 2 * STARTUP_ALLOWANCE + 30.0,
                )
            wait_all(list(children.values()))
            for peer in batch:
                result = children[peer].result() or {}
                records = [Record.from_row(row) for row in result.get("records", [])]
                stats = mock_stats(servers[peer].base_url)
                row = {
                    "commit": machine()["commit"],
                    "semantics": plan.semantics,
                    "binding": plan.binding,
                    "peer": peer,
                    "label": PEERS[peer].label,
                    "limit_per_min": plan.limit_units,
                    "count": plan.count,
                    "client_cpu_s": result.get("cpu_s"),
                    "server_cpu_s": process_cpu_seconds(servers[peer].pid),
                    **analyse(plan, records, stats),
                }
                attempts = row.get("server_attempts") or 0
                if result.get("cpu_s") is not None and attempts:
                    row["client_cpu_us_per_request"] = result["cpu_s"] / attempts * 1e6
                rows.append(row)
                _print_row(row)
        finally:
            for server in servers.values():
                server.stop()
    return rows


def _print_row(row: dict) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    print(
        f"{row['semantics']:13s} {row['binding']} {row['peer']:15s} "
        f"util={fmt(row.get('utilisation'), '.3f')} 429s={row.get('server_429', '-')} "
        f"({fmt(row.get('share_429'), '.2%')}) wall={fmt(row.get('elapsed_s'), '.1f')}s "
        f"ideal={fmt(row.get('ideal_wall_s'), '.1f')}s "
        f"ratio={fmt(row.get('wall_ratio'), '.3f')}{' CUT OFF' if row.get('cut_off') else ''} "
        f"p50={fmt(row.get('latency_p50_s'), '.3f')} p99={fmt(row.get('latency_p99_s'), '.3f')}",
        flush=True,
    )


def child_main(args: argparse.Namespace) -> None:
    """Run one peer (in a child process) and write its records as JSON."""
    prepare(args.child)
    limits = PeerLimits(rpm=args.rpm, tpm=args.tpm)
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    wall, cpu = time.time(), time.process_time()
    records = run_peer(
        args.child,
        args.base_url,
        f"sk-bench-{args.child}",
        workload(args.count, max_tokens=DEFAULT_MAX_TOKENS),
        limits,
        deadline=args.deadline,
    )
    write_json(
        args.out,
        {
            "records": [r.to_row() for r in records],
            "cpu_s": time.process_time() - cpu,
            "wall_s": time.time() - wall,
        },
    )


def run(
    *,
    quick: bool = False,
    rpm: int = DEFAULT_RPM,
    peers: Sequence[str] = tuple(PEERS),
    semantics: Sequence[str] | None = None,
    bindings: Sequence[str] | None = None,
    mode: str | None = None,
    out: str = f"{RESULTS_DIR}/utilisation.json",
    merge: bool = False,
) -> dict:
    """Run the utilisation scenarios; write and return the results."""
    semantics = semantics or (("token_bucket", "per_second") if quick else SEMANTICS)
    bindings = bindings or (("rpm",) if quick else BINDINGS)
    steady = QUICK_STEADY_SECONDS if quick else STEADY_SECONDS
    mode = mode or ("all" if quick else "fixed_window")
    started = time.time()
    # Taken at the start: the engine under test may change while this runs.
    machine_info = machine()
    rows = []
    for binding in bindings:
        for sem in semantics:
            plan = make_plan(sem, binding, rpm, steady)
            print(
                f"-- {sem} / {binding}: N={plan.count} ideal={plan.ideal_wall():.1f}s "
                f"cutoff={plan.cutoff():.0f}s",
                flush=True,
            )
            rows.extend(run_scenario(plan, peers, serial=not side_by_side(plan, mode)))
    if merge and os.path.exists(out):
        # Keep the rows of scenarios and peers not run this time (same
        # configuration assumed); each row records the commit it ran at.
        with open(out) as f:
            previous = json.load(f)
        ran = {(r["semantics"], r["binding"], r["peer"]) for r in rows}
        kept = [r for r in previous["runs"] if (r["semantics"], r["binding"], r["peer"]) not in ran]
        rows = kept + rows
    result = {
        "scenario": "utilisation",
        "machine": machine_info,
        "config": {
            "rpm": rpm,
            "quick": quick,
            "latency_median_ms": LATENCY_MEDIAN_MS,
            "latency_sigma": LATENCY_SIGMA,
            "steady_seconds": steady,
            "request_cost_tokens": request_cost(),
            "side_by_side": mode,
        },
        "runs": rows,
        "duration_s": time.time() - started,
    }
    write_json(out, result)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rpm", type=int, default=DEFAULT_RPM)
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    parser.add_argument("--semantics", nargs="+", choices=SEMANTICS)
    parser.add_argument("--bindings", nargs="+", choices=BINDINGS)
    parser.add_argument(
        "--side-by-side",
        choices=("none", "fixed_window", "all"),
        help="which scenarios run their peers at the same time "
        "(default: fixed_window; --quick: all)",
    )
    parser.add_argument("--out", default=f"{RESULTS_DIR}/utilisation.json")
    parser.add_argument(
        "--merge", action="store_true", help="keep other scenarios' rows already in --out"
    )
    # child mode (internal)
    parser.add_argument("--child", choices=list(PEERS), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tpm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    stop_on_sigterm()
    run(
        quick=args.quick,
        rpm=args.rpm,
        peers=args.peers,
        semantics=args.semantics,
        bindings=args.bindings,
        mode=args.side_by_side,
        out=args.out,
        merge=args.merge,
    )


if __name__ == "__main__":
    sys.exit(main())
