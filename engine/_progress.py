"""Progress of a batch run: rate meter, one-line bar, periodic lines, final summary table.

Pure and synchronous: no trio import, nothing checkpoints. Time comes in as
plain numbers (``elapsed`` seconds since the run started), so every function
here is tested with plain numbers. :mod:`engine.batch` samples the run and
hands :class:`RunProgress` snapshots to a :class:`ProgressPrinter`.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, TextIO

import attrs

if TYPE_CHECKING:
    from engine.batch import RunSummary

__all__ = [
    "ProgressPrinter",
    "RateMeter",
    "RunProgress",
    "format_duration",
    "format_progress_line",
    "format_summary",
]

#: Seconds between plain progress lines when stderr is not a terminal.
DEFAULT_PLAIN_INTERVAL = 10.0
#: Width of the bar drawn on a terminal, in characters.
_BAR_WIDTH = 24


@attrs.frozen
class RunProgress:
    """A snapshot of a running batch.

    Attributes:
        elapsed: seconds since the run started.
        total: items this run has to settle (input lines not yet in OUTPUT),
            or None when not known.
        done: items settled by this run (an output line written, ok or failed).
        failed: of ``done``, those written as error lines.
        in_flight: requests sent and not yet answered.
        requests_per_minute / tokens_per_minute: completions over the recent
            window (see :class:`RateMeter`); None until there is enough to measure.
        rpm_limit / tpm_limit: the quota given on the command line, None if unknown.
        stopping: True once a stop was asked for (Ctrl-C): no new requests.
    """

    elapsed: float
    total: int | None
    done: int
    failed: int
    in_flight: int
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    stopping: bool = False

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the recent request rate; None when unknown."""
        if self.total is None or not self.requests_per_minute:
            return None
        left = max(0, self.total - self.done)
        return left / self.requests_per_minute * 60.0


class RateMeter:
    """Requests and tokens per minute over the last ``window`` seconds (default 60).

    Fed cumulative counters with :meth:`sample`; keeps at most one sample per
    ``resolution`` seconds (default 0.5), so memory is bounded by
    ``window / resolution`` samples however long the run.
    """

    def __init__(self, window: float = 60.0, resolution: float = 0.5) -> None:
        self._window = window
        self._resolution = resolution
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque()

    def sample(self, now: float, requests: int, tokens: int) -> None:
        """Record the cumulative ``requests`` and ``tokens`` completed at ``now``."""
        samples = self._samples
        if len(samples) >= 2 and now - samples[-2][0] < self._resolution:
            samples[-1] = (now, requests, tokens)  # too close: replace the newest
        else:
            samples.append((now, requests, tokens))
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()

    def per_minute(self) -> tuple[float, float] | None:
        """``(requests/min, tokens/min)`` between the oldest and newest sample.

        None until the samples span at least one second (a rate over a shorter
        span is mostly noise).
        """
        if len(self._samples) < 2:
            return None
        first_time, first_requests, first_tokens = self._samples[0]
        last_time, last_requests, last_tokens = self._samples[-1]
        span = last_time - first_time
        if span < 1.0:
            return None
        return (
            (last_requests - first_requests) * 60.0 / span,
            (last_tokens - first_tokens) * 60.0 / span,
        )


def format_duration(seconds: float) -> str:
    """``"42s"``, ``"3m05s"``, ``"2h07m"``: short, for progress lines."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _count(value: float) -> str:
    """``950``, ``12.3k``, ``4.56M``: a rate or a count in at most six characters."""
    if value < 1000:
        return f"{value:.0f}"
    if value < 1_000_000:
        return f"{value / 1000:.1f}k"
    return f"{value / 1_000_000:.2f}M"


def _rate(value: float | None, limit: float | None) -> str:
    shown = "-" if value is None else _count(value)
    return shown if limit is None else f"{shown}/{_count(limit)}"


def format_progress_line(progress: RunProgress, *, bar: bool) -> str:
    """One line: done/total (a bar when ``bar``), failed, in flight, rates vs quota, ETA."""
    parts = []
    if progress.total is not None:
        total = progress.total
        fraction = 1.0 if total == 0 else min(1.0, progress.done / total)
        if bar:
            filled = round(fraction * _BAR_WIDTH)
            parts.append("[" + "#" * filled + "." * (_BAR_WIDTH - filled) + "]")
        parts.append(f"{progress.done}/{total} ({fraction:.0%})")
    else:
        parts.append(f"{progress.done} done")
    parts.append(f"failed {progress.failed}")
    parts.append(f"in flight {progress.in_flight}")
    parts.append(f"req/min {_rate(progress.requests_per_minute, progress.rpm_limit)}")
    parts.append(f"tok/min {_rate(progress.tokens_per_minute, progress.tpm_limit)}")
    eta = progress.eta_seconds
    parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
    parts.append(format_duration(progress.elapsed))
    if progress.stopping:
        parts.append("stopping: waiting for requests in flight")
    return "  ".join(parts)


class ProgressPrinter:
    """Draws progress to ``stream`` (stderr in the CLI).

    On a terminal (``tty=True``) every :meth:`update` redraws one line in place
    (carriage return, erase to end of line). Otherwise it prints a plain line
    at most every ``plain_interval`` seconds of run time (default 10), so logs
    stay short. :meth:`finish` ends the live line so the summary starts clean.
    """

    def __init__(
        self, stream: TextIO, *, tty: bool, plain_interval: float = DEFAULT_PLAIN_INTERVAL
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._plain_interval = plain_interval
        self._last_plain: float | None = None
        self._drawn = False

    def update(self, progress: RunProgress) -> None:
        """Show ``progress`` (a redraw on a terminal, else a line when one is due)."""
        if self._tty:
            self._stream.write("\r" + format_progress_line(progress, bar=True) + "\x1b[K")
            self._drawn = True
        elif self._last_plain is None or progress.elapsed - self._last_plain >= (
            self._plain_interval
        ):
            self._last_plain = progress.elapsed
            self._stream.write("progress: " + format_progress_line(progress, bar=False) + "\n")
        else:
            return
        self._stream.flush()

    def finish(self) -> None:
        """End the live line (terminal only); call before printing anything else."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False


def format_summary(summary: RunSummary) -> str:
    """The final table: counts by status and error code, tokens, elapsed, rates vs quota."""
    rows: list[tuple[str, str]] = []
    rows.append(("input lines", str(summary.total_lines)))
    if summary.already_done:
        rows.append(("already in output (skipped)", str(summary.already_done)))
    rows.append(("succeeded", str(summary.succeeded)))
    rows.append(("failed", str(summary.failed)))
    for code, count in sorted(summary.error_codes.items(), key=lambda item: (-item[1], item[0])):
        rows.append((f"  {code}", str(count)))
    if summary.skipped:
        rows.append(("skipped (too short)", str(summary.skipped)))
    rows.append(("not run (resume to send)", str(summary.not_run)))
    if summary.previously_failed:
        rows.append(("failed in earlier runs", str(summary.previously_failed)))
    tokens = summary.prompt_tokens + summary.completion_tokens
    rows.append(
        (
            "tokens used",
            f"{tokens} (prompt {summary.prompt_tokens}, completion {summary.completion_tokens})",
        )
    )
    if summary.audio_seconds:
        rows.append(("audio transcribed", f"{summary.audio_seconds:.1f} s"))
    rows.append(("elapsed", f"{summary.elapsed:.1f} s"))
    minutes = summary.elapsed / 60.0
    sent = summary.succeeded + summary.failed
    rpm = sent / minutes if minutes > 0 else 0.0
    tpm = tokens / minutes if minutes > 0 else 0.0
    rows.append(("requests/min", _versus(rpm, summary.rpm_limit)))
    rows.append(("tokens/min", _versus(tpm, summary.tpm_limit)))
    if minutes < 1 and (summary.rpm_limit or summary.tpm_limit):
        # Providers grant a minute's quota up front (a full bucket), so a run
        # shorter than a minute can legitimately go above the per-minute rate.
        rows.append(("", "(under a minute: includes the quota's initial burst)"))
    rows.append(("output", summary.output_path))
    if summary.errors_path:
        rows.append(("errors copied to", summary.errors_path))
    width = max(len(label) for label, _ in rows)
    lines = ["summary:"]
    lines.extend(f"  {label.ljust(width)}  {value}" for label, value in rows)
    if summary.stopped:
        lines.append(f"stopped early: {summary.stopped}")
    return "\n".join(lines)


def _versus(value: float, limit: float | None) -> str:
    if limit is None:
        return f"{value:.0f}"
    return f"{value:.0f} of {limit:.0f} ({value / limit:.0%} of quota)"
