"""``engine bench --base-url`` against the served mock on loopback: real streams, real timings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from engine.app import _serving_load, cli
from engine.app._serving_load import ServingConfig, run_steps
from engine.mock import serve_in_subprocess

TTFT_MS = 60.0
MS_PER_TOKEN = 10.0


@pytest.fixture(scope="module")
def timed_mock() -> Iterator[str]:
    """A served mock streaming its first token after 60 ms, then one every 10 ms."""
    args = ["--ttft-ms", f"{TTFT_MS:g}", "--ms-per-output-token", f"{MS_PER_TOKEN:g}"]
    with serve_in_subprocess(args) as url:
        yield url


def test_ttft_and_itl_read_the_mock_s_configured_delays(timed_mock: str) -> None:
    """TTFT p50 within 10% of 60 ms, ITL p50 near 10 ms, TPOT near 10 ms, 16 tokens each."""
    config = ServingConfig(
        base_url=timed_mock, duration=1.0, warmup=0.3, input_tokens=64, output_tokens=16, seed=1
    )
    step = run_steps(config, "concurrency", [4])[0]
    assert step.errors == {}
    assert step.completed >= 8
    assert step.output_tokens == 16 * step.completed
    assert step.ttft.p50 == pytest.approx(TTFT_MS / 1000, rel=0.10)
    assert step.itl.p50 == pytest.approx(MS_PER_TOKEN / 1000, rel=0.25)
    assert step.tpot.p50 == pytest.approx(MS_PER_TOKEN / 1000, rel=0.25)
    expected_e2e = (TTFT_MS + 15 * MS_PER_TOKEN) / 1000
    assert step.e2e.p50 == pytest.approx(expected_e2e, rel=0.15)


def test_command_line_sweep_writes_csv_json_and_plots(timed_mock: str, tmp_path: Any) -> None:
    """A two-rate sweep from the command line: CSV rows, then JSON steps, and four plots."""
    common = ["bench", "--base-url", timed_mock, "--duration", "0.6", "--warmup", "0.3"]
    common += ["--request-rate", "20,40", "--arrivals", "constant", "--slo", "ttft=1s"]
    assert cli.main([*common, "-o", str(tmp_path / "r.csv")]) == 0
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 3
    assert cli.main([*common, "-o", str(tmp_path / "r.json"), "--plot", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert [step["target"] for step in data["steps"]] == [20.0, 40.0]
    for step in data["steps"]:
        assert step["offered_met"] is True
        assert step["goodput_rps"] == pytest.approx(step["requests_per_second"])
        assert step["ttft_ms"]["p50"] == pytest.approx(TTFT_MS, rel=0.25)
    pytest.importorskip("matplotlib")
    assert {p.name for p in tmp_path.glob("*.png")} == {
        "ttft.png",
        "itl.png",
        "tpot.png",
        "e2e.png",
    }


def test_responses_endpoint_streams_from_the_mock(timed_mock: str) -> None:
    """--endpoint responses: output_text deltas timed, usage from response.completed."""
    import httpx

    probe = httpx.post(
        f"{timed_mock}/responses",
        json={"model": "gpt-4o-mini", "input": "hi", "stream": True, "max_output_tokens": 16},
    )
    if probe.status_code == 400 and "stream" in probe.text:
        pytest.skip("this mock does not stream the Responses API yet")
    config = ServingConfig(
        base_url=timed_mock, endpoint="responses", duration=0.6, warmup=0.2, output_tokens=16
    )
    step = run_steps(config, "concurrency", [2])[0]
    assert step.errors == {}
    assert step.completed > 0
    assert step.ttft.p50 == pytest.approx(TTFT_MS / 1000, rel=0.25)
    assert step.output_tokens > step.completed


def test_self_check_measures_a_ceiling_and_flags_steps_near_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--self-check: closed, then open loop against the zero-delay mock: answers per CPU second."""
    monkeypatch.setattr(_serving_load, "SELF_CHECK_DURATION", 0.5)
    config = ServingConfig(base_url="unused", output_tokens=16)
    check = _serving_load.measure_ceiling(config, "rate")
    assert check["errors"] == {}
    assert check["requests_per_second"] > 50
    assert check["closed_loop_ceiling_rps"] >= check["requests_per_second"]
    assert check["open_loop_rate"] == pytest.approx(check["requests_per_second"] / 2)
    assert check["ceiling_rps"] == check["open_loop_ceiling_rps"] > 0
    assert check["output_tokens_per_request"] == pytest.approx(16)
