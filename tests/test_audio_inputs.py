"""Tests for engine.app._audio_inputs: the recordings engine transcribe finds, and their ids."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from engine.app._audio_inputs import AudioInput, find_duplicate_audio_ids, iter_audio_inputs
from engine.app._jsonl import read_batch_input


def make_tree(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"audio")


def test_directory_is_walked_sorted_recursive_audio_only(tmp_path):
    """A directory yields its audio files depth-first in name order, with ids relative to it."""
    make_tree(
        tmp_path / "calls",
        "b.wav",
        "a.MP3",
        "notes.txt",
        "sub/z.flac",
        "sub/c.ogg",
        ".hidden.mp3",
        ".cache/x.mp3",
        "c.m4a",
    )
    found = list(iter_audio_inputs([str(tmp_path / "calls")]))
    assert [audio.custom_id for audio in found] == [
        "a.MP3",
        "b.wav",
        "c.m4a",
        "sub/c.ogg",
        "sub/z.flac",
    ]
    assert found[3].path == os.path.join(str(tmp_path / "calls"), "sub", "c.ogg")


def test_explicit_file_is_kept_whatever_its_extension(tmp_path):
    """A file named on the command line is kept, with its file name as id."""
    make_tree(tmp_path, "x/recording.bin")
    given = str(tmp_path / "x" / "recording.bin")
    assert list(iter_audio_inputs([given])) == [AudioInput(path=given, custom_id="recording.bin")]


def test_ids_do_not_depend_on_the_current_directory(tmp_path, monkeypatch):
    """The same folder named by absolute or relative path gives the same ids."""
    make_tree(tmp_path / "calls", "a.mp3", "sub/b.wav")
    absolute = [audio.custom_id for audio in iter_audio_inputs([str(tmp_path / "calls")])]
    monkeypatch.chdir(tmp_path)
    relative = [audio.custom_id for audio in iter_audio_inputs(["./calls/"])]
    assert absolute == relative == ["a.mp3", "sub/b.wav"]


def test_missing_audio_path_raises(tmp_path):
    """An argument that does not exist is reported before anything runs."""
    with pytest.raises(FileNotFoundError):
        list(iter_audio_inputs([str(tmp_path / "nope")]))


def test_duplicate_audio_ids_across_arguments_are_found(tmp_path):
    """Two folders holding the same relative name, or one file named twice, are duplicates."""
    make_tree(tmp_path, "one/a.mp3", "two/a.mp3", "two/b.mp3")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    b = os.path.join(two, "b.mp3")
    assert find_duplicate_audio_ids([one, two, b]) == {
        "a.mp3": [os.path.join(one, "a.mp3"), os.path.join(two, "a.mp3")],
        "b.mp3": [b, b],
    }
    assert find_duplicate_audio_ids([one]) == {}


def test_audio_input_becomes_a_valid_transcription_line(tmp_path):
    """to_batch_input builds a Batch-API line that the reader accepts."""
    line = AudioInput(path="calls/a.mp3", custom_id="a.mp3").to_batch_input(
        "whisper-1", response_format="json"
    )
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps(line) + b"\n")
    [parsed] = read_batch_input(path)
    assert parsed.error is None
    assert parsed.body == {"model": "whisper-1", "response_format": "json", "file": "calls/a.mp3"}
