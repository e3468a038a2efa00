"""Audio files for transcription tests, generated offline with ``lameenc``.

``make_mp3`` writes a constant-bit-rate MP3 of a tone.  lameenc writes no
LAME/Xing tag, so mutagen reads the duration from the frames, encoder delay and
padding included: 0.08 to 0.1 s longer than asked (allow 0.15 s in asserts).
``make_corrupt_mp3`` and ``make_non_audio`` give files a server must refuse.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import lameenc

__all__ = ["make_corrupt_mp3", "make_mp3", "make_non_audio", "mp3_bytes"]


def mp3_bytes(
    seconds: float, *, sample_rate: int = 16000, frequency: float = 440.0, bit_rate: int = 32
) -> bytes:
    """A mono CBR MP3 of a ``frequency`` Hz tone lasting ``seconds``, as bytes."""
    samples = round(seconds * sample_rate)
    step = 2 * math.pi * frequency / sample_rate
    pcm = struct.pack(
        f"<{samples}h", *(round(8000 * math.sin(step * index)) for index in range(samples))
    )
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(bit_rate)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(pcm) + encoder.flush())


def make_mp3(path: str | Path, seconds: float, *, sample_rate: int = 16000) -> Path:
    """Write a LAME-encoded CBR MP3 tone of ``seconds`` to ``path``; return the path."""
    path = Path(path)
    path.write_bytes(mp3_bytes(seconds, sample_rate=sample_rate))
    return path


def make_corrupt_mp3(path: str | Path) -> Path:
    """Write a file named like an MP3 whose frames are garbage; return the path.

    It starts with an ID3 tag (so it looks like audio) followed by bytes that
    hold no MPEG frame sync.
    """
    path = Path(path)
    tag = b"ID3\x04\x00\x00\x00\x00\x00\x00"
    path.write_bytes(tag + bytes(range(1, 255)) * 40)
    return path


def make_non_audio(path: str | Path) -> Path:
    """Write a plain-text file (whatever its name says); return the path."""
    path = Path(path)
    path.write_text("this is not audio, just some text\n" * 20)
    return path
