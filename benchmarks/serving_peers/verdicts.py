"""The questions issue 16 asks of the comparison, answered from plain numbers.

* **Agreement**: at a load every tool sustains, does each peer's TTFT and ITL
  (p50 and p99) lie within 10% of ``engine bench``'s?  Ratio = peer / engine.
* **Ceiling**: the highest offered rate each tool sustains (achieved ≥ 95% of
  offered and no request failed, open loop); is ``engine bench``'s at least
  5x the best peer's?

Pure functions of :class:`~benchmarks.serving_peers.tools.Figures`-like
dicts; nothing here runs anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Peers' TTFT / ITL may differ from engine bench's by this share (issue 16).
AGREEMENT_TOLERANCE = 0.10
#: An open-loop step is sustained when achieved ≥ this share of offered.
OFFERED_MET = 0.95
#: engine bench's ceiling must be this many times the best peer's.
CEILING_FACTOR = 5.0

#: The metrics compared for agreement: (label, figures key, percentile).
AGREEMENT_METRICS = (
    ("ttft_p50", "ttft_ms", "p50"),
    ("ttft_p99", "ttft_ms", "p99"),
    ("itl_p50", "itl_ms", "p50"),
    ("itl_p99", "itl_ms", "p99"),
)


def ratio(value: float | None, reference: float | None) -> float | None:
    """``value / reference``, or None when either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def within(value: float | None, tolerance: float = AGREEMENT_TOLERANCE) -> bool | None:
    """Whether a ratio lies within ``1 ± tolerance`` (None for a missing ratio)."""
    if value is None:
        return None
    return abs(value - 1.0) <= tolerance + 1e-12


def agreement(
    peer: Mapping[str, Any], engine: Mapping[str, Any], tolerance: float = AGREEMENT_TOLERANCE
) -> dict[str, Any]:
    """Per metric: peer value, engine value, ratio and within; ``all_within`` over those measured.

    ``all_within`` is None when no metric could be compared (a tool without
    streaming figures), False when any compared metric is outside the band.
    """
    result: dict[str, Any] = {}
    verdicts = []
    for label, key, percentile in AGREEMENT_METRICS:
        peer_value = (peer.get(key) or {}).get(percentile)
        engine_value = (engine.get(key) or {}).get(percentile)
        value_ratio = ratio(peer_value, engine_value)
        verdict = within(value_ratio, tolerance)
        result[label] = {
            "peer": peer_value,
            "engine": engine_value,
            "ratio": value_ratio,
            "within": verdict,
        }
        if verdict is not None:
            verdicts.append(verdict)
    result["all_within"] = all(verdicts) if verdicts else None
    return result


def offered_met(
    offered: float, achieved: float, errors: int = 0, share: float = OFFERED_MET
) -> bool:
    """Whether an open-loop step achieved ``share`` of its offered rate with no request failed.

    A failed request (engine bench drops arrivals beyond its in-flight cap)
    is load the tool did not deliver, even when the answered rate is close.
    """
    return offered > 0 and achieved >= share * offered and errors == 0


def max_sustained(steps: Iterable[Mapping[str, Any]]) -> float | None:
    """The highest offered rate among steps whose ``offered_met`` is true (None if none)."""
    met = [float(s["offered_rate"]) for s in steps if s.get("offered_met")]
    return max(met) if met else None


def ceiling(
    engine_rate: float | None,
    peer_rates: Mapping[str, float | None],
    factor: float = CEILING_FACTOR,
) -> dict[str, Any]:
    """engine bench's ceiling against the best peer's: ratio and whether it is ≥ ``factor``.

    A peer that sustained no step counts as absent; with no peer ceiling or
    no engine ceiling the ratio and verdict are None.
    """
    measured = {tool: rate for tool, rate in peer_rates.items() if rate}
    best_tool = max(measured, key=lambda tool: measured[tool]) if measured else None
    best_rate = measured[best_tool] if best_tool else None
    value_ratio = ratio(engine_rate, best_rate)
    return {
        "engine_bench_rps": engine_rate,
        "best_peer": best_tool,
        "best_peer_rps": best_rate,
        "ratio": value_ratio,
        "factor": factor,
        "meets": None if value_ratio is None else value_ratio >= factor,
    }


def next_rates(
    ladder: list[float], passed: list[float], failed: list[float], refine: int
) -> float | None:
    """The next offered rate of a sweep, or None when it is done.

    Climb ``ladder`` until a step fails; then, ``refine`` times, try the
    geometric midpoint between the highest pass and the lowest failure.
    """
    if not failed:
        remaining = [r for r in ladder if r not in passed]
        return remaining[0] if remaining else None
    low = max(passed) if passed else None
    high = min(failed)
    refined = [r for r in passed + failed if r not in ladder]
    if low is None or len(refined) >= refine:
        return None
    midpoint = round((low * high) ** 0.5)
    if midpoint <= low or midpoint >= high:
        return None
    return float(midpoint)
