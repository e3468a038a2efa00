"""The mock's embeddings planner: what it refuses, what it answers (plain data)."""

from __future__ import annotations

import base64
import json
import math
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.mock._embeddings import plan_embeddings
from engine.mock._plans import Plan, Reject
from engine.mock._tokens import TokenCounter

OPENAPI_PATH = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "openapi" / "openai-openapi.json"
)
COUNTER = TokenCounter()
MODEL = "text-embedding-3-small"


def _plan(request: dict[str, Any], counter: TokenCounter = COUNTER) -> Plan | Reject:
    return plan_embeddings(orjson.dumps(request), counter)


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    plan = _plan(request)
    assert isinstance(plan, Plan), plan
    body: dict[str, Any] = orjson.loads(plan.body(1))
    return body


@pytest.fixture(scope="module")
def embedding_validator():
    """A validator for OpenAI's published CreateEmbeddingResponse."""
    if not OPENAPI_PATH.exists():
        pytest.skip(f"OpenAI OpenAPI description not found at {OPENAPI_PATH}")
    from jsonschema import Draft202012Validator

    spec = json.loads(OPENAPI_PATH.read_text())
    schema = spec["components"]["schemas"]["CreateEmbeddingResponse"]
    # Plain JSON Schema: OAS31Validator follows discriminators that have no mapping, which
    # OpenAI's description of output items does not resolve.
    return Draft202012Validator({**schema, "components": spec["components"]})


def test_one_unit_vector_per_input_of_the_models_length(embedding_validator):
    """Each input gets a unit vector, 1,536 long for text-embedding-3-small, in order."""
    body = _answer({"model": MODEL, "input": ["a", "b", "c"]})
    embedding_validator.validate(body)
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    for item in body["data"]:
        assert len(item["embedding"]) == 1536
        assert math.isclose(math.fsum(x * x for x in item["embedding"]), 1.0, rel_tol=1e-9)
    assert (
        len(_answer({"model": "text-embedding-3-large", "input": "a"})["data"][0]["embedding"])
        == 3072
    )


def test_same_text_same_vector_other_text_other_vector():
    """Vectors are deterministic per text and differ between texts."""
    first = _answer({"model": MODEL, "input": ["cat", "dog"], "dimensions": 8})
    again = _answer({"model": MODEL, "input": "cat", "dimensions": 8})
    assert first["data"][0]["embedding"] == again["data"][0]["embedding"]
    assert first["data"][0]["embedding"] != first["data"][1]["embedding"]


def test_dimensions_and_base64_shape_the_vectors(embedding_validator):
    """dimensions sets the length; base64 sends little-endian float32 bytes."""
    floats = _answer({"model": MODEL, "input": "a", "dimensions": 4})
    packed = _answer({"model": MODEL, "input": "a", "dimensions": 4, "encoding_format": "base64"})
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack("<4f", raw)
    expected = floats["data"][0]["embedding"]
    assert all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(decoded, expected, strict=True))


def test_tokens_are_counted_and_charged_with_no_output():
    """Usage counts every input's tokens (token arrays by length); cost equals use."""
    plan = _plan({"model": MODEL, "input": [[1, 2, 3], [4, 5]]})
    assert isinstance(plan, Plan)
    body = orjson.loads(plan.body(1))
    assert body["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
    assert plan.cost == plan.actual == 5 and plan.output_tokens == 0


def test_token_skew_raises_the_count():
    """With token_skew the mock reports (and charges) more than the plain count."""
    plan = _plan({"model": MODEL, "input": [[1] * 100]}, TokenCounter(skew=0.1))
    assert isinstance(plan, Plan) and plan.actual == 110


@pytest.mark.parametrize(
    ("request_body", "words"),
    [
        ({"model": MODEL}, "Missing required parameter: 'input'"),
        ({"model": MODEL, "input": []}, "'$.input' is invalid"),
        ({"model": MODEL, "input": ["a", ""]}, "'$.input' is invalid"),
        ({"model": MODEL, "input": ["a"] * 2049}, "'$.input' is invalid"),
        ({"model": MODEL, "input": [[1] * 8193]}, "maximum context length is 8192 tokens"),
        (
            {"model": "text-embedding-ada-002", "input": [[1] * 8192]},
            "maximum context length is 8191",
        ),
        ({"model": MODEL, "input": [[1] * 8000] * 38}, "Requested 304000 tokens, max 300000"),
        (
            {"model": "text-embedding-ada-002", "input": "a", "dimensions": 8},
            "does not support specifying dimensions",
        ),
        ({"model": MODEL, "input": "a", "dimensions": 2000}, "between 1 and 1536"),
        ({"model": MODEL, "input": "a", "encoding_format": "int8"}, "'float' and 'base64'"),
    ],
)
def test_what_openai_refuses_is_a_400(request_body, words):
    """Each request OpenAI refuses is a 400 from the mock, before any charge."""
    plan = _plan(request_body)
    assert isinstance(plan, Reject) and plan.status == 400
    assert words in plan.message
