"""``engine bench``: the benchmark scenarios, and a load generator for any OpenAI-compatible server.

Two uses:

* ``engine bench [all|utilisation|overhead|memory|robustness|report] [--quick]``
  runs the scenarios in ``benchmarks/`` (from a checkout: the current directory
  must be the repository root) and regenerates ``docs/benchmarks.md`` and its
  plots.  ``all`` (the default) runs utilisation, overhead and memory, then
  the report; ``robustness`` (the issue-13 matrix, about 15 minutes, 3 with
  ``--quick``) runs only when named.
* ``engine bench --base-url URL [--concurrency N[,N...] | --request-rate
  R[,R...]] [--duration S] [--warmup S] [--input-tokens N] [--output-tokens N]
  [--slo ttft=200ms,tpot=50ms] [-o results.json|.csv] [--plot DIR]
  [--self-check]`` benchmarks any OpenAI-compatible server as ``vllm bench
  serve``, GuideLLM and AIPerf do: streamed chat completions (or the
  Responses API) under a closed loop (N in flight) or an open loop (Poisson
  or constant arrivals at R per second), a comma list being a sweep.  Per
  step it reports requests/s, output tokens/s, TTFT, ITL, TPOT and e2e
  (mean, p50, p90, p99), errors and 429s, goodput under the SLO, and its
  own CPU share and send lag; docs/bench.md defines every figure.  The API
  key is ``$OPENAI_API_KEY``; it is never printed or written.

The serving benchmark lives in ``engine/app/_serving_load.py`` (the trio
driver), ``_serving_metrics.py`` (the figures, sans-IO) and
``_serving_report.py`` (JSON, CSV, table, plots).  :func:`run_load` below is
the older non-streamed load generator, kept as a library function.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs

from engine._version import __version__
from engine.app._serving_load import DEFAULT_WARMUP

_METRICS_HELP = """\
Figures, as vllm bench serve defines them: TTFT = send to the first chunk
carrying output (delta content); ITL = gaps between consecutive output-bearing
chunks, pooled over requests; TPOT = (e2e - TTFT) / (output tokens - 1) per
request with more than one token; e2e = send to the last output-bearing chunk;
output tokens from the usage chunk (else counted chunks). requests/s and
output tokens/s count answers finishing in the measured window (after
--warmup); latencies come from requests sent in it. Goodput = requests/s x the
share of answers meeting every --slo. Percentiles interpolate linearly
(numpy's default). docs/bench.md defines each and says where GuideLLM and
AIPerf differ."""

__all__ = ["LoadReport", "register", "run_load"]

SCENARIOS = ("all", "utilisation", "overhead", "memory", "pool", "robustness", "report", "chaos")
DEFAULT_CONCURRENCY = 32
DEFAULT_DURATION = 10.0
#: Most requests in flight in open loop; arrivals beyond it are counted as ``dropped``.
DEFAULT_MAX_IN_FLIGHT = 1024
#: Generator CPU share above which the report warns that it may be the bottleneck.
BUSY_GENERATOR = 0.8


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the ``engine`` parser."""
    parser = subparsers.add_parser(
        "bench",
        help="run the benchmarks, or load any OpenAI-compatible server (--base-url)",
        description="\n\n".join(__doc__.split("\n\n")[1:3]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "scenario",
        nargs="?",
        choices=SCENARIOS,
        default=None,
        help="benchmark scenario to run (default: all; ignored with --base-url)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short scenarios (under 2 minutes in all)"
    )
    load = parser.add_argument_group(
        "serve benchmark (--base-url)",
        description=_METRICS_HELP,
    )
    load.add_argument("--base-url", help="OpenAI-style base URL ending in /v1")
    load.add_argument("--model", default="gpt-4o-mini", help="model to ask (default gpt-4o-mini)")
    load.add_argument(
        "--endpoint",
        choices=("chat", "responses"),
        default="chat",
        help="chat (/chat/completions, default) or responses (/responses)",
    )
    mode = load.add_mutually_exclusive_group()
    mode.add_argument(
        "--concurrency",
        metavar="N[,N...]",
        help=f"closed loop: requests always in flight (default {DEFAULT_CONCURRENCY}); "
        "a comma list is a sweep, one step each",
    )
    mode.add_argument(
        "--request-rate",
        "--rate",
        dest="request_rate",
        metavar="R[,R...]",
        help="open loop: arrivals per second; a comma list is a sweep, one step each",
    )
    load.add_argument(
        "--arrivals",
        choices=("poisson", "constant"),
        default="poisson",
        help="open loop: Poisson arrivals (default) or evenly spaced",
    )
    load.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION,
        help=f"measured seconds per step, after the warm-up (default {DEFAULT_DURATION:g})",
    )
    load.add_argument(
        "--warmup",
        type=float,
        default=DEFAULT_WARMUP,
        help=f"seconds per step sent but not measured (default {DEFAULT_WARMUP:g})",
    )
    load.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream the answers (server-sent events; default); --no-stream asks for whole "
        "answers and measures e2e only",
    )
    load.add_argument(
        "--output-tokens",
        "--max-tokens",
        dest="output_tokens",
        type=int,
        default=16,
        help="max_tokens (chat) / max_output_tokens (responses) of each request (default 16)",
    )
    load.add_argument(
        "--input-tokens",
        type=int,
        help="synthetic prompts of this many tokens (the model's tiktoken encoding, offline); "
        "default: --prompt",
    )
    load.add_argument(
        "--prompt", default="Say hi in five words.", help="the user message of each request"
    )
    load.add_argument(
        "--ignore-eos",
        action="store_true",
        help='send "ignore_eos": true (vLLM, SGLang: always produce --output-tokens)',
    )
    load.add_argument(
        "--slo",
        metavar="ttft=200ms,tpot=50ms",
        help="objectives for goodput: ttft, tpot, itl (largest gap), e2e; ms (default), s, us",
    )
    load.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"open loop: cap on requests in flight, the rest dropped (default "
        f"{DEFAULT_MAX_IN_FLIGHT})",
    )
    load.add_argument("--seed", type=int, help="seed of the arrival times and prompts")
    load.add_argument(
        "-o",
        "--output",
        "--json",
        dest="output",
        metavar="PATH",
        help="write the results: CSV when PATH ends in .csv, else JSON",
    )
    load.add_argument("--plot", metavar="DIR", help="plot latency percentiles vs load into DIR")
    load.add_argument(
        "--progress",
        action="store_true",
        help="live progress line on stderr even when it is not a terminal",
    )
    load.add_argument(
        "--self-check",
        action="store_true",
        help="first measure this generator's own ceiling against the built-in mock (about "
        "5 s, 9 s with --request-rate) and warn for steps within 80%% of it",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run what the ``engine bench`` command line asks for; return the exit status."""
    if args.base_url:
        return _serve_bench(args)
    return _run_scenarios(args.scenario or "all", quick=args.quick)


def _serve_bench(args: argparse.Namespace) -> int:
    from engine.app import _serving_load as load
    from engine.app._serving_metrics import parse_load_list, parse_slo
    from engine.app._serving_report import (
        plot_steps,
        report_dict,
        step_warnings,
        table,
        write_report,
    )

    try:
        if args.request_rate is not None:
            mode, targets = "rate", parse_load_list(args.request_rate, integer=False)
        else:
            mode = "concurrency"
            targets = parse_load_list(args.concurrency or str(DEFAULT_CONCURRENCY), integer=True)
        slo = parse_slo(args.slo) if args.slo else None
        if not args.duration > 0 or args.warmup < 0:
            raise ValueError("--duration must be > 0 and --warmup >= 0")
        if args.output_tokens < 1 or (args.input_tokens is not None and args.input_tokens < 1):
            raise ValueError("--output-tokens and --input-tokens must be at least 1")
        if args.max_in_flight < 1:
            raise ValueError("--max-in-flight must be at least 1")
    except ValueError as exc:
        print(f"engine bench: {exc}", file=sys.stderr)
        return 2
    config = load.ServingConfig(
        base_url=args.base_url.rstrip("/"),
        model=args.model,
        endpoint=args.endpoint,
        stream=args.stream,
        output_tokens=args.output_tokens,
        input_tokens=args.input_tokens,
        prompt=args.prompt,
        ignore_eos=args.ignore_eos,
        duration=args.duration,
        warmup=args.warmup,
        poisson=args.arrivals == "poisson",
        seed=args.seed,
        max_in_flight=args.max_in_flight,
        slo=slo,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
    )
    self_check = None
    ceiling = None
    if args.self_check:
        print("self-check: the generator against the built-in mock ...", file=sys.stderr)
        self_check = load.measure_ceiling(config, mode)
        ceiling = self_check["ceiling_rps"]
        print(
            f"self-check: {self_check['requests_per_second']:,.0f} req/s at "
            f"{self_check['client_cpu_share']:.0%} of a core"
            + (f", ceiling {ceiling:,.0f} req/s per client core" if ceiling else ""),
            file=sys.stderr,
        )
    show = args.progress or sys.stderr.isatty()
    progress = load.stderr_progress() if show else None

    settings = config.to_dict() | {"mode": mode, "targets": targets}
    done: list[Any] = []

    def on_step(step: Any) -> None:
        if show:
            sys.stderr.write("\r\x1b[2K")
        for warning in step_warnings(step, ceiling):
            print(f"warning: {warning}", file=sys.stderr)
        done.append(step)
        if args.output:  # after every step: an interrupted sweep keeps the steps it ran
            write_report(args.output, report_dict(settings, self_check, done), done)

    steps = load.run_steps(
        config, mode, targets, ceiling=ceiling, progress=progress, on_step=on_step
    )
    print(table(steps))
    if args.plot:
        try:
            written = plot_steps(steps, args.plot)
        except ImportError as exc:
            print(f"engine bench: no plots: {exc}", file=sys.stderr)
        else:
            print(f"plots: {', '.join(written) or 'nothing to plot'}")
    return 0 if any(step.completed for step in steps) else 1


def _run_scenarios(scenario: str, *, quick: bool) -> int:
    import importlib

    if scenario == "chaos":  # checks, not timings: not part of ``all``; see benchmarks/chaos.py
        sys.path.insert(0, os.getcwd())
        chaos_main: Callable[[list[str]], int] = importlib.import_module("benchmarks.chaos").main
        return chaos_main(["--quick"] if quick else [])

    try:
        modules = _import_benchmarks()
    except ImportError as exc:
        print(
            f"engine bench: cannot import the benchmarks ({exc}); run this from the "
            "repository root with the bench extra installed (or use --base-url)",
            file=sys.stderr,
        )
        return 2
    # SIGTERM unwinds through ``finally`` so the mock servers started get stopped.
    importlib.import_module("benchmarks.peers._harness").stop_on_sigterm()
    order = ("utilisation", "overhead", "memory", "pool") if scenario == "all" else (scenario,)
    started = time.monotonic()
    for name in order:
        if name == "report":
            continue
        print(f"== {name}{' (quick)' if quick else ''}", flush=True)
        modules[name].run(quick=quick)
    written = modules["report"].generate()
    print(f"== report: {', '.join(written) or 'no results'} -> docs/benchmarks.md")
    print(f"== done in {time.monotonic() - started:.0f} s")
    return 0


def _import_benchmarks() -> dict[str, Any]:
    import importlib

    if os.getcwd() not in sys.path:
        # The console script's path does not include the checkout; the
        # scenarios' own children run with ``python -m`` from here too.
        sys.path.insert(0, os.getcwd())
    return {
        name: importlib.import_module(f"benchmarks.{name}")
        for name in ("utilisation", "overhead", "memory", "pool", "robustness", "report")
    }


# -- the load generator -------------------------------------------------------


@attrs.frozen
class LoadReport:
    """What a load run measured.

    Attributes:
        mode: ``"closed"`` or ``"open"``.
        target: requests in flight (closed) or arrivals per second (open).
        duration: seconds from the first send to the last answer counted.
        completed: answers with status 200.
        errors: failures by kind (``"http_429"``, ``"http_500"``, ``"ReadTimeout"``, ...).
        dropped: open loop only: arrivals not sent because ``max_in_flight`` were busy.
        prompt_tokens / completion_tokens: summed from the answers' ``usage``.
        latencies: seconds per answered request (open loop: from the scheduled send).
        send_lag: open loop only: seconds each send left after its scheduled time.
        generator_cpu: CPU seconds this process used while sending.
    """

    mode: str
    target: float
    duration: float
    completed: int
    errors: dict[str, int]
    dropped: int
    prompt_tokens: int
    completion_tokens: int
    latencies: tuple[float, ...]
    send_lag: tuple[float, ...]
    generator_cpu: float

    @property
    def requests_per_second(self) -> float:
        """Answered requests (status 200) per second."""
        return self.completed / self.duration if self.duration > 0 else 0.0

    @property
    def generator_cpu_share(self) -> float:
        """Generator CPU seconds per wall second (1.0 = one core fully busy)."""
        return self.generator_cpu / self.duration if self.duration > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        total_tokens = self.prompt_tokens + self.completion_tokens
        attempts = self.completed + sum(self.errors.values())
        return {
            "mode": self.mode,
            "target": self.target,
            "duration_s": self.duration,
            "completed": self.completed,
            "errors": dict(self.errors),
            "error_count": sum(self.errors.values()),
            "dropped": self.dropped,
            "requests_per_s": self.requests_per_second,
            "completion_tokens_per_s": self.completion_tokens / self.duration
            if self.duration
            else 0.0,
            "total_tokens_per_s": total_tokens / self.duration if self.duration else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_s": _percentiles(self.latencies),
            "send_lag_s": _percentiles(self.send_lag) if self.send_lag else None,
            "generator": {
                "cpu_s": self.generator_cpu,
                "cpu_share": self.generator_cpu_share,
                "cpu_us_per_request": self.generator_cpu / attempts * 1e6 if attempts else None,
                "bottleneck": self.generator_cpu_share >= BUSY_GENERATOR,
            },
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        data = self.to_dict()
        latency = data["latency_s"]
        lines = [
            f"{self.mode} loop, target {self.target:g} "
            f"{'in flight' if self.mode == 'closed' else 'req/s'}, {self.duration:.1f} s",
            f"  {self.completed:,} ok, {data['error_count']:,} errors "
            f"{dict(self.errors) or ''}"
            + (f", {self.dropped:,} dropped (max in flight)" if self.dropped else ""),
            f"  {data['requests_per_s']:,.1f} req/s, "
            f"{data['total_tokens_per_s']:,.0f} tokens/s "
            f"({data['completion_tokens_per_s']:,.0f} completion)",
        ]
        if latency:
            lines.append(
                "  latency ms: "
                + ", ".join(f"{k} {v * 1000:.1f}" for k, v in latency.items() if k != "mean")
            )
        if data["send_lag_s"]:
            lag = data["send_lag_s"]
            lines.append(f"  send lag ms: p50 {lag['p50'] * 1000:.2f}, p99 {lag['p99'] * 1000:.2f}")
        generator = data["generator"]
        lines.append(
            f"  generator CPU: {generator['cpu_share']:.0%} of one core"
            + (
                f", {generator['cpu_us_per_request']:.0f} µs/request"
                if generator["cpu_us_per_request"]
                else ""
            )
            + (" — the generator may be the bottleneck" if generator["bottleneck"] else "")
        )
        return "\n".join(lines)


def _percentiles(values: tuple[float, ...]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return ordered[min(last, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "mean": sum(ordered) / len(ordered),
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ordered[-1],
    }


def run_load(
    base_url: str,
    *,
    model: str = "gpt-4o-mini",
    concurrency: int | None = None,
    rate: float | None = None,
    duration: float = DEFAULT_DURATION,
    max_tokens: int = 16,
    prompt: str = "Say hi in five words.",
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    seed: int | None = None,
    api_key: str | None = None,
) -> LoadReport:
    """Load ``base_url`` for ``duration`` seconds; blocks (runs its own trio loop).

    Closed loop with ``concurrency`` workers (default 32) unless ``rate`` is
    given: then open loop, Poisson arrivals at ``rate`` per second, at most
    ``max_in_flight`` (default 1024) in flight.  ``api_key`` defaults to
    ``$OPENAI_API_KEY``.  Requests still in flight at the end are waited for
    (at most 30 s) and counted.
    """
    import trio

    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0")
    if concurrency is not None and concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not duration > 0:
        raise ValueError("duration must be > 0")
    return trio.run(
        _load,
        base_url.rstrip("/"),
        model,
        concurrency or DEFAULT_CONCURRENCY,
        rate,
        duration,
        max_tokens,
        prompt,
        max_in_flight,
        seed,
        api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"),
    )


async def _load(
    base_url: str,
    model: str,
    concurrency: int,
    rate: float | None,
    duration: float,
    max_tokens: int,
    prompt: str,
    max_in_flight: int,
    seed: int | None,
    api_key: str | None,
) -> LoadReport:
    import httpx
    import orjson
    import trio

    from engine._http import make_async_client

    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
        }
    )
    headers = {"user-agent": f"quota-engine-bench/{__version__}"}
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    post_headers = {"content-type": "application/json"}
    latencies: list[float] = []
    lags: list[float] = []
    errors: Counter[str] = Counter()
    tokens = [0, 0]
    completed = 0
    dropped = 0
    last_answer = 0.0
    timeout = httpx.Timeout(60.0, connect=10.0)

    async def send(http: httpx.AsyncClient, scheduled: float) -> None:
        nonlocal completed, last_answer
        try:
            response = await http.post("/chat/completions", content=body, headers=post_headers)
        except httpx.HTTPError as exc:
            errors[type(exc).__name__] += 1
            return
        now = trio.current_time()
        last_answer = now
        if response.status_code != 200:
            errors[f"http_{response.status_code}"] += 1
            return
        completed += 1
        latencies.append(now - scheduled)
        try:
            usage = orjson.loads(response.content).get("usage") or {}
            tokens[0] += int(usage.get("prompt_tokens") or 0)
            tokens[1] += int(usage.get("completion_tokens") or 0)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            errors["malformed_body"] += 1

    # Closed loop: one client per worker.  Open loop: clients made on demand
    # and reused (an idle stack), so only as many connections as the load needs.
    clients: list[httpx.AsyncClient] = []
    idle: list[httpx.AsyncClient] = []

    def new_client() -> httpx.AsyncClient:
        http = make_async_client(base_url, headers=headers, timeout=timeout)
        clients.append(http)
        return http

    if rate is None:
        for _ in range(concurrency):
            new_client()
    cpu_start = time.process_time()
    start = trio.current_time()
    stop_at = start + duration

    async def closed_worker(http: httpx.AsyncClient) -> None:
        while trio.current_time() < stop_at:
            await send(http, trio.current_time())

    async def arrival(http: httpx.AsyncClient, scheduled: float) -> None:
        lags.append(trio.current_time() - scheduled)
        try:
            await send(http, scheduled)
        finally:
            idle.append(http)

    try:
        async with trio.open_nursery() as nursery:
            if rate is None:
                for http in clients:
                    nursery.start_soon(closed_worker, http)
            else:
                rng = random.Random(seed)
                next_at = start + rng.expovariate(rate)
                while next_at < stop_at:
                    await trio.sleep_until(next_at)
                    # Release every arrival already due: one wake-up may cover many.
                    now = trio.current_time()
                    while next_at <= now and next_at < stop_at:
                        if idle:
                            nursery.start_soon(arrival, idle.pop(), next_at)
                        elif len(clients) < max_in_flight:
                            nursery.start_soon(arrival, new_client(), next_at)
                        else:
                            dropped += 1
                        next_at += rng.expovariate(rate)
            # In-flight requests finish (the nursery waits); cap that wait.
            nursery.cancel_scope.deadline = stop_at + 30.0
    finally:
        with trio.CancelScope(shield=True):
            for http in clients:
                await http.aclose()
    cpu = time.process_time() - cpu_start
    end = max(last_answer, stop_at) if completed else stop_at
    return LoadReport(
        mode="closed" if rate is None else "open",
        target=float(concurrency) if rate is None else rate,
        duration=end - start,
        completed=completed,
        errors=dict(errors),
        dropped=dropped,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        latencies=tuple(latencies),
        send_lag=tuple(lags),
        generator_cpu=cpu,
    )
