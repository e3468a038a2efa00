"""One module per endpoint, behind one small protocol (:class:`JsonEndpoint`).

Each JSON endpoint says how a request becomes a body, what it may cost, how
its answer becomes a result and which Batch-API ``url`` it serves; the
client's request loop and failure policy know nothing more of it.  Adding
the next one (moderations, completions) is one new module and one line in
:data:`JSON_ENDPOINTS`.  Transcriptions are uploads, not JSON: their pure
parts are in :mod:`engine.endpoints.transcription`, their file reading in
the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from engine._errors import InputError
from engine._requests import ChatRequest, TranscriptionRequest
from engine.endpoints._protocol import Answer, JsonEndpoint, Parsed, batch_id
from engine.endpoints.chat import CHAT
from engine.endpoints.embeddings import (
    EMBEDDINGS,
    EmbeddingRequest,
    EmbeddingResult,
    EmbeddingUsage,
)
from engine.endpoints.responses import RESPONSES, ResponseRequest, ResponseResult, ResponseUsage
from engine.endpoints.transcription import TRANSCRIPTION_URLS, transcription_from_batch

__all__ = [
    "CHAT",
    "EMBEDDINGS",
    "JSON_ENDPOINTS",
    "RESPONSES",
    "Answer",
    "AnyRequest",
    "EmbeddingRequest",
    "EmbeddingResult",
    "EmbeddingUsage",
    "JsonEndpoint",
    "Parsed",
    "ResponseRequest",
    "ResponseResult",
    "ResponseUsage",
    "coerce_request",
    "endpoint_for_request",
    "endpoint_for_url",
    "input_kind",
]

#: The JSON endpoints, in the order the registry is searched.
JSON_ENDPOINTS: tuple[JsonEndpoint[Any, Any], ...] = (CHAT, RESPONSES, EMBEDDINGS)

#: Any request ``client.map`` runs.
AnyRequest = ChatRequest | TranscriptionRequest | ResponseRequest | EmbeddingRequest
_REQUEST_TYPES = (ChatRequest, TranscriptionRequest, ResponseRequest, EmbeddingRequest)
#: A Batch line without a ``url`` is a chat completion, as before there were others.
_DEFAULT_URL = "/v1/chat/completions"

_BY_URL = {url: endpoint for endpoint in JSON_ENDPOINTS for url in endpoint.batch_urls}
_BY_TYPE = {endpoint.request_type: endpoint for endpoint in JSON_ENDPOINTS}


def endpoint_for_url(url: object) -> JsonEndpoint[Any, Any] | None:
    """The JSON endpoint serving a Batch-API ``url`` (``"/v1/responses"``), or None."""
    return _BY_URL.get(url) if isinstance(url, str) else None


def endpoint_for_request(request: object) -> JsonEndpoint[Any, Any] | None:
    """The JSON endpoint of a request object (None for a transcription or anything else)."""
    return _BY_TYPE.get(type(request))


def coerce_request(item: Any, index: int) -> AnyRequest:
    """Turn one ``client.map`` input into a request.

    Accepts a request object (:class:`~engine.ChatRequest`,
    :class:`~engine.ResponseRequest`, :class:`~engine.EmbeddingRequest`,
    :class:`~engine.TranscriptionRequest`; one without an id is numbered
    ``str(index)``) or a Batch-API input dict (``{"custom_id", "method",
    "url", "body"}``) whose ``url`` one endpoint serves (default
    ``/v1/chat/completions``); such a dict's ``"endpoint"`` (a pool member's
    name) pins the request to that member.

    Raises:
        InputError: the item is unusable; the message names it by its
            ``custom_id``, else its position.
    """
    if isinstance(item, _REQUEST_TYPES):
        return item if item.id is not None else attrs.evolve(item, id=str(index))
    if isinstance(item, Mapping) and "body" in item:
        custom_id = item.get("custom_id")
        name = f"item {index}" if custom_id is None else f"custom_id {custom_id!r}"
        url = item.get("url", _DEFAULT_URL)
        body = item["body"]
        if not isinstance(body, Mapping):
            raise InputError(f"{name}: body must be a JSON object")
        pin = item.get("endpoint")
        if pin is not None and not isinstance(pin, str):
            raise InputError(f"{name}: endpoint must be a pool member's name (a string)")
        request: AnyRequest
        if url in TRANSCRIPTION_URLS:
            request = transcription_from_batch(body, id=batch_id(custom_id, index), name=name)
        else:
            endpoint = endpoint_for_url(url)
            if endpoint is None:
                raise InputError(f"{name}: url {url!r} is not supported")
            request = endpoint.from_batch(body, id=batch_id(custom_id, index), name=name)
        return request if pin is None else attrs.evolve(request, endpoint=pin)
    raise InputError(
        f"item {index}: expected an engine.ChatRequest, ResponseRequest, EmbeddingRequest, "
        f"TranscriptionRequest or a Batch-API input dict, got {type(item).__name__}"
    )


def input_kind(item: Any) -> str:
    """The endpoint a ``map`` input is meant for (``"chat"``, ``"responses"``,
    ``"embeddings"``, ``"transcription"``), for the result of one that never
    became a request; ``"chat"`` when it cannot be told."""
    if isinstance(item, TranscriptionRequest):
        return "transcription"
    endpoint = endpoint_for_request(item)
    if endpoint is None and isinstance(item, Mapping):
        url = item.get("url", _DEFAULT_URL)
        if url in TRANSCRIPTION_URLS:
            return "transcription"
        endpoint = endpoint_for_url(url)
    return endpoint.kind if endpoint is not None else "chat"
