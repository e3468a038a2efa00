"""What callers ask for: chat requests, built directly or from Batch-API input lines."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import pydantic

from engine._errors import InputError

__all__ = ["ChatRequest", "coerce_request"]

CHAT_PATH = "/chat/completions"
_BATCH_CHAT_URLS = ("/v1/chat/completions", "/chat/completions")


def _as_messages(value: str | Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    if isinstance(value, str):
        return ({"role": "user", "content": value},)
    messages = tuple(value)
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message:
            raise ValueError(f"messages[{index}] must be a mapping with a 'role'")
    return messages


@attrs.frozen(kw_only=True)
class ChatRequest:
    """One chat completion to run.

    Attributes:
        messages: a prompt string (sent as one user message) or OpenAI-style
            message dicts.
        model: the model name, e.g. ``"gpt-4o-mini"``.
        id: the caller's id, carried back on the result (Batch API
            ``custom_id``).  None: ``client.map`` numbers requests ``"0"``,
            ``"1"``, ... in input order.
        response_model: a pydantic model the answer must fit (structured
            outputs), or None for plain text.
        params: any other request body fields, passed through unchanged
            (``temperature``, ``max_tokens``, ``seed``, ``tools``, ...).
    """

    messages: tuple[Mapping[str, Any], ...] = attrs.field(converter=_as_messages)
    model: str
    id: str | None = None
    response_model: type[pydantic.BaseModel] | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)

    def body(self, response_format: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON request body (``response_format`` overrides the params' one)."""
        body = {**self.params, "model": self.model, "messages": list(self.messages)}
        if response_format is not None:
            body["response_format"] = response_format
        return body


def coerce_request(item: Any, index: int) -> ChatRequest:
    """Turn one ``client.map`` input into a request.

    Accepts a :class:`ChatRequest` or a Batch-API input dict
    (``{"custom_id", "method", "url", "body"}``).  Raises
    :class:`~engine._errors.InputError` naming the item otherwise.
    """
    if isinstance(item, ChatRequest):
        return item if item.id is not None else attrs.evolve(item, id=str(index))
    if isinstance(item, Mapping) and "body" in item:
        custom_id = item.get("custom_id")
        name = f"item {index}" if custom_id is None else f"custom_id {custom_id!r}"
        url = item.get("url", "/v1/chat/completions")
        if url not in _BATCH_CHAT_URLS:
            raise InputError(f"{name}: url {url!r} is not supported by chat requests")
        body = item["body"]
        if not isinstance(body, Mapping):
            raise InputError(f"{name}: body must be a JSON object")
        params = dict(body)
        model = params.pop("model", None)
        messages = params.pop("messages", None)
        if not isinstance(model, str) or not model:
            raise InputError(f"{name}: body.model is missing")
        if not messages:
            raise InputError(f"{name}: body.messages is missing or empty")
        try:
            return ChatRequest(
                id=str(custom_id) if custom_id is not None else str(index),
                model=model,
                messages=messages,
                params=params,
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: {exc}") from None
    raise InputError(
        f"item {index}: expected an engine.ChatRequest or a Batch-API input dict, "
        f"got {type(item).__name__}"
    )
