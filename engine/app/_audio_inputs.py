"""The recordings ``engine transcribe FILE_OR_DIR...`` names: folders walked, stable ids.

Synchronous file-system reads (``os.scandir``); nothing here checkpoints.
Each recording becomes a Batch-API transcription line
(:meth:`AudioInput.to_batch_input`), which the run reads like any other input.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from engine.app._jsonl import TRANSCRIPTIONS_URL

__all__ = ["AUDIO_EXTENSIONS", "AudioInput", "find_duplicate_audio_ids", "iter_audio_inputs"]

#: File extensions (lower case, no dot) that :func:`iter_audio_inputs` picks up
#: when it walks a directory: the formats OpenAI's transcription endpoint takes.
AUDIO_EXTENSIONS = frozenset({"mp3", "mp4", "mpeg", "mpga", "m4a", "wav", "webm", "ogg", "flac"})


@attrs.frozen
class AudioInput:
    """One recording found by :func:`iter_audio_inputs`.

    Attributes:
        path: where to read it: the argument as given, joined with its path
            inside a given directory.
        custom_id: its stable id: the path relative to the directory given on
            the command line (``"sub/call.mp3"``, always ``/``-separated), or,
            for a file given explicitly, its file name.
    """

    path: str
    custom_id: str

    def to_batch_input(self, model: str, **body: Any) -> dict[str, Any]:
        """The Batch-API input line that transcribes it with ``model`` (plus ``body`` options)."""
        return {
            "custom_id": self.custom_id,
            "method": "POST",
            "url": TRANSCRIPTIONS_URL,
            "body": {"model": model, **body, "file": self.path},
        }


def _is_audio_name(name: str) -> bool:
    _, dot, extension = name.rpartition(".")
    return bool(dot) and extension.lower() in AUDIO_EXTENSIONS


def _walk_audio(directory: str, relative: str) -> Iterator[AudioInput]:
    with os.scandir(directory) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files, and macOS "._x.mp3" resource forks
        inner = f"{relative}/{entry.name}" if relative else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk_audio(entry.path, inner)
        elif entry.is_file() and _is_audio_name(entry.name):
            yield AudioInput(path=entry.path, custom_id=inner)


def iter_audio_inputs(paths: Sequence[str]) -> Iterator[AudioInput]:
    """Yield the recordings named by ``engine transcribe FILE_OR_DIR...``.

    A directory is walked recursively, entries sorted by name at each level,
    keeping files whose extension is in :data:`AUDIO_EXTENSIONS` (any case) and
    skipping hidden (dot) entries; symlinked directories are not followed (no
    loops), symlinked files are kept. A file given explicitly is kept whatever
    its extension. See :class:`AudioInput` for the ids: they do not depend on
    the current directory, so a rerun from elsewhere still resumes; two
    arguments can yield the same id (see :func:`find_duplicate_audio_ids`).
    Raises ``FileNotFoundError`` for an argument that does not exist.
    """
    for given in paths:
        if os.path.isdir(given):
            yield from _walk_audio(given, "")
        elif os.path.exists(given):
            yield AudioInput(path=given, custom_id=os.path.basename(os.path.normpath(given)))
        else:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", given)


def find_duplicate_audio_ids(paths: Sequence[str]) -> dict[str, list[str]]:
    """Return ``{custom_id: [paths]}`` for ids that more than one recording would get.

    Empty when every id is unique (the run may start); the run refuses to
    start otherwise, like :func:`find_duplicate_ids`. The same file named
    twice counts as a duplicate too (it would be transcribed twice).
    """
    first_path: dict[str, str] = {}
    found: dict[str, list[str]] = {}
    for audio in iter_audio_inputs(paths):
        earlier = first_path.get(audio.custom_id)
        if earlier is None:
            first_path[audio.custom_id] = audio.path
        else:
            found.setdefault(audio.custom_id, [earlier]).append(audio.path)
    return found
