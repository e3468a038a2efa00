"""What to do with a response or a transport failure: the failure policy.

Pure and synchronous (sans-IO): no trio or httpx import.  The client feeds in
what it received and gets back a :class:`Verdict`; the limiter and the worker
loop act on ``verdict.action``.  The policy (docs/design.md, "Failure policy"):

==========================================  ======================================
server says                                 action
==========================================  ======================================
2xx                                         ``SUCCESS``
429 ``insufficient_quota`` / billing codes  ``FATAL`` (the account is out)
429 "Request too large"                     ``TOO_LARGE`` (this item fails)
other 429                                   ``RATE_LIMITED`` (cool down, retry)
408, 409, 5xx, connection errors            ``RETRY`` (backoff with full jitter)
401, 403                                    ``FATAL`` (the key is wrong)
413                                         ``TOO_LARGE``
400, 404, 422, other 4xx, 1xx, 3xx          ``FAIL`` with the server's message
``x-should-retry: true``                    ``FAIL`` -> ``RETRY``
``x-should-retry: false``                   ``RETRY`` / ``RATE_LIMITED`` -> ``FAIL``
==========================================  ======================================

``x-should-retry`` never makes a ``FATAL`` verdict retryable, and never turns
``TOO_LARGE`` into a retry (the same request cannot fit next time either).
Quota and billing codes are ``FATAL`` whatever 4xx status carries them.

Error bodies are OpenAI-shaped, ``{"error": {"message", "type", "param",
"code"}}``; anything else (empty, HTML from a proxy, truncated JSON, a huge
blob) is tolerated and described instead.  Every message passes through
:func:`engine._errors.redact`, so no API key leaks into errors or logs.

None of these functions checkpoint.
"""

from __future__ import annotations

import enum
import errno
import random
import sys
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from engine._errors import (
    AuthenticationError,
    BadRequestError,
    EngineError,
    FatalError,
    InsufficientQuotaError,
    RateLimitWaitExceeded,
    RequestTooLargeError,
    RetriesExhaustedError,
    redact,
)
from engine._headers import parse_retry_after, parse_should_retry, parse_try_again_in

__all__ = [
    "QUOTA_CODES",
    "Action",
    "Verdict",
    "backoff_delay",
    "classify_response",
    "classify_transport_error",
    "error_from_verdict",
]


class Action(enum.Enum):
    """What the caller does next with a request."""

    #: The response is usable.
    SUCCESS = "success"
    #: A transient failure: retry after :func:`backoff_delay`, up to ``max_attempts``.
    RETRY = "retry"
    #: A 429: cool the limit group down until ``retry_after`` / the reset, then retry.
    RATE_LIMITED = "rate_limited"
    #: The request can never fit the limit: fail this item, send the others.
    TOO_LARGE = "too_large"
    #: The server rejected this request: fail this item with the server's message.
    FAIL = "fail"
    #: No request can succeed (bad key, no quota): stop the whole client.
    FATAL = "fatal"


#: Error codes (or types) meaning the account, not the request, is the problem.
QUOTA_CODES = frozenset(
    {
        "insufficient_quota",
        "billing_hard_limit_reached",
        "billing_not_active",
        "access_terminated",
        "account_deactivated",
    }
)

#: Bodies longer than this are not parsed as JSON: real error bodies are tiny,
#: and a megabyte of HTML from a proxy must not cost a megabyte of parsing.
MAX_PARSED_BODY = 64 * 1024
#: Longest server message kept in a verdict (the rest is cut, marked with "...").
MAX_MESSAGE = 2000
# Characters of a non-JSON body quoted in the fallback message.
_BODY_SNIPPET = 200


@attrs.frozen
class Verdict:
    """The decision about one response or transport failure.

    Attributes:
        action: what to do next.
        code: the server's error ``code`` (or, without one, its error ``type``),
            e.g. ``"rate_limit_exceeded"``, ``"insufficient_quota"``,
            ``"invalid_request_error"``; for transport failures ``"timeout"`` or
            ``"connection_error"``; None when nothing names the error.
        message: the server's error message, redacted, or a description of what
            was received (``"HTTP 503 with a non-JSON body: ..."``).
        retry_after: seconds the server asked to wait (``retry-after-ms``, then
            ``retry-after``, then "try again in ..." in the message), or None.
        limit_type: for a 429, which limit was hit: ``"requests"`` or
            ``"tokens"`` (from ``error.type``, else from the message), or None.
    """

    action: Action
    code: str | None = None
    message: str = ""
    retry_after: float | None = None
    limit_type: str | None = None

    @property
    def retryable(self) -> bool:
        """True for ``RETRY`` and ``RATE_LIMITED``: the same request may succeed later."""
        return self.action in (Action.RETRY, Action.RATE_LIMITED)


@attrs.frozen
class _ErrorBody:
    """The interesting parts of an error body."""

    message: str | None = None
    type: str | None = None
    code: str | None = None
    # Why no message was found, phrased to follow "HTTP 503 with ...".
    shape: str = "no error message"


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _code(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        # Azure and some proxies send numeric codes ("code": 429).
        return str(value)
    return None


def _read_error_body(body: bytes | None) -> _ErrorBody:
    """Pull message/type/code out of an error body; never raises."""
    if not body:
        return _ErrorBody(shape="an empty body")
    if len(body) > MAX_PARSED_BODY:
        return _ErrorBody(shape=f"a {len(body)}-byte body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        snippet = " ".join(body[:_BODY_SNIPPET].decode("utf-8", "replace").split())
        return _ErrorBody(shape=f"a non-JSON body: {snippet}" if snippet else "a blank body")
    if not isinstance(data, dict):
        return _ErrorBody(shape="a JSON body that is not an object")
    error = data.get("error")
    if isinstance(error, dict):
        return _ErrorBody(
            message=_string(error.get("message")),
            type=_string(error.get("type")),
            code=_code(error.get("code")),
        )
    if isinstance(error, str) and error:
        # {"error": "..."} from simpler OpenAI-compatible servers.
        return _ErrorBody(message=error, code=_code(data.get("code")))
    # {"message": ..., "code": ...} (some gateways) or {"detail": ...} (FastAPI).
    message = _string(data.get("message")) or _string(data.get("detail"))
    return _ErrorBody(message=message, type=_string(data.get("type")), code=_code(data.get("code")))


def _clean_message(text: str) -> str:
    text = redact(text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + "..."
    return text


def _limit_type(error: _ErrorBody) -> str | None:
    for text in (error.type, error.code):
        if text:
            lowered = text.lower()
            # OpenAI's "requests" / "tokens" (older servers: "tokens_usage_based").
            if lowered.startswith("requests"):
                return "requests"
            if lowered.startswith("tokens"):
                return "tokens"
    if error.message:
        lowered = error.message.lower()
        # "... on tokens per min (TPM): Limit ..." / "... on requests per day (RPD) ..."
        if "tokens per" in lowered:
            return "tokens"
        if "requests per" in lowered:
            return "requests"
    return None


def _is_quota_error(error: _ErrorBody) -> bool:
    return error.code in QUOTA_CODES or error.type in QUOTA_CODES


def _is_too_large(error: _ErrorBody) -> bool:
    if error.code == "request_too_large":
        return True
    return error.message is not None and "request too large" in error.message.lower()


def _base_action(status: int, error: _ErrorBody) -> Action:
    if 200 <= status < 300:
        return Action.SUCCESS
    if 400 <= status < 500 and _is_quota_error(error):
        return Action.FATAL
    if status in (401, 403):
        return Action.FATAL
    if status == 429:
        return Action.TOO_LARGE if _is_too_large(error) else Action.RATE_LIMITED
    if status == 413:
        return Action.TOO_LARGE
    if status in (408, 409) or 500 <= status < 600:
        return Action.RETRY
    return Action.FAIL


def _apply_should_retry(action: Action, should_retry: bool | None) -> Action:
    if should_retry is True and action is Action.FAIL:
        return Action.RETRY
    if should_retry is False and action in (Action.RETRY, Action.RATE_LIMITED):
        return Action.FAIL
    return action


#: The verdict of each 2xx status, made once: every answer asks for one, and
#: building a frozen Verdict cost more than half a microsecond.
_SUCCESSES: dict[int, Verdict] = {}


def classify_response(status: int, headers: Mapping[str, str], body: bytes | None) -> Verdict:
    """Decide what to do with a response, by the policy in this module's docstring.

    Args:
        status: the HTTP status code.
        headers: the response headers, case-insensitive (``httpx.Headers``) or a
            dict with lower-case keys.
        body: the raw response body, or None if it was not read.  For a 2xx
            the body is not looked at (parsing the answer is the caller's job).

    Never raises, whatever the body holds.
    """
    if 200 <= status < 300:
        verdict = _SUCCESSES.get(status)
        if verdict is None:
            verdict = _SUCCESSES[status] = Verdict(Action.SUCCESS, message=f"HTTP {status}")
        return verdict
    error = _read_error_body(body)
    action = _apply_should_retry(_base_action(status, error), parse_should_retry(headers))
    if error.message is not None:
        message = _clean_message(error.message)
    else:
        message = _clean_message(f"HTTP {status} with {error.shape}")
    retry_after = parse_retry_after(headers)
    if retry_after is None and error.message is not None:
        retry_after = parse_try_again_in(error.message)
    limit_type = _limit_type(error) if status == 429 else None
    code = error.code
    if code is None and error.type is not None and limit_type is None:
        code = error.type  # e.g. "invalid_request_error", "server_error"
    return Verdict(
        action,
        code=code,
        message=message,
        retry_after=retry_after,
        limit_type=limit_type,
    )


# errno values of OSErrors that are about the network or a transient shortage
# of local resources; other OSErrors (FileNotFoundError, PermissionError, ...)
# are about local input and must not be retried.
_RETRYABLE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "EPIPE",
        "ETIMEDOUT",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "EADDRNOTAVAIL",
        "ENOTCONN",
        "ESHUTDOWN",
        "EMFILE",
        "ENFILE",
        "ENOBUFS",
        "EAGAIN",
    )
    if hasattr(errno, name)
)


def _library_classes(module_name: str, *names: str) -> tuple[type[BaseException], ...]:
    """Exception classes from a library, if (and only if) it is already imported.

    An exception raised by httpx, h11, trio or anyio implies its module is in
    ``sys.modules``; looking there keeps this module free of those imports.
    """
    module = sys.modules.get(module_name)
    if module is None:
        return ()
    return tuple(cls for name in names if isinstance(cls := getattr(module, name, None), type))


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(
        exc,
        _library_classes("httpx", "TimeoutException")
        + _library_classes("httpcore", "TimeoutException")
        + _library_classes("trio", "TooSlowError"),
    )


def _is_transport_failure(exc: BaseException) -> bool:
    # A wrong scheme in the base URL is a configuration error: let it surface.
    if isinstance(exc, _library_classes("httpx", "UnsupportedProtocol")):
        return False
    if isinstance(exc, _library_classes("httpcore", "UnsupportedProtocol")):
        return False
    retryable = (
        _library_classes("httpx", "TransportError", "DecodingError")
        + _library_classes("httpcore", "NetworkError", "TimeoutException", "ProtocolError")
        + _library_classes("h11", "ProtocolError")
        + _library_classes("trio", "BrokenResourceError", "TooSlowError")
        + _library_classes("anyio", "BrokenResourceError", "EndOfStream")
    )
    if isinstance(exc, retryable):
        return True
    if isinstance(exc, ConnectionError | TimeoutError | EOFError):
        return True
    if isinstance(exc, OSError):
        # socket.gaierror and ssl.SSLError are OSErrors with their own errno spaces.
        module = type(exc).__module__
        if module in ("socket", "ssl", "_socket", "_ssl"):
            return True
        return exc.errno in _RETRYABLE_ERRNOS
    return False


def classify_transport_error(exc: BaseException) -> Verdict | None:
    """A ``RETRY`` verdict for a failure to talk to the server, else None.

    Retryable: ``httpx.TransportError`` (timeouts, connect/read/write errors,
    remote and local protocol errors, proxy errors) and ``httpx.DecodingError``;
    httpcore's equivalents; h11 protocol errors; ``trio.BrokenResourceError`` and
    ``trio.TooSlowError`` (an inner per-request deadline); anyio's
    ``BrokenResourceError`` and ``EndOfStream``; ``ConnectionError``,
    ``TimeoutError``, ``EOFError``, DNS and TLS errors, and OSErrors whose errno
    is a network or transient resource error (``ECONNRESET``, ``EMFILE``, ...).

    Returns None for anything else, which the caller must re-raise: a bug, a
    local input problem (``FileNotFoundError``), a configuration error
    (``httpx.UnsupportedProtocol``), and every ``BaseException`` that is not an
    ``Exception`` (``trio.Cancelled``, ``KeyboardInterrupt``) — those must
    never be swallowed as a per-request failure.
    """
    if not isinstance(exc, Exception) or not _is_transport_failure(exc):
        return None
    detail = redact(str(exc))
    name = type(exc).__name__
    return Verdict(
        Action.RETRY,
        code="timeout" if _is_timeout(exc) else "connection_error",
        message=_clean_message(f"{name}: {detail}" if detail else name),
    )


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 20.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt``: exponential, full jitter.

    Draws uniformly from ``[0, min(cap, base * 2 ** (attempt - 1))]``, so the
    ceiling is 0.5 s, 1 s, 2 s, ... up to 20 s by default.  Full jitter spreads
    the retries of many workers that failed together, instead of sending them
    back in one burst.

    Args:
        attempt: 1 for the first retry, 2 for the second, ...
        base: ceiling of the first retry's wait, in seconds (default 0.5).
        cap: largest ceiling, in seconds (default 20).
        rng: source of randomness (default: the ``random`` module's shared one);
            pass a seeded ``random.Random`` for repeatable delays.

    Raises:
        ValueError: if ``attempt < 1`` or ``base`` / ``cap`` is negative.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, not {attempt}")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must not be negative")
    # 2.0 ** 1023 is the largest power of two a float holds; the cap wins long before.
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 1023))
    uniform = (rng or random).uniform
    return min(uniform(0.0, ceiling), ceiling)


def error_from_verdict(
    verdict: Verdict,
    *,
    status_code: int | None,
    request_id: str | None,
    attempts: int,
) -> EngineError:
    """The exception that reports a request which ended with ``verdict``.

    ============  ============================================================
    action        error
    ============  ============================================================
    FATAL         ``InsufficientQuotaError`` for quota/billing codes,
                  ``AuthenticationError`` for 401/403, else ``FatalError``
    TOO_LARGE     ``RequestTooLargeError``
    FAIL          ``BadRequestError`` with the server's code
    RETRY         ``RetriesExhaustedError`` ("gave up after N attempts: ...")
    RATE_LIMITED  ``RateLimitWaitExceeded``
    ============  ============================================================

    The server's code is kept for ``FAIL`` and ``FATAL`` (it says what is
    wrong: ``model_not_found``, ``invalid_api_key``); ``RETRY`` and
    ``RATE_LIMITED`` keep their class's code (``retries_exhausted``,
    ``rate_limit_exceeded``), since the item failed because the engine gave up.

    Raises:
        ValueError: for a ``SUCCESS`` verdict, which is no error.
    """
    status = f"HTTP {status_code}: " if status_code is not None else ""
    tried = f" (after {attempts} attempt{'s' if attempts != 1 else ''})"
    text = f"{status}{verdict.message}{tried}"
    options: dict[str, Any] = {"status_code": status_code, "request_id": request_id}
    match verdict.action:
        case Action.SUCCESS:
            raise ValueError("a successful verdict is not an error")
        case Action.FATAL:
            if verdict.code in QUOTA_CODES:
                return InsufficientQuotaError(text, code=verdict.code, **options)
            if status_code in (401, 403):
                return AuthenticationError(text, code=verdict.code, **options)
            return FatalError(text, code=verdict.code, **options)
        case Action.TOO_LARGE:
            return RequestTooLargeError(text, **options)
        case Action.FAIL:
            return BadRequestError(text, code=verdict.code, **options)
        case Action.RETRY:
            return RetriesExhaustedError(f"gave up: {text}", **options)
        case Action.RATE_LIMITED:
            return RateLimitWaitExceeded(f"rate limited for too long: {text}", **options)
    raise AssertionError(f"unhandled action {verdict.action!r}")  # pragma: no cover
