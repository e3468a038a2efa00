"""What each serving benchmark is asked to do, and what it reported, in one schema.

Pure code: a :class:`Workload` says what every tool must ask for (model,
prompt tokens, output tokens, concurrency or an open-loop rate, seconds);
``*_command`` functions turn it into each tool's own command line (plus a
config file for GuideLLM), and ``parse_*`` functions turn each tool's own
result file into :class:`Figures`.  Nothing here starts a process or touches
the network, so it is tested with captured result files
(``tests/fixtures/serving_peers/``).

What each tool calls its metrics (all are per request, then percentiles):

* TTFT: request sent to first content chunk, for all four tools.
* ITL: vLLM and ``engine bench`` take every gap between content chunks;
  AIPerf and GuideLLM take each request's mean gap, (e2e - TTFT) / (output
  tokens - 1), which is vLLM's TPOT.  With the mock's evenly spaced tokens the
  two agree at p50; at p99 per-gap figures show single slow gaps that
  per-request means smooth out.
* TPOT: (e2e - TTFT) / (output tokens - 1) everywhere except GuideLLM, whose
  ``time_per_output_token_ms`` is e2e / output tokens; its ITL is used for
  TPOT instead (same definition as vLLM's TPOT).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

#: The tools in the order they run and appear in reports.
PEERS = ("guidellm", "aiperf", "vllm")
#: Peers whose "ITL" is each request's mean gap, i.e. vLLM's TPOT: their ITL is
#: compared with engine bench's TPOT, the same definition.
ITL_IS_TPOT = frozenset({"guidellm", "aiperf"})
ENGINE = "engine_bench"
TOOLS = (*PEERS, ENGINE)
#: vLLM draws gaps from a gamma distribution of shape ``burstiness`` (1 is
#: Poisson); at 1000 the gaps' coefficient of variation is 1/sqrt(1000) ≈ 3%.
VLLM_CONSTANT_BURSTINESS = 1000.0


@attrs.frozen
class Workload:
    """One step every tool is asked to run the same way.

    Attributes:
        model: the model name sent in every request (default ``gpt-4o-mini``).
        input_tokens: prompt length in tokens (o200k_base), fixed (default 128).
        output_tokens: ``max_tokens`` of every request, with ``ignore_eos``
            where the tool has it (default 32).
        mode: ``"concurrency"`` (closed loop) or ``"rate"`` (open loop, Poisson).
        target: requests in flight, or offered requests per second.
        duration_s: seconds of measured sending (default 10).
        warmup_s: seconds before that, excluded where the tool can (default 2).
        expected_rps: what the step should complete per second, for tools
            that take a request count instead of a duration (vLLM); for a
            rate step it is the rate.
        arrivals: open loop: ``"poisson"`` (default) or ``"constant"``
            (evenly spaced; vLLM: gamma arrivals with burstiness
            :data:`VLLM_CONSTANT_BURSTINESS`, inter-arrival spread ~3%).
    """

    mode: str
    target: float
    model: str = "gpt-4o-mini"
    input_tokens: int = 128
    output_tokens: int = 32
    duration_s: float = 10.0
    warmup_s: float = 2.0
    expected_rps: float | None = None
    arrivals: str = "poisson"

    @property
    def offered_rate(self) -> float | None:
        """The open-loop rate, or None for a closed loop."""
        return self.target if self.mode == "rate" else None

    def request_count(self) -> int:
        """Requests a count-driven tool sends to last about ``duration_s``."""
        rate = self.expected_rps if self.expected_rps else self.target
        return max(20, math.ceil(rate * self.duration_s))


def _number(value: float) -> str:
    return f"{value:g}"


def guidellm_config(workload: Workload, base_url: str, tokenizer: str, out: str) -> dict[str, Any]:
    """GuideLLM 0.8 scenario file (``guidellm run -c FILE``) for ``workload``.

    ``validate_backend`` is off because GuideLLM's check asks ``/health``,
    which an OpenAI-style server need not have; synthetic data with
    ``output_tokens`` makes GuideLLM send ``max_tokens``, ``ignore_eos`` and
    ``stop: null`` itself.
    """
    if workload.mode == "concurrency":
        profile: dict[str, Any] = {"kind": "concurrent", "streams": [int(workload.target)]}
    else:
        profile = {"kind": workload.arrivals, "rate": [workload.target]}
    if workload.warmup_s:
        profile["warmup"] = workload.warmup_s
    return {
        "spec": {
            "backend": {
                "kind": "openai_http",
                "target": base_url,
                "model": workload.model,
                "validate_backend": False,
                "stream": True,
                "request_format": "/v1/chat/completions",
            },
            "profile": profile,
            "constraints": [
                {"kind": "max_duration", "seconds": workload.duration_s + workload.warmup_s}
            ],
            "tokenizer": {"kind": "huggingface_auto", "model": tokenizer},
            "data": [
                {
                    "kind": "synthetic_text",
                    "prompt_tokens": workload.input_tokens,
                    "output_tokens": workload.output_tokens,
                }
            ],
            "outputs": [{"kind": "json", "path": out}],
        }
    }


def guidellm_command(program: str, config_path: str) -> list[str]:
    """``guidellm run`` with the scenario file and no interactive progress."""
    return [program, "run", "-c", config_path, "--disable-progress"]


def aiperf_command(
    program: str, workload: Workload, base_url: str, tokenizer: str, artifact_dir: str
) -> list[str]:
    """``aiperf profile`` for ``workload``, streaming chat, no UI, no server metrics.

    ``tokenizer`` is a Hub-style name resolved from a local cache (see
    :func:`benchmarks.serving_peers.install.aiperf_tokenizer_name`): AIPerf
    0.13.0 in offline mode resolves even a directory path through the Hub
    cache, so a plain path fails there.
    """
    server = base_url.rstrip("/").removesuffix("/v1")
    command = [
        *(program, "profile", "--model", workload.model, "--url", server),
        *("--endpoint-type", "chat", "--streaming"),
        *("--isl", str(workload.input_tokens), "--isl-stddev", "0"),
        *("--osl", str(workload.output_tokens), "--osl-stddev", "0"),
        *("--extra-inputs", "ignore_eos:true", "--tokenizer", tokenizer),
        *("--benchmark-duration", _number(workload.duration_s)),
        *("--benchmark-grace-period", "10", "--artifact-dir", artifact_dir),
        *("--ui", "none", "--no-server-metrics", "--random-seed", "1"),
    ]
    if workload.mode == "concurrency":
        command += ["--concurrency", str(int(workload.target))]
    else:
        command += ["--request-rate", _number(workload.target)]
        command += ["--arrival-pattern", workload.arrivals]
    if workload.warmup_s:
        command += ["--warmup-duration", _number(workload.warmup_s)]
    return command


def vllm_command(
    program: str,
    workload: Workload,
    base_url: str,
    tokenizer: str,
    result_dir: str,
    result_file: str,
) -> list[str]:
    """``vllm bench serve`` for ``workload`` (random dataset, streaming chat, ``--ignore-eos``).

    vLLM sends a request count, not a duration: :meth:`Workload.request_count`.
    A closed loop is ``--request-rate inf`` with ``--max-concurrency``.
    """
    server = base_url.rstrip("/").removesuffix("/v1")
    command = [
        *(program, "bench", "serve", "--backend", "openai-chat", "--base-url", server),
        *("--endpoint", "/v1/chat/completions", "--model", workload.model),
        *("--tokenizer", tokenizer, "--dataset-name", "random"),
        *("--input-len", str(workload.input_tokens), "--output-len", str(workload.output_tokens)),
        *("--num-prompts", str(workload.request_count()), "--ignore-eos"),
        *("--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99"),
        *("--save-result", "--result-dir", result_dir, "--result-filename", result_file),
        *("--disable-tqdm", "--ready-check-timeout-sec", "0", "--seed", "1"),
    ]
    if workload.mode == "concurrency":
        command += ["--request-rate", "inf", "--max-concurrency", str(int(workload.target))]
    else:
        command += ["--request-rate", _number(workload.target)]
        if workload.arrivals == "constant":
            command += ["--burstiness", _number(VLLM_CONSTANT_BURSTINESS)]
    if workload.warmup_s:
        warmups = max(1, math.ceil((workload.expected_rps or workload.target) * workload.warmup_s))
        command += ["--num-warmups", str(warmups)]
    return command


def engine_bench_command(
    program: Sequence[str], workload: Workload, base_url: str, out: str, *, serving: bool
) -> list[str]:
    """``engine bench --base-url`` for ``workload``.

    ``serving``: the serving-benchmark flags (``--request-rate``,
    ``--input-tokens``, ``--warmup``, ``-o``, streaming by default); without
    it, today's load generator (``--rate``, ``--json``; no streaming, no
    prompt length, so only its request rate and end-to-end latency compare).
    """
    command = [*program, "bench", "--base-url", base_url, "--model", workload.model]
    command += ["--max-tokens", str(workload.output_tokens)]
    command += ["--duration", _number(workload.duration_s)]
    if serving:
        command += ["--input-tokens", str(workload.input_tokens)]
        command += ["--warmup", _number(workload.warmup_s), "--ignore-eos", "-o", out]
        if workload.mode == "concurrency":
            command += ["--concurrency", str(int(workload.target))]
        else:
            command += ["--request-rate", _number(workload.target)]
            command += ["--arrivals", workload.arrivals]
    else:
        command += ["--json", out]
        if workload.mode == "concurrency":
            command += ["--concurrency", str(int(workload.target))]
        else:
            command += ["--rate", _number(workload.target)]
    return command


@attrs.frozen
class Figures:
    """One step's results in the comparison's schema (milliseconds, per second).

    Attributes:
        completed: requests answered in the measured window.
        errors: failed requests in it.
        duration_s: the measured window's length.
        requests_per_second: completed / duration (as the tool reports it).
        output_tokens_per_second: output tokens per second.
        ttft_ms, itl_ms: ``{"p50": .., "p99": ..}`` (None where not measured).
        tpot_p50_ms, tpot_p99_ms: time per output token after the first,
            (e2e - TTFT) / (output tokens - 1) per request.
        e2e_p50_ms, e2e_p99_ms: end-to-end latency.
        window: (start, end) of the measured window in epoch seconds, when
            the tool reports it (used to take CPU over that window only).
    """

    completed: int
    errors: int
    duration_s: float
    requests_per_second: float
    output_tokens_per_second: float | None
    ttft_ms: Mapping[str, float | None]
    itl_ms: Mapping[str, float | None]
    tpot_p50_ms: float | None
    tpot_p99_ms: float | None
    e2e_p50_ms: float | None
    e2e_p99_ms: float | None
    window: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = attrs.asdict(self)
        data["ttft_ms"] = dict(self.ttft_ms)
        data["itl_ms"] = dict(self.itl_ms)
        data["window"] = list(self.window) if self.window else None
        return data


def _p50_p99(p50: Any, p99: Any) -> dict[str, float | None]:
    return {"p50": _float(p50), "p99": _float(p99)}


def _float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _nonzero(stats: Mapping[str, float | None]) -> dict[str, float | None]:
    """None for percentiles a tool reported as 0 with no samples (non-streaming)."""
    return {k: (v if v else None) for k, v in stats.items()}


def parse_guidellm(report: Mapping[str, Any]) -> Figures:
    """GuideLLM 0.8's ``--output kind=json`` report (first benchmark)."""
    benchmark = report["benchmarks"][0]
    metrics = benchmark["metrics"]

    def distribution(name: str) -> Mapping[str, Any]:
        stats: Mapping[str, Any] = metrics[name]["successful"]
        return stats

    def percentiles(name: str, scale: float = 1.0) -> dict[str, float | None]:
        stats = distribution(name)
        if not stats.get("count"):
            return {"p50": None, "p99": None}
        values = stats["percentiles"]
        return _p50_p99(values["p50"] * scale, values["p99"] * scale)

    totals = metrics["request_totals"]
    itl = percentiles("inter_token_latency_ms")
    latency = percentiles("request_latency", 1000.0)
    return Figures(
        completed=int(totals["successful"]),
        errors=int(totals["errored"]),
        duration_s=float(benchmark["duration"]),
        requests_per_second=float(distribution("requests_per_second")["mean"]),
        output_tokens_per_second=_float(distribution("output_tokens_per_second")["mean"]),
        ttft_ms=percentiles("time_to_first_token_ms"),
        itl_ms=itl,
        tpot_p50_ms=itl["p50"],
        tpot_p99_ms=itl["p99"],
        e2e_p50_ms=latency["p50"],
        e2e_p99_ms=latency["p99"],
        window=(float(benchmark["start_time"]), float(benchmark["end_time"])),
    )


def _iso_epoch(text: str | None) -> float | None:
    if not text:
        return None
    from datetime import datetime

    moment = datetime.fromisoformat(text)
    return moment.timestamp()


def parse_aiperf(report: Mapping[str, Any]) -> Figures:
    """AIPerf's ``profile_export_aiperf.json`` (schema 1.x)."""

    def metric(name: str) -> Mapping[str, Any]:
        value: Mapping[str, Any] = report.get(name) or {}
        return value

    def percentiles(name: str) -> dict[str, float | None]:
        stats = metric(name)
        return _p50_p99(stats.get("p50"), stats.get("p99"))

    completed = int(metric("request_count").get("avg") or 0)
    error_count = int(metric("error_request_count").get("avg") or 0)
    itl = percentiles("inter_token_latency")
    latency = percentiles("request_latency")
    start, end = _iso_epoch(report.get("start_time")), _iso_epoch(report.get("end_time"))
    return Figures(
        completed=completed,
        errors=error_count,
        duration_s=float(metric("benchmark_duration").get("avg") or 0.0),
        requests_per_second=float(metric("request_throughput").get("avg") or 0.0),
        output_tokens_per_second=_float(metric("output_token_throughput").get("avg")),
        ttft_ms=percentiles("time_to_first_token"),
        itl_ms=itl,
        tpot_p50_ms=itl["p50"],
        tpot_p99_ms=itl["p99"],
        e2e_p50_ms=latency["p50"],
        e2e_p99_ms=latency["p99"],
        window=(start, end) if start is not None and end is not None else None,
    )


def parse_vllm(report: Mapping[str, Any]) -> Figures:
    """``vllm bench serve --save-result`` JSON (percentiles 50 and 99 asked for)."""

    def percentiles(metric: str) -> dict[str, float | None]:
        return _nonzero(_p50_p99(report.get(f"p50_{metric}_ms"), report.get(f"p99_{metric}_ms")))

    return Figures(
        completed=int(report["completed"]),
        errors=int(report.get("failed") or 0),
        duration_s=float(report["duration"]),
        requests_per_second=float(report["request_throughput"]),
        output_tokens_per_second=_float(report.get("output_throughput")),
        ttft_ms=percentiles("ttft"),
        itl_ms=percentiles("itl"),
        tpot_p50_ms=_float(report.get("median_tpot_ms") or report.get("p50_tpot_ms")),
        tpot_p99_ms=_float(report.get("p99_tpot_ms")),
        e2e_p50_ms=_float(report.get("median_e2el_ms") or report.get("p50_e2el_ms")),
        e2e_p99_ms=_float(report.get("p99_e2el_ms")),
    )


def parse_engine_bench(report: Mapping[str, Any]) -> Figures:
    """``engine bench --base-url`` JSON: the serving schema (first step), or today's report."""
    if "steps" in report:
        step = report["steps"][0]

        def percentiles(name: str) -> dict[str, float | None]:
            stats = step.get(name) or {}
            return _p50_p99(stats.get("p50"), stats.get("p99"))

        errors = step.get("errors") or {}
        tpot = step.get("tpot_ms") or {}
        e2e = percentiles("e2e_ms")
        return Figures(
            completed=int(step["completed"]),
            errors=int(sum(errors.values())) + int(step.get("rate_limited") or 0),
            duration_s=float(step["duration_s"]),
            requests_per_second=float(step["requests_per_second"]),
            output_tokens_per_second=_float(step.get("output_tokens_per_second")),
            ttft_ms=percentiles("ttft_ms"),
            itl_ms=percentiles("itl_ms"),
            tpot_p50_ms=_float(tpot.get("p50")),
            tpot_p99_ms=_float(tpot.get("p99")),
            e2e_p50_ms=e2e["p50"],
            e2e_p99_ms=e2e["p99"],
        )
    latency = report.get("latency_s") or {}
    return Figures(
        completed=int(report["completed"]),
        errors=int(report.get("error_count") or 0),
        duration_s=float(report["duration_s"]),
        requests_per_second=float(report["requests_per_s"]),
        output_tokens_per_second=_float(report.get("completion_tokens_per_s")),
        ttft_ms={"p50": None, "p99": None},
        itl_ms={"p50": None, "p99": None},
        tpot_p50_ms=None,
        tpot_p99_ms=None,
        e2e_p50_ms=latency["p50"] * 1000 if "p50" in latency else None,
        e2e_p99_ms=latency["p99"] * 1000 if "p99" in latency else None,
    )


PARSERS = {
    "guidellm": parse_guidellm,
    "aiperf": parse_aiperf,
    "vllm": parse_vllm,
    ENGINE: parse_engine_bench,
}


def parse(tool: str, path: str) -> Figures:
    """Read ``path`` (that tool's result file) and parse it."""
    with open(path) as f:
        return PARSERS[tool](json.load(f))
