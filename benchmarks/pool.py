"""Pools of keys (issue 17): one client over three API keys of 600, 600 and 1,200 RPM.

One ``engine mock --server uvicorn`` (token bucket, lognormal latency median
300 ms, sigma 0.5, seed 1) gives each of three keys its own quota
(``--key-limits KEY=rpm:R,tpm:T``; the TPM is high enough never to bind),
pinned to the server CPU; the engine runs in a child process pinned to the
client CPU (``benchmarks.peers._harness.start_child``) with
``open_client(endpoints=[Endpoint("a", ...), Endpoint("b", ...),
Endpoint("c", ...)])`` and sends N chat completions through ``client.map``.
Each scenario gets a fresh mock (full buckets, zeroed counters).

Scenarios:

* ``shares`` — every member told its limits (``Limits(rpm=R, tpm=T)``).
* ``shares_learned`` — ``limits=None`` on every member: learned from the
  ``x-ratelimit-*`` headers.
* ``revoke`` — known limits, member b's key revoked (``--revoke-key``) once
  the mock has admitted a third of what b would serve in ``shares``
  (``N x quota_b / quota_total / 3``).  With buckets this size that point
  falls inside b's initial burst (hundreds of b's requests still in flight).
* ``revoke_late`` — the same, revoked once b has served its burst and half of
  what it would serve after it (``burst_b + (share_b - burst_b) / 2``), in the
  refill-paced phase.

Definitions (``n`` = the pool's requests per minute, the sum of the members'
RPM; a token bucket starts full, so ``n`` requests go at once):

* **wall time**: first send (the earliest ``sent_at``) to the last answer.
* **ideal wall time**: ``max(0, N - n) / (n / 60)`` — 15 s for N = 3,000 at
  2,400 RPM (no latency added: the issue's "3,000 / 2,400 per minute after the
  bursts").  **ratio** = wall / ideal.  Revoke scenarios: the least time in
  which the members could admit N with b stopping at its revocation point
  (a and c alone at 1,800 RPM after it: 31.7 s for ``revoke``, 17.5 s for
  ``revoke_late``), reported without a target.
* **429s**: the mock's count (sum of ``per_key[*].rate_limited``: it is the
  witness) as a share of N; the engine's ``statistics().rate_limited`` beside it.
* **shares**: each member's ``succeeded`` / all succeeded, against its quota
  share (25/25/50%); **deviation** = ``max |share / quota_share - 1|``.
  The mock's ``per_key[*].admitted`` is recorded beside the engine's counts.
* **items**: every workload id answered ok exactly once by ``client.map``
  (missing, failed and duplicated ids are *lost*); the mock's admitted total
  is checked against N too (more: an item was admitted twice).

Targets (issue 17; never weakened): ratio ≤ 1.1, 429s ≤ 1%, deviation ≤ 5%,
no item lost (shares scenarios); revoke scenarios: the run completes, no
item lost, b retired (``EndpointStatistics.retired`` set); their wall time is
reported without a target.

    python -m benchmarks.pool [--quick] [--requests 3000] [--scenarios NAME ...]
        [--rpms a=600,b=600,c=1200] [--out bench-results/pool.json]

``--quick``: 60/60/120 RPM and 300 requests (ideal 15 s; at these rates one
request of slack is a quarter to half a second, so quick ratios run higher and
are indicative only).  Exit status 1 when a target is missed.  Full run about
1.5 minutes, quick about the same (the runs are refill-bound, not size-bound).
"""

from __future__ import annotations

import argparse
import collections
import gc
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from benchmarks.peers._common import DEFAULT_MAX_TOKENS, MODEL, workload
from benchmarks.peers._harness import (
    RESULTS_DIR,
    CpuSampler,
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
from engine.mock._config import mask_key

SCENARIOS = ("shares", "shares_learned", "revoke", "revoke_late")
#: Members and their requests per minute (issue 17), and ``--quick``'s.
RPMS = {"a": 600, "b": 600, "c": 1200}
QUICK_RPMS = {"a": 60, "b": 60, "c": 120}
REQUESTS = 3000
QUICK_REQUESTS = 300
#: Tokens per minute of every key: far above what N requests of ~30 tokens use.
TPM = 10_000_000
#: The member whose key the revoke scenarios revoke.
REVOKED = "b"
#: Each member's key: distinct last four characters, so the mock's masks differ.
KEYS = {
    "a": "sk-poolbench-member-a-1001",
    "b": "sk-poolbench-member-b-1002",
    "c": "sk-poolbench-member-c-1003",
}
LATENCY_MEDIAN_MS = 300.0
LATENCY_SIGMA = 0.5
#: Issue 17's targets: wall / ideal, 429s / N, max share deviation, items lost.
TARGETS = {"wall_ratio": 1.1, "share_429": 0.01, "share_deviation": 0.05, "lost": 0}
#: Seconds the child may run on top of twice the evenly paced time before it is killed.
CHILD_ALLOWANCE = 60.0


@attrs.frozen
class Plan:
    """One scenario: the members' quotas, N, known or learned limits, a revocation.

    Attributes:
        scenario: one of :data:`SCENARIOS`.
        rpms: member name -> requests per minute, in pool order.
        count: N, the requests to send.
        learned: True: ``limits=None`` on every member.
        revoke_after: admitted requests after which member :data:`REVOKED`'s
            key is revoked (None: never).
    """

    scenario: str
    rpms: tuple[tuple[str, int], ...]
    count: int
    learned: bool = False
    revoke_after: int | None = None

    @property
    def members(self) -> dict[str, int]:
        """Member name -> RPM."""
        return dict(self.rpms)

    @property
    def pool_rpm(self) -> int:
        """``n``: the pool's requests per minute (and its burst)."""
        return sum(rpm for _, rpm in self.rpms)

    def ideal_wall(self) -> float:
        """Seconds N requests need at best (:func:`ideal_wall`, with the revocation if any)."""
        return ideal_wall(self.count, self.members, self.revoke_after)

    def mock_args(self) -> list[str]:
        """``engine mock`` options: latency, seed, each key's limits, the revocation."""
        args = [
            "--quota-semantics",
            "token_bucket",
            "--latency-ms",
            str(LATENCY_MEDIAN_MS),
            "--latency-sigma",
            str(LATENCY_SIGMA),
            "--seed",
            "1",
        ]
        for name, rpm in self.rpms:
            args += ["--key-limits", f"{KEYS[name]}=rpm:{rpm},tpm:{TPM}"]
        if self.revoke_after is not None:
            args += ["--revoke-key", f"{KEYS[REVOKED]}={self.revoke_after}"]
        return args

    def child_timeout(self) -> float:
        """Seconds before the child is killed: twice N at the slowest pool rate, plus slack."""
        slowest = self.pool_rpm - (self.members[REVOKED] if self.revoke_after is not None else 0)
        return 2.0 * self.count / (slowest / 60.0) + CHILD_ALLOWANCE


def ideal_wall(requests: int, rpms: Mapping[str, float], revoke_after: int | None = None) -> float:
    """Seconds ``requests`` need at best from full token buckets of ``rpms`` per minute.

    Without a revocation: ``max(0, N - n) / (n / 60)``, ``n`` the pool's RPM.
    With member :data:`REVOKED` serving at most ``revoke_after`` requests: the
    least ``T`` at which the members could have admitted N, i.e.
    ``sum over the others (R_i + R_i / 60 x T) + min(revoke_after, R_b + R_b / 60 x T)``
    reaches N.
    """
    pool = sum(rpms.values())
    plain = max(0.0, requests - pool) / (pool / 60.0)
    if revoke_after is None:
        return plain
    burst = rpms[REVOKED]
    others = pool - burst
    # When b reaches its last admitted request, all members at full rate.
    reached = max(0.0, revoke_after - burst) / (burst / 60.0)
    capacity = others + others / 60.0 * reached + revoke_after
    if capacity >= requests:
        return plain
    return reached + (requests - capacity) / (others / 60.0)


def quota_shares(rpms: Mapping[str, float]) -> dict[str, float]:
    """Each member's share of the pool's quota."""
    total = sum(rpms.values())
    return {name: rpm / total for name, rpm in rpms.items()}


def share_deviation(
    counts: Mapping[str, int], rpms: Mapping[str, float]
) -> tuple[dict[str, float], float | None]:
    """(each member's share of ``counts``, the largest ``|share / quota_share - 1|``).

    None when nothing was counted.
    """
    total = sum(counts.get(name, 0) for name in rpms)
    if not total:
        return {name: 0.0 for name in rpms}, None
    shares = {name: counts.get(name, 0) / total for name in rpms}
    quotas = quota_shares(rpms)
    return shares, max(abs(shares[name] / quotas[name] - 1.0) for name in rpms)


def revoke_point(scenario: str, count: int, rpms: Mapping[str, int]) -> int | None:
    """Admitted requests after which member b's key is revoked in ``scenario`` (None: never).

    ``revoke``: a third of b's share of N; ``revoke_late``: b's burst (its RPM)
    plus half of what it would serve after it.
    """
    share = count * quota_shares(rpms)[REVOKED]
    if scenario == "revoke":
        return max(1, round(share / 3))
    if scenario == "revoke_late":
        burst = rpms[REVOKED]
        return max(1, round(burst + max(0.0, share - burst) / 2))
    return None


def make_plan(scenario: str, count: int, rpms: Mapping[str, int]) -> Plan:
    """The plan of ``scenario`` for ``count`` requests over members ``rpms``."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    return Plan(
        scenario=scenario,
        rpms=tuple(rpms.items()),
        count=count,
        learned=scenario == "shares_learned",
        revoke_after=revoke_point(scenario, count, rpms),
    )


def check_items(ids: Iterable[str], rows: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Items of ``ids`` not answered ok exactly once.

    ``rows`` are the child's ``[id, status, ok, ...]`` rows.  Returns the
    counts of ids ``missing`` (no result), ``failed`` (a result, none ok),
    ``duplicated`` (more than one result), ``unknown`` (results for ids not
    in the workload) and ``lost`` (missing + failed + duplicated + unknown).
    """
    expected = set(ids)
    seen = collections.Counter(row[0] for row in rows)
    ok = {row[0] for row in rows if row[2]}
    missing = sum(1 for i in expected if i not in seen)
    failed = sum(1 for i in expected if i in seen and i not in ok)
    duplicated = sum(1 for i, n in seen.items() if n > 1)
    unknown = sum(1 for i in seen if i not in expected)
    return {
        "missing": missing,
        "failed": failed,
        "duplicated": duplicated,
        "unknown": unknown,
        "lost": missing + failed + duplicated + unknown,
    }


def analyse(plan: Plan, child: Mapping[str, Any] | None, stats: Mapping[str, Any]) -> dict:
    """Every metric of one scenario's run, from the child's result and the mock's stats."""
    rpms = plan.members
    row: dict[str, Any] = {
        "scenario": plan.scenario,
        "requests": plan.count,
        "rpms": rpms,
        "limits": "learned" if plan.learned else "known",
        "revoked": REVOKED if plan.revoke_after is not None else None,
        "revoke_after": plan.revoke_after,
        "ideal_wall_s": plan.ideal_wall(),
    }
    child = child or {}
    rows = child.get("rows") or []
    row["child_error"] = child.get("error") if child else "no result (killed or crashed)"
    row["completed"] = bool(child) and not child.get("error")
    items = check_items((f"req-{i:07d}" for i in range(plan.count)), rows)
    row["items"] = items
    row["lost"] = items["lost"]
    sent = [r[4] for r in rows if r[4] is not None]
    finished = [r[5] for r in rows if r[5] is not None]
    t0 = min(sent) if sent else None
    row["wall_s"] = max(finished) - t0 if sent and finished else None
    row["wall_ratio"] = (
        row["wall_s"] / row["ideal_wall_s"]
        if row["wall_s"] is not None and row["ideal_wall_s"]
        else None
    )
    row["last_send_s"] = max(sent) - t0 if sent else None
    latencies = [r[5] - r[4] for r in rows if r[2] and r[4] is not None and r[5] is not None]
    row["latency_p50_s"] = percentile(latencies, 0.5)
    row["latency_p99_s"] = percentile(latencies, 0.99)
    # The engine's per-member counters beside the mock's per-key ones.
    engine_members = {m["name"]: m for m in (child.get("statistics") or {}).get("endpoints", [])}
    per_key = stats.get("per_key") or {}
    members = {}
    for name in rpms:
        theirs = per_key.get(mask_key(KEYS[name]), {})
        ours = engine_members.get(name, {})
        members[name] = {
            "rpm": rpms[name],
            "succeeded": ours.get("succeeded"),
            "sent": ours.get("sent"),
            "granted": ours.get("granted"),
            "rate_limited": ours.get("rate_limited"),
            "errors": ours.get("errors"),
            "retired": ours.get("retired"),
            "mock_admitted": theirs.get("admitted"),
            "mock_rate_limited": theirs.get("rate_limited"),
            "mock_revoked": theirs.get("revoked"),
        }
    row["members"] = members
    succeeded = {name: m["succeeded"] or 0 for name, m in members.items()}
    row["shares"], row["share_deviation"] = share_deviation(succeeded, rpms)
    row["quota_shares"] = quota_shares(rpms)
    row["witness_agrees"] = all(m["succeeded"] == m["mock_admitted"] for m in members.values())
    row["mock_admitted_total"] = sum(m["mock_admitted"] or 0 for m in members.values())
    row["mock_429"] = sum(m["mock_rate_limited"] or 0 for m in members.values())
    row["mock_401"] = sum(m["mock_revoked"] or 0 for m in members.values())
    row["mock_status_counts"] = stats.get("status_counts")
    row["share_429"] = row["mock_429"] / plan.count if plan.count else 0.0
    client = child.get("statistics") or {}
    row["engine_429"] = client.get("rate_limited")
    row["engine"] = {k: client.get(k) for k in ("sent", "succeeded", "failed", "retries")}
    row["retired_at_s"] = {
        name: at - t0 for name, at in (child.get("retired_at") or {}).items() if t0 is not None
    }
    row["child_cpu_s"] = child.get("cpu_s")
    # Requests that needed more than one attempt (a 429, a 401 from a revoked
    # key): id, attempts, their last send (s after t0), final status.
    row["retried"] = [
        [r[0], r[3], None if r[4] is None or t0 is None else round(r[4] - t0, 3), r[1]]
        for r in rows
        if r[3] > 1
    ]
    row["series"] = series(rows, t0)
    row["checks"] = checks(row)
    row["passed"] = all(row["checks"].values())
    return row


def series(rows: Sequence[Sequence[Any]], t0: float | None) -> dict[str, list[int]]:
    """Per second after ``t0``: (last) sends of requests answered ok, and their answers."""
    if t0 is None:
        return {}
    ok = [r for r in rows if r[2] and r[4] is not None and r[5] is not None]
    if not ok:
        return {}
    seconds = int(max(r[5] for r in ok) - t0) + 1
    sends, answers = [0] * seconds, [0] * seconds
    for r in ok:
        sends[min(seconds - 1, max(0, int(r[4] - t0)))] += 1
        answers[min(seconds - 1, max(0, int(r[5] - t0)))] += 1
    return {"sends_per_s": sends, "answers_per_s": answers}


def checks(row: Mapping[str, Any]) -> dict[str, bool]:
    """Pass/fail of each of the row's targets (see :data:`TARGETS`)."""
    # Lost: an id missing, failed, duplicated; or the mock admitted more than N
    # (an item served twice, whatever the client yielded).
    items_ok = (
        row["completed"]
        and row["lost"] <= TARGETS["lost"]
        and row.get("mock_admitted_total") == row["requests"]
    )
    if row.get("revoked") is not None:
        member = (row.get("members") or {}).get(row["revoked"]) or {}
        return {"no item lost": items_ok, f"{row['revoked']} retired": bool(member.get("retired"))}
    ratio, deviation = row.get("wall_ratio"), row.get("share_deviation")
    return {
        f"ratio <= {TARGETS['wall_ratio']}": ratio is not None and ratio <= TARGETS["wall_ratio"],
        f"429s <= {TARGETS['share_429']:.0%}": row["share_429"] <= TARGETS["share_429"],
        f"deviation <= {TARGETS['share_deviation']:.0%}": deviation is not None
        and deviation <= TARGETS["share_deviation"],
        "no item lost": items_ok,
    }


# -- output ---------------------------------------------------------------------


def _fmt(value: Any, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The short stdout table: one line per scenario, then each missed target.

    Revoke scenarios have no target on time or shares: their deviation is
    shown as "-" (b stopped early by design), their ideal is the one given
    the revocation (see :func:`ideal_wall`).
    """
    names = list(rows[0]["rpms"]) if rows else list(RPMS)
    header = (
        f"{'scenario':14s} {'wall s':>7s} {'ideal s':>7s} {'ratio':>6s} {'429s':>11s} "
        f"{'shares ' + '/'.join(names):>19s} {'max dev':>7s} {'lost':>5s} {'401s':>5s}  result"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        shares = "/".join(f"{row['shares'][n]:.1%}" for n in names)
        count_429 = f"{row['mock_429']} ({row['share_429']:.2%})"
        deviation = None if row.get("revoked") else row["share_deviation"]
        lines.append(
            f"{row['scenario']:14s} {_fmt(row['wall_s'], '.1f'):>7s} "
            f"{_fmt(row['ideal_wall_s'], '.1f'):>7s} {_fmt(row['wall_ratio'], '.3f'):>6s} "
            f"{count_429:>11s} {shares:>19s} {_fmt(deviation, '.1%'):>7s} "
            f"{row['lost']:5d} {row['mock_401']:5d}  {'PASS' if row['passed'] else 'FAIL'}"
        )
    for row in rows:
        for name, ok in row["checks"].items():
            if not ok:
                lines.append(f"  {row['scenario']}: {name} missed")
        if row.get("child_error"):
            lines.append(f"  {row['scenario']}: {row['child_error']}")
        if not row.get("witness_agrees"):
            pairs = ", ".join(
                f"{n}: engine {m['succeeded']} / mock {m['mock_admitted']}"
                for n, m in row["members"].items()
            )
            lines.append(f"  {row['scenario']}: engine and mock disagree ({pairs})")
    return "\n".join(lines)


# -- the child (the engine, pinned to the client CPU) --------------------------------


def _endpoints(base_url: str, rpms: Mapping[str, int], learned: bool) -> list[Any]:
    import engine

    return [
        engine.Endpoint(
            name,
            base_url,
            api_key=KEYS[name],
            limits=None if learned else engine.Limits(rpm=rpm, tpm=TPM),
        )
        for name, rpm in rpms.items()
    ]


async def _drive(base_url: str, rpms: Mapping[str, int], count: int, learned: bool) -> dict:
    """Run ``count`` chats through a pooled ``client.map``; rows, statistics, retirements."""
    import trio

    import engine

    requests = (
        engine.ChatRequest(
            messages=r.messages(), model=MODEL, id=r.id, params={"max_tokens": r.max_tokens}
        )
        for r in workload(count, max_tokens=DEFAULT_MAX_TOKENS)
    )
    rows: list[list[Any]] = []
    retired_at: dict[str, float] = {}
    error: str | None = None
    async with engine.open_client(endpoints=_endpoints(base_url, rpms, learned)) as client:

        async def watch_retirements() -> None:
            while True:
                for member in client.statistics().endpoints:
                    if member.retired is not None and member.name not in retired_at:
                        retired_at[member.name] = time.time()
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_retirements)
            try:
                async for result in client.map(requests):
                    timings = result.timings
                    rows.append(
                        [
                            result.id,
                            result.status_code,
                            result.ok,
                            result.attempts,
                            timings.sent_at,
                            timings.finished_at,
                            result.error.code if result.error else None,
                        ]
                    )
            except engine.EngineError as exc:
                error = f"{type(exc).__name__}: {exc}"
            nursery.cancel_scope.cancel()
        stats = client.statistics()
    return {
        "rows": rows,
        "retired_at": retired_at,
        "error": error,
        "statistics": {
            "sent": stats.sent,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "retries": stats.retries,
            "rate_limited": stats.rate_limited,
            "endpoints": [attrs.asdict(member) for member in stats.endpoints],
        },
    }


def child_main(args: argparse.Namespace) -> None:
    """Run the engine over the pool (in the child process) and write its result as JSON."""
    import trio

    import engine  # noqa: F401  (imported before the clock starts)

    rpms = args.rpms
    gc.freeze()  # what the imports built is never garbage
    cpu = time.process_time()
    result = trio.run(_drive, args.base_url, rpms, args.count, args.learned)
    result["cpu_s"] = time.process_time() - cpu
    write_json(args.out, result)


def parse_rpms(text: str) -> dict[str, int]:
    """``"a=600,b=600,c=1200"`` -> ``{"a": 600, "b": 600, "c": 1200}`` (members a, b, c).

    Raises:
        argparse.ArgumentTypeError: a malformed part, an RPM below 1, or members
            other than exactly a, b and c.
    """
    out: dict[str, int] = {}
    for part in text.split(","):
        name, equals, rpm = part.strip().partition("=")
        try:
            value = int(rpm)
        except ValueError:
            value = 0
        if not equals or value < 1 or name in out:
            raise argparse.ArgumentTypeError(f"bad member {part!r} in {text!r} (want NAME=RPM)")
        out[name] = value
    if sorted(out) != sorted(KEYS):
        raise argparse.ArgumentTypeError(f"give members {', '.join(KEYS)} (got {text!r})")
    return out


# -- running ----------------------------------------------------------------------


def run_plan(plan: Plan, sampler: CpuSampler) -> dict:
    """Serve a fresh mock for ``plan``, run the engine child against it; the row."""
    server = start_mock(plan.mock_args(), server="uvicorn")
    try:
        child_args = [
            "--child",
            "--base-url",
            server.base_url,
            "--rpms",
            ",".join(f"{name}={rpm}" for name, rpm in plan.rpms),
            "--count",
            str(plan.count),
        ]
        if plan.learned:
            child_args.append("--learned")
        child = start_child("benchmarks.pool", child_args, timeout=plan.child_timeout())
        sampler.watch(child.process.pid)
        started = time.time()
        wait_all([child])
        result = child.result()
        stats = mock_stats(server.base_url)
        row = analyse(plan, result, stats)
        row["server_cpu_s"] = process_cpu_seconds(server.pid)
        row["cpu"] = sampler.summary(started, time.time())
    finally:
        server.stop()
    return row


def run(
    *,
    quick: bool = False,
    requests: int | None = None,
    scenarios: Sequence[str] = SCENARIOS,
    rpms: Mapping[str, int] | None = None,
    out: str = f"{RESULTS_DIR}/pool.json",
) -> dict:
    """Run the pool scenarios; print the table; write and return the results.

    ``rpms`` (default :data:`RPMS`, ``--quick`` :data:`QUICK_RPMS`) must name
    members a, b and c (b is the one the revoke scenarios revoke).
    """
    rpms = dict(rpms or (QUICK_RPMS if quick else RPMS))
    count = requests or (QUICK_REQUESTS if quick else REQUESTS)
    started = time.time()
    machine_info = machine()
    plans = [make_plan(name, count, rpms) for name in scenarios]
    rows = []
    with CpuSampler() as sampler:
        for plan in plans:
            revoke = "" if plan.revoke_after is None else f", b revoked after {plan.revoke_after}"
            print(
                f"-- {plan.scenario}: N={plan.count} RPM {plan.members} "
                f"ideal={plan.ideal_wall():.1f}s{revoke}",
                flush=True,
            )
            rows.append(run_plan(plan, sampler))
    result = {
        "scenario": "pool",
        "machine": machine_info,
        "loadavg_at_end": [round(x, 2) for x in _loadavg()],
        "config": {
            "quick": quick,
            "requests": count,
            "rpms": rpms,
            "tpm": TPM,
            "semantics": "token_bucket",
            "latency_median_ms": LATENCY_MEDIAN_MS,
            "latency_sigma": LATENCY_SIGMA,
            "mock_server": "uvicorn",
            "targets": TARGETS,
        },
        "runs": rows,
        "duration_s": time.time() - started,
    }
    write_json(out, result)
    print(format_table(rows))
    print(f"results: {out}", flush=True)
    return result


def _loadavg() -> tuple[float, float, float]:
    return os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3


def build_parser() -> argparse.ArgumentParser:
    """The command line (the child's options are internal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="60/60/120 RPM, 300 requests")
    parser.add_argument(
        "--requests", type=int, help=f"N (default {REQUESTS}; --quick {QUICK_REQUESTS})"
    )
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument(
        "--rpms",
        type=parse_rpms,
        help="each member's RPM, e.g. a=600,b=600,c=1200 (the default; --quick 60/60/120)",
    )
    parser.add_argument("--out", default=f"{RESULTS_DIR}/pool.json")
    # child mode (internal)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--learned", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, with the internal ``--child``, the engine); 1 if a target missed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.child:
        child_main(args)
        return 0
    stop_on_sigterm()
    result = run(
        quick=args.quick,
        requests=args.requests,
        scenarios=args.scenarios,
        rpms=args.rpms,
        out=args.out,
    )
    return 0 if all(row["passed"] for row in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
