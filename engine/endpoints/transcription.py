"""Transcriptions (``POST /v1/audio/transcriptions``): Batch lines and answers.

A transcription is a multipart upload, not a JSON body: reading and
checking the recording (size, duration, the skip below ``min_seconds``)
needs a worker thread, so the client keeps those steps
(``engine/_client.py``).  What is pure lives here: the request of a Batch
line, and the result of an answer in each ``response_format``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from engine._audio import ProbedAudio
from engine._errors import InputError
from engine._requests import TranscriptionRequest
from engine._results import AudioUsage, TranscriptionResult
from engine.endpoints._protocol import Answer, Parsed, malformed

__all__ = [
    "TRANSCRIPTION_PATH",
    "TRANSCRIPTION_URLS",
    "parse_transcription",
    "transcription_from_batch",
]

TRANSCRIPTION_PATH = "/audio/transcriptions"
#: The Batch-API ``url`` values of transcriptions, canonical first.
TRANSCRIPTION_URLS = ("/v1/audio/transcriptions", "/audio/transcriptions")
_OPTIONS = ("model", "response_format", "language", "prompt", "temperature", "min_seconds")


def transcription_from_batch(
    body: Mapping[str, Any], *, id: str, name: str
) -> TranscriptionRequest:
    """The request of a Batch line: ``body.file`` is a local path, other fields form fields.

    An optional ``body.min_seconds`` (an engine extension, not sent)
    overrides the default 5.0.

    Raises:
        InputError: the message starts with ``name``.
    """
    params = dict(body)
    file = params.pop("file", None)
    if not isinstance(file, str) or not file:
        raise InputError(f"{name}: body.file must be the path of a local audio file")
    options = {key: params.pop(key) for key in _OPTIONS if key in params}
    try:
        return TranscriptionRequest(id=id, source=file, params=params, **options)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: {exc}") from None


def parse_transcription(
    request: TranscriptionRequest, audio: ProbedAudio, answer: Answer, text_body: str
) -> Parsed[TranscriptionResult]:
    """The result of a 2xx transcription answer.

    ``text_body`` is the answer decoded as text (what ``text``, ``srt`` and
    ``vtt`` return, kept as ``{"text": ...}``).  ``json`` and ``verbose_json``
    answers are read for ``text`` and ``usage``: billed seconds (``duration``)
    or tokens (``tokens``); with neither, the local duration stands in.
    ``used_tokens`` is the reported total for token-billed models, else None.

    Raises:
        ResponseValidationError: a JSON answer without a string ``text``.
    """
    usage = AudioUsage(seconds=audio.duration)
    used_tokens = None
    if request.response_format in ("json", "verbose_json"):
        try:
            body = orjson.loads(answer.content)
            if not isinstance(body, dict):
                raise TypeError("the body is not a JSON object")
            text = body["text"]
            if not isinstance(text, str):
                raise TypeError("'text' is not a string")
            reported = body.get("usage")
            if isinstance(reported, dict):
                if reported.get("type") == "duration" and "seconds" in reported:
                    usage.seconds = float(reported["seconds"])
                elif reported.get("type") == "tokens":
                    usage.input_tokens = int(reported.get("input_tokens") or 0)
                    usage.output_tokens = int(reported.get("output_tokens") or 0)
                    usage.total_tokens = int(reported.get("total_tokens") or 0)
                    used_tokens = usage.total_tokens
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            what = f"request {request.id!r} ({audio.name}): malformed transcription body"
            raise malformed(answer, what, exc) from None
    else:
        text = text_body.rstrip("\n") if request.response_format == "text" else text_body
        body = {"text": text}
    result = TranscriptionResult(
        id=request.id or "",
        file=audio.name,
        duration_seconds=audio.duration,
        text=text,
        model=request.model,
        usage=usage,
        attempts=answer.attempts,
        timings=answer.timings,
        status_code=answer.status_code,
        request_id=answer.request_id,
        response=body,
    )
    return Parsed(result, used_tokens, usage.input_tokens, usage.output_tokens)
