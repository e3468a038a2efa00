"""The mock's Responses API planner: what it refuses, what it answers (plain data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.mock._plans import Plan, Reject
from engine.mock._responses import plan_response
from engine.mock._tokens import TokenCounter

OPENAPI_PATH = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "openapi" / "openai-openapi.json"
)
COUNTER = TokenCounter()
MODEL = "gpt-4o-mini"


def _plan(request: dict[str, Any], default_output_tokens: int = 512) -> Plan | Reject:
    return plan_response(orjson.dumps(request), default_output_tokens, COUNTER)


def _answer(request: dict[str, Any], number: int = 7) -> dict[str, Any]:
    plan = _plan(request)
    assert isinstance(plan, Plan), plan
    body: dict[str, Any] = orjson.loads(plan.body(number))
    return body


@pytest.fixture(scope="module")
def response_validator():
    """A validator for OpenAI's published Response object."""
    if not OPENAPI_PATH.exists():
        pytest.skip(f"OpenAI OpenAPI description not found at {OPENAPI_PATH}")
    from jsonschema import Draft202012Validator

    spec = json.loads(OPENAPI_PATH.read_text())
    schema = spec["components"]["schemas"]["Response"]
    # Plain JSON Schema: OAS31Validator follows discriminators that have no mapping, which
    # OpenAI's description of output items does not resolve.
    return Draft202012Validator({**schema, "components": spec["components"]})


def test_plain_answer_has_one_message_with_output_text(response_validator):
    """A string input is answered by one output_text part quoting it, usage filled in."""
    body = _answer({"model": MODEL, "input": "Say hi", "instructions": "Be brief."})
    response_validator.validate(body)
    assert body["id"] == "resp_mock7" and body["status"] == "completed"
    [message] = body["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"] == "Mock reply to: Say hi"
    usage = body["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert body["instructions"] == "Be brief."


def test_input_items_are_quoted_from_the_last_user_message():
    """Message items with content parts are read for the reply and counted."""
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
    ]
    body = _answer({"model": MODEL, "input": items})
    assert body["output"][0]["content"][0]["text"] == "Mock reply to: second"


def test_json_schema_format_is_answered_with_an_instance(response_validator):
    """text.format json_schema answers a JSON instance of the schema and echoes the format."""
    form = {
        "type": "json_schema",
        "name": "Person",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
            "additionalProperties": False,
        },
    }
    body = _answer({"model": MODEL, "input": "Ada was 36.", "text": {"format": form}})
    response_validator.validate(body)
    answer = orjson.loads(body["output"][0]["content"][0]["text"])
    assert set(answer) == {"name", "age"} and isinstance(answer["age"], int)
    assert body["text"]["format"] == form


def test_cut_at_max_output_tokens_is_incomplete(response_validator):
    """An answer longer than max_output_tokens is cut and marked incomplete with its reason."""
    body = _answer({"model": MODEL, "input": "word " * 100, "max_output_tokens": 16})
    response_validator.validate(body)
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 16


def test_cost_is_input_plus_output_budget_corrected_to_use():
    """Charged at input + max_output_tokens (or the default), corrected to input + output."""
    plan = _plan({"model": MODEL, "input": "Say hi", "max_output_tokens": 100})
    assert isinstance(plan, Plan)
    body = orjson.loads(plan.body(1))
    used = body["usage"]["input_tokens"]
    assert plan.cost == used + 100
    assert plan.actual == body["usage"]["total_tokens"]
    default = _plan({"model": MODEL, "input": "Say hi"}, default_output_tokens=300)
    assert isinstance(default, Plan) and default.cost == used + 300


@pytest.mark.parametrize(
    ("request_body", "param", "code"),
    [
        ({"input": "x"}, "model", "missing_required_parameter"),
        ({"model": MODEL}, "input", "missing_required_parameter"),
        ({"model": MODEL, "input": []}, "input", "invalid_value"),
        (
            {"model": MODEL, "input": "x", "max_output_tokens": 5},
            "max_output_tokens",
            "integer_below_min_value",
        ),
        (
            {"model": MODEL, "input": "x", "text": {"format": {"type": "xml"}}},
            "text.format.type",
            "invalid_value",
        ),
        (
            {
                "model": MODEL,
                "input": "x",
                "text": {"format": {"type": "json_schema", "schema": {}}},
            },
            "text.format.name",
            "missing_required_parameter",
        ),
    ],
)
def test_bad_requests_are_refused_with_a_400_naming_the_parameter(request_body, param, code):
    """Each malformed request is a 400 naming its parameter, before any charge."""
    plan = _plan(request_body)
    assert isinstance(plan, Reject)
    assert (plan.status, plan.param, plan.code) == (400, param, code)


def test_body_that_is_not_json_is_refused():
    """Bytes that are not JSON are a 400."""
    plan = plan_response(b"{nope", 512, COUNTER)
    assert isinstance(plan, Reject) and plan.status == 400


def test_conformance_check_catches_a_wrong_body(response_validator):
    """The published schema rejects an output_text part missing a required field."""
    from jsonschema import ValidationError

    body = _answer({"model": MODEL, "input": "x"})
    del body["output"][0]["content"][0]["annotations"]
    with pytest.raises(ValidationError):
        response_validator.validate(body)
