"""Quota utilisation: every peer against the same mock, per quota semantics and binding limit.

For each quota semantics (``token_bucket``, ``fixed_window``, ``per_second``)
and each binding limit (requests per minute, then tokens per minute with the
request limit twice as loose), every peer runs the same N chat completions
against its own ``engine mock --server uvicorn`` (lognormal latency, median
300 ms, sigma 0.5, seeded), in its own process pinned to the client CPU, the
mocks pinned to the other.  Each peer has its own mock and its own quota, so
peers can share the time of a run as long as the client CPU is not saturated:
by default (``--side-by-side staggered``) the CPU-bound ``openai_sdk`` (one
core is not enough for its own requests) runs without the other peers: its
token-bucket scenarios one at a time, its other four in one wave whose starts
(``HEAVY_OFFSETS``) put the second fixed window's burst and the per-second
runs where the first fixed window waits for its next window; then every other
peer runs side by side in one wave covering every scenario, the scenarios'
starts staggered (``LIGHT_OFFSETS``: 15-48 s apart, fixed windows first) and,
in token-bucket scenarios, each peer 3 s after the one before
(``TOKEN_BUCKET_PEER_STAGGER``), so no two bursts coincide.
``--quick`` puts ``openai_sdk`` in that wave too (``staggered_all``: the client
CPU is then saturated while it runs, so quick figures are indicative only).
``--side-by-side none|fixed_window|all`` run peers one at a time, side by side
in fixed-window scenarios only, or all side by side one scenario at a time.
How busy the client and server CPUs were (by any process — other work on the
machine included) and how much CPU our client children used together are
sampled every 0.5 s and stored with every row (``cpu``: means and highest
1-second values over the run and over its steady state).  A peer still running ``1.25 x ideal +
5 s`` after the start is cut off and marked so.

Definitions (``L`` = the binding limit per minute, in its unit — requests, or
tokens — and ``r = L / 60`` per second; ``t = 0`` is the peer's first send;
an *admitted send* is the send time of an attempt the server answered 200):

* **steady state**: token bucket — from the moment the admitted sends,
  replayed against a bucket of ``L`` refilled at ``r``, have brought it within
  2% of ``L`` of its floor (the lowest level it reaches from then on), that
  floor being at most 10% of ``L`` (the burst is spent), to the last admitted
  send (a peer that never spends the burst has no steady state: utilisation
  "—", its wall time says how much burst it left unused); fixed window — the first whole window
  ``[0, 60 s)``; per second — whole seconds from ``t = 2 s`` to the second in
  which the last admitted send falls (sub-windows are aligned on the first
  request, i.e. on ``t = 0``); each window counts sends in ``[start, end)``.
* **utilisation**: units admitted in the steady state / what the quota
  made available in it: ``r`` x its length, plus for the token bucket what the
  replayed bucket gave up over it (its level at the start less its level at
  the end, when positive: a reserve left from the burst and spent now is not
  counted as extra rate).  The difference of two levels is used, not the level
  at the start alone: the replay runs on the client's send times, which lead
  the server's admissions while the client is busy sending its burst (per-worker
  connections, one core), and while the bucket is still full that lead shows up
  as refill the server never granted — a constant offset of 10 to 20 requests in
  the replayed level (the engine's own bucket, corrected by the server's
  headers, and the server's ``remaining`` header both stand at 0-1 in steady
  state while the replay shows ~20).  The offset cancels in the difference.
  For the fixed window, units admitted in ``[0, 60 s)`` / ``L``.
* a steady state shorter than 8 s is not measured ("—"): a few requests'
  timing at its edges would decide the ratio.  ``steady_units`` /
  ``steady_requests`` in each row say how much it covered.
* **ideal wall time** for N requests of cost ``c`` (``n = L / c`` requests per
  window): token bucket ``max(0, N - n) / (n / 60)``; fixed window
  ``floor((N - 1) / n) x 60 s``; per second ``(ceil(N / (n / 60)) - 1) x 1 s``;
  each plus the median latency.  Wall time = last answer - first send.
* **429s**: from the mock's ``status_counts`` (every attempt), share of all attempts.
* **Little's law**: mean requests in flight over the steady state (from the
  send/answer intervals) against admitted rate x mean latency there.

    python -m benchmarks.utilisation [--quick] [--rpm 1200] [--peers NAME ...]
        [--semantics ...] [--bindings rpm tpm]
        [--side-by-side staggered|none|fixed_window|all]
        [--out bench-results/utilisation.json]

``--quick``: requests/min binding only, token bucket and per-second, 10 s of
steady state each (about a minute).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from benchmarks.peers import PEERS, PeerLimits, Record, prepare, run_peer, workload
from benchmarks.peers._common import DEFAULT_MAX_TOKENS, BenchRequest
from benchmarks.peers._harness import (
    RESULTS_DIR,
    CpuSampler,
    fork_child,
    machine,
    mock_stats,
    percentile,
    process_cpu_seconds,
    start_fork_server,
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
#: Seconds the engine gets on top of the cut-off: it opens a client per worker first.
STARTUP_ALLOWANCE = 5.0
#: Seconds between forking a wave's children and their common start, plus per child.
FORK_LEAD = 1.0
FORK_LEAD_PER_CHILD = 0.2
#: Peers that saturate the client CPU on their own: they never share it.
HEAVY_PEERS = ("openai_sdk",)
#: Heavy peers: offsets (s) of the scenarios that share one wave — the second
#: fixed window's burst and the per-second runs fit where the first fixed
#: window waits for its next window.  Token-bucket scenarios run alone.
HEAVY_OFFSETS = {
    ("fixed_window", "rpm"): 0.0,
    ("fixed_window", "tpm"): 25.0,
    ("per_second", "tpm"): 40.0,
    ("per_second", "rpm"): 66.0,
}
#: Staggered wave: when each scenario starts (s).  A burst of a minute's
#: requests takes seconds of client CPU per peer, so no two bursts (the fixed
#: windows' second ones at 60 s and 80 s included) share a moment; per-second
#: scenarios have no burst and start last, after every first burst.
LIGHT_OFFSETS = {
    ("fixed_window", "rpm"): 0.0,
    ("fixed_window", "tpm"): 20.0,
    ("token_bucket", "rpm"): 35.0,
    ("token_bucket", "tpm"): 83.0,
    ("per_second", "rpm"): 98.0,
    ("per_second", "tpm"): 100.0,
}
#: Staggered wave: seconds between one peer's token-bucket start and the next
#: one's (in peer order), so each peer sends its burst (1-4 s of client CPU)
#: while the others are in steady state.  The token-bucket wall time is decided
#: by how soon the burst and the last requests go, which a burst of four other
#: peers on the same core delays; the fixed windows' bursts wait up to a
#: minute anyway, and the per-second runs have none.  With five light peers the
#: RPM runs span 35-79 s: the TPM runs start after them (and after the second
#: TPM window's burst at 80 s), the per-second runs after the TPM bursts.
TOKEN_BUCKET_PEER_STAGGER = 3.0
#: ``--quick`` (token bucket and per-second, RPM): the per-second runs start
#: once the token-bucket bursts are over.
QUICK_LIGHT_OFFSETS = {("token_bucket", "rpm"): 0.0, ("per_second", "rpm"): 15.0}
SIDE_BY_SIDE = ("staggered", "staggered_all", "none", "fixed_window", "all")
#: A token bucket's burst counts as spent once its replayed level is within
#: this share of L of its floor (the lowest it reaches from then on) ...
BURST_SPENT = 0.02
#: ... and that floor is at most this share of L (more: a reserve never spent).
BURST_LEFT = 0.10
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
        """Seconds after which a peer is cut off: 1.25 x ideal + 5."""
        return 1.25 * self.ideal_wall() + 5.0

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
    start, end, drained = steady_window(plan, admitted)
    out["steady_start_s"], out["steady_end_s"] = start, end
    if start is not None and end is not None and end - start >= MIN_STEADY:
        inside = [u for at, u in admitted if _in_steady(plan, at, start, end)]
        units = sum(inside)
        out["steady_units"] = units
        out["steady_requests"] = len(inside)
        if plan.semantics == "fixed_window":
            out["utilisation"] = units / plan.limit_units
        else:
            # What the quota made available in the window: its refill, plus
            # what the bucket gave up over it (a reserve spent now).
            out["utilisation"] = units / (rate_units * (end - start) + drained)
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


def _in_steady(plan: Plan, at: float, start: float, end: float) -> bool:
    """Whether a send at ``at`` counts in the steady state [start, end].

    Windows (fixed, per second) count ``[start, end)``.  The token bucket's
    steady state runs from one admitted send to another: the send that opens
    it is the one that spent the burst (before the window), the last one is in.
    """
    if plan.semantics == "token_bucket":
        return start < at <= end
    return start <= at < end


def replay_levels(plan: Plan, admitted: Sequence[tuple[float, float]]) -> list[float]:
    """The level of a bucket of ``L`` refilled at ``L / 60`` per second after each admitted send."""
    capacity = plan.limit_units
    rate = capacity / 60.0
    level, previous = capacity, 0.0
    levels = []
    for at, units in admitted:
        level = min(capacity, level + (at - previous) * rate) - units
        previous = at
        levels.append(level)
    return levels


def steady_window(
    plan: Plan, admitted: Sequence[tuple[float, float]]
) -> tuple[float | None, float | None, float]:
    """(start, end, units the bucket gave up over it) of the steady state.

    Times are seconds after the first send (None: no steady state).  The third
    value is the replayed bucket's level at the start less its level at the
    end, when positive (0 for windows).
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
    # Token bucket: the steady state starts once the replayed burst is spent:
    # the level is within BURST_SPENT x L of the lowest it reaches from there
    # on (its floor), and that floor is at most BURST_LEFT x L.  A floor, not
    # zero: the replay carries a constant offset of a few percent of L (see
    # the module docstring), which an absolute threshold would mistake for a
    # burst never spent.
    levels = replay_levels(plan, admitted)
    floors = list(levels)
    for index in range(len(floors) - 2, -1, -1):
        floors[index] = min(floors[index], floors[index + 1])
    for index, level in enumerate(levels):
        floor = floors[index]
        if floor <= BURST_LEFT * plan.limit_units and level - floor <= (
            BURST_SPENT * plan.limit_units
        ):
            # Sends stamped at the same moment as the one that spent the
            # burst belong before the window (it counts sends after its start).
            while index + 1 < len(admitted) and admitted[index + 1][0] == admitted[index][0]:
                index += 1
            return admitted[index][0], last, max(0.0, levels[index] - levels[-1])
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


@attrs.frozen
class Slot:
    """One peer on one scenario, starting ``offset`` seconds after its wave starts."""

    plan: Plan
    peer: str
    offset: float = 0.0


def waves(
    plans: Sequence[Plan],
    peers: Sequence[str],
    mode: str,
    offsets: dict[tuple[str, str], float] | None = None,
    peer_stagger: float = 0.0,
) -> list[list[Slot]]:
    """The runs of ``plans`` x ``peers`` grouped into waves run one after another.

    ``mode`` is ``--side-by-side``: ``staggered`` (each heavy peer alone: its
    token-bucket scenarios one by one, the others in one wave at
    :data:`HEAVY_OFFSETS`; then the light peers of every scenario in one wave,
    scenarios started at ``offsets`` (default :data:`LIGHT_OFFSETS`; when it
    lacks a scenario, :data:`LIGHT_OFFSETS`), fixed windows first),
    ``staggered_all`` (that
    wave with the heavy peers in it too; in both, the ``i``-th peer of a
    token-bucket scenario starts ``i x peer_stagger`` seconds after the first,
    default 0), ``none`` (one run per wave),
    ``fixed_window`` (fixed-window scenarios' peers side by side, the rest one
    at a time) or ``all`` (one wave per scenario).
    """
    if mode == "none":
        return [[Slot(plan, peer)] for plan in plans for peer in peers]
    if mode in ("fixed_window", "all"):
        result: list[list[Slot]] = []
        for plan in plans:
            if mode == "all" or plan.semantics == "fixed_window":
                result.append([Slot(plan, peer) for peer in peers])
            else:
                result.extend([Slot(plan, peer)] for peer in peers)
        return result
    if mode == "staggered_all":
        light, heavy = list(peers), []
    else:
        light = [peer for peer in peers if peer not in HEAVY_PEERS]
        heavy = [peer for peer in peers if peer in HEAVY_PEERS]
    result = []
    for peer in heavy:
        shared = [
            Slot(plan, peer, HEAVY_OFFSETS[(plan.semantics, plan.binding)])
            for plan in plans
            if (plan.semantics, plan.binding) in HEAVY_OFFSETS
        ]
        result.extend(
            [Slot(plan, peer)]
            for plan in plans
            if (plan.semantics, plan.binding) not in HEAVY_OFFSETS
        )
        if shared:
            result.append(shared)
    offsets = LIGHT_OFFSETS if offsets is None else offsets
    key = [(plan.semantics, plan.binding) for plan in plans]
    if not all(k in offsets for k in key):
        offsets = LIGHT_OFFSETS
    wave: list[Slot] = []
    start = min(offsets[k] for k in key) if plans else 0.0
    for plan in plans:
        offset = offsets[(plan.semantics, plan.binding)] - start
        stagger = peer_stagger if plan.semantics == "token_bucket" else 0.0
        wave += [Slot(plan, peer, offset + index * stagger) for index, peer in enumerate(light)]
    if wave:
        result.append(wave)
    return result


def run_waves(
    run_list: Sequence[Sequence[Slot]],
    sampler: CpuSampler,
    ready: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Run every wave, starting the next wave's mocks while one runs; return the rows.

    ``ready`` is called once the first wave's mocks are up, before its children
    are forked (e.g. to wait for the fork server started alongside).
    """
    rows: list[dict] = []
    # The first wave's mocks import on every CPU; later ones start pinned to
    # the server CPU while the wave before them runs.
    first = list(run_list[0]) if run_list else []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        pending = [
            [
                pool.submit(start_mock, slot.plan.mock_args(), pin_after_start=index == 0)
                for slot in wave
            ]
            for index, wave in enumerate([first, *run_list[1:]])
        ]
        try:
            for wave, futures in zip(run_list, pending, strict=True):
                servers = [future.result() for future in futures]
                ready()
                try:
                    rows += run_wave(wave, servers, sampler)
                finally:
                    for server in servers:
                        server.stop()
        finally:
            for futures in pending:
                for future in futures:
                    if not future.cancel() and future.exception() is None:
                        future.result().stop()
    return rows


def run_wave(wave: Sequence[Slot], servers: Sequence[Any], sampler: CpuSampler) -> list[dict]:
    """Run one wave's slots (each against its own mock); return their rows."""
    lead = FORK_LEAD + FORK_LEAD_PER_CHILD * len(wave)
    start_at = time.time() + lead
    children = []
    for slot, server in zip(wave, servers, strict=True):
        plan = slot.plan
        args = [
            "--child",
            slot.peer,
            "--base-url",
            server.base_url,
            "--count",
            str(plan.count),
            "--rpm",
            str(plan.rpm),
            "--deadline",
            # counted from the child's start; the engine first opens a
            # client per worker (a second or more under load), so allow for it
            str(plan.cutoff() + STARTUP_ALLOWANCE),
            "--start-at",
            str(start_at + slot.offset),
        ]
        if plan.tpm is not None:
            args += ["--tpm", str(plan.tpm)]
        timeout = lead + slot.offset + plan.cutoff() + STARTUP_ALLOWANCE + 30.0
        child = fork_child("benchmarks.utilisation", args, timeout=timeout)
        sampler.watch(child.process.pid)
        children.append(child)
    if time.time() > start_at:
        print(f"   (forking took longer than the {lead:.1f} s allowed: starts are late)")
    wait_all(children)
    rows = []
    commit = machine()["commit"]
    for slot, server, child in zip(wave, servers, children, strict=True):
        plan = slot.plan
        result = child.result() or {}
        records = [Record.from_row(row) for row in result.get("records", [])]
        stats = mock_stats(server.base_url)
        row = {
            "commit": commit,
            "semantics": plan.semantics,
            "binding": plan.binding,
            "peer": slot.peer,
            "label": PEERS[slot.peer].label,
            "limit_per_min": plan.limit_units,
            "count": plan.count,
            "wave_size": len(wave),
            "client_cpu_s": result.get("cpu_s"),
            "server_cpu_s": process_cpu_seconds(server.pid),
            **analyse(plan, records, stats),
        }
        attempts = row.get("server_attempts") or 0
        if result.get("cpu_s") is not None and attempts:
            row["client_cpu_us_per_request"] = result["cpu_s"] / attempts * 1e6
        row["cpu"] = _cpu_during(row, records, sampler)
        rows.append(row)
        _print_row(row)
    return rows


def _cpu_during(row: dict, records: Sequence[Record], sampler: CpuSampler) -> dict:
    """CPU busy shares over the run and over its steady state (wall clock)."""
    sent = [r.sent for r in records if r.sent is not None]
    if not sent:
        return {}
    t0 = min(sent)
    out = {"run": sampler.summary(t0, t0 + (row.get("elapsed_s") or 0.0))}
    if row.get("utilisation") is not None:
        out["steady"] = sampler.summary(t0 + row["steady_start_s"], t0 + row["steady_end_s"])
    return out


def _print_row(row: dict) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    cpu = row.get("cpu") or {}
    steady = cpu.get("steady") or {}
    whole = cpu.get("run") or {}

    print(
        f"{row['semantics']:13s} {row['binding']} {row['peer']:15s} "
        f"util={fmt(row.get('utilisation'), '.3f')} 429s={row.get('server_429', '-')} "
        f"({fmt(row.get('share_429'), '.2%')}) wall={fmt(row.get('elapsed_s'), '.1f')}s "
        f"ideal={fmt(row.get('ideal_wall_s'), '.1f')}s "
        f"ratio={fmt(row.get('wall_ratio'), '.3f')}{' CUT OFF' if row.get('cut_off') else ''} "
        f"p50={fmt(row.get('latency_p50_s'), '.3f')} p99={fmt(row.get('latency_p99_s'), '.3f')} "
        f"steady={row.get('steady_requests', '-')} req "
        f"client CPU 1-s max: ours {fmt(whole.get('ours_max_1s'), '.0%')} "
        f"/ {fmt(steady.get('ours_max_1s'), '.0%')} (run / steady), any process "
        f"{fmt(whole.get('client_max_1s'), '.0%')} / {fmt(steady.get('client_max_1s'), '.0%')}",
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
    mode = mode or ("staggered_all" if quick else "staggered")
    started = time.time()
    # Taken at the start: the engine under test may change while this runs.
    machine_info = machine()
    plans = [make_plan(sem, binding, rpm, steady) for binding in bindings for sem in semantics]
    for plan in plans:
        print(
            f"-- {plan.semantics} / {plan.binding}: N={plan.count} "
            f"ideal={plan.ideal_wall():.1f}s cutoff={plan.cutoff():.0f}s",
            flush=True,
        )
    # The fork server imports every peer while the first mocks start.
    warm = threading.Thread(target=start_fork_server, daemon=True)
    warm.start()
    # --quick keeps every token-bucket start together: it has a minute.
    stagger = 0.0 if quick else TOKEN_BUCKET_PEER_STAGGER
    with CpuSampler() as sampler:
        offsets = QUICK_LIGHT_OFFSETS if quick else LIGHT_OFFSETS
        run_list = waves(plans, peers, mode, offsets, peer_stagger=stagger)
        rows = run_waves(run_list, sampler, ready=warm.join)
    order = {(p.semantics, p.binding): i for i, p in enumerate(plans)}
    peer_order = {peer: i for i, peer in enumerate(PEERS)}
    rows.sort(key=lambda r: (order[(r["semantics"], r["binding"])], peer_order[r["peer"]]))
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
            "token_bucket_peer_stagger_s": stagger,
            "cutoff": "1.25 x ideal + 5 s",
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
        choices=SIDE_BY_SIDE,
        help="which runs share the time (default: staggered; see the module docstring)",
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
