"""The pools-of-keys benchmark (benchmarks/pool.py): ideal times, shares, items, table, report."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

import engine

# The benchmarks live at the repository root (not an installed package).
sys.path.insert(0, str(Path(engine.__file__).resolve().parents[1]))
pool: ModuleType = importlib.import_module("benchmarks.pool")
report: ModuleType = importlib.import_module("benchmarks.report")
harness: ModuleType = importlib.import_module("benchmarks.peers._harness")

ISSUE = {"a": 600, "b": 600, "c": 1200}


# -- ideal time, revocation points, shares --------------------------------------------


def test_ideal_wall_is_what_is_left_after_the_bursts_at_the_pool_rate():
    """3,000 at 600/600/1,200 RPM: 600 after a 2,400 burst at 40/s = 15 s; a burst-sized run: 0."""
    assert pool.ideal_wall(3000, ISSUE) == pytest.approx(15.0)
    assert pool.ideal_wall(300, pool.QUICK_RPMS) == pytest.approx(15.0)
    assert pool.ideal_wall(2400, ISSUE) == 0.0
    assert pool.ideal_wall(100, ISSUE) == 0.0
    assert pool.make_plan("shares", 4800, ISSUE).ideal_wall() == pytest.approx(60.0)


def test_ideal_wall_with_a_revocation_leaves_the_rest_to_the_other_members():
    """b stopped at 250 (in its burst): a + c do 2,750 = 1,800 + 950 at 30/s; at 675: 17.5 s."""
    assert pool.ideal_wall(3000, ISSUE, 250) == pytest.approx(950 / 30)
    # b reaches 675 at 7.5 s (600 + 75 at 10/s); a + c have 1,800 + 225 by then.
    assert pool.ideal_wall(3000, ISSUE, 675) == pytest.approx(7.5 + 300 / 30)
    # Revoked after more than b would serve: the plain ideal.
    assert pool.ideal_wall(3000, ISSUE, 5000) == pytest.approx(15.0)


def test_revocation_points_are_a_third_of_bs_share_and_past_its_burst():
    """revoke: 750 / 3 = 250; revoke_late: 600 + 150 / 2 = 675; shares: never."""
    assert pool.revoke_point("revoke", 3000, ISSUE) == 250
    assert pool.revoke_point("revoke_late", 3000, ISSUE) == 675
    assert pool.revoke_point("shares", 3000, ISSUE) is None
    assert pool.revoke_point("revoke", 300, pool.QUICK_RPMS) == 25
    plan = pool.make_plan("revoke_late", 3000, ISSUE)
    assert plan.revoke_after == 675 and not plan.learned
    assert pool.make_plan("shares_learned", 3000, ISSUE).learned
    with pytest.raises(ValueError, match="unknown scenario"):
        pool.make_plan("nope", 10, ISSUE)


def test_share_deviation_is_the_largest_relative_miss_of_a_quota_share():
    """750/750/1,500 is exact; 780/720/1,500 misses a's 25% by 4%; nothing counted: None."""
    shares, deviation = pool.share_deviation({"a": 750, "b": 750, "c": 1500}, ISSUE)
    assert shares == {"a": 0.25, "b": 0.25, "c": 0.5} and deviation == 0.0
    _, deviation = pool.share_deviation({"a": 780, "b": 720, "c": 1500}, ISSUE)
    assert deviation == pytest.approx(0.04)
    _, deviation = pool.share_deviation({"a": 0, "b": 0, "c": 0}, ISSUE)
    assert deviation is None


def test_check_items_counts_missing_failed_duplicated_and_unknown_ids():
    """Only ids answered ok exactly once are kept; every other one is lost."""
    rows = [
        ["r0", 200, True],
        ["r1", 401, False],
        ["r2", 200, True],
        ["r2", 200, True],
        ["zz", 200, True],
    ]
    items = pool.check_items(["r0", "r1", "r2", "r3"], rows)
    assert items == {"missing": 1, "failed": 1, "duplicated": 1, "unknown": 1, "lost": 4}
    assert pool.check_items(["r0"], [["r0", 200, True]])["lost"] == 0


def test_mock_arguments_give_each_key_its_limits_and_revoke_b():
    """--key-limits per member (TPM never binding), token bucket, seeded latency, --revoke-key."""
    args = pool.make_plan("revoke", 3000, ISSUE).mock_args()
    joined = " ".join(args)
    for name, rpm in ISSUE.items():
        assert f"--key-limits {pool.KEYS[name]}=rpm:{rpm},tpm:{pool.TPM}" in joined
    assert f"--revoke-key {pool.KEYS['b']}=250" in joined
    assert "--quota-semantics token_bucket" in joined and "--seed 1" in joined
    assert "--revoke-key" not in pool.make_plan("shares", 3000, ISSUE).mock_args()
    # The mock tells the keys apart by their masks.
    masks = {pool.mask_key(key) for key in pool.KEYS.values()}
    assert len(masks) == 3


# -- analysis, checks, table -------------------------------------------------------------


def _child_and_stats(plan, counts, *, rate_limited=None, revoked=0, lose=0, t0=1000.0):
    """A synthetic child result and mock stats: ``counts`` answers per member, 15 s apart."""
    rate_limited = rate_limited or {}
    rows = []
    index = 0
    for n in counts.values():
        for _ in range(n):
            ok = index >= lose
            sent = t0 + index * 15.0 / plan.count
            rows.append([f"req-{index:07d}", 200 if ok else 401, ok, 1, sent, sent + 0.3, None])
            index += 1
    members = [
        {
            "name": name,
            "granted": n,
            "sent": n,
            "succeeded": n,
            "rate_limited": rate_limited.get(name, 0),
            "errors": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "retired": "HTTP 401" if (revoked and name == "b") else None,
        }
        for name, n in counts.items()
    ]
    child = {
        "rows": rows,
        "error": None,
        "retired_at": {"b": t0 + 1.0} if revoked else {},
        "statistics": {"rate_limited": sum(rate_limited.values()), "endpoints": members},
        "cpu_s": 1.0,
    }
    per_key = {
        pool.mask_key(pool.KEYS[name]): {
            "admitted": n,
            "rate_limited": rate_limited.get(name, 0),
            "revoked": revoked if name == "b" else 0,
        }
        for name, n in counts.items()
    }
    return child, {"per_key": per_key, "status_counts": {"200": plan.count}}


def test_analyse_passes_a_run_on_time_with_exact_shares():
    """15.3 s for 15 s, 3 429s in 3,000, 750/750/1,500: every target met; the mock agrees."""
    plan = pool.make_plan("shares", 3000, ISSUE)
    child, stats = _child_and_stats(plan, {"a": 750, "b": 750, "c": 1500}, rate_limited={"a": 3})
    row = pool.analyse(plan, child, stats)
    assert row["wall_s"] == pytest.approx(15.0 - 15.0 / 3000 + 0.3)
    assert row["ideal_wall_s"] == pytest.approx(15.0)
    assert row["mock_429"] == row["engine_429"] == 3 and row["share_429"] == pytest.approx(0.001)
    assert row["share_deviation"] == 0.0 and row["lost"] == 0 and row["witness_agrees"]
    assert row["passed"] and all(row["checks"].values())
    assert sum(row["series"]["sends_per_s"]) == 3000


def test_analyse_fails_each_missed_target_on_its_own():
    """Too slow, too many 429s, shares off, an item lost: each check fails by name."""
    plan = pool.make_plan("shares", 3000, ISSUE)
    child, stats = _child_and_stats(
        plan, {"a": 900, "b": 600, "c": 1500}, rate_limited={"c": 40}, lose=1
    )
    for row_ in child["rows"]:
        row_[5] += 2.0  # every answer 2 s later: 17.3 s for 15 s
    row = pool.analyse(plan, child, stats)
    failed = {name for name, ok in row["checks"].items() if not ok}
    assert failed == {"ratio <= 1.1", "429s <= 1%", "deviation <= 5%", "no item lost"}
    assert not row["passed"]
    table = pool.format_table([row])
    assert "FAIL" in table and "shares: 429s <= 1% missed" in table


def test_an_item_the_mock_admitted_twice_is_not_answered_exactly_once():
    """The client yielded every id once, but the mock admitted 3,001: the item check fails."""
    plan = pool.make_plan("shares", 3000, ISSUE)
    child, stats = _child_and_stats(plan, {"a": 750, "b": 750, "c": 1500})
    stats["per_key"][pool.mask_key(pool.KEYS["a"])]["admitted"] = 751
    row = pool.analyse(plan, child, stats)
    assert row["lost"] == 0 and not row["checks"]["no item lost"] and not row["witness_agrees"]
    assert "engine and mock disagree" in pool.format_table([row])


def test_a_revoke_run_passes_on_items_and_retirement_only():
    """b retired, nothing lost: pass, whatever the shares; no retirement: fail."""
    plan = pool.make_plan("revoke", 3000, ISSUE)
    child, stats = _child_and_stats(plan, {"a": 918, "b": 250, "c": 1832}, revoked=42)
    row = pool.analyse(plan, child, stats)
    assert set(row["checks"]) == {"no item lost", "b retired"} and row["passed"]
    assert row["mock_401"] == 42 and row["retired_at_s"] == {"b": 1.0}
    assert row["ideal_wall_s"] == pytest.approx(950 / 30)
    child["statistics"]["endpoints"][1]["retired"] = None
    assert not pool.analyse(plan, child, stats)["checks"]["b retired"]


def test_a_child_that_wrote_nothing_is_a_failed_run_with_every_item_lost():
    """No result (killed at its timeout): not completed, N lost, no wall time."""
    plan = pool.make_plan("shares", 300, pool.QUICK_RPMS)
    row = pool.analyse(plan, None, {})
    assert not row["completed"] and row["lost"] == 300 and row["wall_s"] is None
    assert not row["passed"]
    assert "no result" in pool.format_table([row])


def test_the_table_has_one_line_per_scenario_with_shares_and_verdicts():
    """Header, rule, then each scenario with its figures; the revoke row shows no deviation."""
    shares_plan = pool.make_plan("shares", 3000, ISSUE)
    revoke_plan = pool.make_plan("revoke", 3000, ISSUE)
    rows = [
        pool.analyse(shares_plan, *_child_and_stats(shares_plan, {"a": 750, "b": 750, "c": 1500})),
        pool.analyse(
            revoke_plan, *_child_and_stats(revoke_plan, {"a": 918, "b": 250, "c": 1832}, revoked=42)
        ),
    ]
    lines = pool.format_table(rows).splitlines()
    assert lines[0].split()[:4] == ["scenario", "wall", "s", "ideal"]
    assert lines[2].startswith("shares ") and "25.0%/25.0%/50.0%" in lines[2]
    assert lines[2].rstrip().endswith("PASS") and " 15.0 " in lines[2]
    assert lines[3].startswith("revoke ") and "   42  PASS" in lines[3]
    assert len(lines) == 4


def test_the_report_renders_a_pools_section_with_every_scenario_and_member():
    """report.pool_section: the scenario table, the member table, failed checks named."""
    shares_plan = pool.make_plan("shares", 3000, ISSUE)
    revoke_plan = pool.make_plan("revoke", 3000, ISSUE)
    ok = pool.analyse(shares_plan, *_child_and_stats(shares_plan, {"a": 750, "b": 750, "c": 1500}))
    slow_child, slow_stats = _child_and_stats(shares_plan, {"a": 750, "b": 750, "c": 1500})
    for row_ in slow_child["rows"]:
        row_[5] += 3.0
    slow = pool.analyse(shares_plan, slow_child, slow_stats)
    slow["scenario"] = "shares_learned"
    revoked = pool.analyse(
        revoke_plan, *_child_and_stats(revoke_plan, {"a": 918, "b": 250, "c": 1832}, revoked=42)
    )
    data = {
        "machine": harness.machine(),
        "loadavg_at_end": [0.5, 0.5, 0.5],
        "config": {
            "quick": False,
            "requests": 3000,
            "rpms": ISSUE,
            "latency_median_ms": 300.0,
            "latency_sigma": 0.5,
            "targets": pool.TARGETS,
        },
        "runs": [ok, slow, revoked],
        "duration_s": 90.0,
    }
    text = report.pool_section(data, "img", "docs")
    assert text.startswith("## Pools of keys")
    assert (
        "| shares | known | 15.3 | 15.0 | 1.020 | 0 (0.00%) / 0 | 25.0% / 25.0% / 50.0% |" in text
    )
    assert "**fail** (ratio <= 1.1)" in text
    assert "| revoke (b after 250) | known |" in text and "| — | 0 | 42 | pass |" in text
    assert "| revoke | b | 600 | 250 / 250 | 0 / 0 | 42 | at 1.0 s |" in text
    assert "| shares | c | 1,200 | 1,500 / 1,500 |" in text


def test_the_report_writes_the_pool_section_between_its_markers(tmp_path):
    """generate() picks up bench-results/pool.json as section "pool"."""
    plan = pool.make_plan("shares", 300, pool.QUICK_RPMS)
    row = pool.analyse(plan, *_child_and_stats(plan, {"a": 75, "b": 75, "c": 150}))
    results = tmp_path / "results"
    harness.write_json(
        str(results / "pool.json"),
        {
            "machine": harness.machine(),
            "config": {
                "quick": True,
                "requests": 300,
                "rpms": pool.QUICK_RPMS,
                "latency_median_ms": 300.0,
                "latency_sigma": 0.5,
                "targets": pool.TARGETS,
            },
            "runs": [row],
            "duration_s": 20.0,
        },
    )
    doc = tmp_path / "benchmarks.md"
    assert report.generate(str(results), str(doc), str(tmp_path / "img")) == ["pool"]
    text = doc.read_text()
    assert "<!-- bench:begin pool -->\n## Pools of keys" in text
    assert text.rstrip().endswith("<!-- bench:end pool -->")


# -- the command line ----------------------------------------------------------------------


def test_arguments_default_to_the_issue_and_quick_to_a_tenth_of_its_rates():
    """No options: every scenario at 600/600/1,200 and 3,000; --rpms and --requests override."""
    args = pool.build_parser().parse_args([])
    assert args.scenarios == list(pool.SCENARIOS) and args.requests is None and args.rpms is None
    assert args.out == "bench-results/pool.json" and not args.quick and not args.child
    args = pool.build_parser().parse_args(
        ["--quick", "--requests", "280", "--scenarios", "shares", "revoke", "--rpms", "a=1,b=2,c=3"]
    )
    assert args.quick and args.requests == 280 and args.scenarios == ["shares", "revoke"]
    assert args.rpms == {"a": 1, "b": 2, "c": 3}
    assert pool.parse_rpms("a=600, b=600, c=1200") == ISSUE


@pytest.mark.parametrize(
    "argv",
    [
        ["--rpms", "a=600,b=600"],
        ["--rpms", "a=600,b=x,c=1"],
        ["--rpms", "a=600,b=0,c=1"],
        ["--rpms", "a=1,a=2,b=1,c=1"],
        ["--scenarios", "nope"],
        ["--requests", "0"],
    ],
)
def test_bad_arguments_are_usage_errors(argv, capsys):
    """Members other than a, b, c, a bad RPM, an unknown scenario, N < 1: exit 2, nothing run."""
    with pytest.raises(SystemExit) as exc:
        pool.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


# -- end to end (small: 120/120/240 RPM, bursts plus ~5 s of refill) ----------------------------


def test_a_small_pool_run_end_to_end_against_the_served_mock():
    """Shares 1:1:2 with nothing lost; b revoked in its burst: retired, its work done by a and c."""
    rpms = (("a", 120), ("b", 120), ("c", 240))
    started = time.monotonic()
    with harness.CpuSampler() as sampler:
        shares = pool.run_plan(pool.Plan("shares", rpms, 520), sampler)
        revoke = pool.run_plan(pool.Plan("revoke", rpms, 420, revoke_after=30), sampler)
    elapsed = time.monotonic() - started
    assert shares["completed"] and shares["lost"] == 0 and shares["witness_agrees"]
    assert shares["ideal_wall_s"] == pytest.approx(5.0)
    assert shares["share_deviation"] <= 0.1
    assert shares["wall_ratio"] < 2.0
    assert revoke["completed"] and revoke["lost"] == 0 and revoke["witness_agrees"]
    assert revoke["members"]["b"]["retired"] and revoke["members"]["b"]["mock_admitted"] == 30
    assert revoke["mock_401"] == revoke["members"]["b"]["errors"] >= 1
    assert revoke["checks"] == {"no item lost": True, "b retired": True}
    assert elapsed < 60
