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


# -- undeclared sub-windows ----------------------------------------------------


def test_subwindow_admits_a_share_of_the_limit_per_subwindow():
    """600 RPM with 1 s sub-windows: 10 per second, the 11th refused until the second ends."""
    quotas = book(rpm=600, subwindow_seconds=1.0)
    assert admit_many(quotas, 11, now=0.0) == 10
    decision = quotas.admit(GROUP, 0, 0.25)
    assert not decision.admitted
    assert decision.subwindow
    assert (decision.kind, decision.window, decision.limit) == ("requests", "minute", 600)
    assert decision.retry_after == pytest.approx(0.75)
    assert admit_many(quotas, 11, now=1.0) == 10


def test_subwindow_refusal_leaves_the_headers_at_minute_level():
    """While the sub-window refuses, the snapshot reports the minute: 590 of 600 left."""
    quotas = book(rpm=600, subwindow_seconds=1.0)
    admit_many(quotas, 11, now=0.0)
    snapshot = quotas.snapshot(GROUP, 0.0)
    assert (snapshot.limit_requests, snapshot.remaining_requests) == (600, 590)
    assert snapshot.reset_requests == pytest.approx(1.0)  # the bucket's 10 missing at 10/s


def test_subwindows_are_aligned_on_the_groups_first_request():
    """With 10 s sub-windows from a first request at 100.5, the next one opens at 110.5."""
    quotas = book(rpm=120, semantics="fixed_window", subwindow_seconds=10.0)
    assert admit_many(quotas, 21, now=100.5) == 20
    assert quotas.admit(GROUP, 0, 110.4).retry_after == pytest.approx(0.1)
    assert admit_many(quotas, 21, now=110.5) == 20


def test_a_full_reported_meter_is_named_before_the_subwindow():
    """When the minute and the sub-window both refuse, the minute is named, with the longer wait."""
    quotas = book(rpm=2, semantics="fixed_window", subwindow_seconds=20.0)
    assert quotas.admit(GROUP, 0, 0.0).admitted
    assert quotas.admit(GROUP, 0, 20.0).admitted
    decision = quotas.admit(GROUP, 0, 25.0)
    assert not decision.subwindow
    assert decision.retry_after == pytest.approx(35.0)


def test_a_large_token_request_fits_an_empty_subwindow():
    """6000 TPM in 1 s sub-windows allows 100 tokens a second; 1000 still fit an empty one."""
    quotas = book(tpm=6000, subwindow_seconds=1.0)
    assert quotas.admit(GROUP, 1000, 0.0).admitted
    decision = quotas.admit(GROUP, 50, 0.5)
    assert (decision.admitted, decision.subwindow, decision.kind) == (False, True, "tokens")
    assert quotas.admit(GROUP, 50, 1.0).admitted


def test_subwindow_token_charge_is_corrected_to_usage():
    """A refund lands in the sub-window it was charged to, making room there."""
    quotas = book(tpm=6000, subwindow_seconds=1.0)
    reservation = quotas.admit(GROUP, 100, 0.0).reservation
    assert not quotas.admit(GROUP, 30, 0.1).admitted
    quotas.settle(reservation, 60, 0.2)
    assert quotas.admit(GROUP, 30, 0.3).admitted


def test_subwindows_follow_limit_changes():
    """A new RPM changes the sub-window's share; removing subwindow_seconds removes it."""
    quotas = book(rpm=600, subwindow_seconds=1.0)
    admit_many(quotas, 5, now=0.0)
    quotas.set_limits(ServerLimits(rpm=1200, subwindow_seconds=1.0), 0.0)
    assert admit_many(quotas, 30, now=0.0) == 15
    quotas.set_limits(ServerLimits(rpm=1200), 0.0)
    assert admit_many(quotas, 30, now=0.0) == 30


@pytest.mark.parametrize(
    ("seconds", "semantics"),
    [(0.0, "token_bucket"), (60.0, "fixed_window"), (-1.0, "token_bucket"), (1.0, "per_second")],
)
def test_subwindow_must_be_inside_the_minute_and_undeclared(seconds, semantics):
    """0 < s < 60, and per_second (whose sub-windows are declared) takes none."""
    with pytest.raises(ValueError, match="subwindow_seconds"):
        ServerLimits(rpm=60, semantics=semantics, subwindow_seconds=seconds)


# -- wall-clock windows -----------------------------------------------------------

# 1_800_000_000 is a whole minute since the epoch (08:00:00 UTC).
AT_40_PAST = 1_800_000_040.0  # wall clock at now = 0: 40 s past a minute


def clock_book(**limits) -> ServerQuota:
    return ServerQuota(
        ServerLimits(semantics="clock_minute", **limits), wall_clock_offset=AT_40_PAST
    )


def test_clock_minute_windows_end_on_the_wall_clock_minute():
    """Started 40 s past a minute, the first window holds the limit for only 20 s."""
    quotas = clock_book(rpm=5)
    assert admit_many(quotas, 6, now=0.0) == 5
    assert quotas.admit(GROUP, 0, 10.0).retry_after == pytest.approx(10.0)
    assert not quotas.admit(GROUP, 0, 19.999).admitted
    assert admit_many(quotas, 6, now=20.0) == 5
    assert quotas.admit(GROUP, 0, 21.0).retry_after == pytest.approx(59.0)


def test_clock_minute_reset_is_the_time_to_the_next_minute():
    """The reset counts down to :00 whatever was used, as gateways report it."""
    quotas = clock_book(rpm=5, tpm=1000)
    quotas.admit(GROUP, 10, 0.0)
    snapshot = quotas.snapshot(GROUP, 5.0)
    assert (snapshot.remaining_requests, snapshot.reset_requests) == (4, pytest.approx(15.0))
    snapshot = quotas.snapshot(GROUP, 25.0)  # a new window, nothing used in it yet
    assert (snapshot.remaining_requests, snapshot.reset_requests) == (5, pytest.approx(55.0))
    assert snapshot.reset_tokens == pytest.approx(55.0)


def test_clock_minute_days_end_at_midnight_utc():
    """Per-day windows end at midnight UTC: from 08:00:40, 15 h 59 min 20 s later."""
    quotas = clock_book(rpd=2)
    assert admit_many(quotas, 3, now=0.0) == 2
    assert quotas.admit(GROUP, 0, 0.0).retry_after == pytest.approx(16 * 3600 - 40.0)
    assert admit_many(quotas, 3, now=16 * 3600 - 40.0) == 2


def test_clock_minute_offset_is_read_from_the_wall_clock_once():
    """Without an offset the book reads its wall clock at the first request, then never again."""
    readings = iter([1_800_000_030.0])
    quotas = ServerQuota(
        ServerLimits(rpm=1, semantics="clock_minute"), wall_clock=lambda: next(readings)
    )
    assert quotas.admit(GROUP, 0, 5.0).admitted  # wall clock :30
    assert quotas.admit(GROUP, 0, 6.0).retry_after == pytest.approx(29.0)
    assert quotas.admit(("sk-other", "gpt-4o-mini"), 0, 7.0).admitted


def test_clock_minute_subwindows_are_aligned_on_the_minute():
    """10 s sub-windows under clock_minute end at :50, :00, ...: at :45, 5 s to wait."""
    quotas = clock_book(rpm=60, subwindow_seconds=10.0)
    assert admit_many(quotas, 11, now=5.0) == 10
    decision = quotas.admit(GROUP, 0, 5.0)
    assert decision.subwindow
    assert decision.retry_after == pytest.approx(5.0)


def test_changing_the_wall_clock_offset_moves_the_windows():
    """A new offset starts clock-aligned groups afresh on the new minute."""
    quotas = clock_book(rpm=1)
    assert quotas.admit(GROUP, 0, 0.0).admitted
    quotas.set_wall_clock_offset(AT_40_PAST + 10.0)
    assert quotas.admit(GROUP, 0, 0.0).admitted
    assert quotas.admit(GROUP, 0, 1.0).retry_after == pytest.approx(9.0)


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
