"""The endpoint registry: Batch urls and request objects to endpoints, map inputs to requests."""

from __future__ import annotations

import time

import orjson
import pytest

from engine._errors import InputError
from engine._requests import ChatRequest, TranscriptionRequest
from engine._results import Timings
from engine.endpoints import (
    CHAT,
    EMBEDDINGS,
    JSON_ENDPOINTS,
    RESPONSES,
    Answer,
    EmbeddingRequest,
    ResponseRequest,
    coerce_request,
    endpoint_for_request,
    input_kind,
)


def _line(url: str | None, body: dict, custom_id: str | None = "x") -> dict:
    line = {"custom_id": custom_id, "method": "POST", "body": body}
    if url is not None:
        line["url"] = url
    return line


def test_every_json_endpoint_serves_distinct_urls_and_request_types():
    """No two endpoints claim the same Batch url or request class."""
    urls = [url for endpoint in JSON_ENDPOINTS for url in endpoint.batch_urls]
    assert len(urls) == len(set(urls))
    assert {endpoint.kind for endpoint in JSON_ENDPOINTS} == {"chat", "responses", "embeddings"}
    assert endpoint_for_request(ChatRequest(messages="hi", model="m")) is CHAT
    assert endpoint_for_request(ResponseRequest(input="hi", model="m")) is RESPONSES
    assert endpoint_for_request(EmbeddingRequest(input="hi", model="m")) is EMBEDDINGS


def test_mixed_batch_lines_become_their_endpoints_requests(tmp_path):
    """Chat, responses, embeddings and transcription lines each become their own request."""
    chat = coerce_request(_line("/v1/chat/completions", {"model": "m", "messages": "hi"}), 0)
    responses = coerce_request(_line("/v1/responses", {"model": "m", "input": "hi"}, "r"), 1)
    embeddings = coerce_request(_line("/embeddings", {"model": "m", "input": ["a"]}, "e"), 2)
    audio = coerce_request(_line("/v1/audio/transcriptions", {"file": "a.mp3"}, "t"), 3)
    assert isinstance(chat, ChatRequest) and chat.id == "x"
    assert isinstance(responses, ResponseRequest) and responses.id == "r"
    assert isinstance(embeddings, EmbeddingRequest) and embeddings.inputs == ("a",)
    assert isinstance(audio, TranscriptionRequest) and audio.source == "a.mp3"


def test_a_line_without_url_is_chat_and_without_id_is_numbered():
    """No url means chat completions; no custom_id means the input position."""
    request = coerce_request(_line(None, {"model": "m", "messages": "hi"}, None), 7)
    assert isinstance(request, ChatRequest) and request.id == "7"
    numbered = coerce_request(EmbeddingRequest(input="a", model="m"), 4)
    assert numbered.id == "4"


@pytest.mark.parametrize(
    ("item", "words"),
    [
        (_line("/v1/moderations", {"input": "x"}, "m-1"), "custom_id 'm-1': url '/v1/moderations'"),
        (_line("/v1/responses", {"model": "m"}, "r-1"), "custom_id 'r-1': body.input is missing"),
        (_line("/v1/embeddings", "text", "e-1"), "custom_id 'e-1': body must be a JSON object"),
        (42, "item 3: expected an engine.ChatRequest"),
    ],
)
def test_unusable_inputs_are_input_errors_naming_the_item(item, words):
    """A bad map input raises InputError naming it by custom_id or position."""
    with pytest.raises(InputError) as info:
        coerce_request(item, 3)
    assert words in info.value.message


def test_input_kind_tells_the_endpoint_of_a_bad_input():
    """A bad input's kind comes from its url or class; unknown ones count as chat."""
    assert input_kind(_line("/v1/embeddings", {})) == "embeddings"
    assert input_kind(_line("/responses", {})) == "responses"
    assert input_kind(_line("/v1/audio/transcriptions", {})) == "transcription"
    assert input_kind(_line(None, {})) == "chat"
    assert input_kind(object()) == "chat"


def test_chat_answer_is_parsed_with_usage_counts():
    """A chat answer's content and usage come back with the tokens to count."""
    body = {
        "model": "gpt-4o-mini-x",
        "choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    answer = Answer(
        content=orjson.dumps(body),
        status_code=200,
        request_id="req",
        attempts=1,
        timings=Timings(queued_at=time.time()),
    )
    request = ChatRequest(id="c", messages="hello", model="gpt-4o-mini")
    result, used, prompt, completion = CHAT.parse(request, answer)
    assert result.output == "hi" and result.model == "gpt-4o-mini-x"
    assert (used, prompt, completion) == (11, 9, 2)
    assert result.input == [{"role": "user", "content": "hello"}]
