"""The quota book, with explicit times and plain numbers."""

from __future__ import annotations

import functools
import math

import pytest

from engine._headers import RateLimitHeaders
from engine._quota import INITIAL_FLIGHT, Cost, Limits, RefillMode, Reservation, TooLarge, Wait
from engine._quota import QuotaBook as PacedQuotaBook

# Most tests here are about refill, headers and 429s, not the burst pacing
# (tested on its own, with PacedQuotaBook): they turn it off.
QuotaBook = functools.partial(PacedQuotaBook, burst_pace=math.inf)

ONE = Cost(tokens=0)


def grant(book: QuotaBook, now: float, cost: Cost = ONE, group: str = "g"):
    decision = book.decide(group, cost, now)
    assert isinstance(decision, Reservation), decision
    return decision


def headers(**kw) -> RateLimitHeaders:
    return RateLimitHeaders(**kw)


def seen(book: QuotaBook, now: float = 0.0, group: str = "g") -> None:
    """Settle one probe so the group leaves its probing phase."""
    book.settle(grant(book, now, group=group), now)


def test_known_rpm_grants_the_whole_burst_then_waits_for_refill():
    """A fresh token bucket of 600 RPM grants 600 at once, the next one 0.1 s later."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    for _ in range(599):
        grant(book, 0.0)
    decision = book.decide("g", ONE, 0.0)
    assert isinstance(decision, Wait)
    assert decision.until == pytest.approx(0.1)
    grant(book, 0.1)


def test_learned_limits_send_a_small_first_flight_before_any_response():
    """Learned limits: INITIAL_FLIGHT requests go before any response; the next waits for one."""
    book = QuotaBook(None)
    first = grant(book, 0.0)
    for _ in range(INITIAL_FLIGHT - 1):
        grant(book, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(None)
    book.settle(first, 0.5)
    grant(book, 0.5)


def test_known_limits_send_a_seconds_share_before_the_first_response():
    """600 RPM configured: 10 requests (a 60th) go before any response, the 11th waits for one."""
    book = QuotaBook(Limits(rpm=600))
    first = grant(book, 0.0)
    for _ in range(9):
        grant(book, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(None)
    book.settle(first, 0.4)
    grant(book, 0.4)


def test_the_first_seconds_share_counts_configured_tokens_too():
    """600 RPM and 6,000 TPM: 40-token requests, two (80 of the 100-token share) go at once."""
    book = QuotaBook(Limits(rpm=600, tpm=6000))
    cost = Cost(tokens=40)
    grant(book, 0.0, cost)
    grant(book, 0.0, cost)
    assert book.decide("g", cost, 0.0) == Wait(None)


def test_a_request_above_a_seconds_share_still_goes_alone():
    """A request costing more than a 60th of the TPM limit is a lone probe."""
    book = QuotaBook(Limits(rpm=600, tpm=6000))
    grant(book, 0.0, Cost(tokens=150))
    assert book.decide("g", Cost(tokens=10), 0.0) == Wait(None)


def test_cost_above_the_limit_is_too_large_at_once():
    """A request needing more tokens than the TPM limit is refused, never queued."""
    book = QuotaBook(Limits(tpm=1000))
    decision = book.decide("g", Cost(tokens=1001), 0.0)
    assert isinstance(decision, TooLarge)
    assert "1001 tokens" in decision.message and "1000 tokens per minute" in decision.message


def test_cost_above_a_daily_limit_is_too_large():
    """The per-day limit is checked as well as the per-minute one."""
    book = QuotaBook(Limits(tpd=500))
    assert isinstance(book.decide("g", Cost(tokens=600), 0.0), TooLarge)


def test_tokens_bind_when_they_run_out_before_requests():
    """With 1,000 TPM, four 300-token requests: the fourth waits for 200 tokens of refill."""
    book = QuotaBook(Limits(rpm=1000, tpm=1000), margin=0.0)
    cost = Cost(tokens=300)
    book.settle(grant(book, 0.0, cost), 0.0, used_tokens=300)
    # the probe consumed 300 tokens; two more fit, the third needs refill
    grant(book, 0.0, cost)
    grant(book, 0.0, cost)
    decision = book.decide("g", cost, 0.0)
    assert isinstance(decision, Wait)
    assert decision.until == pytest.approx(200 / (1000 / 60))


def test_margin_holds_back_an_exact_fit_and_is_added_to_refill_wake_ups():
    """A bucket keeps the margin's refill: its last token goes 0.05 s late, the next at 1.05 s."""
    book = QuotaBook(Limits(rpm=60), margin=0.05)
    seen(book)
    for _ in range(58):
        grant(book, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(pytest.approx(0.05))
    grant(book, 0.05)
    assert book.decide("g", ONE, 0.05) == Wait(pytest.approx(1.05))


def test_headers_lower_the_level_when_the_server_has_less():
    """A response saying only 10 requests remain caps what the book grants."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    probe = grant(book, 0.0)
    book.settle(probe, 0.0, headers=headers(remaining_requests=10, limit_requests=600))
    for _ in range(10):
        grant(book, 0.0)
    assert isinstance(book.decide("g", ONE, 0.0), Wait)


def test_headers_count_requests_granted_after_the_snapshot():
    """Requests granted after a response's request are subtracted from its remaining."""
    book = QuotaBook(None, margin=0.0)
    probe = grant(book, 0.0)
    book.settle(probe, 0.0, headers=headers(limit_requests=100, remaining_requests=99))
    a = grant(book, 0.0)
    for _ in range(9):
        grant(book, 0.0)
    # a's response says 98 remain after a; 9 more were granted after a.
    book.settle(a, 0.0, headers=headers(limit_requests=100, remaining_requests=98))
    assert book.snapshot("g", 0.0)["requests_per_minute"]["level"] == pytest.approx(89)


def test_limits_are_learned_from_headers_when_not_configured():
    """With limits=None the first response teaches the limit and the remaining level."""
    book = QuotaBook(None, margin=0.0)
    probe = grant(book, 0.0, Cost(tokens=100))
    book.settle(
        probe,
        0.1,
        headers=headers(
            limit_requests=60,
            remaining_requests=59,
            reset_requests=1.0,
            limit_tokens=10_000,
            remaining_tokens=9_900,
            reset_tokens=0.6,
        ),
    )
    view = book.snapshot("g", 0.1)
    assert view["requests_per_minute"]["limit"] == 60
    assert view["tokens_per_minute"]["limit"] == 10_000
    for _ in range(59):
        grant(book, 0.1)
    assert isinstance(book.decide("g", ONE, 0.1), Wait)
    assert isinstance(book.decide("g", Cost(tokens=20_000), 0.1), TooLarge)


def test_no_headers_grow_an_in_flight_window_by_one_per_answer():
    """No limit known, no headers: INITIAL_FLIGHT + 1 after the first answer, then one more each."""
    book = QuotaBook(None)
    seen(book)
    first, second = grant(book, 0.0), grant(book, 0.0)
    for _ in range(INITIAL_FLIGHT - 1):
        grant(book, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(None)
    book.settle(first, 0.2)
    grant(book, 0.2)
    grant(book, 0.2)
    assert book.decide("g", ONE, 0.2) == Wait(None)
    book.settle(second, 0.2)
    grant(book, 0.2)
    grant(book, 0.2)
    assert book.decide("g", ONE, 0.2) == Wait(None)


def test_fixed_window_headers_switch_a_dimension_to_step_refill():
    """reset far beyond what a bucket needs means a fixed window: no refill before it."""
    book = QuotaBook(Limits(rpm=60), margin=0.0)
    probe = grant(book, 0.0)
    book.settle(
        probe, 0.0, headers=headers(limit_requests=60, remaining_requests=59, reset_requests=40.0)
    )
    assert book.snapshot("g", 0.0)["requests_per_minute"]["mode"] == RefillMode.STEP.value
    for _ in range(59):
        grant(book, 0.0)
    # a token bucket would have refilled 20 by t=20; a fixed window has nothing
    assert book.decide("g", ONE, 20.0) == Wait(40.0)
    for _ in range(60):
        grant(book, 40.0)
    assert isinstance(book.decide("g", ONE, 40.0), Wait)


def test_token_bucket_headers_keep_continuous_refill():
    """reset equal to (limit - remaining) / rate is a token bucket."""
    book = QuotaBook(Limits(rpm=60), margin=0.0)
    probe = grant(book, 0.0)
    book.settle(
        probe, 0.0, headers=headers(limit_requests=60, remaining_requests=59, reset_requests=1.0)
    )
    assert book.snapshot("g", 0.0)["requests_per_minute"]["mode"] == RefillMode.CONTINUOUS.value


def test_rate_limit_cools_the_group_down_until_retry_after():
    """A 429 stops the group until its retry-after, and returns the reservation."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    r = grant(book, 1.0)
    until = book.rate_limited(r, 1.0, retry_after=2.5, limit_type="requests")
    assert until == pytest.approx(3.5)
    assert book.decide("g", ONE, 2.0) == Wait(pytest.approx(3.5))
    assert book.in_flight() == 0
    grant(book, 3.5)


def test_rate_limit_without_retry_after_uses_the_reset_header():
    """With no retry-after, the named dimension's reset sets the cooldown."""
    book = QuotaBook(None, margin=0.0)
    seen(book)
    r = grant(book, 0.0)
    until = book.rate_limited(
        r, 0.0, headers=headers(remaining_tokens=0, reset_tokens=7.0), limit_type="tokens"
    )
    assert until == pytest.approx(7.0)


def test_rate_limit_while_headers_show_headroom_switches_to_pacing():
    """A 429 although the server reports room means a finer window: pace evenly."""
    book = QuotaBook(Limits(rpm=600), margin=0.0, pace_fraction=1.0)
    seen(book)
    r = grant(book, 0.0)
    book.rate_limited(
        r,
        0.0,
        headers=headers(limit_requests=600, remaining_requests=500),
        retry_after=0.5,
        limit_type="requests",
    )
    assert book.snapshot("g", 0.5)["group"]["paced"] is True
    grant(book, 0.5)
    assert book.decide("g", ONE, 0.5) == Wait(pytest.approx(0.6))
    grant(book, 0.6)
    assert book.decide("g", ONE, 0.6) == Wait(pytest.approx(0.7))


def test_rate_limit_with_no_headroom_does_not_pace():
    """A 429 when the server reports nothing left is an ordinary cooldown."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    r = grant(book, 0.0)
    book.rate_limited(
        r, 0.0, headers=headers(limit_requests=600, remaining_requests=0), limit_type="requests"
    )
    assert book.snapshot("g", 0.0)["group"]["paced"] is False


def test_burst_false_paces_from_the_start():
    """Limits(burst=False) spaces requests by 1/rate from the first one."""
    book = QuotaBook(Limits(rpm=60, burst=False), margin=0.0, pace_fraction=1.0)
    seen(book, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(pytest.approx(1.0))
    grant(book, 1.0)
    assert book.decide("g", ONE, 1.5) == Wait(pytest.approx(2.0))


def test_release_returns_the_whole_reservation():
    """A permit given back unused restores the level exactly."""
    book = QuotaBook(Limits(rpm=10, tpm=1000))
    seen(book)
    before = book.snapshot("g", 0.0)
    r = grant(book, 0.0, Cost(tokens=100))
    book.release(r, 0.0)
    after = book.snapshot("g", 0.0)
    assert after["requests_per_minute"]["level"] == before["requests_per_minute"]["level"]
    assert after["tokens_per_minute"]["level"] == before["tokens_per_minute"]["level"]
    assert book.in_flight() == 0


def test_settling_twice_accounts_once():
    """A second settle or release of the same reservation changes nothing."""
    book = QuotaBook(Limits(rpm=10))
    seen(book)
    r = grant(book, 0.0)
    book.release(r, 0.0)
    level = book.snapshot("g", 0.0)["requests_per_minute"]["level"]
    book.release(r, 0.0)
    book.settle(r, 0.0)
    assert book.snapshot("g", 0.0)["requests_per_minute"]["level"] == level


def test_real_usage_refunds_the_estimate_when_no_headers_correct_it():
    """Without headers, used tokens below the estimate come back to the level."""
    book = QuotaBook(Limits(tpm=1000))
    seen(book)
    r = grant(book, 0.0, Cost(tokens=400))
    book.settle(r, 0.0, used_tokens=100)
    assert book.snapshot("g", 0.0)["tokens_per_minute"]["level"] == pytest.approx(900)


def test_daily_limit_caps_the_day():
    """rpd=5 grants five requests, then the sixth waits most of a day."""
    book = QuotaBook(Limits(rpm=1000, rpd=5), margin=0.0)
    seen(book)
    for _ in range(4):
        grant(book, 0.0)
    decision = book.decide("g", ONE, 0.0)
    assert isinstance(decision, Wait) and decision.until == pytest.approx(86_400 / 5)


def test_groups_are_independent():
    """A cooling-down group does not hold back another group."""
    book = QuotaBook(Limits(rpm=600))
    seen(book, group="a")
    seen(book, group="b")
    book.rate_limited(grant(book, 0.0, group="a"), 0.0, retry_after=30.0)
    assert isinstance(book.decide("a", ONE, 1.0), Wait)
    grant(book, 1.0, group="b")


def test_per_group_limits_mapping():
    """A mapping gives each group its own limits; others learn theirs."""
    book = QuotaBook({"small": Limits(rpm=1)})
    seen(book, group="small")
    assert isinstance(book.decide("small", ONE, 0.0), Wait)
    seen(book, group="other")
    grant(book, 0.0, group="other")


def test_exhausted_unknown_refill_probes_after_an_interval():
    """Only remaining-* headers (Azure): at zero with nothing in flight, probe after 1 s."""
    book = QuotaBook(None, probe_interval=1.0)
    r = grant(book, 0.0)
    book.settle(r, 0.0, headers=headers(remaining_requests=0))
    decision = book.decide("g", ONE, 0.0)
    assert decision == Wait(1.0)
    grant(book, 1.0)


def test_user_limit_below_the_server_limit_is_never_raised_by_headers():
    """A configured rpm lower than the server's stays the ceiling."""
    book = QuotaBook(Limits(rpm=10), margin=0.0)
    r = grant(book, 0.0)
    book.settle(r, 0.0, headers=headers(limit_requests=1000, remaining_requests=999))
    view = book.snapshot("g", 0.0)["requests_per_minute"]
    assert view["limit"] == 10 and view["level"] <= 9


def test_limits_reject_non_positive_values():
    """Limits(rpm=0) is an error naming the field."""
    with pytest.raises(ValueError, match="rpm"):
        Limits(rpm=0)
    assert math.isinf(QuotaBook(None).snapshot("g", 0.0)["requests_per_minute"]["level"])


def test_per_second_headers_switch_to_one_second_windows():
    """remaining <= limit/60 with reset <= 1 s: a 60th of the limit per second, from the reset."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    probe = grant(book, 0.0)
    book.settle(
        probe, 0.1, headers=headers(limit_requests=600, remaining_requests=9, reset_requests=0.9)
    )
    assert book.snapshot("g", 0.1)["requests_per_minute"]["mode"] == RefillMode.SUBWINDOW.value
    for _ in range(9):
        grant(book, 0.1)
    assert book.decide("g", ONE, 0.1) == Wait(pytest.approx(1.0))
    for _ in range(10):
        grant(book, 1.0)
    assert book.decide("g", ONE, 1.0) == Wait(pytest.approx(2.0))


def test_request_larger_than_a_sub_window_goes_alone_into_a_fresh_one():
    """A cost above a 60th of the limit is granted at the start of an empty window."""
    book = QuotaBook(Limits(tpm=6000), margin=0.0)
    probe = grant(book, 0.0, Cost(tokens=10))
    book.settle(
        probe, 0.0, headers=headers(limit_tokens=6000, remaining_tokens=90, reset_tokens=1.0)
    )
    assert book.decide("g", Cost(tokens=500), 0.5) == Wait(pytest.approx(1.0))
    grant(book, 1.0, Cost(tokens=500))


def test_fixed_window_near_its_end_is_not_taken_for_per_second():
    """Small remaining with a sub-second reset after a big remaining was seen is no sub-window."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    probe = grant(book, 0.0)
    book.settle(
        probe, 0.0, headers=headers(limit_requests=600, remaining_requests=599, reset_requests=59.0)
    )
    late = grant(book, 58.5)
    book.settle(
        late, 58.5, headers=headers(limit_requests=600, remaining_requests=3, reset_requests=0.5)
    )
    assert book.snapshot("g", 58.5)["group"]["paced"] is False


def test_snapshot_taken_at_answer_time_is_not_double_counted():
    """Headers computed when the server answered (after later arrivals) do not lower the level."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    first = grant(book, 0.0)  # level after: 598
    for _ in range(9):
        grant(book, 0.0)  # level now: 589
    # the server answered after all ten arrived: it reports 589 remaining
    book.settle(first, 0.0, headers=headers(limit_requests=600, remaining_requests=589))
    assert book.snapshot("g", 0.0)["requests_per_minute"]["level"] == pytest.approx(589)


def test_shared_book_grants_only_leased_capacity():
    """With shared=True a grant needs a lease; the lease bounds how many go."""
    book = QuotaBook(Limits(rpm=600), margin=0.0, shared=True)
    assert book.decide("g", ONE, 0.0) == Wait(None, lease=True)
    book.add_lease("g", requests=3, tokens=0, expires_at=10.0, now=0.0)
    seen(book)
    grant(book, 0.0)
    grant(book, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(None, lease=True)


def test_expired_lease_is_not_used():
    """Capacity left in a lease is gone once the lease expires."""
    book = QuotaBook(None, shared=True)
    book.add_lease("g", requests=5, tokens=100, expires_at=1.0, now=0.0)
    assert book.lease_state("g", 0.5) == (5, 100, 1.0)
    assert book.decide("g", ONE, 1.0) == Wait(None, lease=True)


def test_unused_lease_is_taken_back_and_released_permits_refill_it():
    """A released permit returns to the lease; take_back_lease empties the pool."""
    book = QuotaBook(None, shared=True)
    book.add_lease("g", requests=2, tokens=50, expires_at=10.0, now=0.0)
    r = grant(book, 0.0, Cost(tokens=20))
    book.release(r, 0.0)
    assert book.take_back_lease("g", 0.0) == (2, 50)
    assert book.decide("g", ONE, 0.0) == Wait(None, lease=True)


def shared_paced_book(rpm: float = 600) -> PacedQuotaBook:
    """A shared, shared-paced book of ``rpm`` with a big lease, paced (Limits(burst=False))."""
    book = PacedQuotaBook(Limits(rpm=rpm, burst=False), margin=0.0, shared=True, shared_pace=True)
    book.add_lease("g", requests=1_000, tokens=0, expires_at=1_000.0, now=0.0)
    return book


def test_shared_pace_asks_for_a_stretch_and_paces_at_the_whole_rate_within_it():
    """600 RPM at 1/3 share: a 0.2 s stretch holds 2 grants 0.102 s apart (not 3x that)."""
    book = shared_paced_book()
    book.set_share("g", 1 / 3, 0.0)
    spacing = 60 / (600 * 0.98)
    wait = book.decide("g", ONE, 0.0)
    assert isinstance(wait, Wait) and wait.until is None
    assert wait.pace == pytest.approx(2 * spacing)
    book.add_pace_claim("g", 0.5, 0.5 + wait.pace, 0.0)
    assert book.decide("g", ONE, 0.0) == Wait(pytest.approx(0.5))
    grant(book, 0.5)
    assert book.decide("g", ONE, 0.5) == Wait(pytest.approx(0.5 + spacing))
    grant(book, 0.5 + spacing)
    assert book.decide("g", ONE, 0.5 + spacing).pace == pytest.approx(2 * spacing)


def test_shared_pace_uses_a_slot_a_little_late_and_drops_one_long_gone():
    """A slot up to 5 ms late is used from its own time; one 30 ms late is skipped."""
    book = shared_paced_book()
    spacing = 60 / (600 * 0.98)
    book.add_pace_claim("g", 1.0, 1.0 + 4 * spacing, 0.0)
    grant(book, 1.004)  # late, but the slot was 1.0
    grant(book, 1.0 + spacing)  # the second slot, on time
    late = 1.0 + 2 * spacing + 0.03  # the third slot is gone: the grant takes a new one
    grant(book, late)
    assert book.decide("g", ONE, late) == Wait(None, pace=pytest.approx(2 * spacing))


def test_shared_pace_bursts_in_short_stretches_once_a_response_is_seen():
    """Unproven: sustainable spacing before any response, then 1/16 of it, 0.05 s per stretch."""
    book = PacedQuotaBook(Limits(rpm=600), margin=0.0, shared=True, shared_pace=True)
    book.add_lease("g", requests=1_000, tokens=0, expires_at=1_000.0, now=0.0)
    assert book.decide("g", ONE, 0.0).pace == pytest.approx(60 / (600 * 0.98))  # one slot
    book.add_pace_claim("g", 0.0, 60 / (600 * 0.98), 0.0)
    book.settle(grant(book, 0.0), 0.1)
    burst = 60 / (600 * 16)
    wait = book.decide("g", ONE, 0.1)
    assert wait.pace == pytest.approx(8 * burst)  # 0.05 s of slots 6.25 ms apart
    book.add_pace_claim("g", 0.1, 0.1 + wait.pace, 0.1)
    for index in range(8):
        grant(book, 0.1 + index * burst)
    assert book.decide("g", ONE, 0.1 + 8 * burst).pace == pytest.approx(8 * burst)


def test_a_shared_book_keeps_the_first_flight_to_its_share():
    """Before any response a process at 1/2 share keeps 5 of 600 RPM's 10 out; unknown: 2 of 4."""
    known = QuotaBook(Limits(rpm=600), margin=0.0, shared=True)
    known.add_lease("g", requests=100, tokens=0, expires_at=100.0, now=0.0)
    known.set_share("g", 0.5, 0.0)
    for _ in range(5):
        grant(known, 0.0)
    assert known.decide("g", ONE, 0.0) == Wait(None)
    learned = QuotaBook(None, shared=True)
    learned.add_lease("g", requests=100, tokens=100, expires_at=100.0, now=0.0)
    learned.set_share("g", 0.5, 0.0)
    grant(learned, 0.0)
    grant(learned, 0.0)
    assert learned.decide("g", ONE, 0.0) == Wait(None)


def test_remote_cooldown_and_learned_limits_are_adopted():
    """cool_down holds the group; learn_limits fills unknown limits only."""
    book = QuotaBook({"g": Limits(tpm=1000)})
    book.cool_down("g", 5.0, 0.0)
    book.learn_limits("g", 0.0, rpm=60, tpm=99_999)
    assert book.learned_limits("g", 0.0) == (60, 1000)
    assert book.decide("g", ONE, 1.0) == Wait(pytest.approx(5.0))


@pytest.mark.parametrize("remaining", [599, 597], ids=["one-above", "one-below"])
def test_headers_one_off_the_book_are_noise_either_way(remaining):
    """One above or below the book's view is noise: it neither raises nor lowers the level.

    Raising on it overshoots; ignoring only the upward half drifts the level low.
    """
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    r = grant(book, 0.0)  # level after: 598
    book.settle(r, 0.0, headers=headers(limit_requests=600, remaining_requests=remaining))
    assert book.snapshot("g", 0.0)["requests_per_minute"]["level"] == pytest.approx(598)


def test_clear_surplus_in_headers_raises_the_level():
    """Refunds the server counted (well above noise) come back to the book."""
    book = QuotaBook(Limits(tpm=10_000), margin=0.0)
    seen(book)
    r = grant(book, 0.0, Cost(tokens=2_000))  # level after: 8000
    book.settle(r, 0.0, headers=headers(limit_tokens=10_000, remaining_tokens=9_500))
    assert book.snapshot("g", 0.0)["tokens_per_minute"]["level"] == pytest.approx(9_500)


def test_headers_do_not_raise_the_level_for_permits_still_in_flight():
    """A server that has not seen in-flight requests yet reports more; that is not surplus."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    for _ in range(590):
        book.settle(grant(book, 0.0), 0.0)
    first = grant(book, 0.0)  # level right after: 8
    for _ in range(50):
        grant(book, 10.0)  # 10 s of refill later: 50 slow uploads, not yet arrived
    assert book.snapshot("g", 10.0)["requests_per_minute"]["level"] == pytest.approx(58)
    # the server saw 592 requests and refilled 100: it reports 108 remaining
    book.settle(first, 10.0, headers=headers(limit_requests=600, remaining_requests=108))
    assert book.snapshot("g", 10.0)["requests_per_minute"]["level"] == pytest.approx(58)


def grant_when_ready(book: PacedQuotaBook, now: float) -> tuple[Reservation, float]:
    """Grant at ``now`` or at the first moment the book allows after it."""
    decision = book.decide("g", ONE, now)
    while isinstance(decision, Wait):
        assert decision.until is not None and decision.until > now, decision
        now = decision.until
        decision = book.decide("g", ONE, now)
    assert isinstance(decision, Reservation), decision
    return decision, now


def test_blind_rate_limits_back_off_exponentially_until_a_success():
    """429s with no retry-after and no headers cool down 1, 2, 4 s; a success resets it."""
    book = QuotaBook(None, margin=0.0)
    seen(book)
    assert book.rate_limited(grant(book, 0.0), 0.0) == pytest.approx(1.0)
    reservation, at = grant_when_ready(book, 1.0)
    assert book.rate_limited(reservation, at) == pytest.approx(at + 2.0)
    reservation, at = grant_when_ready(book, at + 2.0)
    assert book.rate_limited(reservation, at) == pytest.approx(at + 4.0)
    reservation, at = grant_when_ready(book, at + 4.0)
    book.settle(reservation, at + 0.5)
    reservation, at = grant_when_ready(book, at + 1.0)
    assert book.rate_limited(reservation, at) == pytest.approx(at + 1.0)


def test_a_fixed_window_learned_after_the_probe_gets_no_refill_from_its_flight():
    """Known limits, fixed window: the probe's flight refills nothing (1,200 grants, not 1,201)."""
    book = QuotaBook(Limits(rpm=1200), margin=0.0)
    probe = grant(book, 0.0)
    book.settle(
        probe,
        0.37,  # as a bucket, 7.4 requests came back meanwhile; a fixed window gives none
        headers=headers(limit_requests=1200, remaining_requests=1199, reset_requests=59.63),
    )
    granted = 0
    while isinstance(book.decide("g", ONE, 0.37), Reservation):
        granted += 1
    assert granted == 1199
    assert book.snapshot("g", 0.37)["requests_per_minute"]["mode"] == "step"


def test_a_fixed_window_takes_back_what_its_switch_held_for_requests_already_counted():
    """A window learned from a reordered first answer holds back too much; later answers return it.

    Twenty requests went before the first response; the first granted reached
    the server last (remaining 1,180), so the switch to a window assumes the 19
    granted after it are still uncounted.  Their answers show they were not:
    the book grants more than the 1,161 the switch left, never more than 1,180.
    """
    book = QuotaBook(Limits(rpm=1200), margin=0.0)
    batch = [grant(book, 0.0) for _ in range(20)]
    window = {"limit_requests": 1200, "reset_requests": 59.6}
    book.settle(batch[0], 0.4, headers=headers(remaining_requests=1180, **window))
    assert book.snapshot("g", 0.4)["requests_per_minute"]["level"] == 1161
    for arrived, reservation in enumerate(batch[1:], start=1):
        book.settle(reservation, 0.4, headers=headers(remaining_requests=1200 - arrived, **window))
    granted = 0
    while isinstance(book.decide("g", ONE, 0.4), Reservation):
        granted += 1
    assert 1161 < granted <= 1180


def test_a_permit_returned_after_the_bucket_filled_up_gives_back_nothing_twice():
    """A released permit whose share the refill already restored (bucket full) is not re-added."""
    book = QuotaBook(Limits(rpm=1000, tpm=767), margin=0.0)
    book.settle(grant(book, 0.0, Cost(tokens=11)), 0.0)
    unsent = grant(book, 0.0, Cost(tokens=1))
    grant(book, 1.0, Cost(tokens=78))  # the server's bucket was full here: it discarded refill
    grant(book, 2.0, Cost(tokens=256))
    book.release(unsent, 2.0)
    grant(book, 2.0, Cost(tokens=196))
    # A server bucket now holds 249.78 tokens: 250 must wait.
    assert isinstance(book.decide("g", Cost(tokens=250), 2.0), Wait)
    assert isinstance(book.decide("g", Cost(tokens=249), 2.0), Reservation)


# -- rules that hold on servers the engine was not tuned for (docs/design.md) --


def test_a_429_is_ground_truth_and_its_returned_permit_does_not_recreate_the_excess():
    """The book one ahead of the server: after its 429 only one request goes per refill, not two."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    for _ in range(599):
        grant(book, 0.0)
    refused = grant(book, 0.1)  # the server had not refilled this one yet
    limits = {"limit_requests": 600, "remaining_requests": 0}
    until = book.rate_limited(refused, 0.1, headers=headers(**limits), retry_after=0.1)
    assert until == pytest.approx(0.2)
    grant(book, 0.2)
    assert book.decide("g", ONE, 0.2) == Wait(pytest.approx(0.3))


def test_an_older_snapshot_never_raises_the_level():
    """Out of order: an earlier request's higher remaining, read after a newer one, is not taken."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    early = grant(book, 0.0)
    for _ in range(9):
        grant(book, 0.0)
    late = grant(book, 1.0)
    book.settle(late, 1.2, headers=headers(limit_requests=600, remaining_requests=599))
    level = book.snapshot("g", 1.2)["requests_per_minute"]["level"]
    book.settle(early, 1.3, headers=headers(limit_requests=600, remaining_requests=599))
    assert book.snapshot("g", 1.3)["requests_per_minute"]["level"] <= level + 0.1 * 600 / 60


def test_a_surplus_explained_by_permits_still_out_at_the_grant_is_not_raised():
    """The last of 300 granted at once arrived first: its higher remaining is not a surplus."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    flight = [grant(book, 0.0) for _ in range(300)]
    book.settle(flight[-1], 0.01, headers=headers(limit_requests=600, remaining_requests=598))
    assert book.snapshot("g", 0.01)["requests_per_minute"]["level"] == pytest.approx(299.1)


def test_an_unproven_burst_is_paced_at_a_sixteenth_of_the_sustainable_spacing():
    """600 RPM, known limits: the burst goes 160 a second, not all at once."""
    book = PacedQuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    grant(book, 1.0)
    assert book.decide("g", ONE, 1.0) == Wait(pytest.approx(1.0 + 0.1 / 16))


def test_a_server_that_admits_more_than_any_sub_window_proves_the_burst():
    """More than a 10 s sub-window's share admitted in the first 10 s: the burst goes unpaced."""
    book = PacedQuotaBook(Limits(rpm=600), margin=0.0)
    now = 0.0
    early = []
    for _ in range(102):
        reservation, now = grant_when_ready(book, now)
        early.append(reservation)
        if len(early) == 1:
            book.settle(early.pop(), now)
    for reservation in early:
        book.settle(reservation, now)
    for _ in range(50):
        grant(book, now)


def test_a_429_with_headroom_in_the_headers_is_a_finer_window_and_paces_the_group():
    """remaining 500 of 600 on a 429: paced from the retry-after on, one request every 1/9.8 s."""
    book = PacedQuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    refused = grant(book, 0.01)
    limits = {"limit_requests": 600, "remaining_requests": 500}
    book.rate_limited(refused, 0.02, headers=headers(**limits), retry_after=0.5)
    assert book.snapshot("g", 0.02)["group"]["paced"] is True
    grant(book, 0.52)
    assert book.decide("g", ONE, 0.52) == Wait(pytest.approx(0.52 + 1 / 9.8))


def test_a_429_without_headers_while_the_book_saw_plenty_of_room_is_a_finer_window():
    """No headers on the 429, the book 500 requests from empty: paced, not a bucket deficit."""
    book = PacedQuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    book.rate_limited(grant(book, 0.01), 0.02, retry_after=0.5)
    assert book.snapshot("g", 0.02)["group"]["paced"] is True


def test_no_headers_the_first_429_ends_slow_start_at_half_the_window_rate():
    """Window 8 at 0.5 s latency: the first 429 paces at 8 requests per second."""
    book = QuotaBook(None, margin=0.0)
    for _ in range(8 - INITIAL_FLIGHT):
        book.settle(grant(book, 0.0), 0.5)  # latency 0.5 s, one more per answer
    assert book.snapshot("g", 0.5)["group"]["window"] == 8.0
    refused = grant(book, 0.5)
    book.rate_limited(refused, 0.5, retry_after=0.0)
    assert book.snapshot("g", 0.5)["group"]["adaptive_rate"] == pytest.approx(8.0)
    grant(book, 0.5)
    assert book.decide("g", ONE, 0.5) == Wait(pytest.approx(0.625, abs=0.01))


def test_no_headers_429s_of_one_round_decrease_the_rate_once():
    """Two 429s for requests granted before the last decrease halve the rate once, not twice."""
    book = QuotaBook(None, margin=0.0)
    book.settle(grant(book, 0.0), 0.5)
    first, second = grant(book, 0.5), grant(book, 0.5)
    book.rate_limited(first, 0.6, retry_after=0.0)
    rate = book.snapshot("g", 0.6)["group"]["adaptive_rate"]
    book.rate_limited(second, 0.6, retry_after=0.0)
    assert book.snapshot("g", 0.6)["group"]["adaptive_rate"] == rate


def test_no_headers_a_long_wait_is_a_window_end_and_slow_start_begins_again():
    """retry-after 30 s is a window's end: after it the window restarts at half, unpaced."""
    book = QuotaBook(None, margin=0.0)
    for _ in range(8 - INITIAL_FLIGHT):
        book.settle(grant(book, 0.0), 0.5)  # window 8
    assert book.rate_limited(grant(book, 1.0), 1.0, retry_after=30.0) == pytest.approx(31.0)
    group = book.snapshot("g", 31.0)["group"]
    assert group["adaptive_rate"] is None and group["window"] == 4.0
    for _ in range(4):
        grant(book, 31.0)
    assert book.decide("g", ONE, 31.0) == Wait(None)


def test_group_states_show_limits_and_adaptive_control_without_changing_the_book():
    """group_states() reports the learned window and rate and leaves the book's levels alone."""
    book = QuotaBook(None, margin=0.0)
    book.settle(grant(book, 0.0), 0.5)
    (state,) = book.group_states(0.5)
    assert state.window == INITIAL_FLIGHT + 1 and state.adaptive_rate is None
    assert state.dimensions["requests_per_minute"].limit is None
    book.rate_limited(grant(book, 0.5), 0.6, retry_after=0.5)
    (state,) = book.group_states(0.6)
    assert state.window is None and state.adaptive_rate == pytest.approx(2.0)
    assert state.rate_limited == 1 and state.cooldown_until == pytest.approx(1.1)
    known = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(known)
    for _ in range(599):
        grant(known, 0.0)
    (state,) = known.group_states(30.0)
    assert state.dimensions["requests_per_minute"].level == pytest.approx(300.0)
    assert known.group_states(30.0)[0].dimensions["requests_per_minute"].level == pytest.approx(
        300.0
    )
    assert isinstance(known.decide("g", Cost(tokens=0, requests=301), 30.0), Wait)


def limits_only(remaining: int) -> RateLimitHeaders:
    """A gateway's snapshot: limit and remaining, no reset."""
    return headers(limit_requests=60, remaining_requests=remaining)


def test_two_blind_429s_where_a_bucket_would_have_refilled_mean_a_clock_minute_window():
    """No reset, no hint: the second blind 429 makes a window that ends on the clock minute."""
    book = QuotaBook(Limits(rpm=60), margin=0.0, wall_offset=1_000_040.0)  # 20 s into a minute
    seen(book)
    for reservation in [grant(book, 0.0) for _ in range(59)]:
        book.settle(reservation, 0.5, headers=limits_only(0))
    assert book.rate_limited(grant(book, 1.0), 1.0, headers=limits_only(0)) == pytest.approx(2.0)
    refused, at = grant_when_ready(book, 2.0)
    assert book.rate_limited(refused, at, headers=limits_only(0)) == pytest.approx(40.0)
    assert book.snapshot("g", at)["requests_per_minute"]["mode"] == "step"
    first = grant(book, 40.0)  # the guessed end: one probe goes alone
    assert book.decide("g", ONE, 40.0) == Wait(None)
    book.settle(first, 40.2, headers=limits_only(59))
    for _ in range(59):
        grant(book, 40.2)


def test_a_refusal_just_after_a_guessed_window_end_retries_a_second_later():
    """The server's clock behind ours: the probe at the guessed :00 is refused, then +1 s."""
    book = QuotaBook(Limits(rpm=60), margin=0.0, wall_offset=1_000_040.0)
    seen(book)
    for reservation in [grant(book, 0.0) for _ in range(59)]:
        book.settle(reservation, 0.5, headers=limits_only(0))
    book.rate_limited(grant(book, 1.0), 1.0, headers=limits_only(0))
    refused, at = grant_when_ready(book, 2.0)
    book.rate_limited(refused, at, headers=limits_only(0))
    early = grant(book, 40.0)
    assert book.rate_limited(early, 40.01, headers=limits_only(0)) >= 41.0
    probe, at = grant_when_ready(book, 40.01)
    assert 41.0 <= at <= 45.0
    book.settle(probe, at + 0.1, headers=limits_only(59))


def test_a_refusal_sent_before_the_window_guess_leaves_the_guessed_end_alone():
    """Two refusals of one round: the second does not pull the guessed :00 end to now + 1 s."""
    book = QuotaBook(None, margin=0.0, wall_offset=0.0)  # the run starts on a clock minute
    book.settle(grant(book, 0.0), 0.1, headers=limits_only(0))
    refused, at = grant_when_ready(book, 1.0)
    book.rate_limited(refused, at + 0.01, headers=limits_only(0))
    first, at = grant_when_ready(book, at + 0.01)
    second, at = grant_when_ready(book, at)
    assert book.rate_limited(first, at + 0.01, headers=limits_only(0)) == pytest.approx(60.0)
    assert book.rate_limited(second, at + 0.02, headers=limits_only(0)) == pytest.approx(60.0)
    (state,) = book.group_states(at + 0.02)
    view = state.dimensions["requests_per_minute"]
    assert view.mode == "step" and view.full_at == pytest.approx(60.0)


def test_a_retry_hint_far_longer_than_a_bucket_needs_means_a_fixed_window():
    """remaining 0 and 'retry in 35 s' at 60 RPM (a bucket needs 1 s): a window ending then."""
    book = QuotaBook(Limits(rpm=60), margin=0.0)
    seen(book)
    for _ in range(59):
        grant(book, 0.0)
    until = book.rate_limited(grant(book, 1.0), 1.0, headers=limits_only(0), retry_after=35.0)
    assert until == pytest.approx(36.0)
    view = book.snapshot("g", 1.0)["requests_per_minute"]
    assert view["mode"] == "step" and view["full_at"] == pytest.approx(36.0)


def test_blind_429s_of_one_flight_back_off_once():
    """Six requests of one flight refused with nothing said: a 1 s cooldown, not 32 s."""
    book = QuotaBook(None, margin=0.0)
    seen(book)
    flight = [grant(book, 0.0), grant(book, 0.0)]
    for reservation in flight:
        assert book.rate_limited(reservation, 0.01) == pytest.approx(1.01)


def test_no_headers_the_rate_never_stays_above_what_the_server_admitted():
    """The rate drops straight to the admissions since the last decrease, not by halving."""
    book = QuotaBook(None, margin=0.0)
    book.settle(grant(book, 0.0), 0.5)  # latency 0.5 s, window 2
    book.rate_limited(grant(book, 0.5), 0.5, retry_after=0.01)  # rate 2/s
    now = 0.51
    for _ in range(3):  # three admitted in the 4 s after the first decrease
        reservation, now = grant_when_ready(book, now)
        book.settle(reservation, now + 0.1)
    refused, _ = grant_when_ready(book, 4.0)
    book.rate_limited(refused, 4.5, retry_after=0.01)
    assert book.snapshot("g", 4.5)["group"]["adaptive_rate"] == pytest.approx(3 / 4.0)


def test_a_paced_group_probes_a_finer_window_every_two_seconds_at_most():
    """Bare 429s from an undeclared window: cooldowns of 1, 2, 2 s, not 1, 2, 4 s."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    assert book.rate_limited(grant(book, 0.01), 0.01) == pytest.approx(1.01)  # paced now
    reservation, at = grant_when_ready(book, 1.01)
    assert book.rate_limited(reservation, at) == pytest.approx(at + 2.0)
    reservation, at = grant_when_ready(book, at + 2.0)
    assert book.rate_limited(reservation, at) == pytest.approx(at + 2.0)


def test_a_shared_group_paces_at_its_share_and_slower_after_a_refusal_while_paced():
    """Share 1/3: spacing triples (and 1/0.95); refused again while paced: 85% of that rate."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    book.set_share("g", 1 / 3, 0.0)
    book.rate_limited(grant(book, 0.01), 0.02, headers=headers(remaining_requests=500))
    admitted, at = grant_when_ready(book, 1.0)
    spacing = 0.1 / 0.98 * 3 / 0.95
    assert book.decide("g", ONE, at) == Wait(pytest.approx(at + spacing))
    book.settle(admitted, at + 0.005)  # the pace was admitted, then refused
    reservation, at = grant_when_ready(book, at)
    book.rate_limited(reservation, at + 0.01, headers=headers(remaining_requests=500))
    _second, later = grant_when_ready(book, at + 1.0)
    assert book.decide("g", ONE, later) == Wait(
        pytest.approx(later + spacing / (0.85 + 0.005), rel=1e-3)
    )


def test_probes_into_a_window_still_full_do_not_slow_the_pace():
    """Refused again while paced with nothing admitted in between: the pace stays at 0.98."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    book.rate_limited(grant(book, 0.01), 0.02)  # bare 429 with room: paced, 1 s
    for _ in range(3):
        reservation, at = grant_when_ready(book, 0.02)
        book.rate_limited(reservation, at)
    _admitted, at = grant_when_ready(book, at)
    assert book.decide("g", ONE, at) == Wait(pytest.approx(at + 0.1 / 0.98))


def test_a_cooldown_from_another_process_paces_a_group_not_yet_proven():
    """Another process was refused before this one proved the burst: pace, don't burst into it."""
    book = QuotaBook(Limits(rpm=600), margin=0.0)
    seen(book)
    book.cool_down("g", 0.5, 0.1)
    assert book.snapshot("g", 0.1)["group"]["paced"] is True
    grant(book, 0.5)
    assert isinstance(book.decide("g", ONE, 0.5), Wait)


def test_limits_too_high_to_pace_leave_the_burst_unpaced():
    """A pace shorter than a microsecond is no pace: the group counts as proven at once."""
    book = PacedQuotaBook(Limits(rpm=10**12), margin=0.0)
    seen(book)
    for _ in range(1000):
        grant(book, 0.0)
    assert book.snapshot("g", 0.0)["group"]["proven"] is True
