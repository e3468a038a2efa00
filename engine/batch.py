"""Batch runs: a Batch-API JSONL file (or a folder of recordings) through the client.

This is the loop under ``engine run`` and ``engine transcribe``, usable from
code too (``await engine.batch.run_file(...)``), plus :func:`run_batch`, the
blocking convenience for scripts and notebooks.

How a run goes (:func:`run_file`, :func:`run_audio`):

1. OUTPUT is opened with :class:`~engine._jsonl.OutputWriter`: exclusive lock,
   torn last line repaired, the ids already written loaded (resume).
2. One streaming pass over the input counts its lines (the progress total)
   and looks for duplicate ids. Any duplicate refuses the run
   (:class:`DuplicateIdsError` naming every duplicate and its lines) before
   anything is sent.
3. The input is streamed again, lazily, into ``client.map``: ids already in
   OUTPUT are skipped, bad lines (not JSON, missing fields, unknown url, a
   ``body.file`` that cannot be read) become error lines at once naming their
   line number, the rest are sent. Only the requests in flight are held in
   memory, so memory stays flat however long the input.
4. Each result is written as one output line as it arrives (one ``os.write``,
   so a crash never tears a line). Items that never ran because the run
   stopped (error code ``run_stopped``) are *not* written: a rerun sends them.

Stopping (:class:`RunControl`, wired to SIGINT/SIGTERM by the CLI): the first
stop stops sending new requests and waits at most ``grace_period`` seconds
(default :data:`DEFAULT_GRACE_PERIOD`, 10 s) for the requests in flight, and
less as soon as nothing is in flight any more; what has not finished by then
is cancelled and left for the next run. A second stop cancels at once.
Either way every line written is whole.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import orjson
import trio

from engine._client import open_client
from engine._errors import EngineError, FatalError, InputError, RunStoppedError
from engine._jsonl import (
    TRANSCRIPTIONS_URL,
    InputLine,
    OutputWriter,
    error_record,
    find_duplicate_audio_ids,
    iter_audio_inputs,
    read_batch_input,
    success_record,
)
from engine._progress import (
    Allowance,
    QuotaUse,
    RateMeter,
    RunProgress,
    allowance,
    combine_allowances,
)
from engine._quota import Limits
from engine._requests import TranscriptionRequest
from engine._results import ChatResult, ErrorInfo, Timings, TranscriptionResult

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "EXIT_FAILED_ITEMS",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_TERMINATED",
    "DuplicateIdsError",
    "RunControl",
    "RunSummary",
    "find_duplicate_ids_compactly",
    "run_audio",
    "run_batch",
    "run_file",
]

#: Seconds the first Ctrl-C (or SIGTERM) waits for requests in flight before
#: cancelling them. They are not written, so the next run sends them again.
DEFAULT_GRACE_PERIOD = 10.0
#: Seconds between progress snapshots handed to the ``progress`` callback.
DEFAULT_PROGRESS_INTERVAL = 0.5

# Exit statuses of ``engine run`` / ``engine transcribe`` (documented in docs/cli.md).
EXIT_OK = 0  #: every input id has a success line in OUTPUT
EXIT_FAILED_ITEMS = 1  #: the run finished, but some items have error lines
EXIT_REFUSED = 2  #: nothing was sent: bad arguments, duplicate ids, unreadable input, OUTPUT in use
EXIT_FATAL = 3  #: stopped by a fatal error (401/403, insufficient_quota)
EXIT_INTERRUPTED = 130  #: stopped by SIGINT (Ctrl-C): 128 + 2
EXIT_TERMINATED = 143  #: stopped by SIGTERM: 128 + 15

_STOP_EXIT = {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}
# How often the grace period checks whether anything is still in flight.
_GRACE_POLL = 0.05
_TRANSCRIPTION_URLS = (TRANSCRIPTIONS_URL, TRANSCRIPTIONS_URL.removeprefix("/v1"))
# Error code of items the client never finished because it stopped.
_RUN_STOPPED = RunStoppedError.default_code


class DuplicateIdsError(EngineError):
    """The input names some ``custom_id`` more than once; the run refuses to start.

    Attributes:
        duplicates: ``{custom_id: [line numbers or file paths]}``, every duplicate.
    """

    default_code = "duplicate_custom_id"

    def __init__(self, duplicates: Mapping[str, Sequence[int | str]]) -> None:
        self.duplicates = {key: list(where) for key, where in duplicates.items()}
        lines = [
            f"  {custom_id!r}: " + ", ".join(_where(place) for place in where)
            for custom_id, where in self.duplicates.items()
        ]
        super().__init__(
            f"{len(self.duplicates)} custom_id(s) appear more than once; nothing was sent:\n"
            + "\n".join(lines)
        )


def _where(place: int | str) -> str:
    return f"line {place}" if isinstance(place, int) else place


class RunControl:
    """Stops a running batch from outside: signal handlers, a UI, tests.

    :meth:`stop` once: no new requests; requests in flight get the grace
    period. :meth:`stop` again, or :meth:`stop_now`: cancel at once. Neither
    checkpoints; both may be called before the run starts.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.immediate = False
        self._asked = trio.Event()
        self._now_scope = trio.CancelScope()

    @property
    def stopping(self) -> bool:
        """True once a stop was asked for."""
        return self.reason is not None

    def stop(self, reason: str = "interrupted") -> None:
        """Ask the run to stop gracefully; a second call stops it at once.

        ``reason`` is shown in the summary and picks the exit status:
        ``"interrupted"`` (130), ``"terminated"`` (143), anything else 1.
        """
        if self.reason is not None:
            self.stop_now()
            return
        self.reason = reason
        self._asked.set()

    def stop_now(self, reason: str = "interrupted") -> None:
        """Cancel the run at once: requests in flight are dropped (not written)."""
        if self.reason is None:
            self.reason = reason
        self.immediate = True
        self._asked.set()
        self._now_scope.cancel()


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
        skipped: recordings not sent because they are shorter than ``--min-seconds``.
        not_run: items with no line yet (stopped early): the next run sends them.
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
            limiter's in-flight count, ...) taken once the client had closed;
            None only for summaries built by hand.
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

    @property
    def exit_status(self) -> int:
        """0 all ok; 1 some error lines; 3 fatal stop; 130/143 stopped by a signal."""
        if self.fatal_code is not None:
            return EXIT_FATAL
        if self.stopped is not None:
            return _STOP_EXIT.get(self.stopped, EXIT_FAILED_ITEMS)
        if self.failed or self.previously_failed or self.not_run:
            return EXIT_FAILED_ITEMS
        return EXIT_OK


@attrs.define
class _Tally:
    """Counters of the run in progress (mutable; one task writes them)."""

    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    already_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    audio_seconds: float = 0.0
    error_codes: Counter[str] = attrs.field(factory=Counter)
    #: When the first result came back (trio time), None before.
    first_answer_at: float | None = None

    @property
    def written(self) -> int:
        return self.succeeded + self.failed + self.skipped


def _transcription_supported() -> bool:
    import engine

    return hasattr(engine, "TranscriptionRequest")


class _Feed:
    """Turns input items into ``client.map`` inputs; writes bad lines at once.

    Iterated (synchronously) by the client's feeder task. Remembers the line
    number of each item handed to the client until its result comes back, so
    errors found by the client can name the line too; that map holds only the
    items in flight.
    """

    def __init__(
        self,
        items: Iterable[InputLine],
        writer: OutputWriter,
        tally: _Tally,
        control: RunControl,
        *,
        default_model: str | None,
    ) -> None:
        self._items = items
        self._writer = writer
        self._tally = tally
        self._control = control
        self._default_model = default_model
        self._can_transcribe = _transcription_supported()
        self.line_numbers: dict[str, int] = {}
        #: When the first item went to the client (trio time): where the
        #: quota's use is measured from. None while nothing was sent.
        self.first_at: float | None = None
        self.exhausted = False
        self.unsupported = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        done = self._writer.done_ids
        for line in self._items:
            if self._control.stopping:
                return
            custom_id = line.output_id
            if custom_id in done:
                self._tally.already_done += 1
                continue
            if line.error is not None:
                self._fail(custom_id, InputError(line.error).code, line.error)
                continue
            assert line.url is not None and line.body is not None
            body = line.body
            if self._default_model is not None and "model" not in body:
                body = {**body, "model": self._default_model}
            if line.url == TRANSCRIPTIONS_URL:
                problem = _unreadable(body["file"])
                if problem is not None:
                    self._fail(custom_id, "invalid_input", f"line {line.line_no}: {problem}")
                    continue
                if not self._can_transcribe:
                    # Not written: once the client transcribes, a rerun sends these.
                    self.unsupported += 1
                    continue
            self.line_numbers[custom_id] = line.line_no
            if self.first_at is None:
                self.first_at = trio.current_time()
            yield {"custom_id": custom_id, "method": "POST", "url": line.url, "body": body}
        self.exhausted = True

    def _fail(self, custom_id: str, code: str, message: str) -> None:
        self._writer.write(error_record(custom_id, code=code, message=message))
        self._tally.failed += 1
        self._tally.error_codes[code] += 1


def _unreadable(path: str) -> str | None:
    """Why ``body.file`` cannot be sent, or None if it can be opened for reading."""
    try:
        with open(path, "rb"):
            pass
    except IsADirectoryError:
        return f"body.file {path!r} is a directory"
    except OSError as exc:
        return f"cannot read body.file {path!r}: {exc.strerror or exc}"
    return None


def _write_result(result: Any, feed: _Feed, writer: OutputWriter, tally: _Tally) -> bool:
    """Write ``result`` as one output line; False (nothing written) for ``run_stopped``."""
    line_no = feed.line_numbers.pop(result.id, None)
    error = result.error
    usage = getattr(result, "usage", None)
    if usage is not None:
        # chat usage names prompt/completion tokens; transcription usage input/output
        # tokens (models billed by tokens) and seconds (models billed by duration)
        tally.prompt_tokens += getattr(usage, "prompt_tokens", 0) or getattr(
            usage, "input_tokens", 0
        )
        tally.completion_tokens += getattr(usage, "completion_tokens", 0) or getattr(
            usage, "output_tokens", 0
        )
        tally.audio_seconds += getattr(usage, "seconds", 0.0)
    if getattr(result, "skipped", False):
        writer.write(_skipped_record(result))
        tally.skipped += 1
        return True
    if error is None:
        writer.write(
            success_record(
                result.id,
                status_code=result.status_code or 200,
                request_id=result.request_id,
                body=result.response or {},
            )
        )
        tally.succeeded += 1
        return True
    if error.code == _RUN_STOPPED:
        return False
    message = error.message
    if line_no is not None and not message.startswith("line "):
        message = f"line {line_no}: {message}"
    writer.write(
        error_record(
            result.id,
            code=error.code,
            message=message,
            status_code=result.status_code,
            request_id=result.request_id,
            body=result.response,
        )
    )
    tally.failed += 1
    tally.error_codes[error.code] += 1
    return True


def _skipped_record(result: Any) -> dict[str, Any]:
    """The output line of a recording skipped as too short: no request, not an error.

    An engine extension of the Batch-API format: ``response.status_code`` is
    null (nothing was sent) and the body says why, so that a rerun treats the
    id as done and a reader can tell it from an answer.
    """
    record = success_record(
        result.id,
        status_code=0,
        request_id=None,
        body={
            "skipped": True,
            "reason": result.skip_reason,
            "duration_seconds": result.duration_seconds,
        },
    )
    record["response"]["status_code"] = None
    return record


#: Bits per input byte of the filter :func:`find_duplicate_ids_compactly` uses
#: (a 200 MB input takes a 8 MiB filter). A Batch-API line is rarely under 64
#: bytes, so this is at least 16 bits per id: false candidates stay rare.
_FILTER_BITS_PER_BYTE = 0.25
_FILTER_MIN_BITS = 1 << 20
_FILTER_HASHES = 4


def find_duplicate_ids_compactly(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Like ``find_duplicate_ids``, but memory does not hold every id.

    Returns ``{custom_id: [line numbers]}`` for ids on more than one line
    (empty when all are unique). The first pass sets, per id, four bits of a
    Bloom filter sized from the file (a quarter of a bit per input byte, at
    least 128 KiB) and keeps only the ids whose bits were all set already:
    every real duplicate, plus rare false candidates. A second pass, run only
    when there are candidates, counts the candidates exactly. So memory is the
    filter plus the candidates instead of ~100 bytes per line. Blocking;
    streams the file (twice at most).
    """
    bits = max(_FILTER_MIN_BITS, int(os.path.getsize(path) * _FILTER_BITS_PER_BYTE))
    bits = 1 << (bits - 1).bit_length()  # a power of two: positions are masks
    mask = bits - 1
    seen = bytearray(bits // 8)
    candidates: set[str] = set()
    for line in read_batch_input(path):
        if line.custom_id is None:
            continue
        digest = hashlib.blake2b(line.custom_id.encode("utf-8"), digest_size=16).digest()
        already = True
        for index in range(_FILTER_HASHES):
            position = int.from_bytes(digest[4 * index : 4 * index + 4], "little") & mask
            byte, bit = position >> 3, 1 << (position & 7)
            if not seen[byte] & bit:
                already = False
                seen[byte] |= bit
        if already:
            candidates.add(line.custom_id)
    del seen
    if not candidates:
        return {}
    found: dict[str, list[int]] = {custom_id: [] for custom_id in candidates}
    for line in read_batch_input(path):
        if line.custom_id in found:
            found[line.custom_id].append(line.line_no)
    return {custom_id: lines for custom_id, lines in found.items() if len(lines) > 1}


def _count_failed_lines(path: str) -> int:
    """Error lines in an existing OUTPUT (streaming; unreadable lines ignored)."""
    failed = 0
    with open(path, "rb") as file:
        for raw in file:
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("error") is not None:
                failed += 1
    return failed


#: The quota book's per-minute dimensions, by the unit the summary names.
_MINUTE_DIMENSIONS = (("requests", "requests_per_minute"), ("tokens", "tokens_per_minute"))


def _quota_uses(
    client: Any, started: float | None, now: float, first_answer: float | None
) -> tuple[QuotaUse, ...]:
    """Each known per-minute quota's use since ``started`` (trio time), summed over limit groups.

    ``started`` is when the first request went out (None: none did, and
    nothing is said): a fixed window that ended before then held none of the
    run, and a full bucket gains nothing by waiting. ``first_answer`` is when
    the first result came back (see :func:`~engine._progress.windows_touched`).

    The limits, their refill mode and the end of a fixed window come from the
    client's statistics (:class:`~engine.GroupState`, configured or learned);
    a unit whose limit some group does not know yet is left out rather than
    guessed. Requests used are those the server admitted (sent, less 429s);
    tokens, those it reported. Does not checkpoint.
    """
    statistics = client.statistics()
    groups = statistics.limiter.groups
    if started is None or not groups:
        return ()
    elapsed = now - started
    answered = 0.0 if first_answer is None else first_answer - started
    found: dict[str, list[Allowance]] = {unit: [] for unit, _ in _MINUTE_DIMENSIONS}
    unknown: set[str] = set()
    for group in groups:
        for unit, key in _MINUTE_DIMENSIONS:
            dim = group.dimensions.get(key)
            limit = None if dim is None else dim.limit
            if limit is None or not 0 < limit < float("inf"):
                unknown.add(unit)
                continue
            assert dim is not None
            next_reset = None if dim.full_at is None else dim.full_at - started
            found[unit].append(
                allowance(unit, limit, dim.mode, elapsed, next_reset, first_answer=answered)
            )
    used = {
        "requests": statistics.sent - statistics.rate_limited,
        "tokens": statistics.prompt_tokens + statistics.completion_tokens,
    }
    uses = []
    for unit, _ in _MINUTE_DIMENSIONS:
        total = None if unit in unknown else combine_allowances(found[unit])
        if total is not None:
            uses.append(QuotaUse(used=used[unit], elapsed=elapsed, allowance=total))
    return tuple(uses)


def _limit(client_options: Mapping[str, Any], name: str) -> float | None:
    limits = client_options.get("limits")
    return getattr(limits, name, None) if isinstance(limits, Limits) else None


async def _run(
    *,
    input_label: str,
    make_items: Callable[[], Iterable[InputLine]],
    find_duplicates: Callable[[], Mapping[str, Sequence[int | str]]],
    output_path: str | os.PathLike[str],
    client_options: Mapping[str, Any] | None,
    errors_to: str | os.PathLike[str] | None,
    default_model: str | None,
    progress: Callable[[RunProgress], None] | None,
    control: RunControl | None,
    grace_period: float,
    progress_interval: float,
) -> RunSummary:
    client_options = dict(client_options or {})
    control = control or RunControl()
    output_path = os.fspath(output_path)
    errors_path = os.fspath(errors_to) if errors_to is not None else None

    # The pre-pass reads the whole input: off the event loop, so signals and
    # the caller's cancel scopes are still served.
    duplicates = await trio.to_thread.run_sync(find_duplicates, abandon_on_cancel=True)
    if duplicates:
        raise DuplicateIdsError(duplicates)
    # Opening reads the whole of an existing OUTPUT (the resume set): off the loop too.
    # The duplicate check made every id unique, so the writer need not remember
    # the ids it writes: memory stays at the ids OUTPUT held when the run began.
    writer = await trio.to_thread.run_sync(
        lambda: OutputWriter(output_path, errors_path=errors_path, remember_written=False)
    )
    existed = writer.repair.lines > 0
    try:
        done_at_start = writer.done_ids  # nothing writes until the count is over

        def count() -> tuple[int, int]:
            total = pending = 0
            for line in make_items():
                total += 1
                if line.output_id not in done_at_start:
                    pending += 1
            return total, pending

        total_lines, pending = await trio.to_thread.run_sync(count, abandon_on_cancel=True)
        previously_failed = (
            await trio.to_thread.run_sync(_count_failed_lines, output_path) if existed else 0
        )
        tally = _Tally()
        feed = _Feed(
            make_items(),
            writer,
            tally,
            control,
            default_model=default_model,
        )
        rpm_limit = _limit(client_options, "rpm")
        tpm_limit = _limit(client_options, "tpm")
        started = trio.current_time()
        fatal: FatalError | None = None
        client: Any = None

        with control._now_scope:
            async with open_client(**client_options) as client, trio.open_nursery() as nursery:
                meter = RateMeter()

                def snapshot() -> RunProgress:
                    clock = trio.current_time()
                    now = clock - started
                    tokens = tally.prompt_tokens + tally.completion_tokens
                    meter.sample(now, tally.written, tokens)
                    rates = meter.per_minute()
                    return RunProgress(
                        elapsed=now,
                        total=pending,
                        done=tally.written,
                        failed=tally.failed,
                        in_flight=client.statistics().limiter.in_flight,
                        requests_per_minute=rates[0] if rates else None,
                        tokens_per_minute=rates[1] if rates else None,
                        rpm_limit=rpm_limit,
                        tpm_limit=tpm_limit,
                        stopping=control.stopping,
                        quota=_quota_uses(client, feed.first_at, clock, tally.first_answer_at),
                    )

                if progress is not None:
                    nursery.start_soon(_report_progress, progress, snapshot, progress_interval)
                with trio.CancelScope() as results_scope:
                    nursery.start_soon(_grace, control, client, results_scope, grace_period)
                    try:
                        async for result in client.map(feed):
                            if tally.first_answer_at is None:
                                tally.first_answer_at = trio.current_time()
                            _write_result(result, feed, writer, tally)
                    except FatalError as exc:
                        fatal = exc
                if progress is not None:
                    progress(snapshot())
                nursery.cancel_scope.cancel()
    finally:
        writer.close()

    ended = trio.current_time()
    not_run = max(0, pending - tally.written)
    stopped: str | None = None
    if fatal is not None:
        stopped = fatal.message
    elif control.stopping and not_run:
        stopped = control.reason
    return RunSummary(
        input_path=input_label,
        output_path=output_path,
        errors_path=errors_path,
        total_lines=total_lines,
        already_done=total_lines - pending,
        succeeded=tally.succeeded,
        failed=tally.failed,
        error_codes=dict(tally.error_codes),
        skipped=tally.skipped,
        not_run=not_run,
        previously_failed=previously_failed,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        audio_seconds=tally.audio_seconds,
        elapsed=ended - started,
        stopped=stopped,
        fatal_code=fatal.code if fatal is not None else None,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        quota=(
            _quota_uses(client, feed.first_at, ended, tally.first_answer_at)
            if client is not None
            else ()
        ),
        # After the client closed: what the limiter still counts in flight here is a leak.
        client_statistics=client.statistics() if client is not None else None,
    )


async def _report_progress(
    progress: Callable[[RunProgress], None], snapshot: Callable[[], RunProgress], interval: float
) -> None:
    while True:
        progress(snapshot())
        await trio.sleep(interval)


async def _grace(
    control: RunControl, client: Any, results_scope: trio.CancelScope, grace_period: float
) -> None:
    """After a stop: wait for the requests in flight, at most ``grace_period``, then cancel."""
    await control._asked.wait()
    if not control.immediate:
        with trio.move_on_after(grace_period):
            # Requests waiting for a permit are not in flight: they are not
            # sent once nothing is (the next run sends them).
            # The client offers no event for "nothing in flight": poll, briefly.
            while client.statistics().limiter.in_flight > 0:  # noqa: ASYNC110
                await trio.sleep(_GRACE_POLL)
    results_scope.cancel()


async def run_file(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    client_options: Mapping[str, Any] | None = None,
    errors_to: str | os.PathLike[str] | None = None,
    default_model: str | None = None,
    progress: Callable[[RunProgress], None] | None = None,
    control: RunControl | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
) -> RunSummary:
    """Run a Batch-API input file into OUTPUT (see the module docstring); return the summary.

    Args:
        input_path: Batch-API input JSONL (chat completions and transcriptions).
        output_path: Batch-API output JSONL; appended to, and resumed from.
        client_options: keyword arguments for :func:`engine.open_client`
            (``base_url``, ``limits``, ``concurrency``, ``max_attempts``, ...).
            Default None: all defaults (the key comes from ``$OPENAI_API_KEY``).
        errors_to: also copy every error line to this file. Default None.
        default_model: ``body.model`` for lines that set none. Default None.
        progress: called with a :class:`~engine._progress.RunProgress` every
            ``progress_interval`` seconds (default 0.5) and once at the end.
        control: a :class:`RunControl` to stop the run from outside.
        grace_period: seconds a graceful stop waits for requests in flight
            (default 10).

    Raises:
        DuplicateIdsError: the input repeats a ``custom_id`` (nothing sent).
        OutputInUseError: another run holds OUTPUT.
        OSError: the input cannot be read.

    Checkpoints. A fatal error (401/403, insufficient_quota) does not raise:
    it stops the run and shows in the summary (``fatal_code``).
    """
    return await _run(
        input_label=os.fspath(input_path),
        make_items=lambda: read_batch_input(input_path),
        find_duplicates=lambda: find_duplicate_ids_compactly(input_path),
        output_path=output_path,
        client_options=client_options,
        errors_to=errors_to,
        default_model=default_model,
        progress=progress,
        control=control,
        grace_period=grace_period,
        progress_interval=progress_interval,
    )


async def run_audio(
    paths: Sequence[str],
    output_path: str | os.PathLike[str],
    *,
    model: str = "whisper-1",
    transcription_options: Mapping[str, Any] | None = None,
    client_options: Mapping[str, Any] | None = None,
    errors_to: str | os.PathLike[str] | None = None,
    progress: Callable[[RunProgress], None] | None = None,
    control: RunControl | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
) -> RunSummary:
    """Transcribe recordings (files and folders, see ``iter_audio_inputs``) into OUTPUT.

    Each recording becomes a Batch-API transcription line whose ``custom_id``
    is its path relative to the folder given (its file name for a file given
    directly) and whose body is ``{"model": model, **transcription_options,
    "file": path}``; from there it runs like :func:`run_file` (same resume,
    stop and summary). Raises ``FileNotFoundError`` for a path that does not
    exist and :class:`DuplicateIdsError` when two recordings would share an id.
    """
    paths = list(paths)
    options = dict(transcription_options or {})

    def make_items() -> Iterator[InputLine]:
        for number, audio in enumerate(iter_audio_inputs(paths), start=1):
            yield InputLine(
                line_no=number,
                custom_id=audio.custom_id,
                url=TRANSCRIPTIONS_URL,
                body={"model": model, **options, "file": audio.path},
            )

    return await _run(
        input_label=" ".join(paths),
        make_items=make_items,
        find_duplicates=lambda: find_duplicate_audio_ids(paths),
        output_path=output_path,
        client_options=client_options,
        errors_to=errors_to,
        default_model=None,
        progress=progress,
        control=control,
        grace_period=grace_period,
        progress_interval=progress_interval,
    )


# --------------------------------------------------------------------------- run_batch


def _request_id(item: Any, index: int) -> str:
    custom_id = getattr(item, "id", None)
    if custom_id is None and isinstance(item, Mapping):
        custom_id = item.get("custom_id")
    return str(custom_id) if custom_id is not None else str(index)


def _with_id(item: Any, custom_id: str) -> Any:
    if isinstance(item, Mapping):
        return item if item.get("custom_id") is not None else {**item, "custom_id": custom_id}
    if getattr(item, "id", "") is None:
        return attrs.evolve(item, id=custom_id)
    return item


def run_batch(requests: Iterable[Any], **client_options: Any) -> list[Any]:
    """Run ``requests`` to completion and return one result per request, in input order.

    The blocking convenience for scripts and notebooks (it calls ``trio.run``;
    from inside a trio program use ``open_client`` and ``client.map``).
    ``requests`` are :class:`~engine.ChatRequest` objects or Batch-API input
    dicts (and transcription requests where the client supports them); those
    without an id get their position (``"0"``, ``"1"``, ...). ``client_options``
    go to :func:`engine.open_client`.

    A failed request is a result with ``.error`` set. If a fatal error
    (401/403, insufficient_quota) stops the run, the requests it left unfinished
    get results with error code ``"run_stopped"``; nothing is raised for them.

    Raises:
        ValueError: two requests have the same id (nothing is sent).
    """
    items = list(requests)
    ids = [_request_id(item, index) for index, item in enumerate(items)]
    positions: dict[str, int] = {}
    repeated = []
    for index, custom_id in enumerate(ids):
        if custom_id in positions:
            repeated.append(custom_id)
        positions[custom_id] = index
    if repeated:
        raise ValueError(f"request ids must be unique; repeated: {sorted(set(repeated))}")
    results: list[Any] = [None] * len(items)

    async def collect() -> None:
        async with open_client(**client_options) as client:
            try:
                async for result in client.map(
                    _with_id(item, custom_id) for item, custom_id in zip(items, ids, strict=True)
                ):
                    position = positions.get(result.id)
                    if position is not None:
                        results[position] = result
            except FatalError:
                pass  # the unfinished ones are filled in below

    trio.run(collect)
    for index, result in enumerate(results):
        if result is None:
            results[index] = _stopped_result(items[index], ids[index])
    return results


def _stopped_result(item: Any, custom_id: str) -> ChatResult | TranscriptionResult:
    """The result of a request a fatal stop left unfinished (a transcription's or a chat's)."""
    model = getattr(item, "model", None)
    if model is None and isinstance(item, Mapping):
        body = item.get("body")
        model = body.get("model") if isinstance(body, Mapping) else None
    error = RunStoppedError("the run stopped before this request finished")
    transcription = isinstance(item, TranscriptionRequest) or (
        isinstance(item, Mapping) and item.get("url") in _TRANSCRIPTION_URLS
    )
    result_type = TranscriptionResult if transcription else ChatResult
    result = result_type(
        id=custom_id,
        model=str(model or ""),
        timings=Timings(queued_at=0.0),
        error=ErrorInfo.from_exception(error),
    )
    return result
