"""Streamed answers (``"stream": true``): their server-sent events and when each is due.

A streamed answer is planned once per distinct request body, as a
non-streamed one is: every event is serialized then, up to the few bytes
that change per request (the answer's id and ``created``).  What is left per
request is rendering (one concatenation per event for chat) and the timing.

Shapes, as OpenAI sends them:

* chat completions: ``data: {chat.completion.chunk}\\n\\n`` per chunk: first
  one chunk per choice with ``delta: {"role": "assistant", "content": "",
  "refusal": null}``, then one chunk per output token per choice (choices
  interleaved token by token) with ``delta: {"content": PIECE}``, then one
  chunk per choice with an empty delta and the ``finish_reason``; with
  ``stream_options.include_usage`` every chunk carries ``"usage": null`` and
  a last chunk has ``"choices": []`` and the usage; then ``data: [DONE]``.
* Responses API: ``event: TYPE\\ndata: {"type": TYPE, "sequence_number": N,
  ...}\\n\\n``: ``response.created``, ``response.in_progress``,
  ``response.output_item.added``, ``response.content_part.added``, one
  ``response.output_text.delta`` per output token, ``response.output_text.done``,
  ``response.content_part.done``, ``response.output_item.done``, then
  ``response.completed`` (``response.incomplete`` when the text was cut at
  ``max_output_tokens``) carrying the whole response with its usage.

Timing (:func:`due_offsets`): the events before the first token go out with
it, at the time to first token after admission; each later token one gap
after the one before; the closing events go out with the last token.  Both
the time to first token and each gap are drawn from a lognormal
distribution whose *median* is the configured value (sigma 0: exactly the
configured value).

Pure: nothing here checkpoints.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence

import attrs
import orjson

__all__ = [
    "SSE",
    "StreamPlan",
    "chat_stream",
    "draw_median",
    "due_offsets",
    "responses_stream",
]

#: The content type of a streamed answer.
SSE = b"text/event-stream; charset=utf-8"

_DONE = b"data: [DONE]\n\n"
_CHAT_PREFIX = b'data: {"id":"chatcmpl-mock%x","object":"chat.completion.chunk","created":%d,'
# Replaced per request in the Responses API's events (quoted JSON strings at plan time).
_RESPONSE_ID = b"resp_mock@@number@@"
_MESSAGE_ID = b"msg_mock@@number@@"
_CREATED = b'"@@created@@"'
_PLACEHOLDERS = re.compile(b"(%s|%s|%s)" % (_RESPONSE_ID, _MESSAGE_ID, _CREATED))


@attrs.frozen(kw_only=True)
class StreamPlan:
    """The events of one streamed answer and how they line up with its output tokens.

    Attributes:
        render: ``render(number, created)`` -> every event of the answer to
            request ``number`` created at ``created`` (seconds since the
            epoch), in order, each ending in its blank line.
        lead: how many events come before the first token's (sent with it).
        per_token: events per output token step (one per choice for chat, 1
            for the Responses API).
        steps: output token steps (the output tokens of one choice).
        render_whole: ``render_whole(number, created)`` -> the same events
            joined, built in one pass (for an answer sent all at once).
        events: how many events ``render`` returns.
    The events after ``lead + per_token * steps`` close the answer; they are
    sent with the last token.
    """

    render: Callable[[int, int], list[bytes]]
    render_whole: Callable[[int, int], bytes]
    lead: int
    per_token: int
    steps: int
    events: int

    @property
    def frame_ends(self) -> tuple[int, ...]:
        """For each token step, the index after the last event that goes out with it.

        Step 0 takes the leading events and the first token's; the last step
        also takes the closing events.  One step (every event) when the
        answer has no token.
        """
        if self.steps <= 1:
            return (self.events,)
        ends = [self.lead + self.per_token * (step + 1) for step in range(self.steps - 1)]
        ends.append(self.events)
        return tuple(ends)


def draw_median(rng: random.Random, median: float, sigma: float) -> float:
    """``median`` itself when ``sigma`` is 0, else a lognormal draw with that median."""
    if sigma > 0 and median > 0:
        return rng.lognormvariate(math.log(median), sigma)
    return median


def due_offsets(
    steps: int,
    rng: random.Random,
    *,
    ttft_ms: float,
    ttft_sigma: float,
    gap_ms: float,
    gap_sigma: float,
) -> list[float]:
    """When each of ``steps`` token steps is due, in seconds after admission.

    The first at a time to first token drawn around ``ttft_ms``, each next one
    a gap drawn around ``gap_ms`` later (both lognormal, the configured value
    the median; a sigma of 0 draws nothing).  At least one entry (the step the
    closing events go out with) even when ``steps`` is 0.
    """
    first = draw_median(rng, ttft_ms, ttft_sigma) / 1000
    offsets = [first]
    if gap_ms > 0:
        due = first
        for _ in range(steps - 1):
            due += draw_median(rng, gap_ms, gap_sigma) / 1000
            offsets.append(due)
    else:
        offsets.extend([first] * (steps - 1))
    return offsets


# -- chat completions -------------------------------------------------------------------


def chat_stream(
    *,
    model: str,
    choices: int,
    pieces: Sequence[str],
    finish_reason: str,
    usage: dict[str, object] | None,
) -> StreamPlan:
    """The chunks of a streamed chat completion.

    ``pieces`` are the text of each output token of one choice (every choice
    answers the same text); ``usage`` is sent in a last chunk when the
    request asked for it (``stream_options.include_usage``), and then every
    chunk carries ``"usage": null``.
    """
    common: dict[str, object] = {
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_mock",
    }

    def tail(choice_list: list[dict[str, object]], chunk_usage: object = None) -> bytes:
        fields = {**common, "choices": choice_list}
        if usage is not None:
            fields["usage"] = chunk_usage
        # Everything after `"created":N,`: the per-request prefix supplies the rest.
        return orjson.dumps(fields)[1:] + b"\n\n"

    def choice(
        index: int, delta: dict[str, object], finish: str | None = None
    ) -> dict[str, object]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    role: dict[str, object] = {"role": "assistant", "content": "", "refusal": None}
    tails = [tail([choice(index, role)]) for index in range(choices)]
    for piece in pieces:
        tails.extend(tail([choice(index, {"content": piece})]) for index in range(choices))
    tails.extend(tail([choice(index, {}, finish_reason)]) for index in range(choices))
    if usage is not None:
        tails.append(tail([], usage))

    # prefix.join(joinable) puts the per-request prefix before every tail.
    joinable = [b"", *tails[:-1], tails[-1] + _DONE]

    def render(number: int, created: int) -> list[bytes]:
        prefix = _CHAT_PREFIX % (number, created)
        events = [prefix + chunk for chunk in tails]
        events.append(_DONE)
        return events

    def render_whole(number: int, created: int) -> bytes:
        return (_CHAT_PREFIX % (number, created)).join(joinable)

    return StreamPlan(
        render=render,
        render_whole=render_whole,
        lead=choices,
        per_token=choices,
        steps=len(pieces),
        events=len(tails) + 1,
    )


# -- the Responses API -----------------------------------------------------------------


def responses_stream(
    *, response: dict[str, object], part: dict[str, object], pieces: Sequence[str]
) -> StreamPlan:
    """The events of a streamed Responses API answer.

    ``response`` is the finished response object's fields other than ``id``,
    ``created_at``, ``completed_at`` and ``output`` (its ``status``,
    ``usage``...); ``part`` the finished ``output_text`` content part;
    ``pieces`` the text of each output token.
    """
    status = response["status"]
    in_progress = {
        **response,
        "status": "in_progress",
        "incomplete_details": None,
        "usage": None,
    }
    created_at = orjson.Fragment(_CREATED)
    response_id = _RESPONSE_ID.decode()
    message_id = _MESSAGE_ID.decode()

    def whole(fields: dict[str, object], output: list[object], done: bool) -> dict[str, object]:
        return {
            "id": response_id,
            "created_at": created_at,
            "completed_at": created_at if done and status == "completed" else None,
            "output": output,
            **fields,
        }

    def message(item_status: object, content: list[object]) -> dict[str, object]:
        return {
            "id": message_id,
            "type": "message",
            "status": item_status,
            "content": content,
            "role": "assistant",
        }

    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    empty_part = {**part, "text": ""}
    done_message = message(status, [part])
    bodies: list[tuple[str, dict[str, object]]] = [
        ("response.created", {"response": whole(in_progress, [], False)}),
        ("response.in_progress", {"response": whole(in_progress, [], False)}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": message("in_progress", [])},
        ),
        ("response.content_part.added", {**where, "part": empty_part}),
    ]
    lead = len(bodies)
    bodies.extend(
        ("response.output_text.delta", {**where, "delta": piece, "logprobs": []})
        for piece in pieces
    )
    bodies += [
        ("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
        ("response.content_part.done", {**where, "part": part}),
        ("response.output_item.done", {"output_index": 0, "item": done_message}),
        (
            "response.completed" if status == "completed" else "response.incomplete",
            {"response": whole(response, [done_message], True)},
        ),
    ]
    templates = [
        b"event: %s\ndata: %s\n\n"
        % (
            kind.encode(),
            orjson.dumps({"type": kind, "sequence_number": number, **fields}),
        )
        for number, (kind, fields) in enumerate(bodies)
    ]
    # Split once on the per-request placeholders; filled by one join per event.
    event_parts = [_PLACEHOLDERS.split(event) for event in templates]
    whole_parts = _PLACEHOLDERS.split(b"".join(templates))

    def values(number: int, created: int) -> dict[bytes, bytes]:
        return {
            _RESPONSE_ID: b"resp_mock%x" % number,
            _MESSAGE_ID: b"msg_mock%x" % number,
            _CREATED: b"%d" % created,
        }

    def render(number: int, created: int) -> list[bytes]:
        get = values(number, created).get
        return [b"".join([get(part, part) for part in parts]) for parts in event_parts]

    def render_whole(number: int, created: int) -> bytes:
        get = values(number, created).get
        return b"".join([get(part, part) for part in whole_parts])

    return StreamPlan(
        render=render,
        render_whole=render_whole,
        lead=lead,
        per_token=1,
        steps=len(pieces),
        events=len(templates),
    )
