"""What every endpoint module provides: the small protocol behind ``engine/endpoints/``.

An endpoint is a stateless object that knows one API path: how a request
becomes a JSON body, what that body may cost against a tokens-per-minute
quota, how a 2xx answer becomes a result, and which Batch-API ``url`` values
it serves.  The client's request loop, permits and failure policy know
nothing else about it.  All of it is sans-IO: plain data in, plain data out,
nothing checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import orjson

from engine._errors import ResponseValidationError, redact
from engine._results import Timings

__all__ = ["Answer", "JsonEndpoint", "Parsed", "batch_id", "malformed", "parse_json_object"]

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")
ParsedT = TypeVar("ParsedT")


class Answer(NamedTuple):
    """A 2xx answer as an endpoint reads it.

    A named tuple rather than an attrs class: one is built for every answer on
    the chat fast path, and a tuple is the cheapest immutable record to build.

    Attributes:
        content: the response body's bytes.
        status_code: the HTTP status (2xx).
        request_id: the server's ``x-request-id``, or None.
        attempts: HTTP attempts made for the request, this one included.
        timings: when it was queued, sent and answered.
    """

    content: bytes
    status_code: int
    request_id: str | None
    attempts: int
    timings: Timings


class Parsed(NamedTuple, Generic[ParsedT]):
    """What an endpoint made of a 2xx answer.

    Attributes:
        result: the request's result (a failed one when a structured output
            could not be used).
        used_tokens: the tokens the answer really used, which the quota book
            is corrected to; None when the server did not say.
        input_tokens / output_tokens: the tokens the server reported, for the
            client's counters (0 when it reported none).
    """

    result: ParsedT
    used_tokens: int | None
    input_tokens: int
    output_tokens: int


class JsonEndpoint(Protocol[RequestT, ResultT]):
    """One JSON endpoint (``POST`` a JSON body, get a JSON answer).

    Attributes:
        kind: the short name results and summaries use (``"responses"``).
        path: the path after the base URL (``"/responses"``).
        batch_urls: the Batch-API ``url`` values it serves, canonical first
            (``"/v1/responses"``, ``"/responses"``).
        request_type: the request class (``engine.ResponseRequest``).
    """

    kind: str
    path: str
    batch_urls: tuple[str, ...]

    @property
    def request_type(self) -> type[Any]: ...

    def from_batch(self, body: Mapping[str, Any], *, id: str, name: str) -> RequestT:
        """The request of a Batch-API line's ``body``.

        Raises:
            InputError: the body is unusable; the message starts with ``name``.
        """
        ...

    def body(self, request: RequestT) -> dict[str, Any]:
        """The JSON body to send; local checks happen here, before any permit.

        Raises:
            InputError: the request cannot be sent (the message names it).
        """
        ...

    def estimate_tokens(self, body: Mapping[str, Any], *, default_output_tokens: int) -> int:
        """Tokens to reserve for ``body``: its input, plus its output budget if any."""
        ...

    def parse(self, request: RequestT, answer: Answer) -> Parsed[ResultT]:
        """The result of a 2xx answer, with the tokens it used (see :class:`Parsed`).

        A structured output that cannot be used gives a failed result (its
        usage kept), not an exception.

        Raises:
            ResponseValidationError: the body is malformed or misses fields.
        """
        ...

    def failed(
        self, request: RequestT | None, *, id: str, model: str, raw: str | None, **fields: Any
    ) -> ResultT:
        """A failed result with ``fields`` (``request`` None: the input never became one)."""
        ...


def batch_id(custom_id: Any, index: int) -> str:
    """The id of a Batch-API line: its ``custom_id`` as text, else its position."""
    return str(custom_id) if custom_id is not None else str(index)


def malformed(answer: Answer, what: str, exc: Exception) -> ResponseValidationError:
    """The error for a 2xx body that cannot be used, its text kept (2,000 characters)."""
    return ResponseValidationError(
        f"{what} ({type(exc).__name__}: {redact(str(exc))[:200]})",
        raw=answer.content[:2000].decode("utf-8", "replace"),
        status_code=answer.status_code,
        request_id=answer.request_id,
    )


def parse_json_object(answer: Answer) -> dict[str, Any]:
    """The answer's body as a JSON object.

    Raises:
        orjson.JSONDecodeError, TypeError: it is not JSON, or not an object.
    """
    body = orjson.loads(answer.content)
    if not isinstance(body, dict):
        raise TypeError("the body is not a JSON object")
    return body
