"""Batch runs: a Batch-API JSONL file (or a folder of recordings) through the client.

This is the loop under ``engine run`` and ``engine transcribe``, usable from
code too (``await engine.run_file(...)``), plus :func:`run_batch`, the
blocking convenience for scripts and notebooks.

How a run goes (:func:`run_file`, :func:`run_audio`):

1. OUTPUT is opened with :class:`~engine.app._jsonl.OutputWriter`: exclusive lock,
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

When OUTPUT cannot take a line (disk full, EIO, its directory removed, see
:mod:`engine.app._output`), no new request is sent from that moment: the client's
remaining permits are refused, the answers of requests already in flight are
held in memory, and the run waits, writing them as soon as OUTPUT takes them
(retrying with backoff), then sends the rest with a new client: a *round* of
sending per stretch of working output. Stopped while it waits (Ctrl-C), it
saves the held answers to ``OUTPUT.held``, which the next run writes into
OUTPUT before sending anything, and raises :class:`~engine.OutputError` with
the counts (the summary on it). An input that cannot be read any more ends
the run the same way, without raising: the summary's ``io_error`` says so.

Stopping (:class:`RunControl`, wired to SIGINT/SIGTERM by the CLI): the first
stop stops sending new requests and waits at most ``grace_period`` seconds
(default :data:`DEFAULT_GRACE_PERIOD`, 10 s) for the requests in flight, and
less as soon as nothing is in flight any more; what has not finished by then
is cancelled and left for the next run. A second stop cancels at once.
Either way every line written is whole.
"""

from __future__ import annotations

import collections
import hashlib
import os
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from statistics import median
from typing import Any

import attrs
import orjson
import trio

from engine._budget import BudgetExhaustedError
from engine._client import ClientStatistics, open_client
from engine._errors import EngineError, FatalError, InputError, OutputError, RunStoppedError
from engine._limiter import ENDPOINT_RETIRED
from engine._nurseries import open_service_nursery
from engine._pool import EndpointStatistics
from engine._quota import Limits
from engine._results import ChatResult, ErrorInfo, Timings, TranscriptionResult
from engine.app._audio_inputs import find_duplicate_audio_ids, iter_audio_inputs
from engine.app._jsonl import (
    TRANSCRIPTIONS_URL,
    InputLine,
    OutputWriter,
    error_record,
    read_batch_input,
    success_record,
)
from engine.app._output import (
    HeldOutput,
    SaveOutcome,
    WriteFailure,
    describe_os_error,
    retry_delay,
    sidecar_path,
)
from engine.app._progress import (
    Allowance,
    QuotaUse,
    RateMeter,
    RunProgress,
    allowance,
    combine_allowances,
)
from engine.app._summary import (
    DEFAULT_GRACE_PERIOD,
    EXIT_FAILED_ITEMS,
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_IO_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TERMINATED,
    RunSummary,
)
from engine.endpoints import EmbeddingResult, ResponseResult, input_kind

__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "EXIT_FAILED_ITEMS",
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_IO_ERROR",
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

#: Seconds between progress snapshots handed to the ``progress`` callback.
DEFAULT_PROGRESS_INTERVAL = 0.5

# How often the grace period checks whether anything is still in flight.
_GRACE_POLL = 0.05
# How often a run between rounds checks whether OUTPUT took the held answers.
_OUTPUT_POLL = 0.1
# Seconds between checks that OUTPUT was not deleted under the run (one fstat each).
_REMOVAL_CHECK_INTERVAL = 1.0
#: ``engine.endpoints.input_kind`` -> the result class of that endpoint.
_RESULT_TYPES: dict[str, type[ChatResult | TranscriptionResult | ResponseResult | EmbeddingResult]]
_RESULT_TYPES = {
    "chat": ChatResult,
    "responses": ResponseResult,
    "embeddings": EmbeddingResult,
    "transcription": TranscriptionResult,
}
#: Result class -> its endpoint, for the summary's lines per endpoint.
_RESULT_KINDS = {result_type: kind for kind, result_type in _RESULT_TYPES.items()}
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
    #: Lines written for the client's results, per endpoint (``"chat"``, ``"embeddings"``...).
    by_endpoint: Counter[str] = attrs.field(factory=Counter)
    #: When the first result came back (trio time), None before.
    first_answer_at: float | None = None
    #: Seconds to the first token of each streamed answer (8 bytes each: runs are long).
    ttfts: array[float] = attrs.field(factory=lambda: array("d"))

    @property
    def written(self) -> int:
        return self.succeeded + self.failed + self.skipped


class _Feed:
    """Turns input items into ``client.map`` inputs; writes bad lines at once.

    Iterated (synchronously) by the client's feeder task, once per round of
    sending (see :func:`_run`): each iteration picks up where the last one
    stopped. It stops yielding as soon as a stop is asked for or OUTPUT holds
    answers it could not write, *before* taking the next input line, so no
    line is skipped. Remembers each item handed to the client (its line
    number and request) until its result comes back, so errors found by the
    client can name the line, and an item the client gave back unsent
    (``run_stopped``) can be sent in the next round; that map holds only the
    items in flight. An input that cannot be read any more ends the feed
    (:attr:`read_error`).
    """

    def __init__(
        self,
        items: Iterable[InputLine],
        output: HeldOutput,
        tally: _Tally,
        control: RunControl,
        *,
        default_model: str | None,
    ) -> None:
        self._items = iter(items)
        self._output = output
        self._tally = tally
        self._control = control
        self._default_model = default_model
        #: ``custom_id`` -> (line number, request) of each item the client has now.
        self.in_client: dict[str, tuple[int, dict[str, Any]]] = {}
        # Items the client gave back unsent: yielded again before the next input line.
        self._requeued: collections.deque[dict[str, Any]] = collections.deque()
        #: When the first item went to the client (trio time): where the
        #: quota's use is measured from. None while nothing was sent.
        self.first_at: float | None = None
        self.exhausted = False
        #: Why the input could not be read to its end, None while it can.
        self.read_error: OSError | None = None
        #: Called when writing a bad line's error fails: sending must stop at once.
        self.on_hold: Callable[[], None] = _ignore_hold

    @property
    def has_more(self) -> bool:
        """Items may be left to send: given back unsent, or not read yet."""
        return bool(self._requeued) or not (self.exhausted or self.read_error is not None)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        done = self._output.done_ids
        while not (self._control.stopping or self._output.holding):
            if self._requeued:
                yield self._requeued.popleft()
                continue
            if self.exhausted or self.read_error is not None:
                return
            try:
                line = next(self._items)
            except StopIteration:
                self.exhausted = True
                return
            except OSError as exc:
                # The input went away mid-run (EIO, a network file system):
                # nothing more can be sent; what is in flight still finishes.
                self.read_error = exc
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
            request = {"custom_id": custom_id, "method": "POST", "url": line.url, "body": body}
            if line.endpoint is not None:  # pinned to one pool member
                request["endpoint"] = line.endpoint
            self.in_client[custom_id] = (line.line_no, request)
            if self.first_at is None:
                self.first_at = trio.current_time()
            yield request

    def give_back(self, custom_id: str) -> None:
        """The client returned this item unsent (``run_stopped``): send it in the next round."""
        entry = self.in_client.get(custom_id)
        if entry is not None:
            self._requeued.append(entry[1])

    def answered(self, custom_id: str) -> int | None:
        """Forget an item whose result came back; return its line number (None if unknown)."""
        entry = self.in_client.pop(custom_id, None)
        return entry[0] if entry is not None else None

    def _fail(self, custom_id: str, code: str, message: str) -> None:
        if not self._output.write(error_record(custom_id, code=code, message=message)):
            self.on_hold()
        self._tally.failed += 1
        self._tally.error_codes[code] += 1


def _ignore_hold() -> None:
    """The ``on_hold`` of a feed whose run has not wired it yet."""


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


def _write_result(result: Any, feed: _Feed, output: HeldOutput, tally: _Tally) -> bool:
    """Write ``result`` as one output line (or hold it); False (no line) for ``run_stopped``.

    A ``run_stopped`` result is an item the client never sent (it stopped
    sending): it goes back to the feed, for the next round if there is one.
    An ``endpoint_retired`` one (pinned to a pool member retired in this run)
    is not sent again in this run: no line, left for the next run.
    """
    error = result.error
    if error is not None and error.code == _RUN_STOPPED:
        feed.give_back(result.id)
        return False
    if error is not None and error.code == ENDPOINT_RETIRED:
        feed.answered(result.id)
        return False
    line_no = feed.answered(result.id)
    tally.by_endpoint[_RESULT_KINDS.get(type(result), "chat")] += 1
    usage = getattr(result, "usage", None)
    if usage is not None:
        # chat and embeddings usage names prompt/completion tokens; responses and
        # transcription usage input/output tokens (transcriptions billed by tokens)
        # and seconds (billed by duration)
        tally.prompt_tokens += getattr(usage, "prompt_tokens", 0) or getattr(
            usage, "input_tokens", 0
        )
        tally.completion_tokens += getattr(usage, "completion_tokens", 0) or getattr(
            usage, "output_tokens", 0
        )
        tally.audio_seconds += getattr(usage, "seconds", 0.0)
    ttft = getattr(getattr(result, "timings", None), "ttft", None)
    if ttft is not None:
        tally.ttfts.append(ttft)
    if getattr(result, "skipped", False):
        output.write(_skipped_record(result))
        tally.skipped += 1
        return True
    if error is None:
        output.write(
            success_record(
                result.id,
                status_code=result.status_code or 200,
                request_id=result.request_id,
                body=result.response or {},
            )
        )
        tally.succeeded += 1
        return True
    message = error.message
    if line_no is not None and not message.startswith("line "):
        message = f"line {line_no}: {message}"
    output.write(
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
    statistics: ClientStatistics | None,
    started: float | None,
    now: float,
    first_answer: float | None,
) -> tuple[QuotaUse, ...]:
    """Each known per-minute quota's use since ``started`` (trio time), summed over limit groups.

    ``started`` is when the first request went out (None: none did, and
    nothing is said): a fixed window that ended before then held none of the
    run, and a full bucket gains nothing by waiting. ``first_answer`` is when
    the first result came back (see :func:`~engine.app._progress.windows_touched`).

    The limits, their refill mode and the end of a fixed window come from the
    client's ``statistics`` (:class:`~engine.GroupState`, configured or learned;
    None: no client yet, nothing is said);
    a unit whose limit some group does not know yet is left out rather than
    guessed. Requests used are those the server admitted (sent, less 429s);
    tokens, those it reported. Does not checkpoint.
    """
    if statistics is None:
        return ()
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


def _combined_statistics(
    closed: Sequence[ClientStatistics], current: ClientStatistics | None
) -> ClientStatistics | None:
    """One client's worth of counters for every round of a run (None before the first).

    A run that waited for its output sends with a new client afterwards (see
    :func:`_run`): counts are added up over the clients; the limit groups,
    modes and in-flight bound are the latest client's. Does not checkpoint.
    """
    rounds = [*closed, *([current] if current is not None else [])]
    if not rounds:
        return None
    if len(rounds) == 1:
        return rounds[0]
    last = rounds[-1]

    # Each field named, not a dict of names: the type checker then checks every field's type.
    limiter = attrs.evolve(
        last.limiter,
        granted=sum(item.limiter.granted for item in rounds),
        waiting=sum(item.limiter.waiting for item in rounds),
        in_flight=sum(item.limiter.in_flight for item in rounds),
        rate_limited=sum(item.limiter.rate_limited for item in rounds),
        too_large=sum(item.limiter.too_large for item in rounds),
        tokens_reserved=sum(item.limiter.tokens_reserved for item in rounds),
        tokens_used=sum(item.limiter.tokens_used for item in rounds),
        spent=sum(item.limiter.spent for item in rounds),
        cost_reserved=sum(item.limiter.cost_reserved for item in rounds),
        max_cost=rounds[0].limiter.max_cost,
        latency_counts=tuple(
            map(sum, zip(*(item.limiter.latency_counts for item in rounds), strict=True))
        ),
        latency_sum=sum(item.limiter.latency_sum for item in rounds),
        rate_limited_by=dict(
            sum((Counter(item.limiter.rate_limited_by) for item in rounds), Counter())
        ),
    )
    return attrs.evolve(
        last,
        limiter=limiter,
        sent=sum(item.sent for item in rounds),
        succeeded=sum(item.succeeded for item in rounds),
        failed=sum(item.failed for item in rounds),
        retries=sum(item.retries for item in rounds),
        rate_limited=sum(item.rate_limited for item in rounds),
        prompt_tokens=sum(item.prompt_tokens for item in rounds),
        completion_tokens=sum(item.completion_tokens for item in rounds),
        skipped=sum(item.skipped for item in rounds),
        audio_seconds=sum(item.audio_seconds for item in rounds),
        spent=sum(item.spent for item in rounds),
        max_cost=rounds[0].max_cost,
        endpoints=_combined_endpoints(rounds),
    )


def _combined_endpoints(rounds: Sequence[ClientStatistics]) -> tuple[EndpointStatistics, ...]:
    """A pool's per-member counters added up over the rounds' clients (empty without a pool).

    Members are in the latest client's order (every round's client is opened
    with the same members); a member retired in any round shows as retired,
    with the latest reason (a new round's client starts with every member
    serving, so a refused key is retired again there at its first answer).
    """
    names = [member.name for member in rounds[-1].endpoints]
    if not names:
        return ()
    by_name: dict[str, list[EndpointStatistics]] = {name: [] for name in names}
    for item in rounds:
        for member in item.endpoints:
            by_name.setdefault(member.name, []).append(member)
    return tuple(
        EndpointStatistics(
            name=name,
            granted=sum(member.granted for member in members),
            sent=sum(member.sent for member in members),
            succeeded=sum(member.succeeded for member in members),
            rate_limited=sum(member.rate_limited for member in members),
            errors=sum(member.errors for member in members),
            prompt_tokens=sum(member.prompt_tokens for member in members),
            completion_tokens=sum(member.completion_tokens for member in members),
            retired=next(
                (member.retired for member in reversed(members) if member.retired is not None),
                None,
            ),
        )
        for name, members in by_name.items()
    )


@attrs.define
class _Rounds:
    """The rounds of sending of one run: the client of the one in progress, and the counts.

    Sending stops when OUTPUT cannot take an answer; once it takes the held
    answers, a new round starts with a new client (the stopped one cannot send
    again). Mutated by the run's tasks; nothing here checkpoints.
    """

    output: HeldOutput
    notify: Callable[[str], None]
    #: The client of the round in progress; None between rounds.
    client: Any = None
    #: The statistics of each finished round's client, taken once it had closed.
    closed: list[ClientStatistics] = attrs.field(factory=list)
    #: The round in progress has stopped sending (its client's limiter is stopped).
    sending_stopped: bool = False
    #: The failure the user was last told about (a new one gets its own paragraph).
    announced: WriteFailure | None = None

    def statistics(self) -> ClientStatistics | None:
        current = self.client.statistics() if self.client is not None else None
        return _combined_statistics(self.closed, current)

    def on_hold(self) -> None:
        """OUTPUT holds answers now: stop sending at once, and say so (once per failure)."""
        failure = self.output.failure
        if failure is None:
            return
        if self.client is not None and not self.sending_stopped:
            _stop_sending(self.client, f"{failure.path} cannot be written: {failure.reason}")
            self.sending_stopped = True
        if self.announced is None or (failure.path, failure.errno, failure.removed) != (
            self.announced.path,
            self.announced.errno,
            self.announced.removed,
        ):
            self.announced = failure
            paragraph = self.output.paragraph()
            if paragraph is not None:
                self.notify(paragraph)

    def on_flushed(self, written: int, more_to_send: bool) -> None:
        """OUTPUT took the held answers: say so."""
        if self.announced is None:
            return
        then = " Sending goes on." if more_to_send else ""
        self.notify(
            f"{self.output.path} takes lines again: the {written} held answer"
            f"{'' if written == 1 else 's'} are written.{then}"
        )
        self.announced = None

    def check_removed(self) -> None:
        """Put back an OUTPUT deleted under the run (see HeldOutput.check_removed); say so."""
        for path in self.output.check_removed():
            self.notify(
                f"{path} was deleted while the run was writing it; it is back, with every "
                "line written so far, and the run goes on."
            )
        self.on_hold()


def _options_with_budget_left(
    client_options: Mapping[str, Any], rounds: _Rounds
) -> tuple[Mapping[str, Any], FatalError | None]:
    """The options of the next round's client: its ``max_cost`` is what earlier rounds left.

    A run that waited for its output sends with a new client; the run's cap
    covers all of them, so each new client gets the cap less what the closed
    ones spent.  Returns a :class:`~engine.BudgetExhaustedError` instead when
    nothing is left.  Does not checkpoint.
    """
    cap = client_options.get("max_cost")
    if cap is None or not rounds.closed:
        return client_options, None
    left = cap - sum(item.spent for item in rounds.closed)
    if left <= 0:
        return client_options, BudgetExhaustedError(f"the spending cap ${cap:g} is reached")
    return {**client_options, "max_cost": left}, None


def _stop_sending(client: Any, why: str) -> None:
    """Send no more requests with ``client``; those in flight run on to their answers.

    Requests waiting for a permit, and retries of those in flight, come back
    as ``run_stopped`` results without being sent (the feed sends them in the
    next round). Does not checkpoint.
    """
    # The client has no public "stop sending, keep what is in flight" (its
    # fatal-error path does exactly that inside): its limiter's stop refuses
    # every waiting and future permit and leaves granted ones alone. Cancelling
    # the map instead would throw away answers already paid for.
    client._limiter.stop_nowait(FatalError(why, code=OutputError.default_code))


async def _keep_output(rounds: _Rounds, feed: _Feed, control: RunControl) -> None:
    """The run's OUTPUT keeper: write held answers when OUTPUT takes them; notice deletions.

    While nothing is held, checks every :data:`_REMOVAL_CHECK_INTERVAL`
    seconds (1 s) that OUTPUT was not deleted under the run. While answers
    are held, tries to write them after :func:`~engine.app._output.retry_delay`
    (0.5 s doubling to 5 s). Runs until cancelled; checkpoints.
    """
    output = rounds.output
    attempt = 0
    while True:
        if not output.holding:
            attempt = 0
            await trio.sleep(_REMOVAL_CHECK_INTERVAL)
            rounds.check_removed()
            continue
        await trio.sleep(retry_delay(attempt))
        attempt += 1
        held = output.held
        if output.flush():
            rounds.on_flushed(held, feed.has_more and not control.stopping)
        else:
            rounds.on_hold()  # a different failure gets its own paragraph


async def _wait_for_output(output: HeldOutput, control: RunControl) -> None:
    """Return once OUTPUT holds nothing, or a stop was asked for. Checkpoints."""
    # The keeper writes the held answers; HeldOutput has no event to wait on: poll, briefly.
    while output.holding and not control.stopping:  # noqa: ASYNC110
        await trio.sleep(_OUTPUT_POLL)


async def _send_round(
    *,
    client_options: Mapping[str, Any],
    feed: _Feed,
    output: HeldOutput,
    tally: _Tally,
    control: RunControl,
    grace_period: float,
    rounds: _Rounds,
) -> FatalError | None:
    """Send with a new client until the feed pauses or ends; write every answer that comes back.

    Returns the fatal error that stopped the client, if one did. The client's
    statistics join ``rounds.closed`` once it has closed. Checkpoints.
    """
    fatal: FatalError | None = None
    async with open_client(**client_options) as client:
        rounds.client = client
        rounds.sending_stopped = False
        try:
            async with open_service_nursery("run_file") as nursery:
                with trio.CancelScope() as results_scope:
                    nursery.start_soon(_grace, control, client, results_scope, grace_period)
                    try:
                        async for result in client.map(feed):
                            if tally.first_answer_at is None:
                                tally.first_answer_at = trio.current_time()
                            _write_result(result, feed, output, tally)
                            if output.holding:
                                rounds.on_hold()
                    except FatalError as exc:
                        fatal = exc
                nursery.cancel_scope.cancel()
        finally:
            rounds.client = None
    # After the client closed: what the limiter still counts in flight here is a leak.
    rounds.closed.append(client.statistics())
    return fatal


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
    notify: Callable[[str], None] | None,
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
    output = await trio.to_thread.run_sync(lambda: _open_output(output_path, errors_path))
    existed = output.writer.repair.lines > 0 or bool(output.absorbed)
    notify = notify or _ignore
    saved: SaveOutcome | None = None
    try:
        done_at_start = output.done_ids  # nothing writes until the count is over

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
        feed = _Feed(make_items(), output, tally, control, default_model=default_model)
        rounds = _Rounds(output, notify)
        feed.on_hold = rounds.on_hold
        rpm_limit = _limit(client_options, "rpm")
        tpm_limit = _limit(client_options, "tpm")
        max_cost: float | None = client_options.get("max_cost")
        started = trio.current_time()
        fatal: FatalError | None = None
        meter = RateMeter()

        def snapshot() -> RunProgress:
            clock = trio.current_time()
            now = clock - started
            tokens = tally.prompt_tokens + tally.completion_tokens
            meter.sample(now, tally.written, tokens)
            rates = meter.per_minute()
            statistics = rounds.statistics()
            client = rounds.client
            return RunProgress(
                elapsed=now,
                total=pending,
                done=tally.written,
                failed=tally.failed,
                in_flight=client.statistics().limiter.in_flight if client is not None else 0,
                requests_per_minute=rates[0] if rates else None,
                tokens_per_minute=rates[1] if rates else None,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
                stopping=control.stopping,
                quota=_quota_uses(statistics, feed.first_at, clock, tally.first_answer_at),
                output_waiting=output.waiting_line(),
                max_cost=max_cost,
                spent=0.0 if statistics is None else statistics.spent,
                client_statistics=statistics,
            )

        with control._now_scope:
            async with open_service_nursery("run_file") as nursery:
                if progress is not None:
                    nursery.start_soon(_report_progress, progress, snapshot, progress_interval)
                nursery.start_soon(_keep_output, rounds, feed, control)
                if output.absorbed and not output.holding:
                    notify(
                        f"wrote into {output.path} the {output.absorbed} answers an earlier run "
                        f"saved in {output.sidecar}; they are not sent again."
                    )
                rounds.on_hold()  # a sidecar OUTPUT could not take yet: say so
                while True:
                    if feed.has_more and not output.holding and not control.stopping:
                        options, fatal = _options_with_budget_left(client_options, rounds)
                        if fatal is not None:
                            break
                        fatal = await _send_round(
                            client_options=options,
                            feed=feed,
                            output=output,
                            tally=tally,
                            control=control,
                            grace_period=grace_period,
                            rounds=rounds,
                        )
                    # A deletion since the keeper last looked must not go unnoticed at the end.
                    rounds.check_removed()
                    if output.holding:
                        await _wait_for_output(output, control)
                    more = feed.has_more and fatal is None and feed.read_error is None
                    if output.holding or not more or control.stopping:
                        break
                if output.holding:
                    # Stopped while waiting: one last try, in case room came back just now.
                    held = output.held
                    if output.flush():
                        rounds.on_flushed(held, more_to_send=False)
                if progress is not None:
                    progress(snapshot())
                nursery.cancel_scope.cancel()
    except BaseException:
        # Cancelled, a second Ctrl-C, a bug: what is held must still not be lost.
        _save_and_close_quietly(output, notify)
        raise
    if output.holding:
        saved = output.save()
    close_error: OSError | None = None
    try:
        output.close()
    except OSError as exc:
        close_error = exc

    ended = trio.current_time()
    kept = saved.kept if saved is not None else 0
    lost = saved.lost if saved is not None else 0
    # Lines a deleted OUTPUT held that could be saved nowhere: their ids are sent again too.
    lines_lost = saved.written_lost if saved is not None else 0
    not_run = max(0, pending - tally.written + lost + lines_lost)
    stopped: str | None = None
    io_error: str | None = None
    failure = output.failure
    if failure is not None:
        io_error = _output_error_paragraph(failure, saved, not_run)
        stopped = f"{failure.path}: {failure.reason}"
    elif close_error is not None:
        failure = WriteFailure.from_os_error(close_error, default_path=output_path)
        io_error = (
            f"{output_path} could not be saved to disk when the run ended ({failure.reason}): "
            "its last lines may be missing. Run the same command again once the disk is "
            "sound: it sends only what OUTPUT lacks."
        )
        stopped = f"{failure.path}: {failure.reason}"
    elif feed.read_error is not None:
        io_error = describe_os_error(
            feed.read_error,
            role="INPUT",
            path=input_label,
            action=(
                "No new requests were sent after that; the answers of those in flight are "
                f"written. Resume once {input_label} can be read: only what has no output "
                "line is sent."
            ),
        )
        stopped = f"cannot read {input_label}: {_reason_of(feed.read_error)}"
    elif fatal is not None:
        stopped = fatal.message
    elif control.stopping and not_run:
        stopped = control.reason
    statistics = rounds.statistics()
    summary = RunSummary(
        input_path=input_label,
        output_path=output_path,
        errors_path=errors_path,
        total_lines=total_lines,
        already_done=total_lines - pending,
        succeeded=tally.succeeded,
        failed=tally.failed,
        error_codes=dict(tally.error_codes),
        by_endpoint=dict(tally.by_endpoint),
        skipped=tally.skipped,
        not_run=not_run,
        previously_failed=previously_failed,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        audio_seconds=tally.audio_seconds,
        ttft_p50=median(tally.ttfts) if tally.ttfts else None,
        elapsed=ended - started,
        stopped=stopped,
        fatal_code=fatal.code if fatal is not None else None,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        quota=(
            _quota_uses(statistics, feed.first_at, ended, tally.first_answer_at)
            if statistics is not None
            else ()
        ),
        client_statistics=statistics,
        held_saved=kept,
        held_lost=lost,
        sidecar_path=output.sidecar if kept else None,
        io_error=io_error,
        max_cost=max_cost,
        spent=0.0 if statistics is None else statistics.spent,
    )
    if failure is not None:
        raise OutputError(
            io_error or stopped or "OUTPUT could not be written",
            path=failure.path,
            errno=failure.errno,
            written=output.lines_written,
            kept=kept,
            lost=lost,
            not_run=not_run,
            sidecar=output.sidecar if kept else None,
            summary=summary,
        )
    return summary


def _ignore(_message: str) -> None:
    """The ``notify`` of a run nobody listens to."""


def _reason_of(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _open_output(output_path: str, errors_path: str | None) -> HeldOutput:
    """Open OUTPUT for a run: the writer, its held lines, and any sidecar a stopped run left.

    Blocking (reads OUTPUT and the sidecar). Raises :class:`OutputError`
    (nothing sent yet, ``summary`` None) when OUTPUT, the errors file or the
    sidecar cannot be opened or read; :class:`~engine.app._jsonl.OutputInUseError`
    when another run holds OUTPUT.
    """
    try:
        writer = OutputWriter(output_path, errors_path=errors_path, remember_written=False)
    except OSError as exc:
        raise _refused(exc, output_path, errors_path) from exc
    try:
        output = HeldOutput(writer)
        output.absorb_sidecar()
    except OSError as exc:
        writer.close()
        raise _refused(exc, sidecar_path(output_path), errors_path) from exc
    return output


def _refused(exc: OSError, path: str, errors_path: str | None) -> OutputError:
    """The error of a run that could not open its output: nothing was sent."""
    name = os.fsdecode(exc.filename) if exc.filename is not None else path
    role = "the errors file" if errors_path is not None and name == errors_path else "OUTPUT"
    if isinstance(exc, IsADirectoryError):
        action = "Nothing was sent. Give -o the path of a file (it is created if missing)."
    else:
        action = (
            "Nothing was sent. Check that the path exists and that this user may write "
            "there, or choose another file."
        )
    return OutputError(
        describe_os_error(exc, role=role, path=name, action=action),
        path=name,
        errno=exc.errno,
    )


def _output_error_paragraph(failure: WriteFailure, saved: SaveOutcome | None, not_run: int) -> str:
    """What happened to every answer of a run that stopped while OUTPUT could not be written."""
    what = "was deleted and could not be put back" if failure.removed else "could not be written"
    parts = [f"The run stopped while {failure.path} {what} ({failure.reason})."]
    if saved is not None:
        if saved.kept:
            parts.append(
                f"{saved.kept} answer{'s' if saved.kept != 1 else ''} it held "
                f"{'are' if saved.kept != 1 else 'is'} saved in {saved.path}: the next run "
                "writes them into the output and does not send them again."
            )
        if saved.lost:
            reason = f" ({saved.error.reason})" if saved.error is not None else ""
            parts.append(
                f"{saved.lost} answer{'s' if saved.lost != 1 else ''} could not be saved "
                f"anywhere{reason} and will be sent again."
            )
        if saved.written_kept or saved.written_lost:
            parts.append(
                f"Of the {saved.written_kept + saved.written_lost} lines the deleted file "
                f"held, {saved.written_kept} are saved in {saved.path} and "
                f"{saved.written_lost} are lost (their ids will be sent again)."
            )
    parts.append(
        f"{not_run} item{'s have' if not_run != 1 else ' has'} no answer yet. "
        f"{_action_sentence(failure)} then run the same command again."
    )
    return " ".join(parts)


def _action_sentence(failure: WriteFailure) -> str:
    """The start of the closing sentence: what to fix before running again."""
    if failure.no_space:
        return "Free some space,"
    if failure.removed and failure.where == failure.path:
        return f"Move the other file now at {failure.path} away,"
    if failure.removed:
        return f"Make {os.path.dirname(os.path.abspath(failure.path))} a writable directory again,"
    return "Fix the error,"


def _save_and_close_quietly(output: HeldOutput, notify: Callable[[str], None]) -> None:
    """On the way out of a run that is raising: save held answers, close; never raise."""
    try:
        if output.holding:
            saved = output.save()
            if saved.kept or saved.lost:
                notify(
                    f"{saved.kept} held answers saved in {saved.path}; {saved.lost} lost "
                    "(they will be sent again)."
                )
    except Exception:
        pass  # the exception going up matters more
    try:
        output.close()
    except Exception:
        pass


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
    notify: Callable[[str], None] | None = None,
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
        progress: called with a :class:`~engine.app._progress.RunProgress` every
            ``progress_interval`` seconds (default 0.5) and once at the end.
        notify: called with a paragraph for the user when something happens
            to OUTPUT: a write failed and the run waits (what, and what to do),
            OUTPUT takes lines again, OUTPUT was deleted and put back.
            Default None: not told (``RunProgress.output_waiting`` still says
            it while the run waits).
        control: a :class:`RunControl` to stop the run from outside.
        grace_period: seconds a graceful stop waits for requests in flight
            (default 10).

    Raises:
        DuplicateIdsError: the input repeats a ``custom_id`` (nothing sent).
        OutputInUseError: another run holds OUTPUT.
        OutputError: OUTPUT could not be opened (nothing sent; ``summary``
            None), or the run was stopped while OUTPUT could not be written:
            the held answers are saved in the sidecar when possible; the
            counts and the summary are on the error.
        OSError: the input cannot be read at the start (nothing sent).

    Checkpoints. A fatal error (401/403, insufficient_quota) does not raise:
    it stops the run and shows in the summary (``fatal_code``); nor does an
    input that cannot be read any more mid-run (``io_error``, exit status 4).
    A write that fails does not raise either: the run waits for OUTPUT.
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
        notify=notify,
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
    notify: Callable[[str], None] | None = None,
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
        notify=notify,
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


def _stopped_result(
    item: Any, custom_id: str
) -> ChatResult | TranscriptionResult | ResponseResult | EmbeddingResult:
    """The result of a request a fatal stop left unfinished, of the kind it was meant for."""
    model = getattr(item, "model", None)
    if model is None and isinstance(item, Mapping):
        body = item.get("body")
        model = body.get("model") if isinstance(body, Mapping) else None
    error = RunStoppedError("the run stopped before this request finished")
    result_type = _RESULT_TYPES[input_kind(item)]
    result = result_type(
        id=custom_id,
        model=str(model or ""),
        timings=Timings(queued_at=0.0),
        error=ErrorInfo.from_exception(error),
    )
    return result
