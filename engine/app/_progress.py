"""Progress of a batch run: rate meter, one-line bar, periodic lines, quota use.

Pure and synchronous: no trio import, nothing checkpoints. Time comes in as
plain numbers (``elapsed`` seconds since the run started), so every function
here is tested with plain numbers. :mod:`engine.app.batch` samples the run and
hands :class:`RunProgress` snapshots to a :class:`ProgressPrinter`.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import attrs

__all__ = [
    "Allowance",
    "ProgressPrinter",
    "QuotaUse",
    "RateMeter",
    "RunProgress",
    "allowance",
    "bucket_allowance",
    "combine_allowances",
    "fixed_window_allowance",
    "format_duration",
    "format_progress_line",
    "format_quota_use",
    "windows_touched",
]

#: Seconds between plain progress lines when stderr is not a terminal.
DEFAULT_PLAIN_INTERVAL = 10.0
#: Width of the bar drawn on a terminal, in characters.
_BAR_WIDTH = 24
#: Seconds in the window of a per-minute limit.
_MINUTE = 60.0


@attrs.frozen
class Allowance:
    """What a per-minute quota allowed over a run: its capacity at the start plus what came back.

    A fresh token bucket or fixed window starts full, so a run may use the
    whole ``burst`` at once and then what comes back: a bucket's refill
    (``limit / 60`` per second), or a full window at each reset.

    Attributes:
        unit: ``"requests"`` or ``"tokens"``.
        limit: the per-minute limit (summed over ``groups``).
        burst: capacity at the start of the run.
        added: capacity that came back during the run (a bucket's refill, or
            the windows that began after the start).
        kind: ``"bucket"`` (a token bucket), ``"window"`` (fixed windows) or
            ``"mixed"`` (groups of both kinds summed).
        windows / window: for fixed windows, how many the run touched and
            their length in seconds (60, or 1 for per-second sub-windows).
        groups: limit groups (models with their own quota) summed here.
    """

    unit: str
    limit: float
    burst: float
    added: float
    kind: str = "bucket"
    windows: int | None = None
    window: float | None = None
    groups: int = 1

    @property
    def total(self) -> float:
        """Everything the quota allowed over the run."""
        return self.burst + self.added


@attrs.frozen
class QuotaUse:
    """How much of what a quota allowed over the run was used.

    Attributes:
        used: requests the server admitted (sent, less those refused with a
            429), or tokens it reported, so far.
        elapsed: seconds since the run's first request went out.
        allowance: what the quota allowed over those seconds.
    """

    used: float
    elapsed: float
    allowance: Allowance

    @property
    def share(self) -> float:
        """``used`` as a share of the allowance (at most 1.0 in a run the server did not refuse)."""
        total = self.allowance.total
        return self.used / total if total > 0 else 0.0


def bucket_allowance(unit: str, limit: float, elapsed: float) -> Allowance:
    """What a token bucket of ``limit`` per minute allowed in ``elapsed`` seconds.

    It starts full (``limit``) and refills at ``limit / 60`` per second.
    """
    return Allowance(unit=unit, limit=limit, burst=limit, added=limit * max(0.0, elapsed) / _MINUTE)


def windows_touched(
    elapsed: float, window: float, next_reset: float | None, *, first_answer: float = 0.0
) -> int:
    """Fixed windows of ``window`` seconds that the span ``[0, elapsed]`` touched.

    ``next_reset`` is any moment (on the same clock as ``elapsed``, the run's
    start being 0) at which a window ends; windows end every ``window``
    seconds from there. Unknown (None): the most the span can touch whatever
    the windows' phase, so the allowance is never understated.

    ``first_answer`` is when the first answer came back. The book learns a
    window's end from answers, late by their latency, so a reset placed
    before that moment is most likely the start of the window the first
    request opened (a server whose windows begin at first use), not a second
    window: it is not counted (one at most).
    """
    elapsed = max(0.0, elapsed)
    if next_reset is None:
        return math.ceil(elapsed / window) + 1 if elapsed > 0 else 1
    first = next_reset - window * math.floor(next_reset / window)  # first reset after 0 (or at 0)
    if first <= 0.0:
        first += window
    if first <= first_answer:
        first += window  # at most one: the window the first request opened
    if first >= elapsed:
        return 1
    return 1 + math.ceil((elapsed - first) / window)


def fixed_window_allowance(
    unit: str,
    limit: float,
    elapsed: float,
    *,
    window: float = _MINUTE,
    next_reset: float | None = None,
    first_answer: float = 0.0,
) -> Allowance:
    """What fixed windows holding ``limit`` each allowed in ``elapsed`` seconds.

    The window in progress at the start counts in full (a fresh quota), then
    ``limit`` for every window that began before the run ended (see
    :func:`windows_touched`).
    """
    windows = windows_touched(elapsed, window, next_reset, first_answer=first_answer)
    return Allowance(
        unit=unit,
        limit=limit * _MINUTE / window,
        burst=limit,
        added=limit * (windows - 1),
        kind="window",
        windows=windows,
        window=window,
    )


def allowance(
    unit: str,
    limit: float,
    mode: str,
    elapsed: float,
    next_reset: float | None = None,
    *,
    first_answer: float = 0.0,
) -> Allowance:
    """What a per-minute ``limit`` in the quota book's refill ``mode`` allowed in ``elapsed`` s.

    ``mode`` is the book's: ``"continuous"`` (a token bucket), ``"step"`` (a
    fixed minute window) or ``"subwindow"`` (a one-second window holding a
    60th of the limit); ``next_reset`` is where one of its windows ends (run
    time), if known, and ``first_answer`` when the first answer came back
    (see :func:`windows_touched`).
    """
    if mode == "step":
        return fixed_window_allowance(
            unit, limit, elapsed, next_reset=next_reset, first_answer=first_answer
        )
    if mode == "subwindow":
        return fixed_window_allowance(
            unit,
            limit / _MINUTE,
            elapsed,
            window=1.0,
            next_reset=next_reset,
            first_answer=first_answer,
        )
    return bucket_allowance(unit, limit, elapsed)


def combine_allowances(allowances: Sequence[Allowance]) -> Allowance | None:
    """The sum of several limit groups' allowances of one unit (None for none).

    The kind and window count are kept when every group has the same ones.
    """
    if not allowances:
        return None
    if len(allowances) == 1:
        return allowances[0]
    first = allowances[0]
    same = all(
        (item.kind, item.windows, item.window) == (first.kind, first.windows, first.window)
        for item in allowances
    )
    return Allowance(
        unit=first.unit,
        limit=sum(item.limit for item in allowances),
        burst=sum(item.burst for item in allowances),
        added=sum(item.added for item in allowances),
        kind=first.kind if same else "mixed",
        windows=first.windows if same else None,
        window=first.window if same else None,
        groups=sum(item.groups for item in allowances),
    )


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
        quota: for each per-minute quota known now (configured or learned),
            how much of what it allowed since the start was used.
        output_waiting: while OUTPUT cannot be written and answers are held,
            a few words saying so (``"waiting for space on out.jsonl: 1.2 MB
            needed; 231 answers held"``); None while it takes lines.
        max_cost: the run's spending cap in dollars (None: no cap).
        spent: dollars spent so far by the answers' usage (with a cap).
        client_statistics: the run's client counters now (a
            :class:`~engine.ClientStatistics`, added up over its clients), for
            ``--metrics-port``; None before the first client.
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
    quota: tuple[QuotaUse, ...] = ()
    output_waiting: str | None = None
    max_cost: float | None = None
    spent: float = 0.0
    client_statistics: Any = None

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


def _rate(value: float | None) -> str:
    return "-" if value is None else _count(value)


_UNIT_ABBREVIATIONS = {"requests": ("req", "RPM"), "tokens": ("tok", "TPM")}


def _quota_brief(uses: Iterable[QuotaUse]) -> str:
    """``"quota used req 98% tok 12%"``: the progress line's share of what each quota allowed."""
    shares = [
        f"{_UNIT_ABBREVIATIONS.get(use.allowance.unit, (use.allowance.unit,))[0]} {use.share:.0%}"
        for use in uses
    ]
    return "quota used " + " ".join(shares) if shares else ""


def _how_allowed(allowance: Allowance) -> str:
    """How the allowance is made up, e.g. ``"1,200 burst + 320 refill"``.

    Or ``"1,200 in each of 2 one-minute windows"`` for fixed windows, and
    ``"2,400 at the start + 640 since"`` for limit groups of different kinds.
    """
    if allowance.kind == "bucket":
        return f"{allowance.burst:,.0f} burst + {allowance.added:,.0f} refill"
    if allowance.kind == "window" and allowance.windows is not None and allowance.groups == 1:
        if allowance.window == _MINUTE:
            length = "one-minute"
        elif allowance.window == 1.0:
            length = "one-second"
        else:
            length = f"{allowance.window:g}-second"
        if allowance.windows == 1:
            return f"{allowance.burst:,.0f} in one {length} window"
        return f"{allowance.burst:,.0f} in each of {allowance.windows} {length} windows"
    return f"{allowance.burst:,.0f} at the start + {allowance.added:,.0f} since"


def format_quota_use(use: QuotaUse) -> str:
    """The summary's wording of one quota's use (never a rate compared with a limit).

    ``"99%: 2,000 of the 2,014 that 1,200 RPM allowed over 40.7 s of sending
    (1,200 burst + 814 refill)"``, counted from the first request sent.
    """
    allowance = use.allowance
    abbreviation = _UNIT_ABBREVIATIONS.get(allowance.unit, ("", f"{allowance.unit}/min"))[1]
    quota = f"{allowance.limit:,.0f} {abbreviation}"
    if allowance.groups > 1:
        quota = f"{allowance.groups} models' {quota} in all"
    return (
        f"{use.share:.0%}: {use.used:,.0f} of the {allowance.total:,.0f} that {quota} allowed "
        f"over {use.elapsed:.1f} s of sending ({_how_allowed(allowance)})"
    )


#: A pool with more members than this shows only how many serve on the progress line.
_POOL_LISTED = 4


def _pool_brief(members: Any) -> str:
    """``"pool a 600 b 598 c retired"``: answers per pool member (``--endpoints``), or "".

    With more than four members, ``"pool 5/6 serving"``: the line stays one line.
    """
    members = tuple(members or ())
    if not members:
        return ""
    if len(members) > _POOL_LISTED:
        serving = sum(member.retired is None for member in members)
        return f"pool {serving}/{len(members)} serving"
    return "pool " + " ".join(
        f"{member.name} {'retired' if member.retired is not None else _count(member.succeeded)}"
        for member in members
    )


def format_dollars(amount: float) -> str:
    """``$12.35``, or four decimals below a dollar (``$0.0042``): small runs cost cents."""
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def format_progress_line(progress: RunProgress, *, bar: bool) -> str:
    """One line: done/total (a bar when ``bar``), failed, in flight, rates, quota used, ETA.

    With a pool (``--endpoints``) it also shows the answers per member (see
    :func:`_pool_brief`).

    The rates are over the recent window; the quota used is the share of what
    each known quota allowed since the start, burst included (see
    :class:`QuotaUse`), so a fresh quota's burst never reads as a violation.
    """
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
    parts.append(f"req/min {_rate(progress.requests_per_minute)}")
    parts.append(f"tok/min {_rate(progress.tokens_per_minute)}")
    if progress.quota:
        parts.append(_quota_brief(progress.quota))
    if progress.max_cost is not None:
        parts.append(
            f"spent {format_dollars(progress.spent)} of {format_dollars(progress.max_cost)}"
        )
    pool = _pool_brief(getattr(progress.client_statistics, "endpoints", ()))
    if pool:
        parts.append(pool)
    eta = progress.eta_seconds
    parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA -")
    parts.append(format_duration(progress.elapsed))
    if progress.output_waiting is not None:
        parts.append(progress.output_waiting)
    elif progress.stopping:
        parts.append("stopping: waiting for requests in flight")
    return "  ".join(parts)


class ProgressPrinter:
    """Draws progress to ``stream`` (stderr in the CLI).

    On a terminal (``tty=True``) every :meth:`update` redraws one line in place
    (carriage return, erase to end of line). Otherwise it prints a plain line
    at most every ``plain_interval`` seconds of run time (default 10), so logs
    stay short, and one when the run starts waiting for its output.
    :meth:`finish` ends the live line so the summary starts clean;
    :meth:`notice` prints a paragraph between progress lines.
    """

    def __init__(
        self, stream: TextIO, *, tty: bool, plain_interval: float = DEFAULT_PLAIN_INTERVAL
    ) -> None:
        self._stream = stream
        self._tty = tty
        self._plain_interval = plain_interval
        self._last_plain: float | None = None
        self._drawn = False
        # The last update's progress was waiting for OUTPUT.
        self._waiting = False

    def update(self, progress: RunProgress) -> None:
        """Show ``progress`` (a redraw on a terminal, else a line when one is due).

        Off a terminal a line is due every ``plain_interval`` seconds, and at
        once when the run starts waiting for its output (a log then shows
        when, and how much was held).
        """
        started_waiting = progress.output_waiting is not None and not self._waiting
        self._waiting = progress.output_waiting is not None
        if self._tty:
            self._stream.write("\r" + format_progress_line(progress, bar=True) + "\x1b[K")
            self._drawn = True
        elif (
            started_waiting
            or self._last_plain is None
            or progress.elapsed - self._last_plain >= self._plain_interval
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

    def notice(self, paragraph: str) -> None:
        """Print ``paragraph`` on its own, prefixed ``engine: ``, below the live line."""
        self.finish()
        self._stream.write(f"engine: {paragraph}\n")
        self._stream.flush()
