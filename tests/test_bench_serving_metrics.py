"""The serving benchmark's figures from hand-made timestamps (engine/app/_serving_metrics.py)."""

from __future__ import annotations

import itertools
import random

import pytest

from engine.app._serving_metrics import (
    Slo,
    StepRecorder,
    arrival_times,
    parse_load_list,
    parse_slo,
    percentile,
    summarise,
)


def test_percentiles_interpolate_between_order_statistics_like_numpy() -> None:
    """p50 of 1..4 is 2.5, p90 3.7, p99 3.97 (numpy.percentile's default method)."""
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0


def test_summary_of_unsorted_values_and_of_none() -> None:
    """summarise sorts first; no values give an all-None summary (null in the JSON)."""
    summary = summarise([0.3, 0.1, 0.2])
    assert summary.mean == pytest.approx(0.2)
    assert summary.p50 == pytest.approx(0.2)
    assert summary.count == 3
    assert summarise([]).to_ms() == {"mean": None, "p50": None, "p90": None, "p99": None}


def _step() -> StepRecorder:
    """A 10 s window from t = 10 with the requests worked out by hand in the tests below."""
    recorder = StepRecorder(
        mode="concurrency",
        target=4,
        window_start=10.0,
        duration=10.0,
        slo=Slo(ttft=0.15, tpot=0.05),
    )
    # A: three tokens, TTFT 200 ms, gaps 20 and 30 ms, TPOT (250 - 200) / 2 = 25 ms
    recorder.answered(
        11.0, 11.25, first_token=11.2, token_times=[11.2, 11.22, 11.25], output_tokens=3
    )
    # B: one token after 100 ms: no TPOT, no gap
    recorder.answered(12.0, 12.1, first_token=12.1, token_times=[12.1], output_tokens=1)
    # C: sent in the warm-up, finished in the window: throughput only
    recorder.answered(9.5, 10.5, first_token=9.7, token_times=[9.7, 10.5], output_tokens=5)
    # D: sent in the window, finished after it: latencies only; TPOT 400 ms
    recorder.answered(19.9, 20.4, first_token=20.0, token_times=[20.0, 20.4], output_tokens=2)
    recorder.failed(13.0, "http_429")
    recorder.failed(5.0, "http_500")  # warm-up: not counted
    return recorder


def test_latencies_come_from_requests_sent_in_the_window() -> None:
    """TTFT, ITL, TPOT and e2e pool the requests sent after the warm-up, as defined."""
    result = _step().result(cpu_seconds=2.0)
    assert result.completed == 3
    assert result.ttft.p50 == pytest.approx(0.1)
    assert result.ttft.mean == pytest.approx((0.2 + 0.1 + 0.1) / 3)
    assert result.itl.count == 3
    assert result.itl.p50 == pytest.approx(0.03)
    assert result.tpot.count == 2
    assert result.tpot.mean == pytest.approx((0.025 + 0.4) / 2)
    assert result.e2e.p50 == pytest.approx(0.25)
    assert result.output_tokens == 6


def test_throughput_counts_answers_finishing_in_the_window() -> None:
    """requests/s and output tokens/s count A, B and C (finished in the window), not D."""
    result = _step().result(cpu_seconds=2.0)
    assert result.requests_per_second == pytest.approx(0.3)
    assert result.output_tokens_per_second == pytest.approx((3 + 1 + 5) / 10)


def test_goodput_is_throughput_times_the_share_meeting_every_objective() -> None:
    """Only B meets ttft <= 150 ms and tpot <= 50 ms: goodput = 0.3/s x 1/3."""
    result = _step().result(cpu_seconds=2.0)
    assert result.goodput_rps == pytest.approx(0.1)


def test_errors_and_429s_are_counted_in_the_window_only() -> None:
    """The warm-up's 500 is left out; the 429 shows in rate_limited, not among the errors."""
    result = _step().result(cpu_seconds=2.0)
    assert result.errors == {}
    assert result.rate_limited == 1
    assert result.offered_rate is None
    assert result.offered_met is None
    assert result.client_cpu_share == pytest.approx(0.2)
    assert result.client_cpu_us_per_request == pytest.approx(2.0 / 4 * 1e6)


def _open_step(answered: int, *, dropped: int = 0) -> StepRecorder:
    """An open loop at 10/s with 100 arrivals in a 10 s window, ``answered`` of them answered."""
    recorder = StepRecorder(mode="rate", target=10.0, window_start=0.0, duration=10.0)
    for i in range(100):
        at = i / 10
        recorder.scheduled(at, 0.001)
        if i < answered:
            recorder.answered(at, at + 0.05, first_token=None, output_tokens=1)
        elif i < answered + dropped:
            recorder.failed(at, "dropped")
    return recorder


@pytest.mark.parametrize(
    ("answered", "dropped", "met"), [(96, 0, True), (94, 0, True), (93, 0, False), (99, 1, False)]
)
def test_offered_load_is_met_when_95_percent_less_one_is_answered_and_none_dropped(
    answered: int, dropped: int, met: bool
) -> None:
    """94 of 100 arrivals answered (95% less one) meets the offered load; 93, or a drop, not."""
    result = _open_step(answered, dropped=dropped).result(cpu_seconds=1.0)
    assert result.offered_rate == pytest.approx(10.0)
    assert result.offered_met is met
    assert result.send_lag.p50 == pytest.approx(0.001)


def test_offered_load_compares_answers_with_the_arrivals_one_e2e_earlier() -> None:
    """A burst of arrivals in the window's last 0.5 s (answered after it) does not unmeet the load.

    10/s with 0.5 s answers: the window's answers are the arrivals of [-0.5, 9.5);
    ten more arrive at 9.7 and finish at 10.2, outside it.
    """
    recorder = StepRecorder(mode="rate", target=10.0, window_start=0.0, duration=10.0)
    arrivals = [i / 10 for i in range(-10, 100)] + [9.7] * 10
    for at in arrivals:
        recorder.scheduled(at, 0.0)
        recorder.answered(at, at + 0.5, first_token=None, output_tokens=1)
    result = recorder.result(cpu_seconds=1.0)
    assert result.offered_rate == pytest.approx(11.0)
    assert result.requests_per_second == pytest.approx(10.0)
    assert result.offered_met is True


def test_not_streamed_answers_have_e2e_but_no_token_figures() -> None:
    """Without a first-token time there is no TTFT, ITL or TPOT, only e2e."""
    result = _open_step(100).result(cpu_seconds=1.0)
    assert result.e2e.p50 == pytest.approx(0.05)
    assert result.ttft.count == result.itl.count == result.tpot.count == 0


@pytest.mark.parametrize(
    ("cpu_seconds", "ceiling", "bound"),
    [(9.0, None, True), (1.0, None, False), (1.0, 12.0, True), (1.0, 13.0, False)],
)
def test_client_bound_from_cpu_share_or_the_self_check_ceiling(
    cpu_seconds: float, ceiling: float | None, bound: bool
) -> None:
    """90% of a core, or an offered 10/s at or above 80% of the ceiling, is client-bound."""
    result = _open_step(100).result(cpu_seconds=cpu_seconds, ceiling=ceiling)
    assert result.client_bound is bound


def test_sends_leaving_late_make_an_open_loop_step_client_bound() -> None:
    """Sends 6 ms late at p90 mean the client could not keep the schedule: client-bound."""
    recorder = StepRecorder(mode="rate", target=10.0, window_start=0.0, duration=10.0)
    for i in range(100):
        recorder.scheduled(i / 10, 0.006 if i % 13 == 0 else 0.0001)  # 8 of 100 late
    assert recorder.result(cpu_seconds=1.0).client_bound is False
    for _ in range(5):  # 13 of 105 late: the p90 is late
        recorder.scheduled(9.99, 0.006)
    assert recorder.result(cpu_seconds=1.0).client_bound is True


def test_constant_arrivals_are_evenly_spaced_from_the_start() -> None:
    """4 per second from t = 2: 2.25, 2.5, 2.75, 3.0."""
    times = list(itertools.islice(arrival_times(4.0, 2.0, poisson=False, rng=random.Random()), 4))
    assert times == pytest.approx([2.25, 2.5, 2.75, 3.0])


def test_poisson_arrivals_average_the_rate_and_repeat_with_a_seed() -> None:
    """20,000 Poisson gaps at 100/s average 10 ms (within 3%); one seed, one schedule."""
    first = list(
        itertools.islice(arrival_times(100.0, 0.0, poisson=True, rng=random.Random(3)), 20_000)
    )
    again = list(
        itertools.islice(arrival_times(100.0, 0.0, poisson=True, rng=random.Random(3)), 20_000)
    )
    assert first == again
    assert first[-1] / len(first) == pytest.approx(0.01, rel=0.03)
    assert all(b > a for a, b in itertools.pairwise(first))


def test_slo_parses_units_and_rejects_unknown_names() -> None:
    """ms is the default unit; s and us work; an unknown name or value is a ValueError."""
    assert parse_slo("ttft=200ms,tpot=50ms") == Slo(ttft=0.2, tpot=0.05)
    assert parse_slo("e2e=1.5s, itl=300") == Slo(e2e=1.5, itl=0.3)
    assert parse_slo("ttft=500us").ttft == pytest.approx(0.0005)
    for bad in ("foo=1", "ttft=abc", "ttft", ""):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_slo_met_by_checks_every_objective_set() -> None:
    """A one-token answer (no TPOT) meets a TPOT objective; a missing TTFT fails a TTFT one."""
    slo = Slo(ttft=0.2, tpot=0.05)
    assert slo.met_by(0.1, None, None, 0.1)
    assert not slo.met_by(0.1, 0.06, None, 1.0)
    assert not slo.met_by(None, None, None, 0.1)
    assert Slo(e2e=1.0).met_by(None, None, None, 0.9)
    assert Slo(ttft=0.2).to_dict() == {"ttft": pytest.approx(200.0)}


def test_load_lists_are_positive_numbers() -> None:
    """ "100, 200,400" is a three-step sweep; 0, negatives and fractions of requests are refused."""
    assert parse_load_list("100, 200,400", integer=False) == [100.0, 200.0, 400.0]
    assert parse_load_list("8", integer=True) == [8.0]
    for bad, integer in (("0", False), ("-1", False), ("1.5", True), ("", False), ("inf", False)):
        with pytest.raises(ValueError):
            parse_load_list(bad, integer=integer)
