"""Embeddings (``POST /v1/embeddings``): requests, local limits, cost, answers.

OpenAI's documented limits are checked before any permit, so a request the
server would refuse is never sent nor charged: at most 2,048 inputs per
request, at most 8,192 tokens per input for the text-embedding-3 models
(8,191 for text-embedding-ada-002; other models: not checked), at most
300,000 tokens per request, and no empty input.  The cost is the input's
tokens: an embedding has no output budget.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson
import pydantic

from engine._errors import InputError
from engine._results import ErrorInfo, Timings, _ErrorAccess
from engine._tokens import count_tokens
from engine.endpoints._protocol import Answer, Parsed, malformed, parse_json_object

__all__ = [
    "EMBEDDINGS",
    "MAX_INPUTS",
    "MAX_REQUEST_TOKENS",
    "EmbeddingRequest",
    "EmbeddingResult",
    "EmbeddingUsage",
    "EmbeddingsEndpoint",
    "check_embedding_input",
    "decode_base64_vector",
    "max_input_tokens",
]

#: Most inputs one request may carry.
MAX_INPUTS = 2048
#: Most tokens one request may carry, all inputs together.
MAX_REQUEST_TOKENS = 300_000

#: One input as sent: a text, or a text already encoded as token ids.
EmbeddingInput = str | tuple[int, ...]


def _is_token_array(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _as_inputs(value: Any) -> str | tuple[EmbeddingInput, ...]:
    """A string, or a tuple of inputs (texts or token arrays); ``[1, 2]`` is one token array.

    Raises:
        ValueError: the value is none of the shapes the API accepts.
    """
    if isinstance(value, str):
        return value
    if not _is_token_array(value):
        raise ValueError(
            f"input must be a string, a list of strings or token arrays, got {type(value).__name__}"
        )
    items = list(value)
    if items and all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        return (tuple(items),)
    inputs: list[EmbeddingInput] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            inputs.append(item)
        elif _is_token_array(item) and all(
            isinstance(token, int) and not isinstance(token, bool) for token in item
        ):
            inputs.append(tuple(item))
        else:
            raise ValueError(
                f"input[{index}] must be a string or a list of token ids, got {type(item).__name__}"
            )
    return tuple(inputs)


def max_input_tokens(model: str) -> int | None:
    """The most tokens one input may have for ``model``, or None when not known."""
    name = model.removeprefix("ft:").lower()
    if name.startswith("text-embedding-3"):
        return 8192
    if name.startswith("text-embedding-ada-002"):
        return 8191
    return None


def input_tokens(item: EmbeddingInput, model: str) -> int:
    """Tokens of one input: a text's count under ``model``'s encoding, or a token array's length."""
    return count_tokens(item, model) if isinstance(item, str) else len(item)


def check_embedding_input(inputs: Sequence[EmbeddingInput], model: str, name: str) -> int:
    """Check ``inputs`` against OpenAI's limits; return their tokens (the request's cost).

    Raises:
        InputError: the message starts with ``name`` and names the input at
            fault (``input[3]``): no input, more than :data:`MAX_INPUTS`, an
            empty input, one over the model's per-input limit, or more than
            :data:`MAX_REQUEST_TOKENS` in all.
    """
    if not inputs:
        raise InputError(f"{name}: input is empty; give at least one string or token array")
    if len(inputs) > MAX_INPUTS:
        raise InputError(
            f"{name}: {len(inputs):,} inputs; an embeddings request takes at most "
            f"{MAX_INPUTS:,} (split it into several requests)"
        )
    per_input = max_input_tokens(model)
    total = 0
    for index, item in enumerate(inputs):
        if not item:
            raise InputError(f"{name}: input[{index}] is empty")
        tokens = input_tokens(item, model)
        if per_input is not None and tokens > per_input:
            raise InputError(
                f"{name}: input[{index}] has {tokens:,} tokens; {model} takes at most "
                f"{per_input:,} per input"
            )
        total += tokens
    if total > MAX_REQUEST_TOKENS:
        raise InputError(
            f"{name}: the inputs have {total:,} tokens in all; an embeddings request takes "
            f"at most {MAX_REQUEST_TOKENS:,} (split it into several requests)"
        )
    return total


def _check_dimensions(_instance: object, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"dimensions must be a positive integer, got {value!r}")


@attrs.frozen(kw_only=True)
class EmbeddingRequest:
    """One embeddings request (``POST /v1/embeddings``).

    Attributes:
        input: a string, a list of strings, a list of token ids (one input) or
            a list of token-id lists; kept as a string or a tuple of inputs.
        model: the model name, e.g. ``"text-embedding-3-small"``.
        dimensions: the length of the vectors asked for, or None (default:
            the model's own length).
        id: the caller's id, carried back on the result (Batch API ``custom_id``).
            None: ``client.map`` numbers requests by input position.
        params: any other body fields, passed through unchanged
            (``encoding_format``: ``"float"`` or ``"base64"``, ``user``, ...).
            A ``base64`` answer is decoded: results always hold floats.
        endpoint: the pool member this request must go to, by name (default
            None: any member serving the model; see ``open_client(endpoints=)``).
    """

    input: str | tuple[EmbeddingInput, ...] = attrs.field(converter=_as_inputs)
    model: str
    dimensions: int | None = attrs.field(default=None, validator=_check_dimensions)
    id: str | None = None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    endpoint: str | None = None

    @property
    def inputs(self) -> tuple[EmbeddingInput, ...]:
        """Every input as its own item (a string input is one item)."""
        return (self.input,) if isinstance(self.input, str) else self.input

    def body(self) -> dict[str, Any]:
        """The JSON request body (``input`` in the shape given; ``dimensions`` if set)."""
        body: dict[str, Any] = {**self.params, "model": self.model}
        if isinstance(self.input, str):
            body["input"] = self.input
        elif len(self.input) == 1 and isinstance(self.input[0], tuple):
            body["input"] = list(self.input[0])
        else:
            body["input"] = [item if isinstance(item, str) else list(item) for item in self.input]
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        return body


class EmbeddingUsage(pydantic.BaseModel):
    """Tokens an embeddings request used, as the server reported them (zeros when it failed)."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResult(_ErrorAccess, pydantic.BaseModel):
    """The outcome of one embeddings request.

    Attributes:
        id: the caller's id (Batch API ``custom_id``).
        vectors: one vector (a list of floats) per input, in input order, or
            None when the request failed.  Left out of ``repr``.
        model: the model that answered (as the server named it), else the one asked for.
        usage: see :class:`EmbeddingUsage`.
        attempts: HTTP attempts made (0 when refused locally).
        timings: see :class:`~engine.Timings`.
        error: None on success, else :class:`~engine.ErrorInfo`.
        status_code: HTTP status of the last response, None if none arrived.
        request_id: the server's ``x-request-id`` of the last response.
        response: the last response body as received (``base64`` vectors stay
            strings here), for Batch-API output files, or None.  Left out of ``repr``.
        input: the request's inputs (texts, token-id lists), or None.  Left out of ``repr``.
    """

    id: str
    # Any: stored as decoded, without pydantic copying every float again.
    vectors: Any = pydantic.Field(default=None, repr=False)
    model: str
    usage: EmbeddingUsage = pydantic.Field(default_factory=EmbeddingUsage)
    attempts: int = 0
    timings: Timings
    error: ErrorInfo | None = None
    status_code: int | None = None
    request_id: str | None = None
    response: dict[str, Any] | None = pydantic.Field(default=None, repr=False)
    input: Any = pydantic.Field(default=None, repr=False)

    @property
    def output(self) -> list[list[float]] | None:
        """The vectors (same as :attr:`vectors`), so every result kind reads alike."""
        vectors: list[list[float]] | None = self.vectors
        return vectors


def decode_base64_vector(text: str) -> list[float]:
    """A ``base64`` embedding as floats: little-endian float32 values, as OpenAI sends them.

    Raises:
        ValueError: not base64, or not a whole number of float32 values.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    if len(raw) % 4:
        raise ValueError(f"{len(raw)} bytes is not a whole number of float32 values")
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _vectors(body: Mapping[str, Any], count: int, dimensions: int | None) -> list[list[float]]:
    """The vectors of ``data``, ordered by ``index``.

    Raises:
        TypeError, ValueError: ``data`` is not shaped as documented, holds
            another number of vectors than inputs, or a vector of a length
            other than ``dimensions``.
    """
    data = body.get("data")
    if not isinstance(data, list):
        raise TypeError("'data' is not a list")
    if len(data) != count:
        raise ValueError(f"{len(data)} embeddings for {count} inputs")
    vectors: list[list[float] | None] = [None] * count
    for item in data:
        if not isinstance(item, dict):
            raise TypeError("a data item is not a JSON object")
        index = item.get("index")
        if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
            raise ValueError(f"data index {index!r} is out of range or repeated")
        embedding = item.get("embedding")
        if isinstance(embedding, str):
            vector = decode_base64_vector(embedding)
        elif isinstance(embedding, list):
            vector = embedding
        else:
            raise TypeError(f"embedding {index} is neither a list of floats nor base64")
        if dimensions is not None and len(vector) != dimensions:
            raise ValueError(
                f"embedding {index} has {len(vector)} values; dimensions={dimensions} was asked for"
            )
        vectors[index] = vector
    return [vector for vector in vectors if vector is not None]


class EmbeddingsEndpoint:
    """``POST /v1/embeddings`` (see :class:`~engine.endpoints.JsonEndpoint`)."""

    kind = "embeddings"
    path = "/embeddings"
    batch_urls: tuple[str, ...] = ("/v1/embeddings", "/embeddings")

    @property
    def request_type(self) -> type[EmbeddingRequest]:
        return EmbeddingRequest

    def from_batch(self, body: Mapping[str, Any], *, id: str, name: str) -> EmbeddingRequest:
        params = dict(body)
        model = params.pop("model", None)
        given = params.pop("input", None)
        dimensions = params.pop("dimensions", None)
        if not isinstance(model, str) or not model:
            raise InputError(f"{name}: body.model is missing")
        if given is None:
            raise InputError(f"{name}: body.input is missing")
        try:
            return EmbeddingRequest(
                id=id, model=model, input=given, dimensions=dimensions, params=params
            )
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: body.{exc}") from None

    def body(self, request: EmbeddingRequest) -> dict[str, Any]:
        check_embedding_input(request.inputs, request.model, f"request {request.id!r}")
        return request.body()

    def estimate_tokens(self, body: Mapping[str, Any], *, default_output_tokens: int) -> int:
        model = str(body.get("model", ""))
        try:
            inputs = _as_inputs(body.get("input"))
        except ValueError:
            return 0  # the server will refuse it; nothing to reserve
        items = (inputs,) if isinstance(inputs, str) else inputs
        return sum(input_tokens(item, model) for item in items)

    def parse(self, request: EmbeddingRequest, answer: Answer) -> Parsed[EmbeddingResult]:
        try:
            body = parse_json_object(answer)
            usage = EmbeddingUsage.model_validate(body.get("usage") or {})
            vectors = _vectors(body, len(request.inputs), request.dimensions)
        except (orjson.JSONDecodeError, TypeError, ValueError, pydantic.ValidationError) as exc:
            what = f"request {request.id!r}: malformed embeddings body"
            raise malformed(answer, what, exc) from None
        answered_by = body.get("model")
        result = EmbeddingResult(
            id=request.id or "",
            vectors=vectors,
            model=answered_by if isinstance(answered_by, str) and answered_by else request.model,
            usage=usage,
            attempts=answer.attempts,
            timings=answer.timings,
            status_code=answer.status_code,
            request_id=answer.request_id,
            response=body,
            input=_input_of(request),
        )
        return Parsed(result, usage.total_tokens, usage.prompt_tokens, 0)

    def failed(
        self,
        request: EmbeddingRequest | None,
        *,
        id: str,
        model: str,
        raw: str | None,
        **fields: Any,
    ) -> EmbeddingResult:
        given = None if request is None else _input_of(request)
        return EmbeddingResult(id=id, model=model, input=given, **fields)


def _input_of(request: EmbeddingRequest) -> list[Any]:
    return [item if isinstance(item, str) else list(item) for item in request.inputs]


#: The one instance every client uses (endpoints hold no state).
EMBEDDINGS = EmbeddingsEndpoint()
