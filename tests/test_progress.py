"""Utilisation in the progress line and the run summary: what the quota allowed, and its share."""

from __future__ import annotations

import httpx
import orjson
import pytest
from run_summaries import make_summary

from engine.app import batch
from engine.app._progress import (
    QuotaUse,
    RunProgress,
    allowance,
    bucket_allowance,
    combine_allowances,
    fixed_window_allowance,
    format_progress_line,
    format_quota_use,
    windows_touched,
)
from engine.app._summary import format_summary
from engine.mock import MockConfig, create_app

MODEL = "gpt-4o-mini"


# --------------------------------------------------------------------------- arithmetic


def test_bucket_allows_its_full_burst_plus_the_refill_over_the_run():
    """1,200 RPM for 16 s: the full bucket (1,200) plus 20/s of refill (320)."""
    allowed = bucket_allowance("requests", 1200.0, 16.0)
    assert (allowed.burst, allowed.added, allowed.total) == pytest.approx((1200, 320, 1520))
    assert allowed.kind == "bucket" and allowed.windows is None


def test_bucket_allows_only_its_burst_at_the_start():
    """A run that has not started yet was allowed exactly the limit."""
    assert bucket_allowance("tokens", 90_000.0, 0.0).total == pytest.approx(90_000)


@pytest.mark.parametrize(
    ("elapsed", "next_reset", "touched"),
    [
        (16.0, 10.0, 2),  # a reset 10 s in: the window at the start and the next
        (16.0, 30.0, 1),  # the window outlasts the run
        (70.0, 10.0, 2),  # resets at 10 s and 70 s: the second ends with the run
        (70.5, 10.0, 3),  # ... and one more begins before it ends
        (16.0, 130.0, 2),  # any reset fixes the phase: windows end at 10, 70, 130 ...
        (16.0, 0.0, 1),  # the run starts as a window does
        (16.0, None, 2),  # phase unknown: the most a 16 s span can touch
        (60.0, None, 2),
        (61.0, None, 3),
    ],
)
def test_fixed_windows_touched_by_a_run(elapsed, next_reset, touched):
    """A run touches the window in progress at its start and each one begun before it ended."""
    assert windows_touched(elapsed, 60.0, next_reset) == touched


@pytest.mark.parametrize(
    ("window", "elapsed", "next_reset", "first_answer", "touched"),
    [
        (60.0, 61.0, 60.3, 0.4, 2),  # learned 0.3 s late: 0.3 s is the first window's start
        (60.0, 61.0, 60.3, 0.2, 3),  # a reset before the first answer is a reset
        (1.0, 10.0, 3.5, 3.0, 10),  # one-second windows: only one reset is taken as the start
    ],
)
def test_a_reset_before_the_first_answer_is_the_start_of_the_first_window(
    window, elapsed, next_reset, first_answer, touched
):
    """Window ends are learned late by the latency: one seen before any answer opened the run's."""
    assert windows_touched(elapsed, window, next_reset, first_answer=first_answer) == touched


def test_fixed_window_allows_the_limit_in_each_window_touched():
    """Two minute windows of 240 allow 480: 240 at the start, 240 after the reset."""
    allowed = fixed_window_allowance("requests", 240.0, 45.0, next_reset=20.0)
    assert (allowed.burst, allowed.added, allowed.total) == (240, 240, 480)
    assert allowed.kind == "window" and allowed.windows == 2 and allowed.window == 60.0


@pytest.mark.parametrize(
    ("mode", "next_reset", "total"),
    [
        ("continuous", None, 1200 + 200),
        ("step", 30.0, 1200),
        ("step", 5.0, 2400),
        ("subwindow", 0.5, 20 * 11),
    ],
)
def test_allowance_follows_the_books_refill_mode(mode, next_reset, total):
    """10 s at 1,200 RPM: a bucket, one or two minute windows, or 11 one-second windows of 20."""
    allowed = allowance("requests", 1200.0, mode, 10.0, next_reset=next_reset)
    assert allowed.total == pytest.approx(total) and allowed.limit == pytest.approx(1200)


def test_limit_groups_add_up_and_a_mix_of_kinds_is_called_mixed():
    """Two models' quotas sum; a bucket and a window together are neither."""
    both = combine_allowances(
        [bucket_allowance("requests", 600.0, 30.0), bucket_allowance("requests", 600.0, 30.0)]
    )
    assert both is not None and both.total == pytest.approx(1800) and both.groups == 2
    assert both.kind == "bucket"
    mixed = combine_allowances(
        [bucket_allowance("requests", 600.0, 30.0), fixed_window_allowance("requests", 600, 30.0)]
    )
    assert mixed is not None and mixed.kind == "mixed" and mixed.windows is None
    assert combine_allowances([]) is None


# --------------------------------------------------------------------------- wording


def test_summary_wording_reads_as_a_share_of_what_the_quota_allowed():
    """The issue's run: 1,459 of the 1,520 a 1,200 RPM bucket allowed in 16 s is 96%."""
    use = QuotaUse(used=1459, elapsed=16.0, allowance=bucket_allowance("requests", 1200, 16.0))
    assert format_quota_use(use) == (
        "96%: 1,459 of the 1,520 that 1,200 RPM allowed over 16.0 s of sending "
        "(1,200 burst + 320 refill)"
    )


def test_summary_wording_names_fixed_windows():
    """A fixed window's allowance is told as the limit in each window the run touched."""
    use = QuotaUse(used=300, elapsed=61.0, allowance=fixed_window_allowance("tokens", 6000, 61.0))
    assert format_quota_use(use) == (
        "2%: 300 of the 18,000 that 6,000 TPM allowed over 61.0 s of sending "
        "(6,000 in each of 3 one-minute windows)"
    )


def test_summary_shows_rates_as_averages_and_never_against_the_limit():
    """A 16 s burst reads as 96% of what was allowed, not as 478% of a per-minute quota."""
    use = QuotaUse(used=1459, elapsed=16.0, allowance=bucket_allowance("requests", 1200, 16.0))
    text = format_summary(
        make_summary(succeeded=1459, elapsed=16.0, rpm_limit=1200.0, quota=(use,))
    )
    assert "requests/min              5471 average (91/s)" in text
    assert "quota used (requests)     96%: 1,459 of the 1,520" in text
    assert "of quota" not in text and "478%" not in text


def test_summary_says_nothing_about_utilisation_without_a_known_limit():
    """No limit configured or learned: rates only, no share."""
    text = format_summary(make_summary(succeeded=10, elapsed=5.0))
    assert "requests/min" in text and "quota" not in text and "%" not in text


def test_progress_line_shows_the_share_of_each_quota_and_no_rate_against_a_limit():
    """The line gives req/min, tok/min and 'quota used req 96% tok 12%'."""
    uses = (
        QuotaUse(used=1459, elapsed=16.0, allowance=bucket_allowance("requests", 1200, 16.0)),
        QuotaUse(used=12_160, elapsed=16.0, allowance=bucket_allowance("tokens", 80_000, 16.0)),
    )
    progress = RunProgress(
        elapsed=16.0,
        total=2000,
        done=1400,
        failed=0,
        in_flight=5,
        requests_per_minute=5250.0,
        tokens_per_minute=45_600.0,
        rpm_limit=1200,
        quota=uses,
    )
    line = format_progress_line(progress, bar=False)
    assert "req/min 5.2k  tok/min 45.6k  quota used req 96% tok 12%  ETA" in line
    assert "/1.2k" not in line


def test_progress_line_without_a_known_limit_has_no_quota_part():
    """Before any limit is known the line says nothing about utilisation."""
    progress = RunProgress(
        elapsed=3.0, total=10, done=2, failed=0, in_flight=1, requests_per_minute=40.0
    )
    assert "quota" not in format_progress_line(progress, bar=True)


# --------------------------------------------------------------------------- real runs


def _write_input(path, count: int):
    with path.open("wb") as file:
        for index in range(count):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"hi {index}"}]}
            line = {"custom_id": f"r{index}", "method": "POST", "url": "/v1/chat/completions"}
            file.write(orjson.dumps({**line, "body": body}) + b"\n")
    return path


def _options(app) -> dict:
    return {
        "base_url": "http://127.0.0.1/v1",
        "api_key": "sk-progress-test-0123456789",
        "transport": httpx.ASGITransport(app),
    }


async def test_run_on_a_token_bucket_reports_its_learned_quota_nearly_used_up(
    tmp_path, autojump_clock
):
    """90 requests at a learned 60 RPM: the 60 burst and then the refill, about 100% used."""
    app = create_app(MockConfig(rpm=60, latency_ms=100))
    seen: list[RunProgress] = []
    summary = await batch.run_file(
        _write_input(tmp_path / "in.jsonl", 90),
        tmp_path / "out.jsonl",
        client_options=_options(app),
        progress=seen.append,
    )
    assert summary.succeeded == 90 and summary.rpm_limit is None  # learned, not configured
    (use,) = summary.quota
    allowed = use.allowance
    assert allowed.unit == "requests" and allowed.kind == "bucket"
    assert 0 < use.elapsed <= summary.elapsed  # from the first request on
    assert allowed.burst == 60 and allowed.added == pytest.approx(use.elapsed)
    assert use.used == 90 and 0.9 <= use.share <= 1.0
    assert summary.elapsed > 25  # the refill, not the burst, finished the run
    text = format_summary(summary)
    assert "quota used (requests)" in text and "that 60 RPM allowed" in text
    assert "60 burst +" in text
    assert seen[0].quota == () and "quota used req" in format_progress_line(seen[-1], bar=False)


async def test_run_on_a_fixed_window_counts_the_windows_it_touched(tmp_path, autojump_clock):
    """90 requests at 60 per fixed minute: two windows allowed 120, so 75% was used."""
    app = create_app(MockConfig(rpm=60, latency_ms=100, quota_semantics="fixed_window"))
    summary = await batch.run_file(
        _write_input(tmp_path / "in.jsonl", 90),
        tmp_path / "out.jsonl",
        client_options=_options(app),
    )
    (use,) = summary.quota
    assert use.allowance.kind == "window" and use.allowance.windows == 2
    assert use.allowance.total == 120 and use.share == pytest.approx(0.75)
    assert "60 in each of 2 one-minute windows" in format_summary(summary)
