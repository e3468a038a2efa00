"""Robustness matrix: the engine (and two peers) against servers it has never seen.

Issue 13, part 3.  Every *cell* is one client configuration against one mock
configuration: server semantics x latency x 429 shape x limits (x client).
Each cell has its own ``engine mock`` process (pinned to the server CPU(s))
and its own client process(es) (forked from a preloaded fork server, pinned to
the client CPU; ``benchmarks/_procs.py``, ``benchmarks/peers/_harness.py``);
every process is stopped by its PID.  Cells are cheap on CPU (tens of requests
per second), so :data:`DEFAULT_PARALLEL` of them run at once, longest first,
no two starting within :data:`START_GAP` seconds of each other (so their
bursts do not coincide on the client CPU); how busy the client CPU was is
sampled and stored with every cell and for the whole run.

The matrix is data: :data:`SERVERS`, :data:`LATENCIES`, :data:`SHAPES`,
:data:`CLIENTS` map names to mock flags (or client set-ups), and
:data:`BLOCKS` / :data:`QUICK_BLOCKS` say which combinations run.  A cell
whose mock flags the installed ``engine mock`` does not offer is recorded as
*skipped* (with the missing flag), never run against a different server.

Definitions (``L`` = the server's requests per minute, ``r = L / 60`` per
second, ``m`` = the latency median; ``t = 0`` is the cell's first send,
wall clock; an *admitted send* is the send time of the attempt the server
answered 200; the workload is N chat completions, cost 1 request each):

* **429 ratio**: the mock's own count of 429 answers / every answer it sent
  (``GET /_mock/stats``: ``status_counts``), i.e. 429s per request sent.
* **items lost**: items of the workload without exactly one result (none, or
  more than one).  Reported beside them: *failed* items (one result, not a
  200); a cell cut off at its time box loses the items it had not finished.
* **steady utilisation** (admitted per unit of what the quota allowed):

  - token bucket: as ``benchmarks/utilisation.py`` defines it (from the moment
    the admitted sends, replayed against a bucket of ``L`` refilling at
    ``r``, have spent the burst, to the last admitted send; admitted / (``r``
    x length + what the replayed bucket gave up over it));
  - no rate-limit headers (a token bucket that never says so): the same, but
    when the burst is never spent the steady state starts at
    :data:`NO_HEADERS_SETTLE` seconds: admitted rate against the server's rate
    (a client keeping the bucket full at 0.9 ``r`` reads 0.9);
  - either of those without a steady state of 8 s or more (a client spending
    the burst slowly, or never): the share of what the quota allowed over the
    whole run, burst included — admitted / (``L`` + ``r`` x the last
    admitted send) — marked as such (``utilisation_basis: run``);
  - fixed window: admitted in the first whole window ``[0, 60 s)`` / ``L``;
  - undeclared sub-windows of ``S`` seconds (the server admits ``L x S / 60``
    per window, its headers report the minute): the minute-level rate over
    whole sub-windows from ``ceil(2 / S) x S`` to the start of the window of
    the last admitted send: admitted / (``r`` x length);
  - clock-minute gateway: admitted in the first whole clock minute / ``L``;
  - a steady state shorter than 8 s is not measured ("—").

* **ideal wall time** (the earliest the last answer can come, from the
  server's real semantics; ``n = L`` requests per minute): token bucket
  ``max(0, N - n) / r + m``; fixed window ``floor((N - 1) / n) x 60 + m``;
  sub-windows ``(ceil(N / (n S / 60)) - 1) x S + m``; clock-minute gateway:
  windows are clock minutes (the mock's ``--wall-clock-offset`` added), the
  first one ending ``60 - phase`` seconds after the first send, each admitting
  ``n``: the moment the window that admits the last request opens, plus
  ``m`` — ``0`` if ``N <= n``, else ``(60 - phase) + (floor((N - 1) / n) - 1)
  x 60 + m``.  **wall** = last answer - first send; **wall / ideal** only when
  every item got a 200.
* **targets** (issue 13, "Done when"; every check must pass for the cell to
  pass): items lost 0 and failed 0; 429 ratio <= 1% with known limits on a
  token bucket or fixed window, <= 2% where the sub-window is undeclared or
  the limits are learned (and for three processes sharing through Redis),
  <= 5% without rate-limit headers, <= 3% on the clock-minute gateway; steady
  utilisation >= 0.95, >= 0.9 on undeclared sub-windows, >= 0.8 without
  headers (not judged on the gateway: its target is the end time); a fresh
  token bucket with known limits: the last admitted send + m <= 1.05 x
  ideal + m (the last answer also waits for the slowest of hundreds of
  lognormal latencies, which no client controls: reported as wall, not
  judged); the clock-minute
  gateway: wall <= ideal + 8 s (the run ends within 8 s of the earliest its
  windows allow).  A judged utilisation that cannot be measured fails.

    python -m benchmarks.robustness [--quick] [--parallel 12] [--rpm 600]
        [--only SUBSTRING ...] [--merge] [--out bench-results/robustness.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

import engine
from benchmarks._procs import python_module, start_redis
from benchmarks.peers import PeerLimits, Record, prepare, run_peer, workload
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
    write_json,
)
from benchmarks.peers.quota_engine import _chat_requests
from benchmarks.utilisation import MIN_STEADY, Plan, replay_levels, steady_window

DEFAULT_RPM = 600
#: Seconds of steady state each cell is sized for (``--quick``: the shorter one).
STEADY_SECONDS = 20.0
QUICK_STEADY_SECONDS = 10.0
#: Token bucket: N covers this many times the steady seconds of refill after the burst.
TOKEN_BUCKET_STRETCH = 1.5
#: Fixed window: N = this many windows' worth (the steady state is the first window).
FIXED_WINDOW_WINDOWS = 1.25
#: Sub-windows: the steady state starts at the first window boundary at or after this.
SUBWINDOW_SETTLE = 2.0
#: No headers, burst never spent: the steady state starts this many seconds in.
NO_HEADERS_SETTLE = 5.0
#: Cells running at once, and the fewest seconds between two cells' starts.
DEFAULT_PARALLEL = 12
QUICK_PARALLEL = 14
START_GAP = 1.5
QUICK_START_GAP = 1.0
#: Seconds between forking a cell's children and their start.
FORK_LEAD = 1.0
#: Gateway targets: the run ends within this many seconds of the earliest.
GATEWAY_END_SLACK = 8.0
#: Token bucket with known limits: wall <= WALL_FACTOR x ideal + median latency.
WALL_FACTOR = 1.05
MOCK_SERVER = "builtin"
MOCK_SEED = 1
API_KEY = "sk-bench-robustness"


# -- the matrix, as data ----------------------------------------------------------


@attrs.frozen
class Server:
    """One server behaviour: how the metrics read it and the mock flags that make it.

    Attributes:
        label: how the report names it.
        kind: ``token_bucket``, ``fixed_window``, ``subwindow``,
            ``clock_minute`` or ``no_headers`` (a token bucket without headers).
        flags: ``engine mock`` options (besides ``--rpm``, latency, seed).
        subwindow: sub-window seconds (``subwindow`` kind only).
        rpm: the quota (None: the run's ``--rpm``).
        count: items (None: sized from the kind and the steady seconds).
        shaped: whether the 429-shape column applies (False: the server's
            flags fix its 429s).
    """

    label: str
    kind: str
    flags: tuple[str, ...]
    subwindow: float | None = None
    rpm: int | None = None
    count: int | None = None
    shaped: bool = True


@attrs.frozen
class Latency:
    """A lognormal latency: median (ms) and sigma."""

    label: str
    median_ms: float
    sigma: float

    def flags(self) -> tuple[str, ...]:
        """``engine mock`` latency options."""
        return ("--latency-ms", f"{self.median_ms:g}", "--latency-sigma", f"{self.sigma:g}")


@attrs.frozen
class Shape:
    """A 429 shape: body and which retry hints come with it."""

    label: str
    flags: tuple[str, ...]


@attrs.frozen
class ClientKind:
    """Who sends: the engine (``processes`` of them sharing through Redis) or a peer.

    Attributes:
        label: how the report names it.
        peer: a ``benchmarks.peers`` name, or None for the engine run here.
        processes: client processes sharing the workload (and, if more than
            one, the quota through one Redis server).
    """

    label: str
    peer: str | None = None
    processes: int = 1


SERVERS: dict[str, Server] = {
    "token_bucket": Server("token bucket", "token_bucket", ("--quota-semantics", "token_bucket")),
    "fixed_window": Server("fixed window", "fixed_window", ("--quota-semantics", "fixed_window")),
    "sub_1s": Server(
        "1 s sub-windows (undeclared)",
        "subwindow",
        ("--quota-semantics", "fixed_window", "--subwindow-seconds", "1"),
        subwindow=1.0,
    ),
    "sub_10s": Server(
        "10 s sub-windows (undeclared)",
        "subwindow",
        ("--quota-semantics", "fixed_window", "--subwindow-seconds", "10"),
        subwindow=10.0,
    ),
    "no_headers": Server(
        "no headers (token bucket)",
        "no_headers",
        ("--quota-semantics", "token_bucket", "--no-rate-limit-headers"),
    ),
    "gateway": Server(
        "clock-minute gateway",
        "clock_minute",
        (
            "--quota-semantics",
            "clock_minute",
            "--no-reset-headers",
            "--rate-limit-body",
            "generic",
            "--no-retry-after",
            "--no-retry-after-ms",
            "--retry-hint-header",
            "x-gateway-retry-after",
        ),
        rpm=120,
        count=360,
        shaped=False,
    ),
}

LATENCIES: dict[str, Latency] = {
    "0.15s": Latency("median 0.15 s, sigma 0.4", 150.0, 0.4),
    "1s": Latency("median 1 s, sigma 0.6", 1000.0, 0.6),
    "3s": Latency("median 3 s, sigma 0.8", 3000.0, 0.8),
}

#: The mock's default 429 is OpenAI's (sentence, type, code, retry-after and
#: retry-after-ms, x-ratelimit-* on the 429): no flag needed for it.
SHAPES: dict[str, Shape] = {
    "openai": Shape("OpenAI (default)", ()),
    "azure": Shape("Azure body, retry-after(-ms)", ("--rate-limit-body", "azure")),
    "generic": Shape(
        "generic gateway body, retry-after only",
        ("--rate-limit-body", "generic", "--no-retry-after-ms"),
    ),
    "bare": Shape(
        "bare body, no retry hint, no x-ratelimit-* on the 429",
        (
            "--rate-limit-body",
            "bare",
            "--no-retry-after",
            "--no-retry-after-ms",
            "--no-rate-limit-headers-on-429",
        ),
    ),
}

LIMITS = ("known", "learned")

CLIENTS: dict[str, ClientKind] = {
    "engine": ClientKind("quota-engine"),
    "engine_redis3": ClientKind("quota-engine x3, Redis", processes=3),
    "aiolimiter": ClientKind("aiolimiter", peer="aiolimiter"),
    "aiometer": ClientKind("aiometer", peer="aiometer"),
}


@attrs.frozen
class Block:
    """A cross product of the tables above that runs."""

    servers: tuple[str, ...]
    latencies: tuple[str, ...]
    shapes: tuple[str, ...]
    limits: tuple[str, ...]
    clients: tuple[str, ...]


_ALL_LATENCIES = tuple(LATENCIES)
_ALL_SHAPES = tuple(SHAPES)
_MAIN_SERVERS = ("token_bucket", "fixed_window", "sub_1s", "sub_10s")
_PEER_SERVERS = ("token_bucket", "sub_1s", "sub_10s")

BLOCKS: tuple[Block, ...] = (
    Block(_MAIN_SERVERS, _ALL_LATENCIES, _ALL_SHAPES, LIMITS, ("engine",)),
    # Peers must be told the limits.
    Block(_PEER_SERVERS, _ALL_LATENCIES, _ALL_SHAPES, ("known",), ("aiolimiter", "aiometer")),
    Block(("no_headers",), _ALL_LATENCIES, ("openai",), LIMITS, ("engine",)),
    Block(("gateway",), ("0.15s",), ("generic",), LIMITS, ("engine",)),
    Block(("sub_1s", "sub_10s"), ("0.15s",), ("openai",), LIMITS, ("engine_redis3",)),
)

QUICK_BLOCKS: tuple[Block, ...] = (
    Block(_MAIN_SERVERS, ("0.15s", "1s"), ("openai", "bare"), LIMITS, ("engine",)),
    Block(_PEER_SERVERS, ("0.15s",), ("openai",), ("known",), ("aiolimiter", "aiometer")),
    Block(("no_headers",), ("0.15s", "1s"), ("openai",), LIMITS, ("engine",)),
    Block(("gateway",), ("0.15s",), ("generic",), LIMITS, ("engine",)),
    Block(("sub_1s",), ("0.15s",), ("openai",), ("learned",), ("engine_redis3",)),
)


@attrs.frozen
class Cell:
    """One run of the matrix: a server, a latency, a 429 shape, limits and a client.

    Attributes:
        server / latency / shape / limits / client: keys of :data:`SERVERS`,
            :data:`LATENCIES`, :data:`SHAPES`, :data:`LIMITS`, :data:`CLIENTS`.
        rpm: the quota in requests per minute.
        count: N, the items to run.
    """

    server: str
    latency: str
    shape: str
    limits: str
    client: str
    rpm: int
    count: int

    @property
    def key(self) -> str:
        """``server/latency/shape/limits/client``: unique in a matrix."""
        return "/".join((self.server, self.latency, self.shape, self.limits, self.client))

    @property
    def spec(self) -> Server:
        """The server behaviour."""
        return SERVERS[self.server]

    @property
    def median_s(self) -> float:
        """The latency median in seconds."""
        return LATENCIES[self.latency].median_ms / 1000.0

    def mock_args(self) -> list[str]:
        """Every ``engine mock`` option this cell's server needs."""
        args = ["--rpm", str(self.rpm), "--seed", str(MOCK_SEED)]
        args += LATENCIES[self.latency].flags()
        args += self.spec.flags
        if self.spec.shaped:
            args += SHAPES[self.shape].flags
        return args

    def ideal_wall(self, phase: float = 0.0) -> float:
        """Seconds from the first send to the last answer at best (see the module docstring).

        ``phase`` is the clock-minute gateway's seconds into its minute at the
        first send (ignored by the other kinds).
        """
        return ideal_wall(
            self.spec.kind, self.count, self.rpm, self.median_s, self.spec.subwindow, phase
        )

    def estimated_seconds(self) -> float:
        """About how long the cell runs (phase at its worst): for scheduling only.

        A peer that paces evenly (aiometer) needs the paced time on a token bucket.
        """
        ideal = self.ideal_wall(phase=0.0)
        if self.client == "aiometer":
            ideal = max(ideal, self.count / (self.rpm / 60.0))
        return ideal + 2.0 * self.median_s + 3.0

    def cutoff(self) -> float:
        """Seconds after its start at which the cell is cut off (its items then count lost).

        At least 1.5 x ideal, and never before sending every item evenly
        paced at the minute-level rate could finish (a client that ignores a
        token bucket's burst is slow, not losing items), plus 15 s and the
        slowest answer to expect (:meth:`slowest_answer`); the gateway gets
        its ideal + 45 s.
        """
        if self.spec.kind == "clock_minute":
            return self.ideal_wall(phase=0.0) + 45.0
        paced = self.count / (self.rpm / 60.0)
        return max(1.5 * self.ideal_wall(phase=0.0), 1.1 * paced) + 15.0 + self.slowest_answer()

    def slowest_answer(self) -> float:
        """Seconds the slowest of a few thousand lognormal latencies takes (3.5 sigma).

        At median 3 s and sigma 0.8 that is 49 s: a request sent last may
        still be in flight that long after the last send.
        """
        return self.median_s * math.exp(3.5 * LATENCIES[self.latency].sigma)


def ideal_wall(
    kind: str,
    count: int,
    rpm: float,
    median_s: float,
    subwindow: float | None = None,
    phase: float = 0.0,
) -> float:
    """The earliest the last of ``count`` answers can come, in seconds after the first send.

    ``kind`` is a :class:`Server` kind; ``phase`` the seconds into the clock
    minute at the first send (``clock_minute`` only).
    """
    n = float(rpm)
    if kind in ("token_bucket", "no_headers"):
        return max(0.0, count - n) / (n / 60.0) + median_s
    if kind == "fixed_window":
        return math.floor((count - 1) / n) * 60.0 + median_s
    if kind == "subwindow":
        assert subwindow is not None
        per_window = n * subwindow / 60.0
        return (math.ceil(count / per_window) - 1) * subwindow + median_s
    if kind == "clock_minute":
        windows = math.floor((count - 1) / n)
        if windows == 0:
            return median_s
        return (60.0 - phase) + (windows - 1) * 60.0 + median_s
    raise ValueError(f"unknown server kind {kind!r}")


def size(server: Server, rpm: int, steady: float) -> int:
    """N for a server kind: enough items for ``steady`` seconds of steady state."""
    if server.count is not None:
        return server.count
    r = rpm / 60.0
    if server.kind in ("token_bucket", "no_headers"):
        return int(rpm + r * steady * TOKEN_BUCKET_STRETCH)
    if server.kind == "fixed_window":
        return int(rpm * FIXED_WINDOW_WINDOWS)
    if server.kind == "subwindow":
        assert server.subwindow is not None
        start = math.ceil(SUBWINDOW_SETTLE / server.subwindow) * server.subwindow
        # Windows up to ``start + steady``, then half a window more so the last
        # admitted send falls in a window after the measured ones.
        return int(r * (start + steady) + r * server.subwindow * 1.5)
    raise ValueError(f"cannot size {server.kind!r}")


def expand(
    blocks: Sequence[Block], rpm: int = DEFAULT_RPM, steady: float = STEADY_SECONDS
) -> list[Cell]:
    """The cells of ``blocks``, in block order, without duplicates."""
    cells: dict[str, Cell] = {}
    for block in blocks:
        for server in block.servers:
            spec = SERVERS[server]
            quota = spec.rpm or rpm
            count = size(spec, quota, steady)
            for latency in block.latencies:
                for shape in block.shapes:
                    for limits in block.limits:
                        for client in block.clients:
                            cell = Cell(server, latency, shape, limits, client, quota, count)
                            cells.setdefault(cell.key, cell)
    return list(cells.values())


# -- the mock's options -----------------------------------------------------------

_OPTION = re.compile(r"(--[a-z0-9][a-z0-9-]*)(?:[ =]\{([^}]*)\})?")


def mock_options(help_text: str) -> dict[str, set[str] | None]:
    """Options named in ``engine mock --help`` and their choices (None: any value)."""
    options: dict[str, set[str] | None] = {}
    for match in _OPTION.finditer(help_text):
        flag, choices = match.group(1), match.group(2)
        if choices is not None:
            options[flag] = set(choices.split(","))
        else:
            options.setdefault(flag, None)
    return options


def unsupported(args: Sequence[str], options: dict[str, set[str] | None]) -> list[str]:
    """The options (or option values) in ``args`` that ``options`` does not offer."""
    missing = []
    for index, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        if arg not in options:
            missing.append(arg)
            continue
        choices = options[arg]
        if choices is not None and index + 1 < len(args) and args[index + 1] not in choices:
            missing.append(f"{arg} {args[index + 1]}")
    return missing


def installed_mock_options() -> dict[str, set[str] | None]:
    """What ``python -m engine mock --help`` offers right now."""
    text = subprocess.run(
        python_module("engine", "mock", "--help"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "400"},
    ).stdout
    return mock_options(text)


# -- analysis (pure: item results and stats in, numbers out) ------------------------


@attrs.frozen(slots=True)
class Item:
    """One result of one item, as a client process recorded it.

    Attributes:
        id: the item's id.
        sent: wall time its last attempt was sent (None: never sent).
        finished: wall time the result was ready.
        status: the final HTTP status (None: transport error or never sent).
        attempts: HTTP attempts (429s included).
        error: a short error code, or None.
    """

    id: str
    sent: float | None
    finished: float
    status: int | None
    attempts: int = 1
    error: str | None = None

    def to_row(self) -> list[Any]:
        """A JSON row: ``[id, sent, finished, status, attempts, error]``."""
        return [self.id, self.sent, self.finished, self.status, self.attempts, self.error]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Item:
        """The item :meth:`to_row` wrote."""
        return cls(*row)


def share_429(stats: dict[str, Any]) -> tuple[int, int, float | None]:
    """(429 answers, all answers, their ratio) from the mock's ``/_mock/stats``."""
    counts = stats.get("status_counts") or {}
    answers = sum(int(value) for value in counts.values())
    throttled = int(counts.get("429", 0))
    return throttled, answers, (throttled / answers if answers else None)


def item_accounting(expected: Iterable[str], items: Sequence[Item]) -> dict[str, int]:
    """Items lost (none or several results), split as missing / duplicated; and failed.

    ``failed``: items with exactly one result that is not a 200.
    """
    per_id = Counter(item.id for item in items)
    status = {item.id: item.status for item in items}
    missing = duplicated = failed = 0
    expected_ids = list(expected)
    for item_id in expected_ids:
        seen = per_id.get(item_id, 0)
        if seen == 0:
            missing += 1
        elif seen > 1:
            duplicated += 1
        elif status[item_id] != 200:
            failed += 1
    wanted = set(expected_ids)
    unexpected = sum(n for item_id, n in per_id.items() if item_id not in wanted)
    return {
        "items": len(expected_ids),
        "lost": missing + duplicated,
        "missing": missing,
        "duplicated": duplicated,
        "failed": failed,
        "unexpected": unexpected,
    }


def steady_utilisation(
    kind: str,
    admitted: Sequence[float],
    rpm: float,
    *,
    subwindow: float | None = None,
    clock_start: float | None = None,
) -> dict[str, Any]:
    """Steady-state utilisation of admitted send times (seconds after the first send).

    Returns ``start`` / ``end`` (seconds; None: no steady state),
    ``requests`` admitted in it, ``utilisation`` (None when the steady state
    is missing or shorter than :data:`MIN_STEADY`) and ``basis``: ``steady``,
    or ``run`` where a token bucket had no measurable steady state and the
    whole run was measured instead.  ``clock_start`` is the
    first whole clock minute's start, in the same seconds (``clock_minute``).
    See the module docstring for each kind.
    """
    sends = sorted(admitted)
    out: dict[str, Any] = {
        "start": None,
        "end": None,
        "requests": None,
        "utilisation": None,
        "basis": "steady",
    }
    if not sends:
        return out
    rate = rpm / 60.0
    last = sends[-1]
    if kind in ("token_bucket", "no_headers"):
        plan = Plan("token_bucket", "rpm", int(rpm), None, 1, len(sends))
        points = [(at, 1.0) for at in sends]
        start, end, drained = steady_window(plan, points)
        if start is None and kind == "no_headers" and last > NO_HEADERS_SETTLE:
            start, end = NO_HEADERS_SETTLE, last
            levels = replay_levels(plan, points)
            drained = max(0.0, _level_at(points, levels, start, rpm) - levels[-1])
        if start is not None and end is not None:
            inside = sum(1 for at in sends if start < at <= end)
            _measured(out, start, end, inside, rate * (end - start) + drained)
        if out["utilisation"] is None and last > 0:
            # No steady state long enough to measure (the burst spent late or
            # never): the share of what the quota allowed over the whole run,
            # burst included, instead.
            out.update(
                start=0.0,
                end=last,
                requests=len(sends),
                utilisation=len(sends) / (float(rpm) + rate * last),
                basis="run",
            )
        return out
    if kind == "fixed_window":
        if last < 60.0:
            return out
        inside = sum(1 for at in sends if 0.0 <= at < 60.0)
        return _measured(out, 0.0, 60.0, inside, float(rpm))
    if kind == "clock_minute":
        if clock_start is None or last < clock_start + 60.0:
            return out
        end = clock_start + 60.0
        inside = sum(1 for at in sends if clock_start <= at < end)
        return _measured(out, clock_start, end, inside, float(rpm))
    if kind == "subwindow":
        assert subwindow is not None
        start = math.ceil(SUBWINDOW_SETTLE / subwindow) * subwindow
        end = math.floor(last / subwindow) * subwindow
        if end <= start:
            return out
        inside = sum(1 for at in sends if start <= at < end)
        return _measured(out, start, end, inside, rate * (end - start))
    raise ValueError(f"unknown server kind {kind!r}")


def _measured(
    out: dict[str, Any], start: float, end: float, inside: int, available: float
) -> dict[str, Any]:
    out.update(start=start, end=end, requests=inside)
    if end - start >= MIN_STEADY and available > 0:
        out["utilisation"] = inside / available
    return out


def _level_at(
    points: Sequence[tuple[float, float]], levels: Sequence[float], at: float, rpm: float
) -> float:
    """The replayed bucket's level at time ``at`` (refilled since the send before it)."""
    rate = rpm / 60.0
    level, previous = float(rpm), 0.0
    for (sent, _units), after in zip(points, levels, strict=True):
        if sent > at:
            break
        level, previous = after, sent
    return min(float(rpm), level + (at - previous) * rate)


@attrs.frozen
class Targets:
    """What a cell must meet (None: not judged).

    Attributes:
        max_429: highest 429 ratio.
        min_utilisation: lowest steady utilisation.
        wall_factor: wall <= ``wall_factor`` x ideal + median latency.
        end_slack: wall <= ideal + ``end_slack`` seconds.
    """

    max_429: float
    min_utilisation: float | None = None
    wall_factor: float | None = None
    end_slack: float | None = None


def targets(cell: Cell) -> Targets:
    """Issue 13's "Done when" targets for ``cell`` (see the module docstring)."""
    kind = cell.spec.kind
    if kind == "clock_minute":
        return Targets(max_429=0.03, end_slack=GATEWAY_END_SLACK)
    if kind == "no_headers":
        return Targets(max_429=0.05, min_utilisation=0.8)
    if kind == "subwindow":
        return Targets(max_429=0.02, min_utilisation=0.9)
    known = cell.limits == "known"
    wall = WALL_FACTOR if (kind == "token_bucket" and known) else None
    return Targets(max_429=0.01 if known else 0.02, min_utilisation=0.95, wall_factor=wall)


def judge(cell: Cell, row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each check of ``cell``'s targets against its measured ``row``: value, bound, passed."""
    goal = targets(cell)
    checks: dict[str, dict[str, Any]] = {}
    lost, failed = row.get("lost"), row.get("failed")
    checks["items"] = {
        "value": {"lost": lost, "failed": failed},
        "bound": "0 lost, 0 failed",
        "passed": lost == 0 and failed == 0,
    }
    ratio = row.get("share_429")
    checks["429"] = {
        "value": ratio,
        "bound": goal.max_429,
        "passed": ratio is not None and ratio <= goal.max_429,
    }
    if goal.min_utilisation is not None:
        util = row.get("utilisation")
        checks["utilisation"] = {
            "value": util,
            "bound": goal.min_utilisation,
            "passed": util is not None and util >= goal.min_utilisation,
        }
    wall, ideal = row.get("wall_s"), row.get("ideal_wall_s")
    complete = lost == 0 and failed == 0
    if goal.wall_factor is not None:
        # Judged on the quota work's end: the last admitted send plus one
        # median latency, the earliest its answer can typically come (as the
        # ideal counts it).  The last answer itself also waits for the slowest
        # of hundreds of lognormal latencies (median x e^(3 sigma) and more),
        # which no client controls: ``wall_s`` keeps that figure.
        end = row.get("admitted_end_s")
        wall = None if end is None else end + cell.median_s
        bound = None if ideal is None else goal.wall_factor * ideal + cell.median_s
        checks["wall"] = {
            "value": wall,
            "bound": bound,
            "passed": complete and wall is not None and bound is not None and wall <= bound,
        }
    if goal.end_slack is not None:
        bound = None if ideal is None else ideal + goal.end_slack
        checks["end"] = {
            "value": wall,
            "bound": bound,
            "passed": complete and wall is not None and bound is not None and wall <= bound,
        }
    return checks


def clock_phase(t0: float, offset: float = 0.0) -> float:
    """Seconds into the clock minute (of the server's clock: wall + ``offset``) at ``t0``."""
    return (t0 + offset) % 60.0


def analyse(
    cell: Cell, items: Sequence[Item], stats: dict[str, Any], *, clock_offset: float = 0.0
) -> dict[str, Any]:
    """Every metric of one cell, and its checks (see the module docstring)."""
    expected = [request.id for request in workload(cell.count)]
    row: dict[str, Any] = dict(item_accounting(expected, items))
    throttled, answers, ratio = share_429(stats)
    row.update(server_429=throttled, server_answers=answers, share_429=ratio)
    row["rate_limited_by"] = stats.get("rate_limited_by")
    sent = [item.sent for item in items if item.sent is not None]
    row["ideal_wall_s"] = None
    if sent:
        t0 = min(sent)
        phase = clock_phase(t0, clock_offset)
        row["clock_phase_s"] = phase if cell.spec.kind == "clock_minute" else None
        ideal = cell.ideal_wall(phase)
        row["ideal_wall_s"] = ideal
        admitted = [
            item.sent - t0 for item in items if item.status == 200 and item.sent is not None
        ]
        clock_start = (60.0 - phase) % 60.0 if cell.spec.kind == "clock_minute" else None
        steady = steady_utilisation(
            cell.spec.kind,
            admitted,
            cell.rpm,
            subwindow=cell.spec.subwindow,
            clock_start=clock_start,
        )
        row.update(
            steady_start_s=steady["start"],
            steady_end_s=steady["end"],
            steady_requests=steady["requests"],
            utilisation=steady["utilisation"],
            utilisation_basis=steady["basis"],
        )
        row["admitted_end_s"] = max(admitted) if admitted else None
        wall = max(item.finished for item in items) - t0
        row["elapsed_s"] = wall
        complete = row["lost"] == 0 and row["failed"] == 0
        row["wall_s"] = wall if complete else None
        row["wall_ratio"] = wall / ideal if complete and ideal > 0 else None
        latencies = [
            item.finished - item.sent
            for item in items
            if item.status == 200 and item.sent is not None
        ]
        row["latency_p50_s"] = percentile(latencies, 0.5)
        row["latency_p99_s"] = percentile(latencies, 0.99)
    else:
        row.update(utilisation=None, wall_s=None, wall_ratio=None, elapsed_s=None)
    row["checks"] = judge(cell, row)
    row["passed"] = all(check["passed"] for check in row["checks"].values())
    return row


# -- the client processes --------------------------------------------------------------


def part_of_workload(count: int, part: int, parts: int) -> Iterator[Any]:
    """Every ``parts``-th request of the workload of ``count``, from ``part``."""
    for index, request in enumerate(workload(count)):
        if index % parts == part:
            yield request


async def run_engine(
    base_url: str,
    requests: Iterable[Any],
    rpm: int | None,
    *,
    redis: str | None,
    namespace: str,
    items: list[Item],
    statistics: list[Any],
) -> None:
    """Run ``requests`` through ``engine.open_client(...).map``, appending to ``items``.

    ``rpm`` None: the engine learns the limits.  ``redis``: share the quota
    through that Redis server under ``namespace``.  The client's final
    ``statistics()`` is appended to ``statistics``.
    """
    limits = engine.Limits(rpm=rpm) if rpm else None
    shared = engine.RedisQuota(redis, namespace=namespace) if redis else None
    async with engine.open_client(
        base_url=base_url, api_key=API_KEY, limits=limits, shared=shared
    ) as client:
        try:
            async for result in client.map(_chat_requests(requests)):
                timings = result.timings
                items.append(
                    Item(
                        id=result.id,
                        sent=timings.sent_at,
                        finished=timings.finished_at or time.time(),
                        status=result.status_code,
                        attempts=result.attempts,
                        error=result.error.code if result.error else None,
                    )
                )
        finally:
            statistics.append(client.statistics())


def _plain(value: Any) -> Any:
    """A JSON-able copy of an attrs / pydantic / dataclass statistics object."""
    if attrs.has(type(value)):
        return attrs.asdict(value, value_serializer=lambda _i, _f, v: _plain(v))
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return repr(value)


def child_main(args: argparse.Namespace) -> None:
    """Run one client process of a cell and write its items as JSON."""
    import trio

    kind = CLIENTS[args.child]
    if kind.peer is not None:
        prepare(kind.peer)
    requests = list(part_of_workload(args.count, args.part, args.parts))
    if args.start_at:
        time.sleep(max(0.0, args.start_at - time.time()))
    wall, cpu = time.time(), time.process_time()
    items: list[Item] = []
    statistics: list[Any] = []
    cut_off = False
    if kind.peer is None:

        async def bounded() -> None:
            nonlocal cut_off
            with trio.move_on_after(args.deadline) as scope:
                await run_engine(
                    args.base_url,
                    requests,
                    args.known_rpm,
                    redis=args.redis,
                    namespace=args.namespace,
                    items=items,
                    statistics=statistics,
                )
            cut_off = scope.cancelled_caught

        trio.run(bounded)
    else:
        records: list[Record] = run_peer(
            kind.peer,
            args.base_url,
            API_KEY,
            requests,
            PeerLimits(rpm=args.known_rpm),
            deadline=args.deadline,
        )
        items = [
            Item(r.id, r.last_sent, r.finished, r.status, r.attempts, r.error) for r in records
        ]
        cut_off = len(records) < len(requests)
    write_json(
        args.out,
        {
            "items": [item.to_row() for item in items],
            "cpu_s": time.process_time() - cpu,
            "wall_s": time.time() - wall,
            "cut_off": cut_off,
            "statistics": _plain(statistics[-1]) if statistics else None,
        },
    )


# -- running ---------------------------------------------------------------------------


class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, no persistence; stopped by PID."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="bench-robustness-redis-")
        try:
            self.process, self.port = start_redis(self.directory)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Kill this server (by its PID) and remove its directory."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def _until_stopped(
    done: Iterator[Any], stop: threading.Event, pool: concurrent.futures.Executor
) -> Iterator[Any]:
    """``done``'s futures; interrupted (SIGTERM, Ctrl-C), stop every cell and cancel the rest."""
    try:
        yield from done
    except BaseException:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise


class StartGate:
    """Hands out start times at least ``gap`` seconds apart (thread-safe)."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self._lock = threading.Lock()
        self._last = 0.0

    def next_start(self, lead: float) -> float:
        """A wall time at least ``lead`` from now and ``gap`` after the previous one."""
        with self._lock:
            start = max(time.time() + lead, self._last + self.gap)
            self._last = start
            return start


_fork_lock = threading.Lock()


def run_cell(
    cell: Cell,
    index: int,
    *,
    gate: StartGate,
    sampler: CpuSampler,
    options: dict[str, set[str] | None],
    redis: RedisServer | None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Serve the cell's mock, run its client process(es), stop the mock; return its row.

    A cell whose client process died without a result (not the engine's doing:
    e.g. the checkout failed to import) is run once more, then recorded as an
    error, never as a failing cell.  ``stop`` set: cells not started yet are
    not run, running ones are stopped.
    """
    stop = stop or threading.Event()
    row = _run_cell_once(cell, index, gate, sampler, options, redis, stop)
    if row.get("status") == "error" and not stop.is_set():
        print(f"{cell.key}: {row['reason']}; running it again", flush=True)
        row = _run_cell_once(cell, index, gate, sampler, options, redis, stop)
    return row


def _run_cell_once(
    cell: Cell,
    index: int,
    gate: StartGate,
    sampler: CpuSampler,
    options: dict[str, set[str] | None],
    redis: RedisServer | None,
    stop: threading.Event,
) -> dict[str, Any]:
    """One attempt at :func:`run_cell`."""
    row: dict[str, Any] = {
        "key": cell.key,
        "server": cell.server,
        "latency": cell.latency,
        "shape": cell.shape,
        "limits": cell.limits,
        "client": cell.client,
        "rpm": cell.rpm,
        "count": cell.count,
        "mock_args": cell.mock_args(),
        "targets": attrs.asdict(targets(cell)),
    }
    missing = unsupported(cell.mock_args(), options)
    kind = CLIENTS[cell.client]
    if missing:
        return {**row, "status": "skipped", "reason": "engine mock lacks " + ", ".join(missing)}
    if kind.processes > 1 and redis is None:
        return {**row, "status": "skipped", "reason": "redis-server is not installed"}
    if stop.is_set():
        return {**row, "status": "cancelled", "reason": "the run was stopped"}
    server = _start_mock_retrying(cell.mock_args())
    try:
        start_at = gate.next_start(FORK_LEAD)
        children = []
        for part in range(kind.processes):
            args = [
                "--child",
                cell.client,
                "--base-url",
                server.base_url,
                "--count",
                str(cell.count),
                "--part",
                str(part),
                "--parts",
                str(kind.processes),
                "--deadline",
                str(cell.cutoff()),
                "--start-at",
                str(start_at),
                "--namespace",
                f"robustness-{index}",
            ]
            if cell.limits == "known":
                args += ["--known-rpm", str(cell.rpm)]
            if kind.processes > 1 and redis is not None:
                args += ["--redis", redis.url]
            timeout = (start_at - time.time()) + cell.cutoff() + 60.0
            with _fork_lock:
                child = fork_child("benchmarks.robustness", args, timeout=timeout)
            sampler.watch(child.process.pid)
            children.append(child)
        _wait_or_stop(children, stop)
        results = [child.result() or {} for child in children]
        stats = mock_stats(server.base_url)
        server_cpu = process_cpu_seconds(server.pid)
    finally:
        server.stop()
    crashed = sum(1 for result in results if not result)
    if crashed:
        reason = f"{crashed} of {len(results)} client process(es) ended without a result"
        return {**row, "status": "error", "reason": reason}
    items = [Item.from_row(r) for result in results for r in result.get("items", [])]
    offset = _wall_clock_offset(cell.mock_args())
    row.update(analyse(cell, items, stats, clock_offset=offset))
    row["status"] = "ran"
    row["commit"] = machine()["commit"]
    row["client_cpu_s"] = sum(result.get("cpu_s") or 0.0 for result in results)
    row["client_wall_s"] = max((result.get("wall_s") or 0.0 for result in results), default=None)
    row["server_cpu_s"] = server_cpu
    row["cut_off"] = any(result.get("cut_off") for result in results)
    row["cutoff_s"] = cell.cutoff()
    row["engine_statistics"] = [result.get("statistics") for result in results]
    row["mock_stats"] = {k: v for k, v in stats.items() if k != "client_request_ids"}
    ids = stats.get("client_request_ids") or {}
    row["mock_requests_per_item_max"] = max(ids.values(), default=None)
    sent = [item.sent for item in items if item.sent is not None]
    if sent:
        t0 = min(sent)
        row["started_at"] = t0
        row["cpu"] = sampler.summary(t0, t0 + (row.get("elapsed_s") or 0.0))
    return row


def _wait_or_stop(children: Sequence[Any], stop: threading.Event) -> None:
    """Wait for the children to end (or overrun their timeouts); kill them once ``stop`` is set."""
    try:
        while not all(child.finished() for child in children):
            if stop.is_set():
                raise SystemExit("stopped")
            time.sleep(0.2)
    except BaseException:
        for child in children:
            child.stop()
        raise


def _importable(timeout: float = 120.0) -> bool:
    """Whether the checkout's engine and peers import cleanly, trying for up to ``timeout`` s.

    Others may be editing the checkout while the matrix starts; the fork server
    must preload a consistent engine, or every client would import it again.
    """
    deadline = time.monotonic() + timeout
    while True:
        check = subprocess.run(
            python_module("benchmarks.peers._preload"), capture_output=True, timeout=120
        )
        if check.returncode == 0:
            return True
        if time.monotonic() > deadline:
            return False
        print("-- the checkout does not import cleanly; trying again in 5 s", flush=True)
        time.sleep(5.0)


def _start_mock_retrying(args: Sequence[str], attempts: int = 3) -> Any:
    """:func:`start_mock`, tried again after a pause when the mock fails to start.

    The checkout may be edited while the matrix runs; a mock started while a
    module is half-written fails to import, and the next try a few seconds
    later usually works.
    """
    for attempt in range(attempts):
        try:
            return start_mock(args, server=MOCK_SERVER)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(5.0)
    raise AssertionError("unreachable")


def _wall_clock_offset(args: Sequence[str]) -> float:
    """The ``--wall-clock-offset`` in ``args`` (0 when absent)."""
    if "--wall-clock-offset" in args:
        return float(args[list(args).index("--wall-clock-offset") + 1])
    return 0.0


def _print_row(row: dict[str, Any]) -> None:
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    if row.get("status") != "ran":
        status = str(row.get("status")).upper()
        print(f"{row['key']:48s} {status}: {row.get('reason')}", flush=True)
        return
    failed = [name for name, check in row["checks"].items() if not check["passed"]]
    cpu = (row.get("cpu") or {}).get("client_max_1s")
    print(
        f"{row['key']:48s} {'pass' if row['passed'] else 'FAIL':4s} "
        f"429={row.get('server_429')}/{row.get('server_answers')} "
        f"({fmt(row.get('share_429'), '.2%')}) util={fmt(row.get('utilisation'), '.3f')} "
        f"wall={fmt(row.get('elapsed_s'), '.1f')}s ideal={fmt(row.get('ideal_wall_s'), '.1f')}s "
        f"lost={row.get('lost')} failed={row.get('failed')}"
        f"{' CUT OFF' if row.get('cut_off') else ''} "
        f"client CPU max {fmt(cpu, '.0%')}" + (f"  [{', '.join(failed)}]" if failed else ""),
        flush=True,
    )


def run(
    *,
    quick: bool = False,
    rpm: int = DEFAULT_RPM,
    parallel: int | None = None,
    only: Sequence[str] = (),
    out: str = f"{RESULTS_DIR}/robustness.json",
    merge: bool = False,
) -> dict[str, Any]:
    """Run the matrix (``--quick``: the subset); write and return the results.

    ``parallel``: cells at once (default :data:`DEFAULT_PARALLEL`, quick
    :data:`QUICK_PARALLEL`).  ``merge``: keep the cells of ``out`` not run
    this time (the run's own figures describe the cells it ran).
    """
    started = time.time()
    parallel = parallel or (QUICK_PARALLEL if quick else DEFAULT_PARALLEL)
    machine_info = machine()
    steady = QUICK_STEADY_SECONDS if quick else STEADY_SECONDS
    cells = expand(QUICK_BLOCKS if quick else BLOCKS, rpm, steady)
    if only:
        cells = [cell for cell in cells if any(part in cell.key for part in only)]
    options = installed_mock_options()
    # Longest first, so the last cells to finish are short ones.
    order = sorted(range(len(cells)), key=lambda i: -cells[i].estimated_seconds())
    print(
        f"-- robustness: {len(cells)} cells, {parallel} at a time, "
        f"about {sum(c.estimated_seconds() for c in cells) / parallel:.0f} s of runs",
        flush=True,
    )
    redis = None
    if any(CLIENTS[c.client].processes > 1 for c in cells) and shutil.which("redis-server"):
        redis = RedisServer()
    gate = StartGate(QUICK_START_GAP if quick else START_GAP)
    rows: list[dict[str, Any] | None] = [None] * len(cells)
    whole: dict[str, float] | None = None
    timeline: list[list[float]] = []
    stop = threading.Event()
    try:
        if not _importable():
            raise RuntimeError("the checkout does not import cleanly (benchmarks.peers._preload)")
        start_fork_server()
        with CpuSampler() as sampler, concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            futures = {
                pool.submit(
                    run_cell,
                    cells[i],
                    i,
                    gate=gate,
                    sampler=sampler,
                    options=options,
                    redis=redis,
                    stop=stop,
                ): i
                for i in order
            }
            try:
                done = concurrent.futures.as_completed(futures)
            except BaseException:
                stop.set()
                raise
            for future in _until_stopped(done, stop, pool):
                index = futures[future]
                try:
                    rows[index] = future.result()
                except Exception as error:  # one broken cell must not lose the others
                    rows[index] = {
                        "key": cells[index].key,
                        "status": "error",
                        "reason": f"{type(error).__name__}: {error}",
                    }
                _print_row(rows[index])
            whole = sampler.summary(started, time.time())
            timeline = [
                [round(at - started, 1), round(client, 3), round(server, 3), round(ours, 3)]
                for at, client, server, ours in sampler.samples
            ]
    finally:
        if redis is not None:
            redis.stop()
    result = {
        "scenario": "robustness",
        "machine": machine_info,
        "config": {
            "quick": quick,
            "rpm": rpm,
            "parallel": parallel,
            "start_gap_s": gate.gap,
            "steady_seconds": steady,
            "mock_server": MOCK_SERVER,
            "mock_seed": MOCK_SEED,
            "only": list(only),
            "servers": {k: attrs.asdict(v) for k, v in SERVERS.items()},
            "latencies": {k: attrs.asdict(v) for k, v in LATENCIES.items()},
            "shapes": {k: attrs.asdict(v) for k, v in SHAPES.items()},
            "clients": {k: attrs.asdict(v) for k, v in CLIENTS.items()},
        },
        "cpu": whole,
        "cpu_timeline": timeline,
        "cells": rows,
        "duration_s": time.time() - started,
    }
    if merge and os.path.exists(out):
        import json

        with open(out) as f:
            previous = json.load(f)
        again = {row["key"] for row in rows if row}
        kept = [row for row in previous["cells"] if row and row["key"] not in again]
        result["cells"] = kept + [row for row in rows if row]
        result["merged"] = {
            "previous_machine": previous.get("machine"),
            "previous_duration_s": previous.get("duration_s"),
            "previous_cpu": previous.get("cpu"),
            "rerun": sorted(again),
        }
        rows = result["cells"]
    write_json(out, result)
    ran = [r for r in rows if r and r.get("status") == "ran"]
    print(
        f"-- robustness: {sum(1 for r in ran if r['passed'])} of {len(ran)} cells pass "
        f"({len(rows) - len(ran)} not run) in {result['duration_s']:.0f} s; client CPU busy "
        f"mean {(whole or {}).get('client_mean', float('nan')):.0%}, highest 1 s "
        f"{(whole or {}).get('client_max_1s', float('nan')):.0%}",
        flush=True,
    )
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run the matrix, or (internal) one client process of a cell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the representative subset")
    parser.add_argument("--rpm", type=int, default=DEFAULT_RPM)
    parser.add_argument(
        "--parallel",
        type=int,
        help=f"cells at once (default {DEFAULT_PARALLEL}, --quick {QUICK_PARALLEL})",
    )
    parser.add_argument(
        "--only", nargs="+", default=(), help="run only cells whose key contains one of these"
    )
    parser.add_argument("--out", default=f"{RESULTS_DIR}/robustness.json")
    parser.add_argument(
        "--merge", action="store_true", help="keep the cells of --out not run this time"
    )
    # child mode (internal)
    parser.add_argument("--child", choices=list(CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--known-rpm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", default="robustness", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    stop_on_sigterm()
    run(
        quick=args.quick,
        rpm=args.rpm,
        parallel=args.parallel,
        only=args.only,
        out=args.out,
        merge=args.merge,
    )


if __name__ == "__main__":
    sys.exit(main())
