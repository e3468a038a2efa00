"""The serving benchmark's outputs: the JSON report, CSV rows, the table and the plots.

Plain functions of :class:`engine.app._serving_metrics.StepResult` values;
they write files only where asked and never checkpoint.  The JSON layout
(``tool``, ``version``, ``config``, ``self_check``, ``steps``) is read by
``benchmarks/`` scripts: keys are added, never renamed.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from engine._version import __version__
from engine.app._serving_metrics import StepResult

__all__ = ["csv_rows", "plot_steps", "report_dict", "step_warnings", "table", "write_report"]

_LATENCIES = ("ttft", "itl", "tpot", "e2e")
_STATS = ("mean", "p50", "p90", "p99")


def report_dict(
    config: Mapping[str, Any], self_check: Mapping[str, Any] | None, steps: Sequence[StepResult]
) -> dict[str, Any]:
    """The whole JSON report."""
    return {
        "tool": "quota-engine",
        "version": __version__,
        "config": dict(config),
        "self_check": dict(self_check) if self_check is not None else None,
        "steps": [step.to_dict() for step in steps],
    }


def csv_rows(steps: Sequence[StepResult]) -> list[dict[str, Any]]:
    """One flat row per step (latencies as ``ttft_ms_p50`` ...; errors summed; 429s apart)."""
    rows = []
    for step in steps:
        data = step.to_dict()
        row: dict[str, Any] = {
            key: data[key]
            for key in (
                "mode",
                "target",
                "duration_s",
                "completed",
                "rate_limited",
                "offered_rate",
                "requests_per_second",
                "output_tokens_per_second",
                "goodput_rps",
            )
        }
        row["errors"] = sum(step.errors.values())
        for name in _LATENCIES:
            for stat in _STATS:
                row[f"{name}_ms_{stat}"] = data[f"{name}_ms"][stat]
        row["client_cpu_share"] = step.client_cpu_share
        row["client_bound"] = step.client_bound
        row["offered_met"] = step.offered_met
        rows.append(row)
    return rows


def write_report(path: str, report: Mapping[str, Any], steps: Sequence[StepResult]) -> None:
    """Write ``report`` as JSON, or the steps as CSV when ``path`` ends in ``.csv``."""
    if path.lower().endswith(".csv"):
        rows = csv_rows(steps)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["mode"])
            writer.writeheader()
            writer.writerows(rows)
        return
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def table(steps: Sequence[StepResult]) -> str:
    """The steps as a fixed-width text table (latencies in ms: p50 / p99)."""
    header = (
        f"{'mode':<11} {'target':>8} {'req/s':>9} {'offered':>9} {'out tok/s':>10} "
        f"{'TTFT p50/p99':>15} {'ITL p50/p99':>13} {'TPOT p50/p99':>13} {'e2e p50/p99':>15} "
        f"{'goodput':>8} {'errors':>7} {'429':>5} {'cpu':>5}  note"
    )
    lines = [header, "-" * len(header)]
    for step in steps:
        notes = []
        if step.offered_met is False:
            notes.append("offered load not met")
        if step.client_bound:
            notes.append("client-bound")
        lines.append(
            f"{step.mode:<11} {step.target:>8g} {step.requests_per_second:>9,.1f} "
            f"{'-' if step.offered_rate is None else f'{step.offered_rate:,.1f}':>9} "
            f"{step.output_tokens_per_second:>10,.0f} "
            f"{_ms(step.ttft.p50) + '/' + _ms(step.ttft.p99):>15} "
            f"{_ms(step.itl.p50) + '/' + _ms(step.itl.p99):>13} "
            f"{_ms(step.tpot.p50) + '/' + _ms(step.tpot.p99):>13} "
            f"{_ms(step.e2e.p50) + '/' + _ms(step.e2e.p99):>15} "
            f"{'-' if step.goodput_rps is None else f'{step.goodput_rps:,.1f}':>8} "
            f"{sum(step.errors.values()):>7,} {step.rate_limited:>5,} "
            f"{step.client_cpu_share:>5.0%}  {', '.join(notes)}"
        )
    return "\n".join(lines)


def step_warnings(step: StepResult, ceiling: float | None) -> list[str]:
    """Sentences to print after a step: client-bound, offered load not met, errors."""
    warnings = []
    if step.client_bound:
        reasons = [f"the generator used {step.client_cpu_share:.0%} of a core"]
        if ceiling is not None:
            reasons.append(f"the self-check ceiling is {ceiling:,.0f} req/s")
        if step.send_lag.p90 is not None:
            reasons.append(f"sends left {step.send_lag.p90 * 1000:,.1f} ms late at p90")
        warnings.append(
            f"{step.mode} {step.target:g}: client-bound ({'; '.join(reasons)}): the figures "
            "may measure this generator, not the server"
        )
    if step.offered_met is False and step.offered_rate is not None:
        warnings.append(
            f"rate {step.target:g}: offered load not met: {step.requests_per_second:,.1f} "
            f"answered/s against {step.offered_rate:,.1f} offered/s"
            + (f", {step.errors['dropped']:,} dropped" if step.errors.get("dropped") else "")
        )
    if step.errors or step.rate_limited:
        warnings.append(
            f"{step.mode} {step.target:g}: errors {dict(step.errors)}, {step.rate_limited:,} "
            "rate limited (429)"
        )
    return warnings


def plot_steps(steps: Sequence[StepResult], directory: str) -> list[str]:
    """Plot latency percentiles against the load into ``directory``; return the files written.

    One PNG per latency (TTFT, ITL, TPOT, e2e): p50, p90 and p99 against the
    step's target (or its requests/s).  Raises ImportError with a sentence
    naming the fix when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plots need matplotlib: pip install 'quota-engine[bench]' (or matplotlib)"
        ) from exc
    os.makedirs(directory, exist_ok=True)
    written = []
    mode = steps[0].mode if steps else "rate"
    xs = [step.target for step in steps]
    xlabel = "requests in flight" if mode == "concurrency" else "offered requests/s"
    for name, title in (
        ("ttft", "time to first token"),
        ("itl", "inter-token latency"),
        ("tpot", "time per output token"),
        ("e2e", "end-to-end latency"),
    ):
        figure, axes = plt.subplots(figsize=(6, 4))
        plotted = False
        for stat in ("p50", "p90", "p99"):
            points = [
                (x, getattr(getattr(step, name), stat))
                for x, step in zip(xs, steps, strict=True)
                if getattr(getattr(step, name), stat) is not None
            ]
            if points:
                axes.plot(
                    [x for x, _ in points], [v * 1000 for _, v in points], marker="o", label=stat
                )
                plotted = True
        if not plotted:
            plt.close(figure)
            continue
        axes.set_xlabel(xlabel)
        axes.set_ylabel("ms")
        axes.set_title(f"{title} vs load")
        axes.grid(True, alpha=0.3)
        axes.legend()
        path = os.path.join(directory, f"{name}.png")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written
