"""Result records: what every request yields, success or failure (pydantic, exportable)."""

from __future__ import annotations

import math
from typing import Any, Protocol

import attrs
import pydantic

from engine._errors import EngineError

__all__ = [
    "AudioUsage",
    "ChatResult",
    "ErrorInfo",
    "GapSummary",
    "Timings",
    "TranscriptionResult",
    "Usage",
]


class Usage(pydantic.BaseModel):
    """Tokens a request used, as the server reported them (zeros when it failed)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Timings(pydantic.BaseModel):
    """When things happened, in wall-clock seconds since the epoch (``time.time()``).

    Attributes:
        queued_at: when the request was handed to the client.
        sent_at: when its last attempt was sent (the real call time), or None
            if it was never sent.
        latency: seconds from sending the last attempt to its full response.
        finished_at: when the result was ready.
        ttft: streamed answers (``client.stream``, ``"stream": true`` bodies):
            seconds from sending the last attempt to the first output token
            (content, refusal, reasoning or tool-call text); None otherwise.
            ``latency`` is then the time to the end of the stream.
        itl: streamed answers: the gaps, in seconds, between consecutive
            output deltas (inter-token latency; one entry fewer than the
            deltas); None otherwise.  :attr:`itl_summary` summarises it.
    """

    queued_at: float
    sent_at: float | None = None
    latency: float | None = None
    finished_at: float | None = None
    ttft: float | None = None
    itl: list[float] | None = None

    @property
    def itl_summary(self) -> GapSummary | None:
        """Count, mean, p50, p90, p99 and max of :attr:`itl` (None when there is none)."""
        return None if not self.itl else GapSummary.of(self.itl)


@attrs.frozen
class GapSummary:
    """A summary of a stream's inter-token gaps, in seconds (see ``Timings.itl_summary``).

    Percentiles are nearest-rank: the smallest gap with at least that share
    of the gaps at or below it.
    """

    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, gaps: list[float]) -> GapSummary:
        """The summary of ``gaps`` (at least one)."""
        ordered = sorted(gaps)
        count = len(ordered)

        def rank(share: float) -> float:
            return ordered[max(math.ceil(share * count), 1) - 1]

        return cls(
            count=count,
            mean=sum(ordered) / count,
            p50=rank(0.5),
            p90=rank(0.9),
            p99=rank(0.99),
            max=ordered[-1],
        )


class ErrorInfo(pydantic.BaseModel):
    """Why a request failed: a short ``code``, a message, and the HTTP status if any.

    Made by :meth:`from_exception`, it also keeps the exception itself (not
    serialized), which the result's ``exception`` / ``raise_for_error`` use.
    """

    code: str
    message: str
    status_code: int | None = None
    type: str = "EngineError"
    # Here rather than on the results: a private attribute costs every model
    # built a Python-level init call, and most results are successes.
    _exception: EngineError | None = pydantic.PrivateAttr(default=None)

    @classmethod
    def from_exception(cls, error: EngineError) -> ErrorInfo:
        """The error info for ``error``, keeping ``error`` for re-raising."""
        info = cls(
            code=error.code,
            message=error.message,
            status_code=error.status_code,
            type=type(error).__name__,
        )
        info._exception = error
        return info


class _HasError(Protocol):
    @property
    def error(self) -> ErrorInfo | None: ...


class _ErrorAccess:
    """Success and the failed request's exception, on every result kind (each has ``error``).

    A plain mixin, no fields of its own: pydantic keeps each model's fields in
    the order the model declares them.
    """

    @property
    def ok(self: _HasError) -> bool:
        """True when the request succeeded (a transcription skipped on purpose too)."""
        return self.error is None

    @property
    def exception(self: _HasError) -> EngineError | None:
        """The exception behind :attr:`error` (for re-raising), or None."""
        return None if self.error is None else self.error._exception

    def raise_for_error(self: _HasError) -> None:
        """Raise the request's :class:`~engine.EngineError` if it failed."""
        error = self.error
        if error is not None and error._exception is not None:
            raise error._exception


class ChatResult(_ErrorAccess, pydantic.BaseModel):
    """The outcome of one chat request.

    Attributes:
        id: the caller's id (Batch API ``custom_id``).
        output: the answer text, an instance of the request's
            ``response_model``, or None when the request failed.
        model: the model that answered (as the server named it), else the one asked for.
        usage: token counts reported by the server.
        attempts: HTTP attempts made (429 waits count as attempts here too).
        timings: see :class:`Timings`.
        error: None on success, else :class:`ErrorInfo`.
        status_code: HTTP status of the last response, None if none arrived.
        request_id: the server's ``x-request-id`` of the last response.
        response: the last response body as parsed JSON (kept for Batch-API
            output files), or None.
        raw_content: the message content as received (for debugging a
            structured output that failed to parse, or a malformed body), or None.
        input: the request's messages as sent (a list of message dicts), or
            None when the input could not be turned into a request.  Left out
            of ``repr``.
    """

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    id: str
    output: Any = None
    model: str
    usage: Usage = pydantic.Field(default_factory=Usage)
    attempts: int = 0
    timings: Timings
    error: ErrorInfo | None = None
    status_code: int | None = None
    request_id: str | None = None
    response: dict[str, Any] | None = pydantic.Field(default=None, repr=False)
    raw_content: str | None = pydantic.Field(default=None, repr=False)
    # Any: stored as given, without re-validating (and copying) every message.
    input: Any = pydantic.Field(default=None, repr=False)


class AudioUsage(pydantic.BaseModel):
    """What a transcription used.

    Attributes:
        seconds: audio seconds billed, as the server reported them (``usage``
            of type ``duration``); when it reported none (``text`` format,
            older servers), the duration read locally.  0 when nothing was sent.
        input_tokens / output_tokens / total_tokens: token usage, for models
            billed by tokens (``usage`` of type ``tokens``); 0 otherwise.
    """

    seconds: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class TranscriptionResult(_ErrorAccess, pydantic.BaseModel):
    """The outcome of one transcription request.

    Attributes:
        id: the caller's id (Batch API ``custom_id``).
        file: the name of the uploaded file (the path's base name, or the name
            given for bytes and file objects).
        duration_seconds: the audio's duration as read locally with mutagen,
            or None when it could not be read.
        text: the transcript, or None (failed or skipped).
        model: the model asked for (``"whisper-1"`` by default).
        usage: see :class:`AudioUsage`.
        attempts: HTTP attempts made (0 when skipped or refused locally).
        timings: see :class:`Timings`; ``sent_at`` is the real upload time and
            ``latency`` the transcription time of the last attempt.
        skipped: True when the file was shorter than ``min_seconds`` and no
            request was sent; ``skip_reason`` says why.  A skipped result is
            not an error (``ok`` is True, ``text`` is None).
        skip_reason: why it was skipped, or None.
        error: None on success, else :class:`ErrorInfo`.
        status_code: HTTP status of the last response, None if none arrived.
        request_id: the server's ``x-request-id`` of the last response.
        response: the last response body (parsed JSON; ``{"text": ...}`` for
            the ``text``, ``srt`` and ``vtt`` formats), kept for Batch-API
            output files, or None.
    """

    id: str
    file: str = ""
    duration_seconds: float | None = None
    text: str | None = None
    model: str
    usage: AudioUsage = pydantic.Field(default_factory=AudioUsage)
    attempts: int = 0
    timings: Timings
    skipped: bool = False
    skip_reason: str | None = None
    error: ErrorInfo | None = None
    status_code: int | None = None
    request_id: str | None = None
    response: dict[str, Any] | None = pydantic.Field(default=None, repr=False)

    @property
    def output(self) -> str | None:
        """The transcript (same as :attr:`text`), so both result kinds read alike."""
        return self.text
