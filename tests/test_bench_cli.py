"""``engine bench --base-url``: the load generator against a served mock, for a second."""

from __future__ import annotations

import importlib
import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import engine
from engine.app import cli
from engine.app._cli_bench import run_load
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
    """``engine bench --base-url URL --no-stream --json PATH`` exits 0 and writes the report."""
    path = tmp_path / "report.json"
    status = cli.main(
        [
            "bench",
            "--base-url",
            mock_url,
            "--no-stream",
            "--concurrency",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--json",
            str(path),
        ]
    )
    data = json.loads(path.read_text())
    assert status == 0
    (step,) = data["steps"]
    assert step["mode"] == "concurrency"
    assert step["completed"] > 0
    assert step["requests_per_second"] > 0
    assert set(step["e2e_ms"]) == {"mean", "p50", "p90", "p99"}
    assert step["ttft_ms"]["p50"] is None  # not streamed: no token timings
    assert 0 <= step["client_cpu_share"]


# -- benchmarks/utilisation.py: the steady-state measure, with plain numbers ---


def _utilisation_module():
    # The benchmarks live at the repository root (not an installed package).
    sys.path.insert(0, str(Path(engine.__file__).resolve().parents[1]))
    return importlib.import_module("benchmarks.utilisation")


def _bucket_records(send_times: list[float]) -> list:
    from benchmarks.peers import Record

    return [
        Record(id=f"r{i}", sent=t, last_sent=t, finished=t + 0.3, status=200, attempts=1)
        for i, t in enumerate(send_times)
    ]


def _analyse_token_bucket(send_times: list[float], answered: int) -> dict:
    """``analyse`` of 600 RPM (10 requests/s) binding on a token bucket, one send per request."""
    utilisation = _utilisation_module()
    plan = utilisation.Plan("token_bucket", "rpm", 600, None, 31, len(send_times))
    stats = {"status_counts": {"200": answered}}
    return utilisation.analyse(plan, _bucket_records(send_times), stats)


@pytest.mark.parametrize(
    "burst",
    [
        # the replayed bucket keeps a constant 10 requests (send stamps leading
        # the server during the burst look exactly like this); only its level
        # at the start would read 0.95
        590,
        # it levels off 30 requests above empty (5% of L): the burst still
        # counts as spent
        570,
    ],
)
def test_token_bucket_steady_state_at_the_refill_rate_is_full_use_whatever_the_offset(burst):
    """The burst at t = 0, then 20 s at the 10/s refill: utilisation 1.0 over those 200."""
    sends = [0.0] * burst + [i / 10 for i in range(1, 201)]
    row = _analyse_token_bucket(sends, burst + 200)
    assert row["steady_requests"] == 200
    assert row["utilisation"] == pytest.approx(1.0, abs=0.006)


def test_token_bucket_steady_state_below_the_refill_rate_is_measured_as_such():
    """A peer sending at 9.5/s against a 10/s refill shows about 0.95."""
    sends = [0.0] * 590 + [i / 9.5 for i in range(1, 201)]
    row = _analyse_token_bucket(sends, 800)
    assert row["utilisation"] == pytest.approx(0.95, abs=0.006)


def test_token_bucket_reserve_spent_in_the_steady_state_is_not_counted_as_rate():
    """Spending 10 requests kept from the burst inside the window does not lift it above 1."""
    # 590 of the burst at once (10 left: the burst counts as spent), 10/s for
    # 10 s, the 10 kept in a rush at 10.05 s, then 10/s again: 210 sent in
    # 20.1 s of 10/s refill.
    sends = [0.0] * 590 + [i / 10 for i in range(1, 101)] + [10.05] * 10
    sends += [10.1 + i / 10 for i in range(1, 101)]
    row = _analyse_token_bucket(sends, 800)
    assert row["steady_requests"] == 210
    assert 0.98 <= row["utilisation"] <= 1.0 + 1e-9


def test_token_bucket_reserve_never_spent_has_no_steady_state():
    """A peer pacing at the refill rate from the start (burst left unused) gets no utilisation."""
    row = _analyse_token_bucket([i / 10 for i in range(300)], 300)
    assert "utilisation" not in row


def test_staggered_schedule_keeps_token_bucket_bursts_and_ends_apart():
    """Full run: token-bucket peers start 3 s apart, later scenarios start once those runs end."""
    utilisation = _utilisation_module()
    plans = [
        utilisation.make_plan(semantics, binding, utilisation.DEFAULT_RPM, 20.0)
        for binding in utilisation.BINDINGS
        for semantics in utilisation.SEMANTICS
    ]
    light = [peer for peer in utilisation.PEERS if peer not in utilisation.HEAVY_PEERS]
    stagger = utilisation.TOKEN_BUCKET_PEER_STAGGER
    wave = utilisation.waves(plans, list(utilisation.PEERS), "staggered", peer_stagger=stagger)[-1]
    starts: dict[tuple[str, str], list[float]] = {}
    for slot in wave:
        starts.setdefault((slot.plan.semantics, slot.plan.binding), []).append(slot.offset)
    assert {len(offsets) for offsets in starts.values()} == {len(light)}
    for binding in utilisation.BINDINGS:
        bucket = starts[("token_bucket", binding)]
        assert [b - a for a, b in itertools.pairwise(bucket)] == [stagger] * (len(light) - 1)
    rpm_plan = next(p for p in plans if (p.semantics, p.binding) == ("token_bucket", "rpm"))
    rpm_runs_end = max(starts[("token_bucket", "rpm")]) + rpm_plan.ideal_wall()
    assert min(starts[("token_bucket", "tpm")]) >= rpm_runs_end
    per_second = starts[("per_second", "rpm")] + starts[("per_second", "tpm")]
    assert min(per_second) >= max(starts[("token_bucket", "tpm")]) + stagger
    # every fixed window's second burst (60 s after its start) misses every token-bucket start
    second_bursts = [
        offset + 60.0
        for (semantics, _), offsets in starts.items()
        if semantics == "fixed_window"
        for offset in offsets
    ]
    bucket_starts = starts[("token_bucket", "rpm")] + starts[("token_bucket", "tpm")]
    assert all(abs(b - s) >= 2.0 for b in second_bursts for s in bucket_starts)
