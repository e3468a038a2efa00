"""Streamed answers put back together: chat completion chunks and Responses API events.

A streamed request (``"stream": true``) is answered with Server-Sent Events.
The client decodes them (:class:`engine._sse.SSEDecoder`) and hands each
event's type and data to an *assembler* from here, which keeps what the
chunks said and gives back the text each one added.  At the end the
assembler builds the body a non-streamed request would have received (a
``chat.completion`` object, a ``response`` object), which the endpoint's
ordinary ``parse`` turns into the result: a streamed answer and a
non-streamed one look the same in results and Batch output lines.

:class:`TokenClock` keeps when output arrived, for ``Timings.ttft`` and
``Timings.itl``.

All of it is sans-IO: plain data in, plain data out, nothing checkpoints.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import orjson

from engine._errors import ResponseValidationError, StreamInterruptedError, redact

__all__ = [
    "ChatStreamAssembler",
    "ResponseStreamAssembler",
    "StreamAssembler",
    "TokenClock",
    "with_usage_requested",
]

#: Characters of an unusable chunk kept on the error (as for a malformed body).
_RAW_KEPT = 2000


def with_usage_requested(body: dict[str, Any]) -> dict[str, Any]:
    """A streamed chat ``body`` with ``stream_options.include_usage`` set.

    The final usage chunk is what settles the permit with the tokens really
    used.  A body whose caller set ``stream_options`` is returned unchanged.
    """
    if "stream_options" in body:
        return body
    return {**body, "stream_options": {"include_usage": True}}


class StreamAssembler(Protocol):
    """What the client needs of an assembler (one per attempt).

    Attributes:
        done: the stream said it is over (``[DONE]``, ``response.completed``).
        usage_reported: the server reported the tokens used.
        text: the output text received so far (the first choice's content).
    """

    done: bool
    usage_reported: bool

    @property
    def text(self) -> str: ...

    def feed(self, event: str, data: bytes) -> tuple[str, bool]:
        """Take one event; return the text it added and whether it carried output.

        Output is content, refusal, reasoning or tool-call text: what
        ``ttft`` and ``itl`` time, even when no text is returned.

        Raises:
            StreamInterruptedError: the server sent an error event.
            ResponseValidationError: the event's data is not usable JSON.
        """
        ...

    def complete(self) -> bool:
        """Whether what arrived is a whole answer (it may lack ``[DONE]``)."""
        ...

    def body(self) -> dict[str, Any]:
        """The body a non-streamed request would have received."""
        ...


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ResponseValidationError(
            f"a streamed {what} is not JSON ({redact(str(exc))[:200]})",
            raw=data[:_RAW_KEPT].decode("utf-8", "replace"),
        ) from None
    if not isinstance(value, dict):
        raise ResponseValidationError(
            f"a streamed {what} is not a JSON object",
            raw=data[:_RAW_KEPT].decode("utf-8", "replace"),
        )
    return value


def _server_error(value: Any, text: str) -> StreamInterruptedError:
    """The error for an ``error`` object sent mid-stream."""
    error = value if isinstance(value, Mapping) else {}
    message = error.get("message") or "no message"
    code = error.get("code") or error.get("type")
    return StreamInterruptedError(
        f"the server sent an error mid-stream: {message}"
        + (f" ({code})" if isinstance(code, str) else ""),
        raw=text,
    )


@attrs.define
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: str = ""
    arguments: list[str] = attrs.field(factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


@attrs.define
class _Choice:
    """One choice's deltas, kept until the end."""

    role: str = "assistant"
    content: list[str] = attrs.field(factory=list)
    refusal: list[str] = attrs.field(factory=list)
    reasoning: list[str] = attrs.field(factory=list)
    tool_calls: dict[int, _ToolCall] = attrs.field(factory=dict)
    finish_reason: str | None = None
    logprobs: list[Any] | None = None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": "".join(self.content) if self.content or not self.tool_calls else None,
            "refusal": "".join(self.refusal) if self.refusal else None,
            # as OpenAI's whole answers carry it; streamed url citations are not kept
            "annotations": [],
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [
                self.tool_calls[index].as_dict() for index in sorted(self.tool_calls)
            ]
        return message


class ChatStreamAssembler:
    """``chat.completion.chunk`` events in, a ``chat.completion`` body out.

    Keeps every choice (``n`` > 1), content, refusal, reasoning and tool-call
    deltas, finish reasons, logprobs and the usage chunk; the text returned by
    :meth:`feed` is the first choice's content.  See :class:`StreamAssembler`.
    """

    def __init__(self) -> None:
        self.done = False
        self.usage_reported = False
        self._choices: dict[int, _Choice] = {}
        self._first: _Choice | None = None
        self._usage: dict[str, Any] | None = None
        self._head: dict[str, Any] = {}

    @property
    def text(self) -> str:
        return "".join(self._first.content) if self._first is not None else ""

    def feed(self, event: str, data: bytes) -> tuple[str, bool]:
        if data == b"[DONE]":
            self.done = True
            return "", False
        chunk = _load(data, "chat completion chunk")
        if "error" in chunk:
            raise _server_error(chunk["error"], self.text)
        if not self._head:
            for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
                if key in chunk:
                    self._head[key] = chunk[key]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
            self.usage_reported = True
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return "", False
        text = ""
        output = False
        for given in choices:
            if not isinstance(given, dict):
                continue
            index = given.get("index", 0)
            choice = self._choices.get(index)
            if choice is None:
                choice = self._choices[index] = _Choice()
                if index == 0:
                    self._first = choice
            if given.get("finish_reason") is not None:
                choice.finish_reason = given["finish_reason"]
            logprobs = given.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                if choice.logprobs is None:
                    choice.logprobs = []
                choice.logprobs.extend(logprobs["content"])
            delta = given.get("delta")
            if not isinstance(delta, dict):
                continue
            if isinstance(delta.get("role"), str):
                choice.role = delta["role"]
            content = delta.get("content")
            if isinstance(content, str) and content:
                choice.content.append(content)
                output = True
                if index == 0:
                    text += content
            for key, parts in (
                ("refusal", choice.refusal),
                ("reasoning_content", choice.reasoning),
            ):
                piece = delta.get(key)
                if isinstance(piece, str) and piece:
                    parts.append(piece)
                    output = True
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                output = self._add_tool_calls(choice, calls) or output
        return text, output

    @staticmethod
    def _add_tool_calls(choice: _Choice, calls: list[Any]) -> bool:
        output = False
        for call in calls:
            if not isinstance(call, dict):
                continue
            kept = choice.tool_calls.setdefault(call.get("index", 0), _ToolCall())
            if isinstance(call.get("id"), str):
                kept.id = call["id"]
            if isinstance(call.get("type"), str):
                kept.type = call["type"]
            function = call.get("function")
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    kept.name += function["name"]
                if isinstance(function.get("arguments"), str) and function["arguments"]:
                    kept.arguments.append(function["arguments"])
                    output = True
        return output

    def complete(self) -> bool:
        if self.done:
            return True
        choices = self._choices.values()
        return bool(choices) and all(choice.finish_reason is not None for choice in choices)

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model"),
        }
        for key in ("system_fingerprint", "service_tier"):
            if key in self._head:
                body[key] = self._head[key]
        body["choices"] = [
            {
                "index": index,
                "message": self._choices[index].message(),
                "logprobs": (
                    None
                    if self._choices[index].logprobs is None
                    else {"content": self._choices[index].logprobs}
                ),
                "finish_reason": self._choices[index].finish_reason,
            }
            for index in sorted(self._choices)
        ]
        if self._usage is not None:
            body["usage"] = self._usage
        return body


#: Responses API events that end a stream, each with the whole ``response``.
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
#: Events whose ``delta`` is output other than the answer's text.
_OTHER_OUTPUT_EVENTS = frozenset(
    {
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)


class ResponseStreamAssembler:
    """Responses API events in, the final ``response`` object out.

    ``response.output_text.delta`` events carry the text; the stream ends
    with ``response.completed`` (or ``response.incomplete`` /
    ``response.failed``), whose ``response`` is the body a non-streamed
    request gets.  An ``error`` event raises.  See :class:`StreamAssembler`.
    """

    def __init__(self) -> None:
        self.done = False
        self.usage_reported = False
        self._texts: list[str] = []
        self._final: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self._texts)

    def feed(self, event: str, data: bytes) -> tuple[str, bool]:
        if data == b"[DONE]":  # not sent by OpenAI here; some compatible servers do
            return "", False
        value = _load(data, "Responses API event")
        kind = value.get("type")
        if not isinstance(kind, str):
            kind = event
        if kind == "response.output_text.delta":
            delta = value.get("delta")
            if isinstance(delta, str) and delta:
                self._texts.append(delta)
                return delta, True
            return "", False
        if kind in _OTHER_OUTPUT_EVENTS:
            return "", bool(value.get("delta"))
        if kind in _FINAL_EVENTS:
            response = value.get("response")
            if not isinstance(response, dict):
                raise ResponseValidationError(
                    f"the {kind} event has no response object",
                    raw=data[:_RAW_KEPT].decode("utf-8", "replace"),
                )
            self._final = response
            self.usage_reported = isinstance(response.get("usage"), dict)
            self.done = True
        elif kind == "error":
            raise _server_error(value.get("error", value), self.text)
        return "", False

    def complete(self) -> bool:
        return self._final is not None

    def body(self) -> dict[str, Any]:
        if self._final is None:
            raise ValueError("the stream has not ended")
        return self._final


@attrs.define
class TokenClock:
    """When a stream's output arrived, on the caller's clock (``trio.current_time()``).

    Attributes:
        sent_at: when the attempt was sent.
        arrivals: when each event carrying output arrived, in order.
    """

    sent_at: float
    arrivals: list[float] = attrs.field(factory=list)

    def mark(self, now: float) -> None:
        """Note output arriving at ``now``."""
        self.arrivals.append(now)

    @property
    def ttft(self) -> float | None:
        """Seconds from sending to the first output (None: no output arrived)."""
        return self.arrivals[0] - self.sent_at if self.arrivals else None

    @property
    def itl(self) -> list[float] | None:
        """The gaps between consecutive outputs (None: no output arrived)."""
        if not self.arrivals:
            return None
        arrivals = self.arrivals
        return [later - earlier for earlier, later in itertools.pairwise(arrivals)]
