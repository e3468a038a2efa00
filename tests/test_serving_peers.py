"""The serving-peers comparison (issue 16): parsers of each tool's result file, verdicts, report.

The fixtures under ``tests/fixtures/serving_peers/`` are result files the
tools wrote in real runs (GuideLLM 0.8.1, AIPerf 0.13.0, vllm 0.33.0 ``bench
serve``, ``engine bench --base-url``), cut down to the fields the parsers read;
all against ``engine mock --ttft-ms 200 --ms-per-output-token 20`` at 16 in
flight (``engine_bench_legacy_*``: the load generator before streaming, not
streamed).  Nothing here installs, starts or downloads anything.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from benchmarks import report
from benchmarks.serving_peers import _tokenizer, runner, tools, verdicts

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "serving_peers"


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


# -- parsers ----------------------------------------------------------------------


def test_guidellm_report_gives_streaming_latencies_and_its_measured_window():
    """GuideLLM's JSON: TTFT and ITL percentiles in ms, request latency turned from s to ms."""
    figures = tools.parse_guidellm(load("guidellm_concurrent16.json"))
    assert figures.completed == 108 and figures.errors == 0
    assert figures.ttft_ms["p50"] == pytest.approx(203.96, abs=0.01)
    assert figures.itl_ms["p50"] == pytest.approx(19.99, abs=0.01)
    assert figures.tpot_p50_ms == figures.itl_ms["p50"]
    assert figures.e2e_p50_ms == pytest.approx(825.74, abs=0.01)
    assert figures.requests_per_second == pytest.approx(20.74, abs=0.01)
    start, end = figures.window
    assert end - start == pytest.approx(figures.duration_s, abs=0.01)


def test_aiperf_export_gives_streaming_latencies_and_its_window():
    """AIPerf's profile_export_aiperf.json: ms metrics, throughput and ISO start/end times."""
    figures = tools.parse_aiperf(load("aiperf_concurrency16.json"))
    assert figures.completed == 101 and figures.errors == 0
    assert figures.ttft_ms == {
        "p50": pytest.approx(203.38, abs=0.01),
        "p99": pytest.approx(212.36, abs=0.01),
    }
    assert figures.itl_ms["p50"] == pytest.approx(20.05, abs=0.01)
    assert figures.requests_per_second == pytest.approx(17.39, abs=0.01)
    assert figures.window is not None and figures.window[1] > figures.window[0]


def test_vllm_result_gives_percentiles_asked_for_and_no_window():
    """vllm bench serve's saved result: p50/p99 keys from --metric-percentiles 50,90,99."""
    figures = tools.parse_vllm(load("vllm_concurrency16.json"))
    assert figures.completed == 98 and figures.errors == 0
    assert figures.ttft_ms["p50"] == pytest.approx(202.99, abs=0.01)
    assert figures.itl_ms["p99"] == pytest.approx(22.99, abs=0.01)
    assert figures.tpot_p50_ms == pytest.approx(20.00, abs=0.01)
    assert figures.window is None


def test_vllm_zeros_from_a_run_with_no_success_read_as_missing():
    """A run where every request failed reports 0 ms percentiles: not a latency of 0."""
    report_data = load("vllm_concurrency16.json") | {
        "completed": 0,
        "failed": 98,
        "p50_ttft_ms": 0.0,
        "p99_ttft_ms": 0.0,
    }
    figures = tools.parse_vllm(report_data)
    assert figures.errors == 98
    assert figures.ttft_ms == {"p50": None, "p99": None}


def test_engine_bench_serving_schema_gives_its_first_step():
    """The serving schema's steps[0]: TTFT / ITL / TPOT / e2e percentiles, errors plus 429s."""
    data = load("engine_bench_serving_concurrency16.json")
    figures = tools.parse_engine_bench(data)
    assert figures.completed == 96 and figures.requests_per_second == 19.2
    assert figures.ttft_ms["p50"] == pytest.approx(201.15, abs=0.01)
    assert figures.itl_ms["p99"] == pytest.approx(27.89, abs=0.01)
    assert figures.tpot_p50_ms == pytest.approx(20.06, abs=0.01)
    assert figures.e2e_p50_ms == pytest.approx(823.53, abs=0.01)
    data["steps"][0]["errors"] = {"timeout": 2}
    data["steps"][0]["rate_limited"] = 1
    assert tools.parse_engine_bench(data).errors == 3


def test_engine_bench_legacy_report_gives_rate_and_latency_but_no_streaming_figures():
    """Today's --json report: request rate and end-to-end latency (s to ms); TTFT/ITL absent."""
    figures = tools.parse_engine_bench(load("engine_bench_legacy_concurrency16.json"))
    assert figures.completed == 40363
    assert figures.requests_per_second == pytest.approx(13434.4, abs=0.1)
    assert figures.e2e_p50_ms == pytest.approx(0.735, abs=0.001)
    assert figures.ttft_ms == {"p50": None, "p99": None}


# -- command lines ---------------------------------------------------------------

CLOSED = tools.Workload(mode="concurrency", target=16, duration_s=5, warmup_s=1, expected_rps=19.5)
OPEN = tools.Workload(mode="rate", target=400, input_tokens=64, output_tokens=8, duration_s=5)
EVEN = tools.Workload(mode="rate", target=400, duration_s=5, arrivals="constant")


def test_guidellm_scenario_streams_without_the_health_probe():
    """validate_backend false, stream true, synthetic tokens, the profile matching the mode."""
    closed = tools.guidellm_config(CLOSED, "http://127.0.0.1:9/v1", "/tok", "/out.json")["spec"]
    assert closed["backend"]["validate_backend"] is False and closed["backend"]["stream"] is True
    assert closed["profile"] == {"kind": "concurrent", "streams": [16], "warmup": 1}
    assert closed["data"][0] | {} == {
        "kind": "synthetic_text",
        "prompt_tokens": 128,
        "output_tokens": 32,
    }
    assert closed["constraints"] == [{"kind": "max_duration", "seconds": 6}]
    opened = tools.guidellm_config(OPEN, "http://127.0.0.1:9/v1", "/tok", "/out.json")["spec"]
    assert opened["profile"]["kind"] == "poisson" and opened["profile"]["rate"] == [400]


def test_aiperf_command_streams_with_fixed_lengths_and_the_cached_tokenizer():
    """--streaming, ISL/OSL with zero spread, ignore_eos, the server URL without /v1."""
    command = tools.aiperf_command("aiperf", OPEN, "http://127.0.0.1:9/v1", "org/tok", "/art")
    text = " ".join(command)
    assert "--streaming" in command and "--url http://127.0.0.1:9 " in text
    assert "--isl 64 --isl-stddev 0 --osl 8 --osl-stddev 0" in text
    assert "--extra-inputs ignore_eos:true --tokenizer org/tok" in text
    assert "--request-rate 400 --arrival-pattern poisson" in text
    assert "--concurrency" not in command and "--warmup-duration" in command


def test_vllm_command_closes_the_loop_with_max_concurrency_and_counts_requests():
    """A closed loop is rate inf + max-concurrency; the request count covers the duration."""
    command = tools.vllm_command("vllm", CLOSED, "http://127.0.0.1:9/v1", "/tok", "/d", "r.json")
    text = " ".join(command)
    assert "--request-rate inf --max-concurrency 16" in text
    assert "--num-prompts 98" in text  # ceil(19.5 req/s x 5 s)
    assert "--ignore-eos" in command and "--backend openai-chat" in text
    opened = " ".join(tools.vllm_command("vllm", OPEN, "http://h/v1", "/t", "/d", "r.json"))
    assert "--request-rate 400" in opened and "--num-prompts 2000" in opened


def test_constant_arrivals_reach_every_tool_in_its_own_words():
    """GuideLLM's constant profile, AIPerf's arrival pattern, vLLM's burstiness, engine's flag."""
    config = tools.guidellm_config(EVEN, "http://h/v1", "/t", "/o.json")
    assert config["spec"]["profile"]["kind"] == "constant"
    assert "--arrival-pattern constant" in " ".join(tools.aiperf_command("a", EVEN, "u", "t", "d"))
    assert "--burstiness 1000" in " ".join(tools.vllm_command("v", EVEN, "u", "t", "d", "f"))
    assert "--burstiness" not in tools.vllm_command("v", OPEN, "u", "t", "d", "f")
    engine = tools.engine_bench_command(["e"], EVEN, "u", "o", serving=True)
    assert "--arrivals constant" in " ".join(engine)


def test_engine_bench_command_uses_serving_flags_only_when_present():
    """Serving mode: --request-rate, --input-tokens, -o; legacy: --rate and --json."""
    serving = tools.engine_bench_command(["engine"], OPEN, "http://h/v1", "/o.json", serving=True)
    assert serving[:4] == ["engine", "bench", "--base-url", "http://h/v1"]
    assert "--request-rate" in serving and "--input-tokens" in serving and "-o" in serving
    legacy = tools.engine_bench_command(["engine"], OPEN, "http://h/v1", "/o.json", serving=False)
    assert "--rate" in legacy and "--json" in legacy and "--input-tokens" not in legacy


# -- verdicts ---------------------------------------------------------------------


def test_agreement_is_within_ten_percent_per_metric_and_over_all():
    """A peer 5% off passes, one 15% off fails; all_within needs every measured metric."""
    engine = {"ttft_ms": {"p50": 200.0, "p99": 210.0}, "itl_ms": {"p50": 20.0, "p99": 22.0}}
    close = {"ttft_ms": {"p50": 210.0, "p99": 200.0}, "itl_ms": {"p50": 21.0, "p99": 21.0}}
    far = {"ttft_ms": {"p50": 230.0, "p99": 210.0}, "itl_ms": {"p50": 20.0, "p99": 22.0}}
    assert verdicts.agreement(close, engine)["all_within"] is True
    result = verdicts.agreement(far, engine)
    assert result["ttft_p50"]["ratio"] == pytest.approx(1.15)
    assert result["ttft_p50"]["within"] is False and result["all_within"] is False


def test_agreement_without_streaming_figures_is_unknown_not_passed():
    """Missing TTFT/ITL on either side gives None ratios and an unknown overall verdict."""
    engine = {"ttft_ms": {"p50": None, "p99": None}, "itl_ms": {"p50": None, "p99": None}}
    peer = {"ttft_ms": {"p50": 200.0, "p99": 210.0}, "itl_ms": {"p50": 20.0, "p99": 22.0}}
    result = verdicts.agreement(peer, engine)
    assert result["all_within"] is None and result["itl_p99"]["ratio"] is None


def test_a_rate_step_is_sustained_at_ninety_five_percent_of_offered_with_no_failure():
    """95% of the offered rate meets it; 94.9% does not, nor 99% with a request dropped."""
    assert verdicts.offered_met(1000, 950)
    assert not verdicts.offered_met(1000, 949)
    assert not verdicts.offered_met(1000, 990, errors=1)


def test_max_sustained_is_the_highest_met_step_even_after_a_miss():
    """A refinement that passes above an earlier pass raises the ceiling."""
    steps = [
        {"offered_rate": 400, "offered_met": True},
        {"offered_rate": 800, "offered_met": False},
        {"offered_rate": 566, "offered_met": True},
    ]
    assert verdicts.max_sustained(steps) == 566
    assert verdicts.max_sustained([{"offered_rate": 100, "offered_met": False}]) is None


def test_ceiling_compares_engine_bench_with_the_best_peer():
    """Ratio against the best peer that sustained anything; meets at 5x."""
    result = verdicts.ceiling(6400, {"guidellm": 400, "aiperf": 1200, "vllm": None})
    assert result["best_peer"] == "aiperf" and result["ratio"] == pytest.approx(5.333, abs=0.001)
    assert result["meets"] is True
    assert verdicts.ceiling(3200, {"aiperf": 800})["meets"] is False
    assert verdicts.ceiling(3200, {"aiperf": None})["meets"] is None


def test_the_rate_sweep_climbs_until_a_miss_then_refines_between():
    """Ladder first; after a miss, geometric midpoints between last pass and first miss."""
    ladder = [100.0, 200.0, 400.0, 800.0]
    assert verdicts.next_rates(ladder, [], [], refine=2) == 100.0
    assert verdicts.next_rates(ladder, [100.0, 200.0], [], refine=2) == 400.0
    assert verdicts.next_rates(ladder, [100.0, 200.0], [400.0], refine=0) is None
    assert verdicts.next_rates(ladder, [100.0, 200.0], [400.0], refine=2) == 283.0
    assert verdicts.next_rates(ladder, [100.0, 200.0, 283.0], [400.0], refine=2) == 336.0
    assert verdicts.next_rates(ladder, [100.0, 200.0, 283.0, 336.0], [400.0], refine=2) is None
    assert verdicts.next_rates(ladder, ladder, [], refine=2) is None
    assert verdicts.next_rates(ladder, [], [100.0], refine=2) is None


# -- CPU meter ----------------------------------------------------------------------


def test_cpu_between_two_times_counts_from_the_last_sample_before_the_window():
    """CPU over a window = last sample inside minus last sample before it."""
    meter = runner.TreeCpuMeter(pid=0)
    meter.samples = [(10.0, 1.0), (11.0, 2.0), (12.0, 4.0), (13.0, 7.0), (14.0, 7.5)]
    assert meter.between(11.5, 13.5) == pytest.approx(5.0)
    assert meter.between(20.0, 30.0) is None


# -- tokenizer -----------------------------------------------------------------------


def test_byte_to_character_map_is_a_bijection_over_256_bytes():
    """GPT-2's byte-level alphabet: 256 distinct printable characters."""
    mapping = _tokenizer.bytes_to_unicode()
    assert len(mapping) == 256 and len(set(mapping.values())) == 256
    assert mapping[ord("a")] == "a" and mapping[ord(" ")] == "Ġ"


def test_merges_are_recovered_from_ranks_in_rank_order(tmp_path):
    """Each multi-byte token is the merge its lower-ranked pieces make, listed by rank."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b"ab"] = 256
    ranks[b"abc"] = 257
    ranks[b" d"] = 258
    ranks[b"c d"] = 259
    path = tmp_path / "toy.tiktoken"
    path.write_bytes(
        b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in ranks.items())
    )
    assert _tokenizer.read_ranks(str(path)) == ranks
    _vocab, merges = _tokenizer.vocab_and_merges(ranks)
    assert merges == [("a", "b"), ("ab", "c"), ("Ġ", "d"), ("c", "Ġd")]


def test_special_tokens_fill_the_id_gaps_up_to_the_highest():
    """o200k_base's specials sit at 199999 and 200018: every id between gets a reserved token."""
    filled = _tokenizer.special_tokens_filling_gaps(5, {"<|end|>": 6, "<|x|>": 9})
    assert sorted(filled.values()) == [5, 6, 7, 8, 9]
    assert filled["<|reserved_5|>"] == 5 and filled["<|end|>"] == 6


# -- report -----------------------------------------------------------------------------


def _result() -> dict:
    engine = tools.parse_engine_bench(load("engine_bench_serving_concurrency16.json")).to_dict()
    latency = {
        "guidellm": tools.parse_guidellm(load("guidellm_concurrent16.json")).to_dict(),
        "aiperf": tools.parse_aiperf(load("aiperf_concurrency16.json")).to_dict(),
        "engine_bench": engine,
    }

    def step(rate: float, achieved: float, errors: int = 0) -> dict:
        return {
            "offered_rate": rate,
            "offered_met": None,
            "figures": engine | {"requests_per_second": achieved, "errors": errors},
            "cpu_ms_per_request": 0.5,
            "mock_cpu_s": 3.0,
        }

    data = {
        "machine": {"time": "2026-12-05 05:00 UTC", "loadavg_at_start": [1.0, 1.0, 1.0]},
        "config": {
            "quick": True,
            "mock_server": "builtin",
            "engine_bench_mode": "serving",
            "latency": {
                "mock": {"ttft_ms": 200, "ms_per_output_token": 20},
                "workload": {
                    "target": 16,
                    "input_tokens": 128,
                    "output_tokens": 32,
                    "duration_s": 5,
                    "warmup_s": 1,
                },
            },
            "ceiling": {
                "workload": {"input_tokens": 64, "output_tokens": 8, "duration_s": 5},
                "ladder": [100, 200, 400],
                "refinements": 0,
                "offered_met_share": 0.95,
            },
        },
        "versions": {"guidellm": "0.8.1", "aiperf": "0.13.0"},
        "duration_s": 300,
        "tools": {
            tool: {"available": True, "latency": {"figures": figures, "cpu_ms_per_request": 1.0}}
            for tool, figures in latency.items()
        }
        | {"vllm": {"available": False, "reason": "pip | failed\nto import"}},
    }
    data["tools"]["aiperf"]["ceiling"] = [step(100, 99), step(200, 150)]
    data["tools"]["engine_bench"]["ceiling"] = [
        step(100, 100),
        step(200, 200),
        step(400, 390),
        step(800, 799, errors=3),
    ]
    return runner.judge(data)


def test_judging_answers_agreement_and_ceiling_from_the_steps():
    """summarise: peers against engine bench (per-request ITL against TPOT), and the 5x ratio."""
    summary = _result()["verdicts"]
    assert set(summary["agreement"]) == {"guidellm", "aiperf"}
    assert summary["agreement"]["guidellm"]["ttft_p50"]["ratio"] == pytest.approx(
        203.96 / 201.15, abs=1e-3
    )
    guidellm_itl = summary["agreement"]["guidellm"]["itl_p99"]
    assert summary["agreement"]["guidellm"]["itl_reference"] == "tpot"
    assert guidellm_itl["engine"] == pytest.approx(20.15, abs=0.01)  # engine bench TPOT p99
    assert summary["ceiling"]["best_peer"] == "aiperf"
    assert summary["ceiling"]["ratio"] == 4.0  # 400 against 100: 800/s dropped requests
    assert summary["ceiling"]["meets"] is False


def test_report_section_has_both_tables_the_verdicts_and_the_plot(tmp_path):
    """One row per tool, a failed tool's reason on one line, the ratio line and a PNG."""
    text = report.serving_peers_section(_result(), str(tmp_path / "img"), str(tmp_path))
    assert text.startswith("## Serving benchmarks side by side (issue 16)")
    assert "| GuideLLM | 0.8.1 | 20.7 | 204.0 / 218.9 | 20.0 / 20.3 |" in text
    assert "| engine bench | — | 19.2 | 201.1 / 204.0 | 20.0 / 27.9 |" in text
    assert "vllm bench serve | — | failed: pip / failed to import" in text
    assert "| AIPerf | 100 | 100 → 99 (0.50; 3.0); 200 → 150 ✗" in text
    assert "engine bench / best peer (AIPerf): 4.0x (target ≥ 5x: **no**)" in text
    assert "![serving peers](img/serving-peers.png)" in text
    assert (tmp_path / "img" / "serving-peers.png").stat().st_size > 0


def test_report_command_rewrites_only_its_own_section(tmp_path):
    """The report subcommand replaces serving_peers' markers and leaves other sections alone."""
    from benchmarks.serving_peers.__main__ import main

    results = tmp_path / "serving_peers.json"
    results.write_text(json.dumps(_result()))
    doc = tmp_path / "benchmarks.md"
    other = "<!-- bench:begin memory -->\nkept\n<!-- bench:end memory -->"
    doc.write_text(
        f"# B\n\n{other}\n\n<!-- bench:begin serving_peers -->\nold\n"
        "<!-- bench:end serving_peers -->\n"
    )
    args = ["report", "--results", str(results), "--doc", str(doc), "--img", str(tmp_path)]
    assert main(args) == 0
    text = doc.read_text()
    assert other in text and "old" not in text
    assert "## Serving benchmarks side by side (issue 16)" in text


def test_the_report_page_keeps_a_place_for_the_section():
    """docs/benchmarks.md has the serving_peers markers once, so regenerating replaces in place."""
    text = (Path(report.__file__).resolve().parent.parent / "docs" / "benchmarks.md").read_text()
    assert text.count("<!-- bench:begin serving_peers -->") == 1
    assert text.count("<!-- bench:end serving_peers -->") == 1
