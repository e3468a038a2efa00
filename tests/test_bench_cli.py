"""``engine bench --base-url``: the load generator against a served mock, for a second."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from engine import cli
from engine._cli_bench import run_load
from engine.mock import serve_in_subprocess


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    """A served mock (uvicorn) without quotas, shared by this module's tests."""
    with serve_in_subprocess(["--server", "uvicorn", "--latency-ms", "5"]) as url:
        yield url


def test_closed_loop_counts_answers_tokens_and_latencies(mock_url: str) -> None:
    """A closed-loop run answers requests and tallies tokens and latencies for each."""
    report = run_load(mock_url, concurrency=4, duration=1.0)
    assert report.completed > 0
    assert report.errors == {}
    assert len(report.latencies) == report.completed
    assert report.completion_tokens > 0
    # the mock answers after 5 ms (its timer may fire a hair early: use the median)
    assert sorted(report.latencies)[len(report.latencies) // 2] >= 0.005


def test_open_loop_sends_at_about_the_rate_and_records_send_lag(mock_url: str) -> None:
    """An open-loop run sends Poisson arrivals and records how late each left."""
    report = run_load(mock_url, rate=50.0, duration=1.0, seed=7)
    assert report.mode == "open"
    assert report.completed + sum(report.errors.values()) + report.dropped > 10
    assert len(report.send_lag) == report.completed + sum(report.errors.values())


def test_rate_limited_answers_are_counted_as_errors_by_status() -> None:
    """429s from a tight quota show up as ``http_429`` errors, not as answers."""
    with serve_in_subprocess(["--server", "uvicorn", "--rpm", "5"]) as url:
        report = run_load(url, concurrency=4, duration=0.5)
    assert report.completed <= 5
    assert report.errors.get("http_429", 0) > 0


def test_command_line_writes_a_json_report(mock_url: str, tmp_path) -> None:
    """``engine bench --base-url URL --json PATH`` exits 0 and writes the report."""
    path = tmp_path / "report.json"
    status = cli.main(
        [
            "bench",
            "--base-url",
            mock_url,
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--json",
            str(path),
        ]
    )
    data = json.loads(path.read_text())
    assert status == 0
    assert data["mode"] == "closed"
    assert data["completed"] > 0
    assert data["requests_per_s"] > 0
    assert set(data["latency_s"]) == {"mean", "p50", "p90", "p99", "max"}
    assert 0 <= data["generator"]["cpu_share"]
