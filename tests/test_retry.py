"""Tests for engine._retry: the failure policy, transport errors, backoff, errors."""

from __future__ import annotations

import errno
import json
import pickle
import random
import socket
import ssl

import h11
import httpx
import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from engine._errors import (
    AuthenticationError,
    BadRequestError,
    FatalError,
    InsufficientQuotaError,
    RateLimitWaitExceeded,
    RequestTooLargeError,
    RetriesExhaustedError,
)
from engine._retry import (
    MAX_MESSAGE,
    Action,
    Verdict,
    backoff_delay,
    classify_response,
    classify_transport_error,
    error_from_verdict,
)

FAKE_KEY = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"


def error_body(
    message: str | None = "boom",
    *,
    type: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> bytes:
    """An OpenAI-shaped error body."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


RATE_LIMIT_TOKENS = error_body(
    "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per min (TPM): "
    "Limit 200000, Used 199000, Requested 2000. Please try again in 1m26.4s. Visit "
    "https://platform.openai.com/account/rate-limits to learn more.",
    type="tokens",
    code="rate_limit_exceeded",
)
INSUFFICIENT_QUOTA = error_body(
    "You exceeded your current quota, please check your plan and billing details.",
    type="insufficient_quota",
    code="insufficient_quota",
)
TOO_LARGE = error_body(
    "Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 50000. "
    "The input or output tokens must be reduced in order to run successfully.",
    type="tokens",
    code="rate_limit_exceeded",
)

# ---------------------------------------------------------------- status families


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_2xx_is_success(status: int) -> None:
    """Any 2xx is a success, whatever the body."""
    assert classify_response(status, {}, b"not json").action is Action.SUCCESS


def test_success_ignores_x_should_retry() -> None:
    """A 2xx stays a success even if the server says to retry."""
    assert classify_response(200, {"x-should-retry": "true"}, b"{}").action is Action.SUCCESS


def test_429_rate_limit_is_rate_limited_with_details() -> None:
    """A 429 rate_limit_exceeded gives RATE_LIMITED, the code, limit type and wait."""
    verdict = classify_response(429, {}, RATE_LIMIT_TOKENS)
    assert verdict.action is Action.RATE_LIMITED
    assert verdict.code == "rate_limit_exceeded"
    assert verdict.limit_type == "tokens"
    assert verdict.retry_after == pytest.approx(86.4)
    assert verdict.message.startswith("Rate limit reached for gpt-4o-mini")


def test_429_retry_after_header_wins_over_message() -> None:
    """retry-after-ms in the headers is preferred to "try again in" in the body."""
    verdict = classify_response(429, {"retry-after-ms": "120"}, RATE_LIMIT_TOKENS)
    assert verdict.retry_after == pytest.approx(0.12)


def test_429_requests_limit_type_is_read_from_error_type() -> None:
    """error.type "requests" gives limit_type "requests"."""
    body = error_body("Rate limit reached", type="requests", code="rate_limit_exceeded")
    assert classify_response(429, {}, body).limit_type == "requests"


def test_429_limit_type_is_inferred_from_the_message() -> None:
    """Without error.type, "requests per min" in the message names the limit."""
    body = error_body("Rate limit reached on requests per min (RPM): Limit 3", code=None)
    assert classify_response(429, {}, body).limit_type == "requests"


def test_429_without_a_body_is_rate_limited() -> None:
    """A bare 429 is still a rate limit, described by status."""
    verdict = classify_response(429, {"retry-after": "2"}, b"")
    assert verdict.action is Action.RATE_LIMITED
    assert verdict.retry_after == 2.0
    assert verdict.message == "HTTP 429 with an empty body"


def test_429_insufficient_quota_is_fatal() -> None:
    """insufficient_quota stops everything."""
    verdict = classify_response(429, {}, INSUFFICIENT_QUOTA)
    assert verdict.action is Action.FATAL
    assert verdict.code == "insufficient_quota"


def test_429_insufficient_quota_type_without_code_is_fatal() -> None:
    """An insufficient_quota error type alone is enough."""
    body = error_body("You exceeded your current quota", type="insufficient_quota")
    verdict = classify_response(429, {}, body)
    assert (verdict.action, verdict.code) == (Action.FATAL, "insufficient_quota")


@pytest.mark.parametrize(
    "code",
    [
        "billing_hard_limit_reached",
        "billing_not_active",
        "access_terminated",
        "account_deactivated",
    ],
)
def test_429_billing_codes_are_fatal(code: str) -> None:
    """Every billing code stops everything."""
    assert classify_response(429, {}, error_body("billing", code=code)).action is Action.FATAL


def test_billing_code_on_another_4xx_is_fatal() -> None:
    """A billing code is fatal whatever 4xx carries it."""
    body = error_body("inactive", code="billing_not_active")
    assert classify_response(400, {}, body).action is Action.FATAL


def test_429_request_too_large_message_is_too_large() -> None:
    """A 429 "Request too large" fails the item instead of cooling down."""
    verdict = classify_response(429, {}, TOO_LARGE)
    assert verdict.action is Action.TOO_LARGE
    assert verdict.limit_type == "tokens"


def test_429_request_too_large_code_is_too_large() -> None:
    """code request_too_large alone is enough."""
    body = error_body("too big", code="request_too_large")
    assert classify_response(429, {}, body).action is Action.TOO_LARGE


def test_413_is_too_large() -> None:
    """413 Payload Too Large fails the item as too large."""
    assert classify_response(413, {}, b"").action is Action.TOO_LARGE


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried(status: int) -> None:
    """408, 409 and 5xx are retried."""
    assert classify_response(status, {}, error_body("oops", type="server_error")).action is (
        Action.RETRY
    )


def test_503_retry_after_is_kept() -> None:
    """A 503 with retry-after carries the wait."""
    assert classify_response(503, {"retry-after": "7"}, b"").retry_after == 7.0


@pytest.mark.parametrize("status", [401, 403])
def test_authentication_statuses_are_fatal(status: int) -> None:
    """401 and 403 stop the whole run."""
    body = error_body(f"Incorrect API key provided: {FAKE_KEY}", code="invalid_api_key")
    verdict = classify_response(status, {}, body)
    assert (verdict.action, verdict.code) == (Action.FATAL, "invalid_api_key")


@pytest.mark.parametrize("status", [400, 404, 405, 410, 415, 418, 422, 451])
def test_other_4xx_fail_with_the_server_message(status: int) -> None:
    """400/404/422 and other 4xx fail the item with the server's message."""
    body = error_body("The model `gpt-9` does not exist", code="model_not_found")
    verdict = classify_response(status, {}, body)
    assert verdict.action is Action.FAIL
    assert verdict.message == "The model `gpt-9` does not exist"
    assert verdict.code == "model_not_found"


@pytest.mark.parametrize("status", [101, 301, 302, 304, 600, 999])
def test_unexpected_statuses_fail(status: int) -> None:
    """Redirects, informational and out-of-range statuses fail the item."""
    assert classify_response(status, {}, b"").action is Action.FAIL


def test_error_type_is_the_code_when_code_is_absent() -> None:
    """Without error.code, error.type ("invalid_request_error") is the code."""
    body = error_body("bad param", type="invalid_request_error", code=None)
    assert classify_response(400, {}, body).code == "invalid_request_error"


def test_numeric_error_code_becomes_text() -> None:
    """Azure-style numeric codes are kept as strings."""
    body = orjson.dumps({"error": {"message": "busy", "code": 503}})
    assert classify_response(503, {}, body).code == "503"


# ---------------------------------------------------------------- x-should-retry


def test_should_retry_true_turns_a_failure_into_a_retry() -> None:
    """x-should-retry: true overrides a 400."""
    verdict = classify_response(400, {"x-should-retry": "true"}, error_body("try later"))
    assert verdict.action is Action.RETRY


@pytest.mark.parametrize(("status", "body"), [(503, b""), (429, RATE_LIMIT_TOKENS)])
def test_should_retry_false_turns_a_retry_into_a_failure(status: int, body: bytes) -> None:
    """x-should-retry: false overrides 5xx and rate limits."""
    verdict = classify_response(status, {"x-should-retry": "false"}, body)
    assert verdict.action is Action.FAIL


@pytest.mark.parametrize(("status", "body"), [(401, b""), (429, INSUFFICIENT_QUOTA)])
def test_should_retry_true_never_makes_fatal_retryable(status: int, body: bytes) -> None:
    """x-should-retry: true leaves a fatal verdict fatal."""
    assert classify_response(status, {"x-should-retry": "true"}, body).action is Action.FATAL


def test_should_retry_true_leaves_too_large_alone() -> None:
    """A request too large for the limit stays too large."""
    verdict = classify_response(429, {"x-should-retry": "true"}, TOO_LARGE)
    assert verdict.action is Action.TOO_LARGE


def test_should_retry_is_read_case_insensitively_from_httpx_headers() -> None:
    """httpx.Headers with X-Should-Retry are honoured."""
    headers = httpx.Headers({"X-Should-Retry": "True"})
    assert classify_response(404, headers, b"").action is Action.RETRY


# ---------------------------------------------------------------- malformed bodies


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, "HTTP 503 with an empty body"),
        (b"", "HTTP 503 with an empty body"),
        (b"   \n", "HTTP 503 with a blank body"),
        (
            b"<html><body>502  Bad\nGateway</body></html>",
            "HTTP 503 with a non-JSON body: <html><body>502 Bad Gateway</body></html>",
        ),
        (
            b'{"error": {"message": "trunc',
            'HTTP 503 with a non-JSON body: {"error": {"message": "trunc',
        ),
        (b"[1, 2]", "HTTP 503 with a JSON body that is not an object"),
        (b"null", "HTTP 503 with a JSON body that is not an object"),
        (b"{}", "HTTP 503 with no error message"),
        (b'{"error": {"message": 42}}', "HTTP 503 with no error message"),
        (b'{"error": null}', "HTTP 503 with no error message"),
        (b"\xff\xfe\x00garbage", "HTTP 503 with a non-JSON body: \ufffd\ufffd\x00garbage"),
    ],
)
def test_malformed_bodies_are_described(body: bytes | None, message: str) -> None:
    """Bodies without an OpenAI error are described, and the status still decides."""
    verdict = classify_response(503, {}, body)
    assert verdict.action is Action.RETRY
    assert verdict.message == message


def test_huge_body_is_not_parsed() -> None:
    """A body beyond the parse limit is described by its size."""
    body = b'{"error": {"message": "' + b"x" * 1_000_000 + b'"}}'
    verdict = classify_response(500, {}, body)
    assert verdict.message == f"HTTP 500 with a {len(body)}-byte body"


def test_long_server_message_is_cut() -> None:
    """A very long server message is cut to MAX_MESSAGE characters plus "..."."""
    verdict = classify_response(400, {}, error_body("y" * 10_000))
    assert verdict.message == "y" * MAX_MESSAGE + "..."


def test_plain_string_error_is_the_message() -> None:
    """{"error": "..."} from simple compatible servers gives its message."""
    assert classify_response(400, {}, b'{"error": "bad model"}').message == "bad model"


def test_fastapi_detail_is_the_message() -> None:
    """{"detail": "..."} (FastAPI servers) gives its message."""
    assert classify_response(422, {}, b'{"detail": "field required"}').message == "field required"


def test_api_keys_are_redacted_from_messages() -> None:
    """A key echoed by the server never reaches the verdict."""
    body = error_body(f"Incorrect API key provided: {FAKE_KEY}. Find your key at ...")
    verdict = classify_response(401, {}, body)
    assert FAKE_KEY not in verdict.message
    assert "***" in verdict.message


def test_api_keys_are_redacted_from_non_json_snippets() -> None:
    """A key echoed in an HTML error page never reaches the verdict."""
    verdict = classify_response(502, {}, f"<p>Authorization: Bearer {FAKE_KEY}</p>".encode())
    assert FAKE_KEY not in verdict.message


@given(st.integers(min_value=0, max_value=1000), st.binary(max_size=300))
def test_classify_response_never_raises_on_any_body(status: int, body: bytes) -> None:
    """Any status and body bytes give a Verdict with a non-empty message."""
    verdict = classify_response(status, {}, body)
    assert isinstance(verdict.action, Action)
    assert verdict.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["error", "message", "code", "type", "detail"]), children)
    ),
    max_leaves=10,
)


@given(st.sampled_from([400, 401, 404, 408, 429, 500, 503]), json_values)
def test_classify_response_never_raises_on_odd_json(status: int, value: object) -> None:
    """Any JSON shape gives a Verdict whose code and limit type are text or None."""
    verdict = classify_response(status, {}, json.dumps(value).encode())
    assert verdict.code is None or isinstance(verdict.code, str)
    assert verdict.limit_type in (None, "requests", "tokens")


@given(
    st.sampled_from([400, 401, 403, 404, 409, 429, 500]),
    st.sampled_from([None, "rate_limit_exceeded", "insufficient_quota", "billing_not_active"]),
    st.sampled_from(["true", "false", "maybe"]),
)
def test_should_retry_never_rescues_a_fatal_verdict(
    status: int, code: str | None, should_retry: str
) -> None:
    """Whatever x-should-retry says, a verdict that is fatal without it stays fatal."""
    body = error_body("m", code=code)
    without = classify_response(status, {}, body)
    with_header = classify_response(status, {"x-should-retry": should_retry}, body)
    if without.action is Action.FATAL:
        assert with_header.action is Action.FATAL


# ---------------------------------------------------------------- transport errors


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadError("reset"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.LocalProtocolError("illegal state"),
        httpx.DecodingError("bad gzip"),
        h11.RemoteProtocolError("malformed data"),
        trio.BrokenResourceError(),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        BrokenPipeError(errno.EPIPE, "Broken pipe"),
        OSError(errno.EMFILE, "Too many open files"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        ssl.SSLError(1, "record layer failure"),
        EOFError(),
    ],
    ids=repr,
)
def test_transport_failures_are_retried(exc: BaseException) -> None:
    """Connection, protocol and network errors give a RETRY verdict."""
    verdict = classify_transport_error(exc)
    assert verdict is not None
    assert (verdict.action, verdict.code) == (Action.RETRY, "connection_error")


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ReadTimeout("read"),
        httpx.ConnectTimeout("connect"),
        TimeoutError(),
        trio.TooSlowError(),
    ],
    ids=repr,
)
def test_timeouts_are_retried_with_the_timeout_code(exc: BaseException) -> None:
    """Timeouts give a RETRY verdict coded "timeout"."""
    verdict = classify_transport_error(exc)
    assert verdict is not None
    assert (verdict.action, verdict.code) == (Action.RETRY, "timeout")


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bug"),
        KeyError("bug"),
        FileNotFoundError(errno.ENOENT, "No such file", "call.mp3"),
        PermissionError(errno.EACCES, "Permission denied"),
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
        httpx.TooManyRedirects("loop"),
        trio.ClosedResourceError(),
        KeyboardInterrupt(),
        SystemExit(1),
    ],
    ids=repr,
)
def test_other_exceptions_are_left_to_the_caller(exc: BaseException) -> None:
    """Bugs, local input errors, configuration errors and BaseExceptions give None."""
    assert classify_transport_error(exc) is None


async def test_cancellation_is_never_classified() -> None:
    """trio.Cancelled must propagate, so it gives None."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as cancelled:
            assert classify_transport_error(cancelled) is None
            raise


def test_transport_messages_name_the_error_and_are_redacted() -> None:
    """The message names the exception type and hides keys."""
    verdict = classify_transport_error(httpx.ConnectError(f"failed with Bearer {FAKE_KEY}"))
    assert verdict is not None
    assert verdict.message.startswith("ConnectError: failed with ")
    assert FAKE_KEY not in verdict.message


def test_transport_message_without_text_is_the_type_name() -> None:
    """An exception without text is described by its type."""
    verdict = classify_transport_error(trio.BrokenResourceError())
    assert verdict is not None and verdict.message == "BrokenResourceError"


# ---------------------------------------------------------------- backoff


def test_backoff_ceiling_doubles_from_base() -> None:
    """With an rng that always draws the top, delays are 0.5, 1, 2, 4 s."""
    top = random.Random()
    top.uniform = lambda low, high: high  # type: ignore[method-assign]
    assert [backoff_delay(n, rng=top) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_is_capped() -> None:
    """Late attempts never exceed the cap."""
    top = random.Random()
    top.uniform = lambda low, high: high  # type: ignore[method-assign]
    assert backoff_delay(30, rng=top) == 20.0
    assert backoff_delay(10**6, rng=top, cap=3.0) == 3.0


def test_backoff_is_repeatable_with_a_seeded_rng() -> None:
    """The same seed gives the same delays."""
    first = [backoff_delay(n, rng=random.Random(7)) for n in range(1, 6)]
    second = [backoff_delay(n, rng=random.Random(7)) for n in range(1, 6)]
    assert first == second


def test_backoff_jitter_spreads_delays() -> None:
    """Full jitter gives many distinct delays, not one fixed value."""
    rng = random.Random(1)
    delays = {backoff_delay(5, rng=rng) for _ in range(100)}
    assert len(delays) > 90


def test_backoff_with_zero_base_is_instant() -> None:
    """base=0 makes retries instant (useful in tests)."""
    assert backoff_delay(3, base=0.0) == 0.0


@pytest.mark.parametrize("attempt", [0, -1])
def test_backoff_rejects_attempts_below_one(attempt: int) -> None:
    """Attempts count from 1."""
    with pytest.raises(ValueError, match="attempt must be at least 1"):
        backoff_delay(attempt)


def test_backoff_rejects_negative_settings() -> None:
    """A negative base or cap is a mistake."""
    with pytest.raises(ValueError, match="must not be negative"):
        backoff_delay(1, cap=-1.0)


@given(
    st.integers(min_value=1, max_value=5000),
    st.floats(min_value=0, max_value=100),
    st.floats(min_value=0, max_value=1000),
    st.integers(),
)
def test_backoff_stays_within_bounds(attempt: int, base: float, cap: float, seed: int) -> None:
    """Every delay lies in [0, min(cap, base * 2**(attempt-1))]."""
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    ceiling = cap if attempt > 1000 else min(cap, base * 2.0 ** (attempt - 1))
    assert 0.0 <= delay <= ceiling


# ---------------------------------------------------------------- errors from verdicts


def test_quota_verdict_becomes_insufficient_quota_error() -> None:
    """A fatal quota verdict raises InsufficientQuotaError with the server's code."""
    verdict = classify_response(429, {}, INSUFFICIENT_QUOTA)
    error = error_from_verdict(verdict, status_code=429, request_id="req_1", attempts=1)
    assert type(error) is InsufficientQuotaError
    assert (error.code, error.status_code, error.request_id) == ("insufficient_quota", 429, "req_1")
    assert "You exceeded your current quota" in error.message


def test_auth_verdict_becomes_authentication_error() -> None:
    """A fatal 401 raises AuthenticationError without the key in the message."""
    body = error_body(f"Incorrect API key provided: {FAKE_KEY}", code="invalid_api_key")
    error = error_from_verdict(
        classify_response(401, {}, body), status_code=401, request_id=None, attempts=1
    )
    assert type(error) is AuthenticationError
    assert error.code == "invalid_api_key"
    assert FAKE_KEY not in str(error)


def test_auth_verdict_without_code_keeps_the_default_code() -> None:
    """A bare 403 gives AuthenticationError's default code."""
    error = error_from_verdict(
        classify_response(403, {}, b""), status_code=403, request_id=None, attempts=1
    )
    assert (type(error), error.code) == (AuthenticationError, "invalid_api_key")


def test_other_fatal_verdict_becomes_fatal_error() -> None:
    """A fatal verdict that is neither quota nor auth gives a plain FatalError."""
    verdict = Verdict(Action.FATAL, code="region_blocked", message="not here")
    error = error_from_verdict(verdict, status_code=None, request_id=None, attempts=1)
    assert type(error) is FatalError


def test_too_large_verdict_becomes_request_too_large_error() -> None:
    """TOO_LARGE raises RequestTooLargeError coded request_too_large."""
    error = error_from_verdict(
        classify_response(429, {}, TOO_LARGE), status_code=429, request_id=None, attempts=1
    )
    assert (type(error), error.code) == (RequestTooLargeError, "request_too_large")


def test_fail_verdict_becomes_bad_request_error_with_server_code() -> None:
    """FAIL raises BadRequestError carrying the server's code and message."""
    body = error_body("The model `gpt-9` does not exist", code="model_not_found")
    error = error_from_verdict(
        classify_response(404, {}, body), status_code=404, request_id="req_2", attempts=1
    )
    assert type(error) is BadRequestError
    assert error.code == "model_not_found"
    assert error.message == "HTTP 404: The model `gpt-9` does not exist (after 1 attempt)"


def test_retry_verdict_becomes_retries_exhausted_error() -> None:
    """RETRY after the last attempt raises RetriesExhaustedError naming the count."""
    error = error_from_verdict(
        classify_response(503, {}, b""), status_code=503, request_id=None, attempts=5
    )
    assert type(error) is RetriesExhaustedError
    assert error.code == "retries_exhausted"
    assert error.message == "gave up: HTTP 503: HTTP 503 with an empty body (after 5 attempts)"


def test_transport_verdict_becomes_retries_exhausted_error_without_status() -> None:
    """A transport failure's error has no status code."""
    verdict = classify_transport_error(httpx.ConnectError("refused"))
    assert verdict is not None
    error = error_from_verdict(verdict, status_code=None, request_id=None, attempts=3)
    assert error.message == "gave up: ConnectError: refused (after 3 attempts)"
    assert error.status_code is None


def test_rate_limited_verdict_becomes_rate_limit_wait_exceeded() -> None:
    """RATE_LIMITED past the wait budget raises RateLimitWaitExceeded."""
    error = error_from_verdict(
        classify_response(429, {}, RATE_LIMIT_TOKENS), status_code=429, request_id=None, attempts=9
    )
    assert (type(error), error.code) == (RateLimitWaitExceeded, "rate_limit_exceeded")


def test_success_verdict_is_not_an_error() -> None:
    """Asking for the error of a success is a bug."""
    with pytest.raises(ValueError, match="not an error"):
        error_from_verdict(Verdict(Action.SUCCESS), status_code=200, request_id=None, attempts=1)


def test_errors_from_verdicts_survive_pickling() -> None:
    """The error keeps its class, code and status through pickle (for process pools)."""
    error = error_from_verdict(
        classify_response(429, {}, INSUFFICIENT_QUOTA), status_code=429, request_id="r", attempts=1
    )
    clone = pickle.loads(pickle.dumps(error))
    assert (type(clone), clone.code, clone.status_code) == (type(error), error.code, 429)


def test_verdict_retryable_property() -> None:
    """Only RETRY and RATE_LIMITED are retryable."""
    assert {action for action in Action if Verdict(action).retryable} == {
        Action.RETRY,
        Action.RATE_LIMITED,
    }
