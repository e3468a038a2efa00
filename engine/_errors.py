"""The exception tree.

::

    EngineError                      anything quota-engine raises on purpose
    ├── BackgroundTaskError          a task the engine runs in the background failed
    ├── OutputError                  a batch run's OUTPUT could not be opened or written
    ├── RequestError                 one request failed; other work goes on
    │   ├── RequestTooLargeError     its cost exceeds a limit; never sent (or 429 "too large")
    │   ├── BadRequestError          400 / 404 / 422 / other non-retryable 4xx from the server
    │   ├── RetriesExhaustedError    408 / 409 / 5xx / transport errors, max_attempts spent
    │   ├── RateLimitWaitExceeded    429s went on longer than the wait budget
    │   ├── ResponseValidationError  malformed body, refusal, truncated or mismatching output
    │   ├── InputError               bad local input (unreadable file, bad request line)
    │   ├── StreamInterruptedError   a stream broke off after it began; never retried
    │   └── RunStoppedError          never finished because the run was stopped
    └── FatalError                   the whole client stops: no item can succeed
        ├── AuthenticationError      401 / 403: the key is wrong for every item
        └── InsufficientQuotaError   429 insufficient_quota / billing: the account is out

Every error has a short ``code`` (used as ``error.code`` in Batch-API output
lines) and never carries the API key: messages are built from the server's
error text, which is scrubbed of anything that looks like a key.
"""

from __future__ import annotations

import re
from typing import Any, Self, TypedDict, Unpack

__all__ = [
    "AuthenticationError",
    "BackgroundTaskError",
    "BadRequestError",
    "EngineError",
    "FatalError",
    "InputError",
    "InsufficientQuotaError",
    "OutputError",
    "RateLimitWaitExceeded",
    "RequestError",
    "RequestTooLargeError",
    "ResponseValidationError",
    "RetriesExhaustedError",
    "RunStoppedError",
    "StreamInterruptedError",
    "redact",
]

# OpenAI keys (sk-..., sk-proj-...), and bearer tokens in echoed headers.
_KEY_PATTERN = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-\.]{6,})")


def redact(text: str, *secrets: str | None) -> str:
    """Return ``text`` with API-key-shaped strings and each of ``secrets`` masked."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_PATTERN.sub("***", text)


class _ErrorDetails(TypedDict, total=False):
    """The keyword arguments every subclass passes on to ``EngineError.__init__``."""

    code: str | None
    status_code: int | None
    request_id: str | None


class EngineError(Exception):
    """Base class of every error quota-engine raises on purpose.

    Attributes:
        message: the human-readable reason (also ``str(error)``).
        code: short machine-readable code, e.g. ``"rate_limit_exceeded"``.
        status_code: the HTTP status that caused it, or None if none was received.
        request_id: the server's ``x-request-id``, when known.
    """

    default_code = "engine_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status_code = status_code
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[type[Self], tuple[str], dict[str, Any]]:
        # keep every attribute (code, raw, ...) through pickling
        return (type(self), (self.message,), self.__dict__.copy())


class BackgroundTaskError(EngineError):
    """A task the engine runs in the background failed (a bug, or a broken dependency).

    Raised by the engine's public context managers and functions that run
    tasks of their own (``open_client``, ``run_batch``, ...) instead of an
    exception group: the group of what failed is the ``__cause__``.  An
    exception raised in the caller's own ``async with`` body leaves as it
    was; it ends up in that group only when a background task failed too.

    Attributes:
        owner: the entry point whose background task failed, e.g. ``"open_client"``.
    """

    default_code = "background_task_failed"

    def __init__(self, message: str, *, owner: str = "", **kwargs: Unpack[_ErrorDetails]) -> None:
        super().__init__(message, **kwargs)
        self.owner = owner


class OutputError(EngineError):
    """A batch run's OUTPUT could not be opened, or the run stopped while it could not be written.

    Raised by ``engine.run_file`` / ``engine.run_audio`` (``engine run``).
    A write that fails mid-run does not raise: the run stops sending, holds
    the answers in flight and waits for OUTPUT. This is raised when the run
    is stopped during that wait (or OUTPUT cannot be saved to disk at the
    end), after the held answers were saved next to OUTPUT where possible.
    ``message`` says what happened to every item and what to do.

    Attributes:
        path: the file that failed (OUTPUT, the errors file, the sidecar).
        errno: the error number (``errno.ENOSPC``, ``errno.EIO``, ...), None if unknown.
        written: lines this run wrote to OUTPUT.
        kept: answers saved in ``sidecar``: the next run writes them, never resends them.
        lost: answers received but neither written nor saved: sent again.
        not_run: items with no answer kept anywhere (``lost`` included): sent again.
        sidecar: the file the ``kept`` answers are in; None when there are none.
        summary: the run's ``RunSummary``; None when OUTPUT could not be
            opened (nothing was sent).
    """

    default_code = "output_error"

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        errno: int | None = None,
        written: int = 0,
        kept: int = 0,
        lost: int = 0,
        not_run: int = 0,
        sidecar: str | None = None,
        summary: object = None,
        **kwargs: Unpack[_ErrorDetails],
    ) -> None:
        super().__init__(message, **kwargs)
        self.path = path
        self.errno = errno
        self.written = written
        self.kept = kept
        self.lost = lost
        self.not_run = not_run
        self.sidecar = sidecar
        self.summary = summary


class RequestError(EngineError):
    """One request failed; the client and the other requests go on."""

    default_code = "request_failed"


class RequestTooLargeError(RequestError):
    """The request's cost exceeds a per-minute or per-day limit of its group.

    Raised before sending (checked locally), or on a 429 "Request too large".
    """

    default_code = "request_too_large"


class BadRequestError(RequestError):
    """The server rejected the request itself (400, 404, 422, other 4xx)."""

    default_code = "invalid_request"


class RetriesExhaustedError(RequestError):
    """Transient failures (408, 409, 5xx, connection errors) on every attempt."""

    default_code = "retries_exhausted"


class RateLimitWaitExceeded(RequestError):
    """The request kept drawing 429s for longer than the client's wait budget."""

    default_code = "rate_limit_exceeded"


class ResponseValidationError(RequestError):
    """The answer could not be used: malformed JSON, missing fields, a refusal,
    truncated output, or structured output that does not match the schema.

    Attributes:
        raw: the raw content received (for debugging), or None.
    """

    default_code = "invalid_response"

    def __init__(
        self, message: str, *, raw: str | None = None, **kwargs: Unpack[_ErrorDetails]
    ) -> None:
        super().__init__(message, **kwargs)
        self.raw = raw


class InputError(RequestError):
    """Local input is unusable: an unreadable file, a malformed request line."""

    default_code = "invalid_input"


class StreamInterruptedError(RequestError):
    """A streamed answer broke off after it had begun: never retried.

    Raised (``client.stream``) or set on the failed result (``map``, ``engine
    run``) when the connection dropped or timed out mid-stream, the body
    ended before the answer was complete, or the server sent an error event
    mid-stream.  Output may already have reached the caller, so sending the
    request again silently could show it twice: the caller decides.

    Attributes:
        raw: the output text received before the stream broke off (a failed
            result keeps it as ``raw_content``).
    """

    default_code = "stream_interrupted"

    def __init__(self, message: str, *, raw: str = "", **kwargs: Unpack[_ErrorDetails]) -> None:
        super().__init__(message, **kwargs)
        self.raw = raw


class RunStoppedError(RequestError):
    """The request was not finished because the client stopped (fatal error or cancel)."""

    default_code = "run_stopped"


class FatalError(EngineError):
    """No request can succeed: the client stops sending at once."""

    default_code = "fatal"


class AuthenticationError(FatalError):
    """401 / 403: the API key is missing, wrong, or lacks access."""

    default_code = "invalid_api_key"


class InsufficientQuotaError(FatalError):
    """429 ``insufficient_quota`` (or a billing error): the account is out of credit."""

    default_code = "insufficient_quota"
