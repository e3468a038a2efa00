"""The mock's ``POST /v1/embeddings``: checks an embeddings request and plans its answer.

It refuses what OpenAI refuses, with a 400 before any quota is charged: no
input, an empty string, more than 2,048 inputs, an input over the model's
context (8,192 tokens; 8,191 for text-embedding-ada-002), more than 300,000
tokens in one request, ``dimensions`` on a model without them or above the
model's length, an unknown ``encoding_format``.  Vectors are deterministic
(the same text gives the same vector), of unit length, ``dimensions`` long or
the model's own length; ``encoding_format: "base64"`` sends them as
little-endian float32 bytes in base64.  Tokens are counted with the
``cl100k_base`` encoding the embedding models use, by the mock's own
counter.  Pure: nothing here checkpoints.
"""

from __future__ import annotations

import base64
import math
import random
import struct
import zlib
from typing import Any

import orjson

from engine.mock._plans import JSON, Plan, Reject
from engine.mock._tokens import TokenCounter, _encoding

__all__ = ["MAX_INPUTS", "MAX_REQUEST_TOKENS", "model_dimensions", "plan_embeddings"]

MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000
_CHARS_PER_TOKEN = 4
_INVALID_INPUT = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)


def model_dimensions(model: str) -> int:
    """A model's own vector length (3,072 for text-embedding-3-large, else 1,536)."""
    return 3072 if model.startswith("text-embedding-3-large") else 1536


def _context(model: str) -> int:
    return 8191 if model.startswith("text-embedding-ada-002") else 8192


def _inputs(given: Any) -> list[str | list[int]] | None:
    """Every input of ``input`` (a list of token ids is one input), or None if malformed."""
    if isinstance(given, str):
        return [given]
    if not isinstance(given, list) or not given:
        return None
    if all(isinstance(item, int) and not isinstance(item, bool) for item in given):
        return [given]
    inputs: list[str | list[int]] = []
    for item in given:
        if isinstance(item, str):
            inputs.append(item)
        elif isinstance(item, list) and item and all(isinstance(t, int) for t in item):
            inputs.append(item)
        else:
            return None
    return inputs


def _tokens(item: str | list[int], counter: TokenCounter) -> int:
    if not isinstance(item, str):
        return len(item)
    if counter.rule == "chars":
        return -(-len(item) // _CHARS_PER_TOKEN)
    return len(_encoding("cl100k_base").encode_ordinary(item))


def _vector(item: str | list[int], model: str, size: int) -> list[float]:
    """A unit vector that depends only on the input and the model."""
    seed = zlib.crc32(orjson.dumps([model, item]))
    rng = random.Random(seed)
    values = [rng.random() - 0.5 for _ in range(size)]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return [value / norm for value in values]


def plan_embeddings(body: bytes, counter: TokenCounter) -> Plan | Reject:
    """Check an embeddings request body and plan its answer (cached by the caller)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Reject(400, "We could not parse the JSON body of your request.")
    if not isinstance(request, dict):
        return Reject(
            400, "Invalid type for request body: expected an object.", None, "invalid_type"
        )
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return Reject(
            400, "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    if "input" not in request:
        return Reject(
            400, "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if request.get("stream"):  # OpenAI's embeddings endpoint has no stream parameter
        return Reject(
            400, "Unrecognized request argument supplied: stream", "stream", "unsupported_value"
        )
    inputs = _inputs(request["input"])
    if inputs is None or len(inputs) > MAX_INPUTS or any(item == "" for item in inputs):
        return Reject(400, _INVALID_INPUT, "input", "invalid_value")
    encoding_format = request.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        return Reject(
            400,
            f"Invalid value: '{encoding_format}'. Supported values are: 'float' and 'base64'.",
            "encoding_format",
            "invalid_value",
        )
    size = model_dimensions(model)
    dimensions = request.get("dimensions")
    if dimensions is not None:
        if not model.startswith("text-embedding-3"):
            return Reject(
                400, "This model does not support specifying dimensions.", "dimensions", None
            )
        if (
            not isinstance(dimensions, int)
            or isinstance(dimensions, bool)
            or not (1 <= dimensions <= size)
        ):
            return Reject(
                400,
                f"Invalid 'dimensions': expected an integer between 1 and {size}, "
                f"but got {dimensions!r} instead.",
                "dimensions",
                "invalid_value",
            )
        size = dimensions
    context = _context(model)
    total = 0
    for item in inputs:
        tokens = _tokens(item, counter)
        if tokens > context:
            return Reject(
                400,
                f"This model's maximum context length is {context} tokens, however you "
                f"requested {tokens} tokens ({tokens} in your prompt; 0 for the completion). "
                f"Please reduce your prompt; or completion length.",
                None,
                None,
            )
        total += tokens
    if total > MAX_REQUEST_TOKENS:
        return Reject(
            400,
            f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per request",
            "input",
            "max_tokens_per_request",
        )
    if counter.skew:
        total = math.ceil(total * (1.0 + counter.skew) - 1e-9)
    data: list[dict[str, Any]] = []
    for index, item in enumerate(inputs):
        vector = _vector(item, model, size)
        embedding: list[float] | str = vector
        if encoding_format == "base64":
            packed = struct.pack(f"<{size}f", *vector)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    payload = orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }
    )

    def build(_number: int) -> bytes:
        return payload

    return Plan(
        model=model,
        cost=total,
        actual=total,
        output_tokens=0,
        content_type=JSON,
        body=build,
        operation="Embeddings_Create",
    )
