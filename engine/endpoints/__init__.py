"""One module per endpoint, behind one small protocol (:class:`JsonEndpoint`).

Each endpoint says how a request becomes a body, what it may cost, how its
answer becomes a result and which Batch-API ``url`` it serves.  Adding the
next one (moderations, completions) is one new module and one line in
:data:`JSON_ENDPOINTS`.
"""

from __future__ import annotations

from typing import Any

from engine.endpoints._protocol import Answer, JsonEndpoint
from engine.endpoints.embeddings import (
    EMBEDDINGS,
    EmbeddingRequest,
    EmbeddingResult,
    EmbeddingUsage,
)
from engine.endpoints.responses import RESPONSES, ResponseRequest, ResponseResult, ResponseUsage

__all__ = [
    "EMBEDDINGS",
    "JSON_ENDPOINTS",
    "RESPONSES",
    "Answer",
    "EmbeddingRequest",
    "EmbeddingResult",
    "EmbeddingUsage",
    "JsonEndpoint",
    "ResponseRequest",
    "ResponseResult",
    "ResponseUsage",
    "endpoint_for_request",
    "endpoint_for_url",
]

#: The JSON endpoints beyond chat, in the order the registry is searched.
JSON_ENDPOINTS: tuple[JsonEndpoint[Any, Any], ...] = (RESPONSES, EMBEDDINGS)

_BY_URL = {url: endpoint for endpoint in JSON_ENDPOINTS for url in endpoint.batch_urls}
_BY_TYPE = {endpoint.request_type: endpoint for endpoint in JSON_ENDPOINTS}


def endpoint_for_url(url: object) -> JsonEndpoint[Any, Any] | None:
    """The endpoint serving a Batch-API ``url`` (``"/v1/responses"``), or None."""
    return _BY_URL.get(url) if isinstance(url, str) else None


def endpoint_for_request(request: object) -> JsonEndpoint[Any, Any] | None:
    """The endpoint of a request object (``ResponseRequest``...), or None."""
    return _BY_TYPE.get(type(request))
