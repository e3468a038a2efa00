"""The robustness matrix benchmark (benchmarks/robustness.py): cells, metrics, verdicts, report."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

import engine
from engine.mock import serve_in_subprocess

# The benchmarks live at the repository root (not an installed package).
sys.path.insert(0, str(Path(engine.__file__).resolve().parents[1]))
robustness: ModuleType = importlib.import_module("benchmarks.robustness")
Item = robustness.Item


def _cell(key: str, steady: float = 20.0):
    """The cell of the full matrix whose key is ``key``."""
    cells = {cell.key: cell for cell in robustness.expand(robustness.BLOCKS, 600, steady)}
    return cells[key]


def _items(send_times: list[float], latency: float = 0.2, t0: float = 1000.0) -> list:
    """200-answered items sent at ``t0 + send_times`` in workload order."""
    ids = [f"req-{i:07d}" for i in range(len(send_times))]
    return [Item(i, t0 + at, t0 + at + latency, 200) for i, at in zip(ids, send_times, strict=True)]


# -- the matrix ----------------------------------------------------------------------


def test_full_matrix_expands_every_block_once():
    """The full matrix has 96 engine cells, 72 peer cells, 6 no-headers, 2 gateway, 4 Redis."""
    cells = robustness.expand(robustness.BLOCKS)
    assert len({cell.key for cell in cells}) == len(cells) == 180
    by_client = {}
    for cell in cells:
        by_client[cell.client] = by_client.get(cell.client, 0) + 1
    assert by_client == {"engine": 104, "aiolimiter": 36, "aiometer": 36, "engine_redis3": 4}
    engine_main = [
        c for c in cells if c.client == "engine" and c.server not in ("no_headers", "gateway")
    ]
    assert len(engine_main) == 4 * 3 * 4 * 2


def test_peers_run_only_with_known_limits_on_token_bucket_and_sub_window_servers():
    """aiolimiter and aiometer cells are told the limits and never meet the fixed window."""
    peers = [
        c for c in robustness.expand(robustness.BLOCKS) if c.client in ("aiolimiter", "aiometer")
    ]
    assert {c.limits for c in peers} == {"known"}
    assert {c.server for c in peers} == {"token_bucket", "sub_1s", "sub_10s"}


def test_quick_matrix_is_a_subset_of_the_full_one_with_the_named_cells():
    """--quick keeps 0.15 s and 1 s latencies, openai and bare shapes, no-headers and gateway."""
    full = {cell.key for cell in robustness.expand(robustness.BLOCKS)}
    quick = robustness.expand(robustness.QUICK_BLOCKS, 600, robustness.QUICK_STEADY_SECONDS)
    assert {cell.key for cell in quick} <= full
    assert {cell.latency for cell in quick} == {"0.15s", "1s"}
    assert {cell.shape for cell in quick if cell.server != "gateway"} == {"openai", "bare"}
    assert {"no_headers", "gateway"} <= {cell.server for cell in quick}


def test_sub_window_cell_maps_to_undeclared_sub_window_latency_and_shape_flags():
    """A 10 s sub-window cell with the bare shape turns into exactly those mock options."""
    cell = _cell("sub_10s/3s/bare/learned/engine")
    assert cell.mock_args() == [
        "--rpm", "600", "--seed", "1",
        "--latency-ms", "3000", "--latency-sigma", "0.8",
        "--quota-semantics", "fixed_window", "--subwindow-seconds", "10",
        "--rate-limit-body", "bare", "--no-retry-after", "--no-retry-after-ms",
        "--no-rate-limit-headers-on-429",
    ]  # fmt: skip


def test_gateway_cell_is_360_requests_at_120_rpm_with_its_own_429():
    """The clock-minute gateway ignores the shape column: no reset headers, a non-standard hint."""
    cell = _cell("gateway/0.15s/generic/known/engine")
    args = cell.mock_args()
    assert (cell.rpm, cell.count) == (120, 360)
    assert args[:2] == ["--rpm", "120"]
    assert "clock_minute" in args and "--no-reset-headers" in args
    assert args.count("--rate-limit-body") == 1
    assert args[args.index("--retry-hint-header") + 1] == "x-gateway-retry-after"


def test_no_headers_cell_is_a_token_bucket_without_any_rate_limit_headers():
    """The no-headers server is a token bucket with --no-rate-limit-headers and OpenAI's 429."""
    args = _cell("no_headers/1s/openai/learned/engine").mock_args()
    assert args[args.index("--quota-semantics") + 1] == "token_bucket"
    assert "--no-rate-limit-headers" in args
    assert "--rate-limit-body" not in args


def test_cells_are_sized_for_the_steady_seconds_of_their_semantics():
    """Token bucket: the burst + 1.5 x 20 s of refill; fixed window 1.25 windows; sub-windows."""
    assert _cell("token_bucket/0.15s/openai/known/engine").count == 600 + 300
    assert _cell("fixed_window/0.15s/openai/known/engine").count == 750
    assert _cell("sub_1s/0.15s/openai/known/engine").count == 10 * 22 + 15
    assert _cell("sub_10s/0.15s/openai/known/engine").count == 10 * 30 + 150


def test_time_box_leaves_room_for_even_pacing_and_the_slowest_answer():
    """At 3 s sigma 0.8 a paced client's last item may take ~49 s: the box waits for it."""
    cell = _cell("token_bucket/3s/openai/known/aiometer")
    paced = cell.count / (cell.rpm / 60.0)
    assert cell.slowest_answer() == pytest.approx(3.0 * 16.44, rel=0.01)
    assert cell.cutoff() >= paced + 3.0 * 16.0
    fast = _cell("token_bucket/0.15s/openai/known/engine")
    assert fast.cutoff() == pytest.approx(1.1 * paced + 15.0 + 0.15 * math.exp(1.4))


def test_mock_options_and_their_choices_are_read_from_the_help_text():
    """Flags the installed mock lacks, or values outside its choices, are named."""
    help_text = (
        "  --rpm RPM  requests per minute\n"
        "  --quota-semantics {token_bucket,fixed_window}\n"
        "  --rate-limit-headers, --no-rate-limit-headers\n"
    )
    options = robustness.mock_options(help_text)
    assert options["--quota-semantics"] == {"token_bucket", "fixed_window"}
    assert "--no-rate-limit-headers" in options
    args = ["--rpm", "5", "--quota-semantics", "clock_minute", "--subwindow-seconds", "1"]
    assert robustness.unsupported(args, options) == [
        "--quota-semantics clock_minute",
        "--subwindow-seconds",
    ]
    assert robustness.unsupported(["--rpm", "5", "--no-rate-limit-headers"], options) == []


# -- metrics on hand-made logs ----------------------------------------------------------


def test_429_ratio_is_429s_over_every_answer_the_mock_sent():
    """10 429s among 1,000 answers is 1%."""
    stats = {"status_counts": {"200": 985, "429": 10, "500": 5}}
    assert robustness.share_429(stats) == (10, 1000, 0.01)
    assert robustness.share_429({"status_counts": {}}) == (0, 0, None)


def test_items_without_exactly_one_result_are_lost_and_non_200s_failed():
    """A missing and a duplicated item are lost; a 500 is failed; a stranger is unexpected."""
    items = [
        Item("a", 1.0, 2.0, 200),
        Item("b", 1.0, 2.0, 200),
        Item("b", 1.5, 2.5, 200),
        Item("c", 1.0, 2.0, 500, error="server_error"),
        Item("zz", 1.0, 2.0, 200),
    ]
    counts = robustness.item_accounting(["a", "b", "c", "d"], items)
    assert counts == {
        "items": 4,
        "lost": 2,
        "missing": 1,
        "duplicated": 1,
        "failed": 1,
        "unexpected": 1,
    }


@pytest.mark.parametrize(
    ("kind", "count", "rpm", "subwindow", "phase", "expected"),
    [
        ("token_bucket", 900, 600, None, 0.0, 30.0),
        ("no_headers", 500, 600, None, 0.0, 0.0),
        ("fixed_window", 750, 600, None, 0.0, 60.0),
        ("fixed_window", 600, 600, None, 0.0, 0.0),
        # 10 per 1 s window: the 235th request goes in the 24th window (t = 23 s)
        ("subwindow", 235, 600, 1.0, 0.0, 23.0),
        # 100 per 10 s window: the 450th goes in the 5th (t = 40 s)
        ("subwindow", 450, 600, 10.0, 0.0, 40.0),
        # 40 s into the minute: the first window ends at 20 s, the third opens at 80 s
        ("clock_minute", 360, 120, None, 40.0, 80.0),
        ("clock_minute", 360, 120, None, 0.0, 120.0),
        ("clock_minute", 120, 120, None, 40.0, 0.0),
    ],
)
def test_ideal_wall_is_the_earliest_the_semantics_allow_plus_the_median(
    kind, count, rpm, subwindow, phase, expected
):
    """Each semantics' earliest last send (the gateway's from its clock phase), plus 0.15 s."""
    ideal = robustness.ideal_wall(kind, count, rpm, 0.15, subwindow, phase)
    assert ideal == pytest.approx(expected + 0.15)


def test_clock_phase_is_seconds_into_the_wall_clock_minute_with_the_mock_offset():
    """12:00:40 is 40 s into its minute; with a 30 s offset the server reads 12:01:10."""
    minute = 60.0 * 28_000_000
    assert robustness.clock_phase(minute + 40.0) == pytest.approx(40.0)
    assert robustness.clock_phase(minute + 40.0, offset=30.0) == pytest.approx(10.0)


def test_sub_window_utilisation_is_the_minute_rate_over_whole_windows_after_settling():
    """10/s for 25 s on 1 s windows of 600 RPM is 1.0 from 2 s to 24 s; 9/s reads 0.9."""
    full = robustness.steady_utilisation(
        "subwindow", [i / 10 for i in range(250)], 600, subwindow=1.0
    )
    assert (full["start"], full["end"], full["requests"]) == (2.0, 24.0, 220)
    assert full["utilisation"] == pytest.approx(1.0)
    slower = robustness.steady_utilisation(
        "subwindow", [i / 9 for i in range(225)], 600, subwindow=1.0
    )
    assert slower["utilisation"] == pytest.approx(0.9, abs=0.01)


def test_ten_second_sub_windows_are_measured_from_the_first_boundary_after_settling():
    """On 10 s windows the steady state starts at 10 s, whatever the first window held."""
    sends = [0.0] * 100 + [10.0 + i / 10 for i in range(350)]
    steady = robustness.steady_utilisation("subwindow", sends, 600, subwindow=10.0)
    assert (steady["start"], steady["end"]) == (10.0, 40.0)
    assert steady["utilisation"] == pytest.approx(1.0)


def test_fixed_window_utilisation_is_the_first_window_share_of_the_limit():
    """570 of 600 in [0, 60 s) reads 0.95; a run that never reaches 60 s has none."""
    sends = [0.0] * 570 + [60.0] * 180
    assert robustness.steady_utilisation("fixed_window", sends, 600)["utilisation"] == 0.95
    assert robustness.steady_utilisation("fixed_window", [0.0] * 570, 600)["utilisation"] is None


def test_clock_minute_utilisation_is_the_first_whole_clock_minute_share():
    """With the minute turning 20 s after the first send, [20 s, 80 s) holds the measure."""
    sends = [0.0] * 120 + [20.01] * 114 + [80.01] * 126
    steady = robustness.steady_utilisation("clock_minute", sends, 120, clock_start=20.0)
    assert (steady["start"], steady["end"]) == (20.0, 80.0)
    assert steady["utilisation"] == pytest.approx(0.95)


def test_token_bucket_utilisation_after_the_burst_uses_the_utilisation_definition():
    """The burst at t = 0, then 20 s at the 10/s refill: 1.0 over the steady state."""
    sends = [0.0] * 600 + [i / 10 for i in range(1, 301)]
    steady = robustness.steady_utilisation("token_bucket", sends, 600)
    assert steady["basis"] == "steady"
    assert steady["utilisation"] == pytest.approx(1.0, abs=0.01)


def test_token_bucket_burst_never_spent_is_measured_over_the_whole_run():
    """Pacing 900 at 10/s never spends the burst: 900 of the 600 + 899 the run allowed."""
    sends = [i / 10 for i in range(900)]
    steady = robustness.steady_utilisation("token_bucket", sends, 600)
    assert steady["basis"] == "run"
    assert steady["utilisation"] == pytest.approx(900 / (600 + 899))


def test_no_headers_bucket_kept_full_reads_the_rate_against_the_server_rate():
    """Sending at 9/s into a never-drained bucket of 600 RPM reads 0.9 from 5 s on."""
    sends = [i / 9 for i in range(900)]
    steady = robustness.steady_utilisation("no_headers", sends, 600)
    assert (steady["basis"], steady["start"]) == ("steady", 5.0)
    assert steady["utilisation"] == pytest.approx(0.9, abs=0.005)


# -- targets --------------------------------------------------------------------------------


def _row(**values) -> dict:
    row = {"lost": 0, "failed": 0, "share_429": 0.0, "utilisation": 1.0}
    row.update(values)
    return row


@pytest.mark.parametrize(
    ("key", "share", "passed"),
    [
        ("token_bucket/0.15s/openai/known/engine", 0.010, True),
        ("token_bucket/0.15s/openai/known/engine", 0.011, False),
        ("fixed_window/1s/azure/learned/engine", 0.019, True),
        ("sub_1s/1s/azure/known/engine", 0.021, False),
        ("no_headers/3s/openai/learned/engine", 0.049, True),
        ("gateway/0.15s/generic/learned/engine", 0.031, False),
        ("sub_1s/0.15s/openai/learned/engine_redis3", 0.02, True),
    ],
)
def test_429_ceiling_depends_on_limits_headers_and_sub_windows(key, share, passed):
    """1% known on bucket/window, 2% learned or undeclared, 5% no headers, 3% the gateway."""
    checks = robustness.judge(_cell(key), _row(share_429=share, wall_s=0.0, ideal_wall_s=1.0))
    assert checks["429"]["passed"] is passed


@pytest.mark.parametrize(
    ("key", "utilisation", "passed"),
    [
        ("token_bucket/1s/openai/learned/engine", 0.95, True),
        ("token_bucket/1s/openai/learned/engine", 0.94, False),
        ("sub_10s/1s/openai/learned/engine", 0.9, True),
        ("no_headers/1s/openai/learned/engine", 0.79, False),
        ("fixed_window/1s/openai/known/engine", None, False),
    ],
)
def test_utilisation_floor_depends_on_the_server(key, utilisation, passed):
    """0.95 by default, 0.9 undeclared sub-windows, 0.8 no headers; unmeasured fails."""
    checks = robustness.judge(_cell(key), _row(utilisation=utilisation))
    assert checks["utilisation"]["passed"] is passed


def test_known_token_bucket_wall_bound_is_five_percent_over_ideal_plus_a_median():
    """Ideal 30.15 s at 0.15 s median: last admission 31.6 s passes, 31.7 s does not."""
    cell = _cell("token_bucket/0.15s/openai/known/engine")
    ideal = cell.ideal_wall()
    on_time = _row(wall_s=45.0, admitted_end_s=31.6, ideal_wall_s=ideal)
    late = _row(wall_s=31.9, admitted_end_s=31.7, ideal_wall_s=ideal)
    assert robustness.judge(cell, on_time)["wall"]["passed"]
    assert not robustness.judge(cell, late)["wall"]["passed"]
    learned = _cell("token_bucket/0.15s/openai/learned/engine")
    assert "wall" not in robustness.judge(learned, _row(wall_s=99.0, ideal_wall_s=ideal))


def test_gateway_must_end_within_eight_seconds_of_its_earliest_and_utilisation_is_not_judged():
    """The gateway's end check is ideal + 8 s; it has no utilisation check."""
    cell = _cell("gateway/0.15s/generic/learned/engine")
    good = robustness.judge(cell, _row(wall_s=88.1, ideal_wall_s=80.15, utilisation=None))
    late = robustness.judge(cell, _row(wall_s=88.2, ideal_wall_s=80.15))
    assert good["end"]["passed"] and not late["end"]["passed"]
    assert "utilisation" not in good


def test_a_lost_item_fails_the_cell_and_its_wall_checks():
    """One item lost fails the items check, and a wall time under the bound does not save it."""
    cell = _cell("token_bucket/0.15s/openai/known/engine")
    checks = robustness.judge(
        cell, _row(lost=1, wall_s=30.0, admitted_end_s=29.8, ideal_wall_s=30.15)
    )
    assert not checks["items"]["passed"]
    assert not checks["wall"]["passed"]


def test_gateway_log_is_analysed_from_its_wall_clock_phase():
    """Started 40 s into a minute: windows open at 20 s and 80 s; the run ends 0.2 s after 80 s."""
    cell = _cell("gateway/0.15s/generic/learned/engine")
    t0 = 60.0 * 28_000_000 + 40.0
    sends = [0.0] * 120 + [20.01] * 120 + [80.01] * 120
    stats = {"status_counts": {"200": 360, "429": 3}}
    row = robustness.analyse(cell, _items(sends, latency=0.2, t0=t0), stats)
    assert row["clock_phase_s"] == pytest.approx(40.0)
    assert row["ideal_wall_s"] == pytest.approx(80.15)
    assert row["elapsed_s"] == pytest.approx(80.21)
    assert row["utilisation"] == pytest.approx(1.0)
    assert row["share_429"] == pytest.approx(3 / 363)
    assert row["passed"]


def test_analysed_log_with_a_missing_item_has_no_wall_ratio_and_fails():
    """A token-bucket run missing its last item reports it lost and no wall ratio."""
    cell = _cell("token_bucket/0.15s/openai/known/engine")
    sends = [0.0] * 600 + [i / 10 for i in range(1, 300)]
    row = robustness.analyse(cell, _items(sends), {"status_counts": {"200": 899}})
    assert (row["lost"], row["missing"]) == (1, 1)
    assert row["wall_ratio"] is None and row["wall_s"] is None
    assert not row["passed"]


# -- the client process and the report ---------------------------------------------------------


def test_engine_child_writes_one_item_per_request_against_a_served_mock(tmp_path):
    """Loopback smoke: 30 items through the engine child at 600 RPM, known limits, none lost."""
    out = tmp_path / "child.json"
    with serve_in_subprocess(["--rpm", "600", "--latency-ms", "5"]) as url:
        robustness.main(
            ["--child", "engine", "--base-url", url, "--count", "30", "--known-rpm", "600",
             "--deadline", "30", "--out", str(out)]
        )  # fmt: skip
    written = json.loads(out.read_text())
    items = [Item.from_row(row) for row in written["items"]]
    cell = robustness.Cell("token_bucket", "0.15s", "openai", "known", "engine", 600, 30)
    row = robustness.analyse(cell, items, {"status_counts": {"200": 30}})
    assert (row["items"], row["lost"], row["failed"]) == (30, 0, 0)
    assert written["statistics"] is not None


def _report_data() -> dict:
    config = {
        "quick": True,
        "rpm": 600,
        "parallel": 2,
        "mock_server": "builtin",
        "mock_seed": 1,
        "servers": {k: {"label": v.label} for k, v in robustness.SERVERS.items()},
        "latencies": {k: {} for k in robustness.LATENCIES},
        "shapes": {k: {} for k in robustness.SHAPES},
        "clients": {k: {"label": v.label} for k, v in robustness.CLIENTS.items()},
    }
    good = {
        "key": "token_bucket/0.15s/openai/known/engine",
        "server": "token_bucket", "latency": "0.15s", "shape": "openai", "limits": "known",
        "client": "engine", "status": "ran", "passed": True, "share_429": 0.001,
        "server_429": 1, "server_answers": 751, "utilisation": 0.999, "lost": 0, "failed": 0,
        "checks": {"429": {"passed": True, "value": 0.001, "bound": 0.01}},
    }  # fmt: skip
    bad = {
        **good,
        "key": "sub_1s/1s/bare/learned/engine",
        "server": "sub_1s", "latency": "1s", "shape": "bare", "limits": "learned",
        "passed": False, "share_429": 0.25, "utilisation": 0.5, "utilisation_basis": "steady",
        "checks": {"429": {"passed": False, "value": 0.25, "bound": 0.02}},
    }  # fmt: skip
    skipped = {
        "key": "sub_10s/1s/bare/learned/engine",
        "server": "sub_10s", "latency": "1s", "shape": "bare", "limits": "learned",
        "client": "engine", "status": "skipped", "reason": "engine mock lacks --subwindow-seconds",
    }  # fmt: skip
    return {
        "machine": {"time": "2026-12-04T00:00:00", "commit": "abc1234", "loadavg_at_start": [0]},
        "config": config,
        "cpu": {"ours_mean": 0.1, "ours_max_1s": 0.5, "client_mean": 0.2},
        "cells": [good, bad, skipped],
        "duration_s": 170.0,
    }


def test_report_renders_the_section_with_heat_map_failures_and_skipped_cells(tmp_path):
    """The section counts passes, names each failed check and skipped cell, and writes the PNG."""
    pytest.importorskip("matplotlib")
    report = importlib.import_module("benchmarks.report")
    text = report.robustness_section(_report_data(), str(tmp_path / "img"), str(tmp_path))
    assert "**1 of 2 cells pass**; 1 not run" in text
    assert "`sub_1s/1s/bare/learned/engine`: 429s 25.00% > 2%" in text
    assert "engine mock lacks --subwindow-seconds" in text
    assert "| token bucket · known · quota-engine | ✅ 0.1% · 1.00 |" in text
    assert (tmp_path / "img" / "robustness-heatmap.png").stat().st_size > 10_000


def test_report_writes_the_section_between_its_markers(tmp_path):
    """generate() puts the robustness section between its bench markers and keeps the rest."""
    pytest.importorskip("matplotlib")
    report = importlib.import_module("benchmarks.report")
    results = tmp_path / "results"
    results.mkdir()
    (results / "robustness.json").write_text(json.dumps(_report_data()))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(
        "# Benchmarks\n\nhand-written\n\n<!-- bench:begin robustness -->\nold\n"
        "<!-- bench:end robustness -->\n\nafter\n"
    )
    assert report.generate(str(results), str(doc), str(tmp_path / "img")) == ["robustness"]
    text = doc.read_text()
    assert "hand-written" in text and "after" in text and "\nold\n" not in text
    begin = text.index("<!-- bench:begin robustness -->")
    assert begin < text.index("## Robustness matrix") < text.index("<!-- bench:end robustness -->")
