"""The Responses API endpoint's pure parts: bodies, cost estimates, answers (plain data)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from engine._errors import InputError, ResponseValidationError
from engine._results import Timings
from engine._schema import response_format_for
from engine.endpoints import RESPONSES, Answer, ResponseRequest, endpoint_for_url
from engine.endpoints.responses import estimate_response_tokens, text_format_for


class Person(BaseModel):
    """Someone mentioned in the text."""

    name: str
    age: int
    nickname: str | None = None


def _answer(body: dict[str, Any] | bytes, status: int = 200) -> Answer:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return Answer(
        content=content,
        status_code=status,
        request_id="req_1",
        attempts=1,
        timings=Timings(queued_at=time.time()),
    )


def _response(
    text: str | None = "hello",
    *,
    status: str = "completed",
    reason: str | None = None,
    refusal: str | None = None,
) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if text is not None:
        parts.append({"type": "output_text", "text": text, "annotations": []})
    if refusal is not None:
        parts.append({"type": "refusal", "refusal": refusal})
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "incomplete_details": {"reason": reason} if reason else None,
        "model": "gpt-4o-mini-2024",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": parts},
        ],
        "usage": {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
    }


def test_batch_urls_find_the_responses_endpoint():
    """Both spellings of the Batch-API url name the responses endpoint; others none."""
    assert endpoint_for_url("/v1/responses") is RESPONSES
    assert endpoint_for_url("/responses") is RESPONSES
    assert endpoint_for_url("/v1/moderations") is None


def test_body_carries_input_instructions_and_params():
    """The body is the params plus model, input and instructions as given."""
    request = ResponseRequest(
        input="Say hi", model="gpt-4o-mini", instructions="Be brief.", params={"temperature": 0}
    )
    assert request.body() == {
        "temperature": 0,
        "model": "gpt-4o-mini",
        "input": "Say hi",
        "instructions": "Be brief.",
    }


def test_response_model_sets_text_format_from_the_strict_schema_builder():
    """text.format is chat's json_schema object flattened, strict, keeping other text params."""
    request = ResponseRequest(
        input="Ada was 36.",
        model="gpt-4o-mini",
        response_model=Person,
        params={"text": {"verbosity": "low"}},
    )
    text = request.body()["text"]
    spec = response_format_for(Person)["json_schema"]
    assert text == {"verbosity": "low", "format": {"type": "json_schema", **spec}}
    assert text["format"]["strict"] is True
    assert text["format"]["schema"]["required"] == ["name", "age", "nickname"]
    assert text_format_for(Person)["name"] == "Person"


def test_unexpressible_model_is_an_input_error_naming_the_request():
    """A response_model strict mode cannot express fails locally, naming the request."""

    class Scores(BaseModel):
        scores: dict[str, int]

    request = ResponseRequest(id="r-1", input="x", model="gpt-4o-mini", response_model=Scores)
    with pytest.raises(InputError, match=r"request 'r-1': Scores.scores"):
        RESPONSES.body(request)


def test_empty_input_is_refused():
    """An empty string or an empty item list is not a request."""
    with pytest.raises(ValueError, match="input"):
        ResponseRequest(input="", model="m")
    with pytest.raises(ValueError, match="input"):
        ResponseRequest(input=[], model="m")


def test_estimate_counts_input_instructions_format_and_output_budget():
    """The estimate grows with the instructions, the schema and max_output_tokens."""
    plain = {"model": "gpt-4o-mini", "input": "Say hi"}
    base = estimate_response_tokens(plain, default_output_tokens=100)
    assert base > 100
    with_instructions = {**plain, "instructions": "Answer in French, politely."}
    assert estimate_response_tokens(with_instructions, default_output_tokens=100) > base
    capped = {**plain, "max_output_tokens": 20}
    assert estimate_response_tokens(capped, default_output_tokens=100) == base - 80
    structured = ResponseRequest(input="Say hi", model="gpt-4o-mini", response_model=Person)
    assert estimate_response_tokens(structured.body(), default_output_tokens=100) > base + 10


def test_estimate_counts_input_items_and_non_message_items():
    """Message items count like chat messages; other items count as their JSON text."""
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "What is in this file?"}]},
        {"type": "function_call_output", "call_id": "c1", "output": "a long tool result " * 10},
    ]
    estimate = estimate_response_tokens(
        {"model": "gpt-4o-mini", "input": items}, default_output_tokens=0
    )
    assert estimate > 40


def test_plain_answer_gathers_output_text_parts_and_usage():
    """output_text parts of message items are joined; usage comes from input/output tokens."""
    request = ResponseRequest(id="r-1", input="hi", model="gpt-4o-mini")
    body = _response("hello")
    body["output"][1]["content"].append({"type": "output_text", "text": " world"})
    result, used, input_tokens, output_tokens = RESPONSES.parse(request, _answer(body))
    assert result.ok and result.output == "hello world"
    assert (input_tokens, output_tokens) == (12, 5)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (12, 5)
    assert used == 17
    assert result.model == "gpt-4o-mini-2024"
    assert result.status == "completed" and result.response == body
    assert result.request_id == "req_1" and result.input == "hi"


def test_plain_incomplete_answer_is_a_success_with_its_reason():
    """Plain text cut at max_output_tokens is kept, as chat keeps finish_reason length."""
    request = ResponseRequest(id="r-1", input="hi", model="gpt-4o-mini")
    body = _response("hel", status="incomplete", reason="max_output_tokens")
    result, *_ = RESPONSES.parse(request, _answer(body))
    assert result.ok and result.output == "hel"
    assert result.incomplete_reason == "max_output_tokens"


def test_structured_answer_is_parsed_into_the_model():
    """A json_schema answer becomes an instance of the response model."""
    request = ResponseRequest(id="r-1", input="x", model="gpt-4o-mini", response_model=Person)
    result, *_ = RESPONSES.parse(
        request, _answer(_response('{"name":"Ada","age":36,"nickname":null}'))
    )
    assert result.ok and result.output == Person(name="Ada", age=36)
    assert result.raw_content == '{"name":"Ada","age":36,"nickname":null}'


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        (_response(None, refusal="I can't help."), "refusal", "refused to answer with Person"),
        (
            _response('{"name":"A', status="incomplete", reason="max_output_tokens"),
            "output_truncated",
            "raise max_output_tokens",
        ),
        (
            _response(None, status="incomplete", reason="content_filter"),
            "content_filter",
            "content filter",
        ),
        (_response("  "), "empty_output", "is empty"),
        (_response("not json"), "invalid_json", "not valid JSON"),
        (_response('{"name":"Ada","age":"old","nickname":null}'), "schema_mismatch", "age"),
    ],
)
def test_unusable_structured_answers_fail_with_chats_codes(body, code, words):
    """Refusal, truncation, filter, empty, bad JSON and mismatch fail the item, usage kept."""
    request = ResponseRequest(id="r-9", input="x", model="gpt-4o-mini", response_model=Person)
    result, used, *_ = RESPONSES.parse(request, _answer(body))
    assert not result.ok and result.error is not None
    assert result.error.code == code
    assert words in result.error.message
    assert result.error.message.startswith("request 'r-9': ")
    assert result.usage.total_tokens == 17 and used == 17
    assert isinstance(result.exception, ResponseValidationError)


def test_failed_status_fails_the_item_with_the_servers_message():
    """status failed with an error object is a failed result naming the server's reason."""
    request = ResponseRequest(id="r-1", input="x", model="gpt-4o-mini")
    body = _response(None, status="failed")
    body["error"] = {"code": "server_error", "message": "the model crashed"}
    result, *_ = RESPONSES.parse(request, _answer(body))
    assert result.error is not None and result.error.code == "response_failed"
    assert "the model crashed" in result.error.message


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1]",
        orjson.dumps({"output": "text"}),
        orjson.dumps({"output": [{"type": "message", "content": "x"}]}),
    ],
)
def test_malformed_bodies_raise_response_validation_error(content):
    """A body that is not a response object raises, its text kept as raw."""
    request = ResponseRequest(id="r-1", input="x", model="gpt-4o-mini")
    with pytest.raises(
        ResponseValidationError, match="request 'r-1': malformed response body"
    ) as info:
        RESPONSES.parse(request, _answer(content))
    assert info.value.raw == content.decode()


def test_from_batch_builds_the_request_and_names_bad_lines():
    """A Batch body becomes a ResponseRequest; a missing field names the line."""
    request = RESPONSES.from_batch(
        {
            "model": "gpt-4o-mini",
            "input": "hi",
            "instructions": "Be brief.",
            "max_output_tokens": 50,
        },
        id="q-1",
        name="line 3",
    )
    assert request == ResponseRequest(
        id="q-1",
        model="gpt-4o-mini",
        input="hi",
        instructions="Be brief.",
        params={"max_output_tokens": 50},
    )
    with pytest.raises(InputError, match=r"line 3: body\.input is missing"):
        RESPONSES.from_batch({"model": "m"}, id="q", name="line 3")
    with pytest.raises(InputError, match=r"line 4: body\.model is missing"):
        RESPONSES.from_batch({"input": "x"}, id="q", name="line 4")
