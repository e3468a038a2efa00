"""``python -m benchmarks.serving_peers run``: every tool against the same streaming mock.

Two phases, each tool in turn (never two tools at once), each against its own
``engine mock`` started for it on loopback and stopped by its PID:

1. **latency**: the mock answers with a fixed time to first token and time
   per output token (default ``--ttft-ms 200 --ms-per-output-token 20``);
   every tool runs one closed-loop step at :data:`LATENCY_CONCURRENCY` in
   flight, streaming, same prompt and output length.  Their TTFT / ITL are
   compared with ``engine bench``'s (:mod:`.verdicts`).
2. **ceiling**: the mock answers at once; every tool climbs a ladder of
   open-loop rates with evenly spaced arrivals (Poisson's own spread over a
   5 s step, about 4.5% at 100/s, would fail the 95% test by chance) until
   a step achieves less than 95% of what it offered or a request fails
   (quick: ladder only; full: then :data:`REFINEMENTS` midpoints between the
   last pass and the first failure).

CPU placement: the mock is pinned to the last CPU.  The peers run unpinned
(they use both cores: GuideLLM and AIPerf run several worker processes, and
the issue's claim is "one client core against their two"); ``engine bench``
is started under ``taskset -c`` on the first CPU only.  Each tool's CPU
seconds are read with psutil from its whole process tree every 0.2 s;
per request they are taken over the tool's measured window where the tool
reports one (GuideLLM, AIPerf), else over the measured duration that ended
when the process exited (vLLM, engine bench): start-up and imports are left
out for every tool.

Nothing is downloaded: each tool runs with the Hugging Face Hub switched off
and the local tokenizer built by ``setup``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psutil

from benchmarks import _procs
from benchmarks.serving_peers import install, tools, verdicts

RESULTS = os.path.join("bench-results", "serving_peers.json")
LATENCY_CONCURRENCY = 16
#: The mock's delays for the latency phase (milliseconds).
LATENCY_TTFT_MS = 200.0
LATENCY_MS_PER_TOKEN = 20.0
#: Offered rates of the ceiling sweep (requests/s), climbed until one fails.
RATE_LADDER = (100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0, 12800.0, 25600.0)
#: Full runs: geometric midpoints tried between the last pass and the first
#: failure (three narrow a doubling to within ~9%).
REFINEMENTS = 3


class TreeCpuMeter:
    """CPU seconds used by a process and all its descendants, sampled in a thread.

    Each sample sums user + system time of every live process in the tree;
    a process that exits keeps its last sample, so the total never drops.
    :meth:`between` answers the CPU used between two epoch times.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self._last: dict[int, float] = {}
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TreeCpuMeter:
        """Start sampling; returns self."""
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling and return the total CPU seconds seen."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.total

    @property
    def total(self) -> float:
        """CPU seconds of the tree so far."""
        return sum(self._last.values())

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds used between epoch times ``start`` and ``end`` (None: too few samples)."""
        inside = [(t, cpu) for t, cpu in self.samples if start <= t <= end]
        before = [cpu for t, cpu in self.samples if t < start]
        if not inside:
            return None
        first = before[-1] if before else inside[0][1]
        return inside[-1][1] - first

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            processes = []
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            self._last[process.pid] = times.user + times.system
        self.samples.append((time.time(), self.total))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def mock_command(model: str, ttft_ms: float, ms_per_token: float, server: str) -> list[str]:
    """``engine mock`` on a free loopback port, streaming with the given delays."""
    command = [
        *_procs.python_module("engine", "mock"),
        *("--host", "127.0.0.1", "--port", "0", "--server", server, "--model", model),
        *("--log-level", "error"),
    ]
    if ttft_ms:
        command += ["--ttft-ms", f"{ttft_ms:g}"]
    if ms_per_token:
        command += ["--ms-per-output-token", f"{ms_per_token:g}"]
    return command


@contextlib.contextmanager
def server_for(
    base_url: str | None, command: list[str], cpus: set[int] | None
) -> Iterator[tuple[str, int | None]]:
    """(base URL, server PID): ``base_url`` as given (PID None), else ``command`` started here.

    A started server is stopped by its PID when the block ends.
    """
    if base_url:
        yield base_url, None
        return
    with _procs.start_server(command, cpus=cpus) as server:
        yield server.base_url, server.pid


def engine_bench_serving() -> bool:
    """Whether ``engine bench`` has the serving flags (``--request-rate``, ``--input-tokens``)."""
    help_text = subprocess.run(
        [*_procs.python_module("engine", "bench"), "--help"], capture_output=True, text=True
    ).stdout
    return "--request-rate" in help_text and "--input-tokens" in help_text


def tool_version(tool: str) -> str | None:
    """The installed version of ``tool`` (``engine bench``: the engine's)."""
    if tool == tools.ENGINE:
        from engine._version import __version__

        return str(__version__)
    python = install.venv_bin(tool, "python")
    if not os.path.exists(python):
        return None
    done = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({tool!r}))"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or None


class Runner:
    """Runs steps of one tool and records them (see the module doc for placement)."""

    def __init__(self, workdir: str, *, serving_engine: bool) -> None:
        self.workdir = workdir
        self.serving_engine = serving_engine
        self.cpus = _procs.available_cpus()
        self.mock_cpus = {self.cpus[-1]} if len(self.cpus) > 1 else None
        self.engine_cpu = self.cpus[0]
        self.counter = 0

    def command_for(
        self, tool: str, workload: tools.Workload, base_url: str
    ) -> tuple[list[str], str]:
        """(argv, result path) for one step of ``tool``; writes GuideLLM's scenario file."""
        self.counter += 1
        stem = os.path.join(
            self.workdir, f"{self.counter:03d}-{tool}-{workload.mode}-{workload.target:g}"
        )
        if tool == "guidellm":
            out = stem + ".json"
            config = tools.guidellm_config(workload, base_url, install.tokenizer_dir(), out)
            with open(stem + ".scenario.json", "w") as f:
                json.dump(config, f, indent=1)
            return tools.guidellm_command(
                install.venv_bin("guidellm", "guidellm"), stem + ".scenario.json"
            ), out
        if tool == "aiperf":
            argv = tools.aiperf_command(
                install.venv_bin("aiperf", "aiperf"),
                workload,
                base_url,
                install.AIPERF_TOKENIZER,
                stem,
            )
            return argv, os.path.join(stem, "profile_export_aiperf.json")
        if tool == "vllm":
            argv = tools.vllm_command(
                install.venv_bin("vllm", "vllm"),
                workload,
                base_url,
                install.tokenizer_dir(),
                self.workdir,
                os.path.basename(stem) + ".json",
            )
            return argv, stem + ".json"
        out = stem + ".json"
        program = _procs.python_module("engine")
        if shutil.which("taskset") and len(self.cpus) > 1:
            program = ["taskset", "-c", str(self.engine_cpu), *program]
        argv = tools.engine_bench_command(
            program, workload, base_url, out, serving=self.serving_engine
        )
        return argv, out

    def run_step(
        self, tool: str, workload: tools.Workload, base_url: str, mock_pid: int, timeout: float
    ) -> dict[str, Any]:
        """Run one step; return its record (command, CPU, figures or the error)."""
        argv, result_path = self.command_for(tool, workload, base_url)
        env = install.offline_env()
        if tool == "aiperf":
            env["HF_HUB_CACHE"] = install.hf_cache_dir()
        record: dict[str, Any] = {
            "tool": tool,
            "mode": workload.mode,
            "target": workload.target,
            "offered_rate": workload.offered_rate,
            "command": argv,
        }
        mock_before = _cpu_of(mock_pid)
        started_wall = time.monotonic()
        log_path = (
            os.path.splitext(result_path)[0] + ".log" if tool != "aiperf" else result_path + ".log"
        )
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
            )
            meter = TreeCpuMeter(process.pid).start()
            try:
                returncode = process.wait(timeout)
                exited = time.time()
            except subprocess.TimeoutExpired:
                _stop_tree(process)
                returncode = None
                exited = time.time()
            cpu_total = meter.stop()
        wall = time.monotonic() - started_wall
        record.update(
            # Other work on the machine shows here: the 1-minute load average
            # as the step ended (2.0 = both cores busy).
            loadavg_1m=round(os.getloadavg()[0], 2),
            returncode=returncode,
            wall_s=round(wall, 2),
            cpu_s=round(cpu_total, 3),
            mock_cpu_s=_delta(mock_before, _cpu_of(mock_pid)),
        )
        try:
            figures = tools.parse(tool, result_path)
        except (OSError, KeyError, ValueError, IndexError, TypeError) as error:
            with open(log_path, errors="replace") as f:
                record["error"] = f"{type(error).__name__}: {error}"
                record["output_tail"] = _tail(f.read())
            record["offered_met"] = False if workload.mode == "rate" else None
            return record
        record["figures"] = figures.to_dict()
        if figures.window:
            window, window_name = figures.window, "measured window"
        else:
            # vLLM and engine bench report no window: take the measured
            # duration that ended as the process exited (it only writes its
            # report after), which leaves out imports and start-up.
            window = (exited - figures.duration_s, exited)
            window_name = "the measured duration before exit"
        window_cpu = meter.between(*window)
        cpu = window_cpu if window_cpu is not None else cpu_total
        requests = figures.completed + figures.errors
        record["cpu_window"] = window_name if window_cpu is not None else "whole run"
        record["cpu_ms_per_request"] = round(cpu / requests * 1000, 4) if requests else None
        record["client_cores"] = (
            round(cpu / figures.duration_s, 2)
            if window_cpu is not None and figures.duration_s
            else None
        )
        if workload.mode == "rate":
            record["offered_met"] = verdicts.offered_met(
                workload.target, figures.requests_per_second, figures.errors
            )
        else:
            record["offered_met"] = None
        if returncode not in (0, None) and "error" not in record:
            with open(log_path, errors="replace") as f:
                record["output_tail"] = _tail(f.read())
        return record


def _cpu_of(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def _delta(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    return round(after - before, 3)


def _stop_tree(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the tool and its descendants by PID, then SIGKILL what remains."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for proc in [psutil.Process(process.pid), *children] if process.poll() is None else children:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(children, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def available_tools(requested: Sequence[str]) -> dict[str, str | None]:
    """Per tool: None when runnable, else why not (from ``install.json`` or a missing venv)."""
    installs = install.installs()
    reasons: dict[str, str | None] = {}
    for tool in requested:
        if tool == tools.ENGINE:
            reasons[tool] = None
            continue
        program = install.venv_bin(tool, tool)
        if os.path.exists(program):
            reasons[tool] = None
        else:
            record = installs.get(tool) or {}
            reasons[tool] = (
                record.get("error_tail") or f"not installed ({program} missing; run setup)"
            )
    if not os.path.exists(os.path.join(install.tokenizer_dir(), "tokenizer.json")):
        for tool in requested:
            if tool != tools.ENGINE and reasons[tool] is None:
                reasons[tool] = "no local tokenizer (run setup)"
    return reasons


def run(
    *,
    quick: bool,
    requested: Sequence[str] = tools.TOOLS,
    out: str = RESULTS,
    mock_server: str = "builtin",
    phases: Sequence[str] = ("latency", "ceiling"),
    latency_url: str | None = None,
    ceiling_url: str | None = None,
) -> dict[str, Any]:
    """Run the comparison and write ``out`` (default ``bench-results/serving_peers.json``).

    ``latency_url`` / ``ceiling_url``: a server already running for that phase
    (configured as the phase needs) instead of the ``engine mock`` started here.
    """
    started = time.time()
    workdir = os.path.join(os.path.dirname(out) or ".", "serving_peers")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    workdir = os.path.abspath(workdir)
    serving = engine_bench_serving()
    runner = Runner(workdir, serving_engine=serving)
    duration, warmup = (5.0, 1.0) if quick else (10.0, 2.0)
    model = "gpt-4o-mini"
    latency_e2e_s = (LATENCY_TTFT_MS + LATENCY_MS_PER_TOKEN * (32 - 1)) / 1000
    latency_workload = {
        "mode": "concurrency",
        "target": float(LATENCY_CONCURRENCY),
        "model": model,
        "input_tokens": 128,
        "output_tokens": 32,
        "duration_s": duration,
        "warmup_s": warmup,
        "expected_rps": LATENCY_CONCURRENCY / latency_e2e_s,
    }
    ceiling_workload = {
        "model": model,
        "input_tokens": 64,
        "output_tokens": 8,
        "duration_s": duration,
        "warmup_s": warmup,
        "arrivals": "constant",
    }
    reasons = available_tools(requested)
    result: dict[str, Any] = {
        "scenario": "serving_peers",
        "machine": {
            "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
            "cpus": runner.cpus,
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "placement": {
                "mock": sorted(runner.mock_cpus) if runner.mock_cpus else None,
                "peers": "unpinned (all CPUs, shared with the mock)",
                "engine_bench": [runner.engine_cpu] if len(runner.cpus) > 1 else None,
            },
        },
        "config": {
            "quick": quick,
            "mock_server": mock_server,
            "servers": {
                "latency": latency_url or "engine mock",
                "ceiling": ceiling_url or "engine mock",
            },
            "latency": {
                "mock": {"ttft_ms": LATENCY_TTFT_MS, "ms_per_output_token": LATENCY_MS_PER_TOKEN},
                "workload": latency_workload,
            },
            "ceiling": {
                "mock": {"ttft_ms": 0, "ms_per_output_token": 0},
                "workload": ceiling_workload,
                "ladder": list(RATE_LADDER),
                "refinements": 0 if quick else REFINEMENTS,
                "offered_met_share": verdicts.OFFERED_MET,
                "arrivals": "constant",
            },
            "engine_bench_mode": "serving"
            if serving
            else "legacy (no streaming: today's --base-url load)",
        },
        "versions": {tool: tool_version(tool) for tool in requested},
        "installs": install.installs(),
        "tools": {
            tool: {"available": reasons[tool] is None, "reason": reasons[tool]}
            for tool in requested
        },
    }
    runnable = [tool for tool in requested if reasons[tool] is None]
    if "latency" in phases:
        for tool in runnable:
            workload = tools.Workload(**latency_workload)
            with server_for(
                latency_url,
                mock_command(model, LATENCY_TTFT_MS, LATENCY_MS_PER_TOKEN, mock_server),
                runner.mock_cpus,
            ) as (base_url, mock_pid):
                print(f"[latency] {tool} at {LATENCY_CONCURRENCY} in flight ...", flush=True)
                record = runner.run_step(
                    tool, workload, base_url, mock_pid, timeout=duration * 6 + 180
                )
            result["tools"][tool]["latency"] = record
            _print_step(record)
            _write(out, result)
    if "ceiling" in phases:
        for tool in runnable:
            steps: list[dict[str, Any]] = []
            passed: list[float] = []
            failed: list[float] = []
            with server_for(
                ceiling_url, mock_command(model, 0, 0, mock_server), runner.mock_cpus
            ) as (
                base_url,
                mock_pid,
            ):
                rate = verdicts.next_rates(
                    list(RATE_LADDER), passed, failed, 0 if quick else REFINEMENTS
                )
                while rate is not None:
                    workload = tools.Workload(
                        mode="rate", target=rate, expected_rps=rate, **ceiling_workload
                    )
                    print(f"[ceiling] {tool} offered {rate:g}/s ...", flush=True)
                    record = runner.run_step(
                        tool, workload, base_url, mock_pid, timeout=duration * 8 + 180
                    )
                    steps.append(record)
                    _print_step(record)
                    (passed if record.get("offered_met") else failed).append(rate)
                    result["tools"][tool]["ceiling"] = steps
                    _write(out, result)
                    rate = verdicts.next_rates(
                        list(RATE_LADDER), passed, failed, 0 if quick else REFINEMENTS
                    )
            result["tools"][tool]["max_sustained_rps"] = verdicts.max_sustained(steps)
    judge(result)
    result["duration_s"] = round(time.time() - started, 1)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    _write(out, result)
    return result


def judge(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with every verdict recomputed from its raw figures by today's rules.

    Sets each ceiling step's ``offered_met``, each tool's ``max_sustained_rps``
    and ``verdicts``; the report runs this too, so a saved run is always
    judged the same way.
    """
    for entry in result["tools"].values():
        steps = entry.get("ceiling")
        if steps is None:
            continue
        for step in steps:
            figures = step.get("figures")
            step["offered_met"] = bool(figures) and verdicts.offered_met(
                step["offered_rate"], figures["requests_per_second"], figures["errors"]
            )
        entry["max_sustained_rps"] = verdicts.max_sustained(steps)
    result["verdicts"] = summarise(result)
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Agreement of each peer with engine bench, and the ceiling ratio, from a result dict."""
    by_tool = result["tools"]
    engine = (by_tool.get(tools.ENGINE) or {}).get("latency", {}).get("figures")
    agreement = {}
    for peer in tools.PEERS:
        figures = (by_tool.get(peer) or {}).get("latency", {}).get("figures")
        if figures and engine:
            reference = dict(engine)
            if peer in tools.ITL_IS_TPOT:
                # Same definition on both sides: the peer's per-request mean
                # gap against engine bench's TPOT, not its pooled gaps.
                reference["itl_ms"] = {
                    "p50": engine.get("tpot_p50_ms"),
                    "p99": engine.get("tpot_p99_ms"),
                }
            agreement[peer] = verdicts.agreement(figures, reference) | {
                "itl_reference": "tpot" if peer in tools.ITL_IS_TPOT else "itl"
            }
    peers_max = {
        peer: (by_tool.get(peer) or {}).get("max_sustained_rps")
        for peer in tools.PEERS
        if peer in by_tool
    }
    engine_max = (by_tool.get(tools.ENGINE) or {}).get("max_sustained_rps")
    return {
        "agreement_tolerance": verdicts.AGREEMENT_TOLERANCE,
        "agreement": agreement,
        "ceiling": verdicts.ceiling(engine_max, peers_max),
    }


def _print_step(record: dict[str, Any]) -> None:
    figures = record.get("figures")
    if not figures:
        print(
            f"    FAILED ({record.get('error')}); rc={record.get('returncode')}\n"
            f"{record.get('output_tail', '')}",
            flush=True,
        )
        return
    met = record.get("offered_met")
    print(
        f"    {figures['requests_per_second']:,.1f} req/s, "
        f"TTFT p50 {figures['ttft_ms'].get('p50')}, "
        f"ITL p50 {figures['itl_ms'].get('p50')}, errors {figures['errors']}, "
        f"CPU {record.get('cpu_ms_per_request')} ms/req ({record.get('cpu_window')})"
        + ("" if met is None else f", offered met: {met}"),
        flush=True,
    )


def _write(out: str, result: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


def main_run(
    quick: bool,
    requested: Sequence[str],
    out: str,
    mock_server: str,
    phases: Sequence[str],
    latency_url: str | None = None,
    ceiling_url: str | None = None,
) -> int:
    """The ``run`` subcommand."""
    result = run(
        quick=quick,
        requested=requested,
        out=out,
        mock_server=mock_server,
        phases=phases,
        latency_url=latency_url,
        ceiling_url=ceiling_url,
    )
    print(json.dumps(result["verdicts"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_run(True, tools.TOOLS, RESULTS, "builtin", ("latency", "ceiling")))
