"""The mock's ``POST /v1/responses``: checks a Responses API request and plans its answer.

The answer is shaped as OpenAI's published description of a response
object: one ``message`` output item holding one ``output_text`` part,
``usage`` with ``input_tokens`` / ``output_tokens``, ``status: "incomplete"``
with ``incomplete_details.reason = "max_output_tokens"`` when the text is cut
at ``max_output_tokens``.  ``text.format`` is honoured as chat's
``response_format`` is: ``json_schema`` answers an instance of the schema,
``json_object`` a small object.  ``"stream": true`` sends the Responses
API's events instead (:func:`engine.mock._stream.responses_stream`), one
``response.output_text.delta`` per output token.  Tokens are counted by the mock's own
counter (:mod:`engine.mock._tokens`), never the engine's.  Pure: nothing
here checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from engine.mock._plans import JSON, Plan, Reject
from engine.mock._schema import instance_for_schema
from engine.mock._stream import SSE, responses_stream
from engine.mock._tokens import TokenCounter

__all__ = ["MIN_OUTPUT_TOKENS", "plan_response"]

#: The smallest ``max_output_tokens`` OpenAI accepts.
MIN_OUTPUT_TOKENS = 16
_SNIPPET_CHARS = 200
_UNPARSABLE_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
)


def _part_text(content: Any) -> str:
    """The text of an input message's content: a string, or its parts' ``text``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _messages(request: Mapping[str, Any]) -> list[dict[str, Any]] | Reject:
    """``instructions`` and ``input`` as chat-style messages, for counting tokens."""
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            return Reject(
                400,
                "Invalid type for 'instructions': expected a string.",
                "instructions",
                "invalid_type",
            )
        messages.append({"role": "system", "content": instructions})
    given = request.get("input")
    if given is None:
        return Reject(
            400, "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        return messages
    if not isinstance(given, list) or not given:
        return Reject(
            400,
            "Invalid 'input': expected a string or a non-empty array of input items.",
            "input",
            "invalid_value",
        )
    for index, item in enumerate(given):
        if not isinstance(item, dict):
            return Reject(
                400,
                f"Invalid 'input[{index}]': expected an object.",
                f"input[{index}]",
                "invalid_type",
            )
        if "role" in item:
            messages.append({"role": item["role"], "content": item.get("content")})
        else:  # a tool call's output and the like: counted as its text
            messages.append({"role": "user", "content": orjson.dumps(item).decode()})
    return messages


def _answer(text_param: Any, snippet: str) -> tuple[str, dict[str, Any]] | Reject:
    """The answer text and the ``text.format`` to echo, as ``text.format`` asks."""
    plain = f"Mock reply to: {snippet}"
    if text_param is None:
        return plain, {"type": "text"}
    if not isinstance(text_param, dict):
        return Reject(400, "Invalid 'text': expected an object.", "text", "invalid_type")
    form = text_param.get("format")
    if form is None:
        return plain, {"type": "text"}
    if not isinstance(form, dict):
        return Reject(
            400, "Invalid 'text.format': expected an object.", "text.format", "invalid_type"
        )
    kind = form.get("type")
    if kind == "text":
        return plain, form
    if kind == "json_object":
        return orjson.dumps({"reply": plain}).decode(), form
    if kind == "json_schema":
        if not isinstance(form.get("name"), str):
            return Reject(
                400,
                "Missing required parameter: 'text.format.name'.",
                "text.format.name",
                "missing_required_parameter",
            )
        schema = form.get("schema")
        if not isinstance(schema, dict):
            return Reject(
                400,
                "Missing required parameter: 'text.format.schema'.",
                "text.format.schema",
                "missing_required_parameter",
            )
        try:
            instance = instance_for_schema(schema)
        except (KeyError, TypeError, ValueError, IndexError, RecursionError) as error:
            return Reject(
                400,
                f"Invalid schema for response_format '{form['name']}': {error}",
                "text.format.schema",
                "invalid_json_schema",
            )
        return orjson.dumps(instance).decode(), form
    return Reject(
        400,
        f"Invalid value: '{kind}'. Supported values are: 'text', 'json_object', and 'json_schema'.",
        "text.format.type",
        "invalid_value",
    )


def plan_response(body: bytes, default_output_tokens: int, counter: TokenCounter) -> Plan | Reject:
    """Check a Responses API request body and plan its answer (cached by the caller)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return Reject(400, _UNPARSABLE_JSON)
    if not isinstance(request, dict):
        return Reject(
            400, "Invalid type for request body: expected an object.", None, "invalid_type"
        )
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return Reject(
            400, "Missing required parameter: 'model'.", "model", "missing_required_parameter"
        )
    messages = _messages(request)
    if isinstance(messages, Reject):
        return messages
    limit = request.get("max_output_tokens")
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or limit < MIN_OUTPUT_TOKENS
    ):
        return Reject(
            400,
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
            f"{MIN_OUTPUT_TOKENS}, but got {limit!r} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    snippet = ""
    for message in reversed(messages):
        if message["role"] == "user":
            snippet = _part_text(message["content"])[:_SNIPPET_CHARS]
            break
    answered = _answer(request.get("text"), snippet)
    if isinstance(answered, Reject):
        return answered
    text, form = answered
    try:
        input_tokens = counter.prompt_tokens(messages, model)
    except (TypeError, ValueError) as error:
        return Reject(400, f"Invalid 'input': {error}", "input", "invalid_value")
    output_tokens = counter.text_tokens(text, model)
    original = text
    status = "completed"
    incomplete = None
    if limit is not None and output_tokens > limit:
        text = counter.truncate(text, model, limit)
        output_tokens = limit
        status = "incomplete"
        incomplete = {"reason": "max_output_tokens"}
    fixed = {
        "object": "response",
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": limit,
        "model": model,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": bool(request.get("store", True)),
        "temperature": request.get("temperature", 1.0),
        "text": {"format": form},
        "tool_choice": "auto",
        "tools": [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "metadata": request.get("metadata") or {},
    }
    part: dict[str, object] = {
        "type": "output_text",
        "text": text,
        "annotations": [],
        "logprobs": [],
    }
    cost = input_tokens + (limit if limit is not None else default_output_tokens)
    if request.get("stream"):
        pieces = counter.pieces(original, model, limit)
        part["text"] = "".join(pieces)
        return Plan(
            model=model,
            cost=cost,
            actual=input_tokens + len(pieces),
            output_tokens=len(pieces),
            content_type=SSE,
            body=_no_body,
            operation="Responses_Create",
            stream=responses_stream(response=fixed, part=part, pieces=pieces),
        )

    def build(number: int) -> bytes:
        created = int(time.time())
        message = {
            "id": f"msg_mock{number:x}",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [part],
        }
        return orjson.dumps(
            {
                "id": f"resp_mock{number:x}",
                "created_at": created,
                "completed_at": created if status == "completed" else None,
                "output": [message],
                **fixed,
            }
        )

    return Plan(
        model=model,
        cost=cost,
        actual=input_tokens + output_tokens,
        output_tokens=output_tokens,
        content_type=JSON,
        body=build,
        operation="Responses_Create",
    )


def _no_body(_number: int) -> bytes:
    raise RuntimeError("a streamed answer is sent as its events, not as one body")
