"""Local checks on audio before it is uploaded: size, duration, a name to send.

Synchronous and blocking (file I/O, mutagen): the client runs these functions
in a worker thread (``trio.to_thread.run_sync``), so nothing here imports trio
and nothing here checkpoints.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any

import attrs
import mutagen

from engine._errors import InputError

__all__ = [
    "MAX_UPLOAD_BYTES",
    "AudioSource",
    "ProbedAudio",
    "probe_audio",
    "read_upload",
    "source_name",
]

#: The transcription API's upload limit (25 MB, read as MiB: 26,214,400 bytes).
#: Larger files fail locally with :class:`~engine.InputError`, never sent.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024

#: What ``client.transcribe`` accepts: a path, the file's bytes, or a binary file object.
AudioSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]

# mutagen's file types -> the extension the API needs to recognise the format.
_EXTENSIONS = {
    "MP3": "mp3",
    "EasyMP3": "mp3",
    "FLAC": "flac",
    "OggVorbis": "ogg",
    "OggOpus": "ogg",
    "OggFLAC": "ogg",
    "OggSpeex": "ogg",
    "MP4": "m4a",
    "EasyMP4": "m4a",
    "WAVE": "wav",
    "AAC": "aac",
}
_MIME_TYPES = {
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "m4a": "audio/mp4",
    "mp4": "audio/mp4",
    "wav": "audio/wav",
    "webm": "audio/webm",
}


@attrs.frozen(kw_only=True)
class ProbedAudio:
    """What :func:`probe_audio` found out about one recording.

    Attributes:
        name: the file name to upload under (its extension tells the API the format).
        size: bytes to upload.
        duration: seconds, as mutagen reads them.
        path: the file to read again for each attempt, or None when ``data`` holds it.
        data: the bytes to upload (bytes and file-object sources), or None
            (path sources are re-read per attempt so idle jobs hold no memory).
    """

    name: str
    size: int
    duration: float
    path: str | None = None
    data: bytes | None = None

    @property
    def mime_type(self) -> str:
        """The upload's content type from its extension; ``application/octet-stream`` if unknown."""
        extension = self.name.rpartition(".")[2].lower()
        return _MIME_TYPES.get(extension, "application/octet-stream")


def source_name(source: Any, filename: str | None = None) -> str:
    """The name a source is known by in results and messages (no I/O)."""
    if filename:
        return filename
    if isinstance(source, str | os.PathLike):
        return os.path.basename(os.fspath(source))
    name = getattr(source, "name", None)
    if isinstance(name, str) and name:
        return os.path.basename(name)
    return ""


def probe_audio(
    source: AudioSource, *, filename: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES
) -> ProbedAudio:
    """Check one recording before upload: its size, then its duration.  Blocks.

    ``source`` is a path, bytes, or a binary file object (read from its current
    position to the end, once).  ``filename`` overrides the name uploaded;
    by default a path's or file object's base name, else ``audio.<ext>`` with
    the extension of the format mutagen recognised.  ``max_bytes`` defaults to
    :data:`MAX_UPLOAD_BYTES`.

    Raises:
        InputError: naming the file, when it cannot be read, is larger than
            ``max_bytes``, or holds no audio mutagen can read.
    """
    label = source_name(source, filename) or "audio bytes"
    path: str | None = None
    data: bytes | None = None
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise InputError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        size = len(data)
    elif hasattr(source, "read"):
        try:
            # One byte past the limit is enough to know the file is too large.
            data = source.read(max_bytes + 1)
        except (OSError, ValueError) as exc:
            raise InputError(f"{label}: cannot read the file object ({exc})") from None
        if not isinstance(data, bytes | bytearray):
            raise InputError(f"{label}: the file object must be opened in binary mode ('rb')")
        data = bytes(data)
        size = len(data)
    else:
        raise InputError(
            f"audio source must be a path, bytes or a binary file object, "
            f"got {type(source).__name__}"
        )
    if size > max_bytes:
        raise InputError(
            f"{label}: {size / 1_048_576:.1f} MB is over the {max_bytes / 1_048_576:g} MB "
            f"upload limit of the transcription API; split or compress it"
        )
    if size == 0:
        raise InputError(f"{label}: the file is empty")
    kind, duration = _read_duration(path if path is not None else io.BytesIO(data or b""), label)
    name = source_name(source, filename) or f"audio.{_EXTENSIONS.get(kind, 'mp3')}"
    return ProbedAudio(name=name, size=size, duration=duration, path=path, data=data)


def _read_duration(target: str | IO[bytes], label: str) -> tuple[str, float]:
    try:
        audio = mutagen.File(target)
    except OSError as exc:
        raise InputError(f"{label}: cannot read the file ({exc})") from None
    except Exception as exc:  # mutagen raises many types for corrupt input; all mean unreadable
        raise InputError(f"{label}: not readable audio ({type(exc).__name__}: {exc})") from None
    # mutagen's objects are falsy when they hold no tags: compare with None.
    info = getattr(audio, "info", None) if audio is not None else None
    length = float(getattr(info, "length", 0.0) or 0.0) if info is not None else 0.0
    if audio is None or length <= 0:
        raise InputError(f"{label}: not readable audio (no format mutagen knows, or no length)")
    return type(audio).__name__, length


def read_upload(audio: ProbedAudio, *, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes to upload for one attempt.  Blocks (reads a path source again).

    Raises:
        InputError: the file vanished, became unreadable, or grew past ``max_bytes``.
    """
    if audio.data is not None:
        return audio.data
    assert audio.path is not None
    try:
        with open(audio.path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        raise InputError(f"{audio.name}: cannot read the file ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise InputError(f"{audio.name}: the file grew past the upload limit since it was checked")
    return data
