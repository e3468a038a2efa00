"""What callers ask for: chat and transcription requests, built directly or from
Batch-API input lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pydantic

from engine._errors import InputError

__all__ = ["ChatRequest", "TranscriptionRequest", "coerce_request"]

CHAT_PATH = "/chat/completions"
TRANSCRIPTION_PATH = "/audio/transcriptions"
_BATCH_CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
_BATCH_TRANSCRIPTION_URLS = ("/v1/audio/transcriptions", "/audio/transcriptions")
#: Default of ``min_seconds``: shorter recordings are skipped, never sent.
DEFAULT_MIN_SECONDS = 5.0
#: ``response_format`` values a transcription may ask for.
TRANSCRIPTION_FORMATS = ("json", "verbose_json", "text", "srt", "vtt")


def _as_messages(value: str | Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
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


def _check_format(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in TRANSCRIPTION_FORMATS:
        raise ValueError(
            f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)}, got {value!r}"
        )


def _check_model(_instance: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"model must be a non-empty string, got {value!r}")


def _check_min_seconds(_instance: object, _attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"min_seconds must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class TranscriptionRequest:
    """One audio transcription to run (``POST /v1/audio/transcriptions``).

    Attributes:
        source: a path, the file's bytes, or a binary file object (read once,
            from its current position).
        model: default ``"whisper-1"``.
        id: the caller's id, carried back on the result.  None: ``client.map``
            numbers requests by input position; ``client.transcribe`` uses
            the file name.
        response_format: ``json`` (default), ``verbose_json``, ``text``,
            ``srt`` or ``vtt``.
        language / prompt / temperature: passed through when not None
            (default None: the server's defaults).
        min_seconds: recordings shorter than this are skipped and never sent
            (default 5.0; 0 disables the check).
        filename: the name to upload under (default: the path's or file
            object's base name, else ``audio.<ext>`` from the detected format).
        params: any other form fields, passed through unchanged
            (``timestamp_granularities[]``, ...).
    """

    source: Any
    model: str = attrs.field(default="whisper-1", validator=_check_model)
    id: str | None = None
    response_format: str = attrs.field(default="json", validator=_check_format)
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    min_seconds: float = attrs.field(
        default=DEFAULT_MIN_SECONDS, converter=float, validator=_check_min_seconds
    )
    filename: str | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)

    def form_fields(self) -> dict[str, Any]:
        """The multipart form fields other than the file (None values left out)."""
        fields: dict[str, Any] = {
            key: value for key, value in self.params.items() if value is not None
        }
        fields["model"] = self.model
        fields["response_format"] = self.response_format
        if self.language is not None:
            fields["language"] = self.language
        if self.prompt is not None:
            fields["prompt"] = self.prompt
        if self.temperature is not None:
            fields["temperature"] = str(self.temperature)
        return fields


def coerce_request(item: Any, index: int) -> ChatRequest | TranscriptionRequest:
    """Turn one ``client.map`` input into a request.

    Accepts a :class:`ChatRequest`, a :class:`TranscriptionRequest`, or a
    Batch-API input dict (``{"custom_id", "method", "url", "body"}``) whose
    ``url`` is ``/v1/chat/completions`` (the default) or
    ``/v1/audio/transcriptions``; for the latter ``body.file`` is a local
    path, the other body fields are form fields, and an optional
    ``body.min_seconds`` (an engine extension, not sent) overrides the
    default 5.0.  Raises :class:`~engine._errors.InputError` naming the item
    otherwise.
    """
    if isinstance(item, ChatRequest | TranscriptionRequest):
        return item if item.id is not None else attrs.evolve(item, id=str(index))
    if isinstance(item, Mapping) and "body" in item:
        custom_id = item.get("custom_id")
        name = f"item {index}" if custom_id is None else f"custom_id {custom_id!r}"
        url = item.get("url", "/v1/chat/completions")
        body = item["body"]
        if not isinstance(body, Mapping):
            raise InputError(f"{name}: body must be a JSON object")
        if url in _BATCH_TRANSCRIPTION_URLS:
            return _transcription_from_batch(body, custom_id, index, name)
        if url not in _BATCH_CHAT_URLS:
            raise InputError(f"{name}: url {url!r} is not supported")
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
        f"item {index}: expected an engine.ChatRequest, an engine.TranscriptionRequest "
        f"or a Batch-API input dict, got {type(item).__name__}"
    )


def _transcription_from_batch(
    body: Mapping[str, Any], custom_id: Any, index: int, name: str
) -> TranscriptionRequest:
    params = dict(body)
    file = params.pop("file", None)
    if not isinstance(file, str) or not file:
        raise InputError(f"{name}: body.file must be the path of a local audio file")
    options: dict[str, Any] = {}
    for key in ("model", "response_format", "language", "prompt", "temperature", "min_seconds"):
        if key in params:
            options[key] = params.pop(key)
    try:
        return TranscriptionRequest(
            id=str(custom_id) if custom_id is not None else str(index),
            source=file,
            params=params,
            **options,
        )
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: {exc}") from None


def is_transcription_input(item: Any) -> bool:
    """True when a ``map`` input is (or looks like) a transcription request."""
    if isinstance(item, TranscriptionRequest):
        return True
    return isinstance(item, Mapping) and item.get("url") in _BATCH_TRANSCRIPTION_URLS
