"""What callers ask for: chat and transcription requests.

The other endpoints' requests live in their modules (``engine/endpoints/``),
and so does turning a Batch-API input line into a request
(:func:`engine.endpoints.coerce_request`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pydantic

__all__ = ["ChatRequest", "TranscriptionRequest"]

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
        endpoint: the pool member this request must go to, by name (default
            None: any member serving the model; see ``open_client(endpoints=)``).
    """

    messages: tuple[Mapping[str, Any], ...] = attrs.field(converter=_as_messages)
    model: str
    id: str | None = None
    response_model: type[pydantic.BaseModel] | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    endpoint: str | None = None

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
        endpoint: the pool member this request must go to, by name (default
            None: any member serving the model; see ``open_client(endpoints=)``).
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
    endpoint: str | None = None

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
