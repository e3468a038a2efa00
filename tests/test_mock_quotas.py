"""The mock's quota arithmetic, with explicit times (pure code, no sockets)."""

from __future__ import annotations

import pytest

from engine.mock._quotas import Semantics, ServerLimits, ServerMeter, ServerQuota
from engine.mock._stats import SlidingWindowMax

GROUP = ("sk-test", "gpt-4o-mini")


def book(**limits) -> ServerQuota:
    return ServerQuota(ServerLimits(**limits))


def admit_many(quotas: ServerQuota, count: int, now: float, tokens: int = 0) -> int:
    return sum(quotas.admit(GROUP, tokens, now).admitted for _ in range(count))


# -- token bucket -------------------------------------------------------------


def test_token_bucket_starts_full():
    """A fresh bucket admits its whole limit at once, then refuses."""
    quotas = book(rpm=60)
    assert admit_many(quotas, 61, now=0.0) == 60


def test_token_bucket_refills_continuously():
    """Refill is limit/60 per second: one request per second at 60 RPM."""
    quotas = book(rpm=60)
    admit_many(quotas, 60, now=0.0)
    assert not quotas.admit(GROUP, 0, 0.999).admitted
    assert quotas.admit(GROUP, 0, 1.0).admitted
    assert not quotas.admit(GROUP, 0, 1.5).admitted


def test_token_bucket_retry_after_is_time_to_refill_the_missing_part():
    """Refusal says how long until the cost fits: 500 missing tokens at 100/s is 5 s."""
    quotas = book(tpm=6000)
    assert quotas.admit(GROUP, 5500, 0.0).admitted
    decision = quotas.admit(GROUP, 1000, 0.0)
    assert not decision.admitted
    assert decision.kind == "tokens"
    assert decision.window == "minute"
    assert decision.retry_after == pytest.approx(5.0)
    assert decision.used == 5500
    assert decision.requested == 1000


def test_token_bucket_never_overfills():
    """A long idle period leaves the bucket at its limit, not above."""
    quotas = book(rpm=10)
    quotas.admit(GROUP, 0, 0.0)
    assert admit_many(quotas, 20, now=3600.0) == 10


def test_token_bucket_reset_is_time_until_full():
    """x-ratelimit-reset is how long until the bucket is full again."""
    quotas = book(rpm=60, tpm=6000)
    admit_many(quotas, 30, now=0.0, tokens=100)
    snapshot = quotas.snapshot(GROUP, 10.0)
    assert snapshot.remaining_requests == 40
    assert snapshot.reset_requests == pytest.approx(20.0)
    assert snapshot.remaining_tokens == 4000
    assert snapshot.reset_tokens == pytest.approx(20.0)


# -- fixed window -------------------------------------------------------------


def test_fixed_window_resets_at_window_end():
    """A fixed window refuses until its end, then admits a full limit again."""
    quotas = book(rpm=5, semantics="fixed_window")
    assert admit_many(quotas, 6, now=100.0) == 5
    assert not quotas.admit(GROUP, 0, 159.999).admitted
    assert admit_many(quotas, 6, now=160.0) == 5


def test_fixed_window_retry_after_is_time_to_window_end():
    """Refusal waits exactly until the window (aligned on the first request) ends."""
    quotas = book(rpm=1, semantics="fixed_window")
    quotas.admit(GROUP, 0, 10.0)
    decision = quotas.admit(GROUP, 0, 25.0)
    assert decision.retry_after == pytest.approx(45.0)


def test_fixed_window_allows_a_burst_across_the_boundary():
    """Fixed windows admit 2x the limit around a boundary: their known weakness."""
    quotas = book(rpm=10, semantics="fixed_window")
    quotas.admit(GROUP, 0, 0.0)
    assert admit_many(quotas, 9, now=59.9) == 9
    assert admit_many(quotas, 10, now=60.0) == 10


def test_fixed_window_reports_remaining_and_reset():
    """Remaining counts down within the window; reset is the window's end."""
    quotas = book(rpm=10, semantics="fixed_window")
    admit_many(quotas, 4, now=0.0)
    snapshot = quotas.snapshot(GROUP, 15.0)
    assert snapshot.remaining_requests == 6
    assert snapshot.reset_requests == pytest.approx(45.0)


# -- per-second sub-windows ---------------------------------------------------


def test_per_second_admits_a_sixtieth_per_second():
    """60,000 RPM enforced per second admits 1,000 in any one second."""
    quotas = book(rpm=60_000, semantics="per_second")
    assert admit_many(quotas, 1200, now=0.0) == 1000
    assert admit_many(quotas, 1200, now=0.999) == 0
    assert admit_many(quotas, 1200, now=1.0) == 1000


def test_per_second_retry_after_is_time_to_next_second():
    """A refusal waits until the current one-second sub-window ends."""
    quotas = book(rpm=60, semantics="per_second")
    assert quotas.admit(GROUP, 0, 0.25).admitted
    decision = quotas.admit(GROUP, 0, 0.5)
    assert decision.retry_after == pytest.approx(0.75)


def test_per_second_admits_a_request_larger_than_a_share_into_an_empty_second():
    """A request above limit/60 (but within the limit) gets an empty second to itself."""
    quotas = book(tpm=600, semantics="per_second")
    assert quotas.admit(GROUP, 50, 0.0).admitted
    assert not quotas.admit(GROUP, 50, 0.5).admitted
    assert quotas.admit(GROUP, 50, 1.0).admitted


# -- book-wide behaviour ------------------------------------------------------


def test_unlimited_dimensions_are_not_reported():
    """A book with only an RPM limit reports no token headers."""
    snapshot = book(rpm=10).snapshot(GROUP, 0.0)
    assert snapshot.limit_requests == 10
    assert snapshot.limit_tokens is None
    assert snapshot.remaining_tokens is None


def test_day_limit_is_reported_when_no_minute_limit():
    """Without RPM, the requests headers describe the per-day limit."""
    snapshot = book(rpd=1000).snapshot(GROUP, 0.0)
    assert snapshot.limit_requests == 1000


def test_refusal_charges_nothing():
    """A request refused on tokens does not consume a request either."""
    quotas = book(rpm=10, tpm=100)
    quotas.admit(GROUP, 90, 0.0)
    assert not quotas.admit(GROUP, 50, 0.0).admitted
    assert quotas.snapshot(GROUP, 0.0).remaining_requests == 9


def test_request_above_the_token_limit_is_too_large():
    """A single request costing more than TPM can never be admitted."""
    decision = book(tpm=1000).admit(GROUP, 1001, 0.0)
    assert decision.too_large
    assert decision.limit == 1000
    assert decision.requested == 1001


def test_groups_are_separate_per_key_and_model():
    """Each (key, model) pair has its own quota."""
    quotas = book(rpm=1)
    assert quotas.admit(("a", "m"), 0, 0.0).admitted
    assert quotas.admit(("b", "m"), 0, 0.0).admitted
    assert quotas.admit(("a", "n"), 0, 0.0).admitted
    assert not quotas.admit(("a", "m"), 0, 0.0).admitted


def test_refusal_names_the_dimension_with_the_longest_wait():
    """When requests and tokens both refuse, the longer wait is reported."""
    quotas = book(rpm=60, tpm=600)
    quotas.admit(GROUP, 600, 0.0)
    decision = quotas.admit(GROUP, 300, 0.0)
    assert decision.kind == "tokens"
    assert decision.retry_after == pytest.approx(30.0)


def test_day_limit_refuses_with_day_window():
    """A per-day limit refuses once spent, naming the day window."""
    quotas = book(rpd=2)
    admit_many(quotas, 2, now=0.0)
    decision = quotas.admit(GROUP, 0, 1.0)
    assert decision.window == "day"
    assert decision.retry_after == pytest.approx(86_400 / 2 - 1.0)


def test_settle_refunds_unused_tokens_to_a_bucket():
    """Correcting a 1000-token charge to 200 real tokens gives 800 back."""
    quotas = book(tpm=1000)
    reservation = quotas.admit(GROUP, 1000, 0.0).reservation
    quotas.settle(reservation, 200, 0.0)
    assert quotas.snapshot(GROUP, 0.0).remaining_tokens == 800


def test_settle_refunds_into_the_charged_window_only():
    """A refund arriving after its fixed window ended changes nothing."""
    quotas = book(tpm=1000, semantics="fixed_window")
    late = quotas.admit(GROUP, 500, 0.0).reservation
    quotas.settle(late, 100, 61.0)
    assert quotas.snapshot(GROUP, 61.0).remaining_tokens == 1000
    current = quotas.admit(GROUP, 500, 62.0).reservation
    quotas.settle(current, 100, 63.0)
    assert quotas.snapshot(GROUP, 63.0).remaining_tokens == 900


def test_set_limits_keeps_usage_and_applies_new_limit():
    """Lowering RPM mid-run caps what is left; raising it adds room at once for windows."""
    quotas = book(rpm=100, semantics="fixed_window")
    admit_many(quotas, 50, now=0.0)
    quotas.set_limits(ServerLimits(rpm=60, semantics="fixed_window"), 1.0)
    assert admit_many(quotas, 100, now=1.0) == 10
    quotas.set_limits(ServerLimits(rpm=200, semantics="fixed_window"), 2.0)
    assert admit_many(quotas, 200, now=2.0) == 140


def test_set_limits_caps_a_bucket_level():
    """A bucket shrunk below its level holds only the new limit."""
    quotas = book(rpm=100)
    quotas.set_limits(ServerLimits(rpm=10), 0.0)
    assert admit_many(quotas, 100, now=0.0) == 10


def test_set_limits_can_add_and_remove_dimensions():
    """A newly limited dimension starts fresh; a removed one stops refusing."""
    quotas = book(rpm=1)
    quotas.admit(GROUP, 0, 0.0)
    quotas.set_limits(ServerLimits(tpm=100), 0.0)
    assert quotas.admit(GROUP, 100, 0.0).admitted
    assert not quotas.admit(GROUP, 1, 0.0).admitted


def test_clear_forgets_usage():
    """After clear, a spent group is full again."""
    quotas = book(rpm=1)
    quotas.admit(GROUP, 0, 0.0)
    quotas.clear()
    assert quotas.admit(GROUP, 0, 0.0).admitted


def test_limits_reject_negative_values():
    """A negative limit is a configuration error."""
    with pytest.raises(ValueError, match=">= 0"):
        ServerLimits(rpm=-1)


def test_meter_semantics_accepts_names():
    """Semantics can be given by name."""
    assert ServerLimits(semantics="per_second").semantics is Semantics.PER_SECOND
    meter = ServerMeter.create(10, 60.0, Semantics.FIXED_WINDOW, 0.0)
    assert meter.remaining(0.0) == 10


# -- sliding-window accounting ------------------------------------------------


def test_sliding_window_max_counts_events_within_60_seconds():
    """Events 59.9 s apart share a window; events 60 s apart do not."""
    window = SlidingWindowMax()
    window.add(0.0, 1, 10)
    window.add(59.9, 1, 10)
    assert (window.max_requests, window.max_tokens) == (2, 20)
    window.add(120.0, 1, 10)
    window.add(180.0, 1, 10)
    assert window.max_requests == 2


def test_sliding_window_max_nets_refunds():
    """A refund lowers the running token sum, not the maximum already seen."""
    window = SlidingWindowMax()
    window.add(0.0, 1, 1000)
    window.add(0.5, 0, -800)
    window.add(1.0, 1, 100)
    assert window.max_tokens == 1000
    window.add(1.5, 1, 800)
    assert window.max_tokens == 1100


@pytest.mark.parametrize("semantics", list(Semantics))
def test_meter_headline_matches_remaining_and_reset_after(semantics):
    """headline(now) is (remaining(now), reset_after(now)) for every semantics."""
    meter = ServerMeter.create(100, 60.0, semantics, 0.0)
    meter.take(37, 1.0)
    for now in (1.0, 1.5, 30.0, 61.0):
        assert meter.headline(now) == (meter.remaining(now), meter.reset_after(now))
