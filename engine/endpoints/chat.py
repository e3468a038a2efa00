"""Chat completions (``POST /v1/chat/completions``): bodies, cost estimates, answers.

The request path's hottest endpoint: the answer is read once with orjson,
the usage validated once, and a successful result built in one call (see
docs/design.md, "Per-request cost").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pydantic

from engine._errors import InputError, ResponseValidationError
from engine._requests import ChatRequest
from engine._results import ChatResult, ErrorInfo, Usage
from engine._schema import parse_structured, response_format_for
from engine._tokens import estimate_chat_tokens
from engine.endpoints._protocol import Answer, Parsed, malformed

__all__ = ["CHAT", "ChatEndpoint"]


_new_tuple = tuple.__new__


class ChatEndpoint:
    """``POST /v1/chat/completions`` (see :class:`~engine.endpoints.JsonEndpoint`)."""

    kind = "chat"
    path = "/chat/completions"
    batch_urls: tuple[str, ...] = ("/v1/chat/completions", "/chat/completions")

    @property
    def request_type(self) -> type[ChatRequest]:
        return ChatRequest

    def from_batch(self, body: Mapping[str, Any], *, id: str, name: str) -> ChatRequest:
        params = dict(body)
        model = params.pop("model", None)
        messages = params.pop("messages", None)
        if not isinstance(model, str) or not model:
            raise InputError(f"{name}: body.model is missing")
        if not messages:
            raise InputError(f"{name}: body.messages is missing or empty")
        try:
            return ChatRequest(id=id, model=model, messages=messages, params=params)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: {exc}") from None

    def body(self, request: ChatRequest) -> dict[str, Any]:
        try:
            response_format = (
                response_format_for(request.response_model) if request.response_model else None
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"request {request.id!r}: {exc}") from None
        return request.body(response_format)

    # The estimator itself, not a method calling it: one call fewer per request.
    estimate_tokens = staticmethod(estimate_chat_tokens)

    def parse(self, request: ChatRequest, answer: Answer) -> Parsed[ChatResult]:
        # One unpacking instead of an attribute lookup per use: this runs for every answer.
        content_bytes, status_code, request_id, attempts, timings = answer
        try:
            body = orjson.loads(content_bytes)
            if not isinstance(body, dict):
                raise TypeError("the body is not a JSON object")
            usage = Usage.model_validate(body.get("usage") or {})
            choice = body["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict):
                raise TypeError("choices[0].message is not a JSON object")
            content = message.get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError("choices[0].message.content is not a string")
        except (
            orjson.JSONDecodeError,
            KeyError,
            IndexError,
            TypeError,
            pydantic.ValidationError,
        ) as exc:
            raise malformed(
                answer, f"request {request.id!r}: malformed response body", exc
            ) from None
        answered_by = body.get("model")
        model = answered_by if answered_by and isinstance(answered_by, str) else request.model
        output: Any = content
        if request.response_model is not None:
            try:
                output = parse_structured(
                    content,
                    request.response_model,
                    finish_reason=choice.get("finish_reason"),
                    refusal=message.get("refusal"),
                    request_id=request_id,
                )
            except ResponseValidationError as exc:
                # Tokens were spent: keep the usage, the body and the raw content.
                exc.message = f"request {request.id!r}: {exc.message}"
                exc.args = (exc.message,)
                failed = ChatResult(
                    id=request.id,
                    model=model,
                    usage=usage,
                    attempts=attempts,
                    timings=timings,
                    error=ErrorInfo.from_exception(exc),
                    status_code=status_code,
                    request_id=request_id,
                    response=body,
                    raw_content=exc.raw,  # the content, or the refusal text
                    input=list(request.messages),
                )
                return Parsed(
                    failed, usage.total_tokens, usage.prompt_tokens, usage.completion_tokens
                )
        result = ChatResult(
            id=request.id,
            output=output,
            model=model,
            usage=usage,
            attempts=attempts,
            timings=timings,
            status_code=status_code,
            request_id=request_id,
            response=body,
            raw_content=content if request.response_model is not None else None,
            input=list(request.messages),
        )
        # tuple.__new__, not Parsed(...): the named tuple's own __new__ is a
        # Python call, one per answer on the chat fast path.
        parsed: Parsed[ChatResult] = _new_tuple(
            Parsed, (result, usage.total_tokens, usage.prompt_tokens, usage.completion_tokens)
        )
        return parsed

    def failed(
        self, request: ChatRequest | None, *, id: str, model: str, raw: str | None, **fields: Any
    ) -> ChatResult:
        messages = None if request is None else list(request.messages)
        return ChatResult(id=id, model=model, raw_content=raw, input=messages, **fields)


#: The one instance every client uses (endpoints hold no state).
CHAT = ChatEndpoint()
