"""Multipart form parsing and audio duration, for ``/v1/audio/transcriptions``.

Pure synchronous code; nothing checkpoints.
"""

from __future__ import annotations

import io

import attrs
import mutagen

__all__ = ["FormField", "MultipartError", "audio_duration", "parse_multipart"]


class MultipartError(ValueError):
    """The request body is not a well-formed ``multipart/form-data`` body."""


@attrs.frozen(kw_only=True)
class FormField:
    """One part of a form: its name, its filename (for files) and its bytes."""

    name: str
    filename: str | None
    data: bytes


def _boundary(content_type: str) -> bytes:
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MultipartError("expected a multipart/form-data body")
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode("latin-1")
    raise MultipartError("multipart body without a boundary")


def _disposition(headers: bytes) -> tuple[str, str | None]:
    for line in headers.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        name = filename = None
        for param in value.decode("utf-8", "replace").split(";")[1:]:
            pkey, _, pvalue = param.strip().partition("=")
            pvalue = pvalue.strip().strip('"')
            if pkey.lower() == "name":
                name = pvalue
            elif pkey.lower() == "filename":
                filename = pvalue
        if name is None:
            break
        return name, filename
    raise MultipartError("multipart part without a content-disposition name")


def parse_multipart(body: bytes, content_type: str) -> dict[str, FormField]:
    """Parse a ``multipart/form-data`` body into fields by name (the last one wins)."""
    delimiter = b"--" + _boundary(content_type)
    sections = body.split(delimiter)
    if len(sections) < 3 or not sections[-1].startswith(b"--"):
        raise MultipartError("multipart body is truncated or has no parts")
    fields: dict[str, FormField] = {}
    for section in sections[1:-1]:
        if not section.startswith(b"\r\n"):
            raise MultipartError("malformed multipart delimiter")
        head, separator, data = section[2:].partition(b"\r\n\r\n")
        if not separator:
            raise MultipartError("multipart part without headers")
        name, filename = _disposition(head)
        fields[name] = FormField(name=name, filename=filename, data=data.removesuffix(b"\r\n"))
    return fields


def audio_duration(data: bytes) -> float | None:
    """Duration in seconds of an audio file, or None if it is not readable audio."""
    try:
        audio = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises many types for corrupt input; all mean "unreadable"
        return None
    if audio is None or audio.info is None:
        return None
    length = float(getattr(audio.info, "length", 0.0) or 0.0)
    return length if length > 0 else None
