"""The embeddings endpoint's pure parts: input shapes, local limits, cost, answers."""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

import orjson
import pytest

from engine._errors import InputError, ResponseValidationError
from engine._results import Timings
from engine._tokens import count_tokens
from engine.endpoints import EMBEDDINGS, Answer, EmbeddingRequest, endpoint_for_url
from engine.endpoints.embeddings import (
    MAX_INPUTS,
    check_embedding_input,
    decode_base64_vector,
    max_input_tokens,
)

MODEL = "text-embedding-3-small"


def _answer(body: dict[str, Any] | bytes) -> Answer:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Answer(
        content=content,
        status_code=200,
        request_id="req_1",
        attempts=2,
        timings=Timings(queued_at=time.time()),
    )


def _body(vectors: list[Any], *, shuffled: bool = False) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": index, "embedding": vector}
        for index, vector in enumerate(vectors)
    ]
    if shuffled:
        data.reverse()
    return {
        "object": "list",
        "data": data,
        "model": MODEL,
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_batch_urls_find_the_embeddings_endpoint():
    """Both spellings of the Batch-API url name the embeddings endpoint."""
    assert endpoint_for_url("/v1/embeddings") is EMBEDDINGS
    assert endpoint_for_url("/embeddings") is EMBEDDINGS


@pytest.mark.parametrize(
    ("given", "inputs", "sent"),
    [
        ("one text", ("one text",), "one text"),
        (["a", "b"], ("a", "b"), ["a", "b"]),
        ([1, 2, 3], ((1, 2, 3),), [1, 2, 3]),
        ([[1, 2], [3]], ((1, 2), (3,)), [[1, 2], [3]]),
    ],
)
def test_input_shapes_are_kept_and_sent_as_given(given, inputs, sent):
    """A string, strings, one token array or several token arrays: one input each, sent as given."""
    request = EmbeddingRequest(input=given, model=MODEL, dimensions=256)
    assert request.inputs == inputs
    assert request.body() == {"model": MODEL, "input": sent, "dimensions": 256}


@pytest.mark.parametrize("given", [3, [1.5], [["a"]], [None], {"a": 1}])
def test_other_input_shapes_are_refused(given):
    """Anything but texts and token-id lists is refused when the request is built."""
    with pytest.raises(ValueError, match="input"):
        EmbeddingRequest(input=given, model=MODEL)


def test_dimensions_must_be_a_positive_integer():
    """dimensions=0 or a string is refused when the request is built."""
    for bad in (0, "8", True):
        with pytest.raises(ValueError, match="dimensions"):
            EmbeddingRequest(input="x", model=MODEL, dimensions=bad)


def test_too_many_inputs_fail_locally_naming_the_request():
    """2,049 strings fail before any permit, saying the limit."""
    request = EmbeddingRequest(id="e-1", input=["word"] * (MAX_INPUTS + 1), model=MODEL)
    with pytest.raises(InputError, match=r"request 'e-1': 2,049 inputs; .* at most 2,048"):
        EMBEDDINGS.body(request)


def test_over_long_input_fails_naming_the_input():
    """An input over 8,192 tokens is named by its position, with its token count."""
    long_text = "token " * 9000
    request = EmbeddingRequest(id="e-2", input=["short", long_text], model=MODEL)
    with pytest.raises(InputError, match=r"request 'e-2': input\[1\] has 9,\d{3} tokens"):
        EMBEDDINGS.body(request)


def test_empty_list_and_empty_string_fail_locally():
    """No input at all, or an empty string, fails before any permit."""
    with pytest.raises(InputError, match=r"request 'e-3': input is empty"):
        EMBEDDINGS.body(EmbeddingRequest(id="e-3", input=[], model=MODEL))
    with pytest.raises(InputError, match=r"input\[1\] is empty"):
        EMBEDDINGS.body(EmbeddingRequest(id="e-4", input=["a", ""], model=MODEL))


def test_request_total_over_300k_tokens_fails():
    """Inputs each within the limit but over 300,000 tokens together fail."""
    inputs = [[1] * 8000] * 38  # 304,000 token ids
    with pytest.raises(InputError, match=r"304,000 tokens in all"):
        check_embedding_input(
            EmbeddingRequest(input=inputs, model=MODEL).inputs, MODEL, "request 'e'"
        )


def test_per_input_limit_depends_on_the_model():
    """text-embedding-3 takes 8,192 tokens, ada-002 8,191; unknown models are not checked."""
    assert max_input_tokens("text-embedding-3-large") == 8192
    assert max_input_tokens("text-embedding-ada-002") == 8191
    assert max_input_tokens("my-embedder") is None
    check_embedding_input([(1,) * 9000], "my-embedder", "x")


def test_estimate_is_the_input_tokens_with_no_output_budget():
    """The cost of an embeddings body is its inputs' tokens, whatever the output default."""
    body = EmbeddingRequest(input=["hello world", [1, 2, 3]], model=MODEL).body()
    expected = count_tokens("hello world", MODEL) + 3
    assert EMBEDDINGS.estimate_tokens(body, default_output_tokens=512) == expected


def test_vectors_come_back_in_input_order_with_usage():
    """data is ordered by index, whatever order it arrives in; usage is kept."""
    request = EmbeddingRequest(id="e-1", input=["a", "b"], model=MODEL)
    body = _body([[0.1, 0.2], [0.3, 0.4]], shuffled=True)
    result, used, input_tokens, output_tokens = EMBEDDINGS.parse(request, _answer(body))
    assert (input_tokens, output_tokens) == (7, 0)
    assert result.ok and result.vectors == [[0.1, 0.2], [0.3, 0.4]]
    assert result.output == result.vectors
    assert result.usage.prompt_tokens == 7 and used == 7
    assert result.response == body and result.input == ["a", "b"] and result.attempts == 2


def test_base64_vectors_are_decoded_and_the_body_kept_as_received():
    """base64 answers become floats; the stored response keeps the base64 text."""
    vector = [0.5, -0.25, 1.0]
    encoded = base64.b64encode(struct.pack("<3f", *vector)).decode()
    request = EmbeddingRequest(
        id="e-1", input="a", model=MODEL, params={"encoding_format": "base64"}
    )
    result, *_ = EMBEDDINGS.parse(request, _answer(_body([encoded])))
    assert result.vectors == [vector]
    assert result.response is not None
    assert result.response["data"][0]["embedding"] == encoded
    assert decode_base64_vector(encoded) == vector


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_body([[0.1]]), "1 embeddings for 2 inputs"),
        (_body([[0.1], [0.2, 0.3]]), "dimensions=2"),
        (_body([[0.1, 0.2], "@@@"]), "not base64"),
        ({"data": "x"}, "'data' is not a list"),
    ],
)
def test_answers_that_do_not_fit_the_request_are_malformed(body, reason):
    """A wrong count, a wrong length or a bad encoding raises, naming the request."""
    request = EmbeddingRequest(id="e-5", input=["a", "b"], model=MODEL, dimensions=2)
    with pytest.raises(
        ResponseValidationError, match="request 'e-5': malformed embeddings body"
    ) as info:
        EMBEDDINGS.parse(request, _answer(body))
    assert reason in info.value.message


def test_from_batch_builds_the_request_and_names_bad_lines():
    """A Batch body becomes an EmbeddingRequest; bad ones name the line."""
    request = EMBEDDINGS.from_batch(
        {"model": MODEL, "input": ["a"], "dimensions": 8, "encoding_format": "base64"},
        id="q-1",
        name="line 2",
    )
    assert request == EmbeddingRequest(
        id="q-1", model=MODEL, input=["a"], dimensions=8, params={"encoding_format": "base64"}
    )
    with pytest.raises(InputError, match=r"line 2: body\.input is missing"):
        EMBEDDINGS.from_batch({"model": MODEL}, id="q", name="line 2")
    with pytest.raises(InputError, match=r"line 5: body\.dimensions must be"):
        EMBEDDINGS.from_batch(
            {"model": MODEL, "input": "a", "dimensions": -1}, id="q", name="line 5"
        )


def test_failed_result_keeps_the_input():
    """A failure built for a request keeps its inputs; one with no request keeps none."""
    request = EmbeddingRequest(id="e-1", input=[[1, 2]], model=MODEL)
    timings = Timings(queued_at=0.0)
    failed = EMBEDDINGS.failed(request, id="e-1", model=MODEL, raw=None, timings=timings)
    assert failed.input == [[1, 2]] and failed.vectors is None
    assert EMBEDDINGS.failed(None, id="x", model="", raw=None, timings=timings).input is None
