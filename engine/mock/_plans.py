"""What the mock decides for one request before it answers: refuse it, or plan its answer.

Shared by every endpoint's planner (chat, transcriptions, responses,
embeddings) and by the app that charges and sends the plans.  Plain data.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from engine.mock._stream import StreamPlan

__all__ = ["JSON", "Plan", "Reject"]

JSON = b"application/json"


@attrs.frozen
class Reject:
    """A request refused before any quota is charged (4xx)."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    type: str = "invalid_request_error"


@attrs.frozen(kw_only=True)
class Plan:
    """Everything needed to answer an admitted request.

    ``body(request_number)`` builds the response bytes; ``cost`` is charged at
    arrival and ``actual`` is the real usage it is corrected to.  ``stream``
    is set (default None) when the request asked for a streamed answer: its
    events replace ``body``.
    """

    model: str
    cost: int
    actual: int
    output_tokens: int
    content_type: bytes
    body: Callable[[int], bytes]
    operation: str  # Azure's name of the endpoint, for its 429 message
    stream: StreamPlan | None = None
