"""The Responses API (``POST /v1/responses``): requests, cost estimates, answers.

Structured outputs use the same strict-schema builder as chat
(:func:`engine._schema.strict_json_schema`), sent as
``text.format = {"type": "json_schema", "name", "schema", "strict": true}``,
and the same answer checks (:func:`engine._schema.parse_structured`): a
refusal content part, ``status: "incomplete"`` (cut at ``max_output_tokens``
or by the content filter), empty output, invalid JSON and a schema mismatch
each fail the item with its :class:`~engine.ResponseValidationError` code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import orjson
import pydantic

from engine._errors import InputError, ResponseValidationError
from engine._results import ErrorInfo, Timings, _ErrorAccess
from engine._schema import parse_structured, response_format_for
from engine._tokens import chat_prompt_tokens, count_tokens
from engine.endpoints._protocol import Answer, Parsed, malformed, parse_json_object

__all__ = [
    "RESPONSES",
    "ResponseRequest",
    "ResponseResult",
    "ResponseUsage",
    "ResponsesEndpoint",
    "estimate_response_tokens",
    "text_format_for",
]


def _as_input(value: str | Iterable[Mapping[str, Any]]) -> str | tuple[Mapping[str, Any], ...]:
    if isinstance(value, str):
        if not value:
            raise ValueError("input must not be empty")
        return value
    items = tuple(value)
    if not items:
        raise ValueError("input must be a string or a non-empty list of input items")
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"input[{index}] must be an input item (a mapping)")
    return items


@attrs.frozen(kw_only=True)
class ResponseRequest:
    """One Responses API request (``POST /v1/responses``).

    Attributes:
        input: a prompt string, or input items (``{"role": "user", "content": ...}``
            messages and any other item the API accepts), sent as given.
        model: the model name, e.g. ``"gpt-4o-mini"``.
        instructions: the system (developer) message, or None (default: none sent).
        id: the caller's id, carried back on the result (Batch API ``custom_id``).
            None: ``client.map`` numbers requests by input position.
        response_model: a pydantic model the answer must fit (structured
            outputs through ``text.format``), or None (default) for plain text.
        params: any other body fields, passed through unchanged
            (``max_output_tokens``, ``temperature``, ``tools``, ``store``, ...).
        endpoint: the pool member this request must go to, by name (default
            None: any member serving the model; see ``open_client(endpoints=)``).
    """

    input: str | tuple[Mapping[str, Any], ...] = attrs.field(converter=_as_input)
    model: str
    instructions: str | None = None
    id: str | None = None
    response_model: type[pydantic.BaseModel] | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    endpoint: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON request body; with ``response_model`` its ``text.format`` is the schema's.

        Raises:
            TypeError, ValueError: ``response_model`` cannot be expressed in
                strict mode (see docs/structured-outputs.md).
        """
        body: dict[str, Any] = {**self.params, "model": self.model}
        body["input"] = self.input if isinstance(self.input, str) else list(self.input)
        if self.instructions is not None:
            body["instructions"] = self.instructions
        if self.response_model is not None:
            text = body.get("text")
            body["text"] = {
                **(text if isinstance(text, Mapping) else {}),
                "format": text_format_for(self.response_model),
            }
        return body


def text_format_for(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The Responses API's ``text.format`` asking for ``model`` in strict mode.

    The chat ``response_format``'s ``json_schema`` object, flattened:
    ``{"type": "json_schema", "name", "schema", "strict": True}`` and a
    ``description`` when the model has a docstring.

    Raises:
        TypeError, ValueError: as :func:`engine._schema.response_format_for`.
    """
    spec = response_format_for(model)["json_schema"]
    return {"type": "json_schema", **spec}


def estimate_response_tokens(body: Mapping[str, Any], *, default_output_tokens: int) -> int:
    """Tokens to reserve for a Responses API ``body``.

    ``instructions`` counted as a system message and ``input`` as messages
    (a string is one user message; an item without a role, such as a tool
    call's output, is counted as its JSON text), ``text.format`` and
    ``tools`` as JSON text (the server adds them to the prompt), plus
    ``max_output_tokens`` (else ``default_output_tokens``).
    """
    model = str(body.get("model", ""))
    messages: list[Mapping[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        for item in given:
            if isinstance(item, Mapping) and "role" in item:
                messages.append({"role": item["role"], "content": item.get("content")})
            else:
                messages.append({"role": "user", "content": orjson.dumps(item).decode()})
    tokens = chat_prompt_tokens(messages, model)
    text = body.get("text")
    extras = [text.get("format") if isinstance(text, Mapping) else None, body.get("tools")]
    for extra in extras:
        if extra and extra != {"type": "text"}:
            tokens += count_tokens(orjson.dumps(extra).decode(), model)
    budget = body.get("max_output_tokens")
    return tokens + int(budget if budget is not None else default_output_tokens)


class ResponseUsage(pydantic.BaseModel):
    """Tokens a response used, as the server reported them (zeros when it failed)."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class ResponseResult(_ErrorAccess, pydantic.BaseModel):
    """The outcome of one Responses API request.

    Attributes:
        id: the caller's id (Batch API ``custom_id``).
        output: the output text (every ``output_text`` part, joined), an
            instance of the request's ``response_model``, or None (failed).
        model: the model that answered (as the server named it), else the one asked for.
        usage: see :class:`ResponseUsage`.
        attempts: HTTP attempts made.
        timings: see :class:`~engine.Timings`.
        error: None on success, else :class:`~engine.ErrorInfo`.
        status_code: HTTP status of the last response, None if none arrived.
        request_id: the server's ``x-request-id`` of the last response.
        status: the response's own ``status`` (``completed``, ``incomplete``), or None.
        incomplete_reason: ``incomplete_details.reason`` (``max_output_tokens``,
            ``content_filter``), or None.  A plain-text answer cut short is
            still a success, as in chat.
        response: the last response body as parsed JSON (kept for Batch-API
            output files), or None.  Left out of ``repr``.
        raw_content: the output text as received (structured outputs), or the
            refusal text; None otherwise.  Left out of ``repr``.
        input: the request's input as sent, or None.  Left out of ``repr``.
    """

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    id: str
    output: Any = None
    model: str
    usage: ResponseUsage = pydantic.Field(default_factory=ResponseUsage)
    attempts: int = 0
    timings: Timings
    error: ErrorInfo | None = None
    status_code: int | None = None
    request_id: str | None = None
    status: str | None = None
    incomplete_reason: str | None = None
    response: dict[str, Any] | None = pydantic.Field(default=None, repr=False)
    raw_content: str | None = pydantic.Field(default=None, repr=False)
    input: Any = pydantic.Field(default=None, repr=False)


def _read_output(body: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The ``output_text`` parts joined, and the refusal parts joined (None: none).

    Raises:
        TypeError: ``output`` or one of its messages is not shaped as documented.
    """
    output = body.get("output")
    if not isinstance(output, list):
        raise TypeError("'output' is not a list")
    texts: list[str] = []
    refusals: list[str] = []
    for item in output:
        if not isinstance(item, dict):
            raise TypeError("an output item is not a JSON object")
        if item.get("type") != "message":
            continue  # reasoning, tool calls: not part of the text
        content = item.get("content")
        if not isinstance(content, list):
            raise TypeError("an output message's content is not a list")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "output_text":
                if not isinstance(part.get("text"), str):
                    raise TypeError("an output_text part has no text")
                texts.append(part["text"])
            elif kind == "refusal":
                refusals.append(str(part.get("refusal") or ""))
    return ("".join(texts) if texts else None), ("".join(refusals) if refusals else None)


def _structured(
    request: ResponseRequest,
    model: type[pydantic.BaseModel],
    text: str | None,
    refusal: str | None,
    incomplete_reason: str | None,
    request_id: str | None,
) -> pydantic.BaseModel:
    """``text`` parsed into ``model``, with chat's checks and codes.

    Raises:
        ResponseValidationError: refusal, truncated, filtered, empty, invalid
            JSON or a schema mismatch; the message starts with the request's id.
    """
    try:
        if incomplete_reason == "max_output_tokens" and not refusal:
            raise ResponseValidationError(
                f"the answer for {model.__name__} was cut off at the output token limit "
                f"(status 'incomplete', {len(text or '')} characters received); "
                f"raise max_output_tokens",
                code="output_truncated",
                raw=text,
                request_id=request_id,
            )
        return parse_structured(
            text,
            model,
            finish_reason="content_filter" if incomplete_reason == "content_filter" else None,
            refusal=refusal,
            request_id=request_id,
        )
    except ResponseValidationError as exc:
        exc.message = f"request {request.id!r}: {exc.message}"
        exc.args = (exc.message,)
        raise


class ResponsesEndpoint:
    """``POST /v1/responses`` (see :class:`~engine.endpoints.JsonEndpoint`)."""

    kind = "responses"
    path = "/responses"
    batch_urls: tuple[str, ...] = ("/v1/responses", "/responses")

    @property
    def request_type(self) -> type[ResponseRequest]:
        return ResponseRequest

    def from_batch(self, body: Mapping[str, Any], *, id: str, name: str) -> ResponseRequest:
        params = dict(body)
        model = params.pop("model", None)
        given = params.pop("input", None)
        instructions = params.pop("instructions", None)
        if not isinstance(model, str) or not model:
            raise InputError(f"{name}: body.model is missing")
        if given is None:
            raise InputError(f"{name}: body.input is missing")
        if instructions is not None and not isinstance(instructions, str):
            raise InputError(f"{name}: body.instructions must be a string")
        try:
            return ResponseRequest(
                id=id, model=model, input=given, instructions=instructions, params=params
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: body.{exc}") from None

    def body(self, request: ResponseRequest) -> dict[str, Any]:
        try:
            return request.body()
        except (TypeError, ValueError) as exc:
            raise InputError(f"request {request.id!r}: {exc}") from None

    def estimate_tokens(self, body: Mapping[str, Any], *, default_output_tokens: int) -> int:
        return estimate_response_tokens(body, default_output_tokens=default_output_tokens)

    def parse(self, request: ResponseRequest, answer: Answer) -> Parsed[ResponseResult]:
        try:
            body = parse_json_object(answer)
            usage = ResponseUsage.model_validate(body.get("usage") or {})
            status = body.get("status")
            if status is not None and not isinstance(status, str):
                raise TypeError("'status' is not a string")
            details = body.get("incomplete_details")
            reason = details.get("reason") if isinstance(details, dict) else None
            text, refusal = _read_output(body)
        except (orjson.JSONDecodeError, TypeError, pydantic.ValidationError) as exc:
            raise malformed(
                answer, f"request {request.id!r}: malformed response body", exc
            ) from None
        answered_by = body.get("model")
        fields: dict[str, Any] = {
            "id": request.id or "",
            "model": answered_by if isinstance(answered_by, str) and answered_by else request.model,
            "usage": usage,
            "attempts": answer.attempts,
            "timings": answer.timings,
            "status_code": answer.status_code,
            "request_id": answer.request_id,
            "status": status,
            "incomplete_reason": reason if isinstance(reason, str) else None,
            "response": body,
            "input": _input_of(request),
        }
        result = _result(request, answer, body, fields, text, refusal)
        return Parsed(result, usage.total_tokens, usage.input_tokens, usage.output_tokens)

    def failed(
        self,
        request: ResponseRequest | None,
        *,
        id: str,
        model: str,
        raw: str | None,
        **fields: Any,
    ) -> ResponseResult:
        given = None if request is None else _input_of(request)
        return ResponseResult(id=id, model=model, raw_content=raw, input=given, **fields)


def _result(
    request: ResponseRequest,
    answer: Answer,
    body: Mapping[str, Any],
    fields: dict[str, Any],
    text: str | None,
    refusal: str | None,
) -> ResponseResult:
    """The result of a well-formed answer: its text, its model instance, or why neither."""
    if body.get("status") == "failed":
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        failure = ResponseValidationError(
            f"request {request.id!r}: the response failed: {message or 'no reason given'}",
            code="response_failed",
            raw=text,
            status_code=answer.status_code,
            request_id=answer.request_id,
        )
        return ResponseResult(**fields, raw_content=text, error=ErrorInfo.from_exception(failure))
    if request.response_model is None:
        return ResponseResult(**fields, output=text)
    try:
        output = _structured(
            request,
            request.response_model,
            text,
            refusal,
            fields["incomplete_reason"],
            answer.request_id,
        )
    except ResponseValidationError as exc:
        # Tokens were spent: the usage, the body and the raw text are kept.
        return ResponseResult(**fields, raw_content=exc.raw, error=ErrorInfo.from_exception(exc))
    return ResponseResult(**fields, output=output, raw_content=text)


def _input_of(request: ResponseRequest) -> Any:
    return request.input if isinstance(request.input, str) else list(request.input)


#: The one instance every client uses (endpoints hold no state).
RESPONSES = ResponsesEndpoint()
