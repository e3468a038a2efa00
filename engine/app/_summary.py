"""What a batch run did and how it ends: :class:`RunSummary`, its table, the exit statuses.

Pure and synchronous, and light to import (no trio, no client): the CLI
shows the defaults and prints the summary without loading the client, and
:mod:`engine.app._progress` (whose quota figures the summary carries) imports
nothing from here, so the two import in one direction only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from engine.app._progress import QuotaUse, format_dollars, format_quota_use

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "EXIT_FAILED_ITEMS",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_IO_ERROR",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TERMINATED",
    "RunSummary",
    "format_summary",
]

#: Seconds the first Ctrl-C (or SIGTERM) waits for requests in flight before
#: cancelling them. They are not written, so the next run sends them again.
DEFAULT_GRACE_PERIOD = 10.0

# Exit statuses of ``engine run`` / ``engine transcribe`` (documented in docs/cli.md).
EXIT_OK = 0  #: every input id has a success line in OUTPUT
EXIT_FAILED_ITEMS = 1  #: the run finished, but some items have error lines
EXIT_REFUSED = 2  #: nothing was sent: bad arguments, duplicate ids, unreadable input, OUTPUT in use
EXIT_FATAL = 3  #: stopped by a fatal error (401/403, insufficient_quota)
EXIT_IO_ERROR = 4  #: stopped by an I/O error: OUTPUT could not be written, or INPUT read
EXIT_INTERRUPTED = 130  #: stopped by SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  #: stopped by SIGTERM: 128 + 15

_STOP_EXIT = {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}


@attrs.frozen
class RunSummary:
    """What a batch run did.

    Attributes:
        input_path: the input file, or the recordings given (``engine transcribe``).
        output_path / errors_path: where lines went (errors_path None without ``--errors-to``).
        total_lines: input items (non-blank lines, or recordings found).
        already_done: items skipped because OUTPUT already had their line.
        succeeded / failed: lines this run wrote, ok and with an error.
        error_codes: this run's failed lines per ``error.code``.
        by_endpoint: lines this run wrote for answered or refused requests, per
            endpoint (``chat``, ``responses``, ``embeddings``, ``transcription``);
            lines of unreadable input lines are not counted here.
        skipped: recordings not sent because they are shorter than ``--min-seconds``.
        not_run: items with no line yet (stopped early), and no answer saved in
            the sidecar: the next run sends them.
        previously_failed: error lines OUTPUT held before this run.
        prompt_tokens / completion_tokens: tokens the server reported.
        audio_seconds: audio transcribed, as the server reported it.
        elapsed: seconds from start to the last line written.
        stopped: None if the run went to the end, else why it stopped
            (``"interrupted"``, ``"terminated"``, or the fatal error's message).
        fatal_code: the fatal error's code when one stopped the run.
        rpm_limit / tpm_limit: the quota the run was given, None if learned.
        quota: for each per-minute quota known at the end (configured or
            learned from the server's headers), the share of what it allowed
            over the run that the run used; empty when no limit is known.
        client_statistics: the client's counters (sends, retries, 429s, the
            limiter's in-flight count, ...) taken once the client had closed
            (added up over the clients of a run that waited for its output);
            None only for summaries built by hand.
        held_saved: answers the run received but could not write to OUTPUT,
            saved in ``sidecar_path``: the next run writes them, never sends them.
        held_lost: answers the run received but could neither write nor
            save; counted in ``not_run`` (sent again).
        sidecar_path: where ``held_saved`` answers are; None when there are none.
        io_error: when an I/O error stopped the run (OUTPUT not writable, the
            input unreadable), the paragraph that says what happened to every
            item and what to do; None otherwise.
        ttft_p50: for the lines whose request streamed (``"stream": true``),
            the median seconds to the first token; None when none streamed.
        max_cost: the run's spending cap in dollars (``--max-cost``); None: none.
        spent: dollars this run spent by the answers' usage at the run's
            prices (counted only with a cap).
    """

    input_path: str
    output_path: str
    errors_path: str | None
    total_lines: int
    already_done: int
    succeeded: int
    failed: int
    error_codes: Mapping[str, int]
    skipped: int
    not_run: int
    previously_failed: int
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float
    elapsed: float
    stopped: str | None = None
    fatal_code: str | None = None
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    quota: tuple[QuotaUse, ...] = ()
    client_statistics: Any = None
    held_saved: int = 0
    held_lost: int = 0
    sidecar_path: str | None = None
    io_error: str | None = None
    by_endpoint: Mapping[str, int] = attrs.field(factory=dict)
    ttft_p50: float | None = None
    max_cost: float | None = None
    spent: float = 0.0

    @property
    def exit_status(self) -> int:
        """0 all ok; 1 some error lines; 3 fatal stop; 4 I/O error; 130/143 stopped by a signal."""
        if self.io_error is not None:
            return EXIT_IO_ERROR
        if self.fatal_code is not None:
            return EXIT_FATAL
        if self.stopped is not None:
            return _STOP_EXIT.get(self.stopped, EXIT_FAILED_ITEMS)
        if self.failed or self.previously_failed or self.not_run:
            return EXIT_FAILED_ITEMS
        return EXIT_OK


def format_summary(summary: RunSummary) -> str:
    """The final table: counts by status and error code, tokens, elapsed, rates, quota used."""
    rows: list[tuple[str, str]] = []
    rows.append(("input lines", str(summary.total_lines)))
    if summary.already_done:
        rows.append(("already in output (skipped)", str(summary.already_done)))
    rows.append(("succeeded", str(summary.succeeded)))
    rows.append(("failed", str(summary.failed)))
    for code, count in sorted(summary.error_codes.items(), key=lambda item: (-item[1], item[0])):
        rows.append((f"  {code}", str(count)))
    if summary.by_endpoint:
        rows.append(("by endpoint", _by_endpoint(summary.by_endpoint)))
    if summary.skipped:
        rows.append(("skipped (too short)", str(summary.skipped)))
    if summary.held_saved:
        rows.append(
            (f"held in {summary.sidecar_path}", f"{summary.held_saved} (the next run writes them)")
        )
    rows.append(("not run (resume to send)", str(summary.not_run)))
    if summary.held_lost:
        rows.append(("  answered but lost", f"{summary.held_lost} (could not be saved)"))
    if summary.previously_failed:
        rows.append(("failed in earlier runs", str(summary.previously_failed)))
    tokens = summary.prompt_tokens + summary.completion_tokens
    rows.append(
        (
            "tokens used",
            f"{tokens} (prompt {summary.prompt_tokens}, completion {summary.completion_tokens})",
        )
    )
    if summary.ttft_p50 is not None:
        rows.append(("time to first token (p50)", f"{summary.ttft_p50 * 1000:.0f} ms"))
    rows.extend(_pool_rows(getattr(summary.client_statistics, "endpoints", ())))
    if summary.audio_seconds:
        rows.append(("audio transcribed", f"{summary.audio_seconds:.1f} s"))
    if summary.max_cost is not None:
        rows.append(
            (
                "spent",
                f"{format_dollars(summary.spent)} of the {format_dollars(summary.max_cost)} cap",
            )
        )
    rows.append(("elapsed", f"{summary.elapsed:.1f} s"))
    sent = summary.succeeded + summary.failed
    rows.append(("requests/min", _average(sent, summary.elapsed)))
    rows.append(("tokens/min", _average(tokens, summary.elapsed)))
    for use in summary.quota:
        # A share of what the quota allowed, burst included: a fresh quota
        # grants a minute's worth up front, so the average per minute of a
        # short run may well be above the limit without going beyond it.
        rows.append((f"quota used ({use.allowance.unit})", format_quota_use(use)))
    rows.append(("output", summary.output_path))
    if summary.errors_path:
        rows.append(("errors copied to", summary.errors_path))
    width = max(len(label) for label, _ in rows)
    lines = ["summary:"]
    lines.extend(f"  {label.ljust(width)}  {value}" for label, value in rows)
    if summary.stopped:
        lines.append(f"stopped early: {summary.stopped}")
    return "\n".join(lines)


def _pool_rows(members: Any) -> list[tuple[str, str]]:
    """One row per pool member (``--endpoints``); none without a pool.

    ``"pool member team-a  600 succeeded (50%), 3 429s, 0 errors, 21000
    tokens"``, and ``", retired: <why>"`` for a member retired by a 401/403
    or ``insufficient_quota``.  The share is of the answers every member
    gave, so the shares add up to 100%.
    """
    members = tuple(members or ())
    if not members:
        return []
    total = sum(member.succeeded for member in members)
    rows = []
    for member in members:
        share = member.succeeded / total if total else 0.0
        tokens = member.prompt_tokens + member.completion_tokens
        value = (
            f"{member.succeeded} succeeded ({share:.0%}), {member.rate_limited} 429s, "
            f"{member.errors} error{'' if member.errors == 1 else 's'}, {tokens} tokens"
        )
        if member.retired is not None:
            value += f", retired: {member.retired}"
        rows.append((f"pool member {member.name}", value))
    return rows


#: The order endpoints are listed in; others (none today) follow by name.
_ENDPOINT_ORDER = ("chat", "responses", "embeddings", "transcription")


def _by_endpoint(counts: Mapping[str, int]) -> str:
    """``"chat 3334, responses 3333, embeddings 3333"``: lines written per endpoint."""
    order = {kind: index for index, kind in enumerate(_ENDPOINT_ORDER)}
    kinds = sorted(counts, key=lambda kind: (order.get(kind, len(order)), kind))
    return ", ".join(f"{kind} {counts[kind]}" for kind in kinds)


def _average(count: float, elapsed: float) -> str:
    """``"2947 average (49/s)"``: ``count`` over ``elapsed`` seconds, per minute and per second.

    An average over the whole run: above a per-minute limit in a run shorter
    than a minute that used a fresh quota's burst, which is why no limit is
    shown next to it (the ``quota used`` rows say how much was allowed).
    """
    if elapsed <= 0:
        return "0 average (0/s)"
    per_second = count / elapsed
    shown = f"{per_second:.1f}" if per_second < 10 else f"{per_second:.0f}"
    return f"{count * 60.0 / elapsed:.0f} average ({shown}/s)"
