"""``make demo``: a few thousand requests through ``engine run`` against the local mock.

Run with ``python -m engine.app.demo`` (what ``make demo`` does). It:

1. starts ``engine mock`` on a free loopback port with a quota (2,000 requests
   and 2,000,000 tokens per minute per model), lognormal latency (median
   150 ms) and a few injected 500/503 errors and dropped connections, so that
   pacing and retries show;
2. writes a Batch-API input file of :data:`CHAT_REQUESTS` chat completions
   (short questions, paragraphs and long documents; a fifth ask for
   structured output with a ``json_schema`` ``response_format``) and
   :data:`TRANSCRIPTIONS` transcriptions of MP3 tones generated offline with
   ``lameenc`` (some shorter than 5 s, which are skipped);
3. runs ``engine run`` on it (progress bar on a terminal), then shows the
   summary, sample output lines and what the mock saw, and stops the mock.

Everything stays on loopback and in a fresh temporary directory whose path is
printed; nothing is downloaded. Takes about 30-60 seconds on two cores.
"""

from __future__ import annotations

import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from engine.mock import serve_in_subprocess

__all__ = ["CHAT_REQUESTS", "TRANSCRIPTIONS", "main", "write_demo_input"]

#: Chat completion lines in the demo input.
CHAT_REQUESTS = 3000
#: Transcription lines in the demo input (spread over a dozen generated MP3s).
TRANSCRIPTIONS = 60
#: The quota the mock enforces and ``engine run`` is told about.
DEMO_RPM = 2000
DEMO_TPM = 2_000_000
_MOCK_ARGS = [
    "--rpm", str(DEMO_RPM), "--tpm", str(DEMO_TPM),
    "--latency-ms", "150", "--latency-sigma", "0.6",
    "--error-500-rate", "0.01", "--error-503-rate", "0.01", "--drop-rate", "0.005",
    "--seed", "42",
]  # fmt: skip
# A recognisably fake key: the mock accepts any key, and the engine never shows it.
_DEMO_KEY = "sk-demo-not-a-real-key-0000000000"

_WORDS = (
    "quota rate limit token request response latency budget window minute engine batch "
    "customer invoice shipment order delay refund account report summary meeting risk "
    "market forecast revenue growth churn support ticket product release feature bug "
    "contract clause payment schedule audit policy review update research model data"
).split()

_PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": ["string", "null"]},
    },
    "required": ["name", "age", "email"],
    "additionalProperties": False,
}
_TICKET_SCHEMA = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "urgency": {"type": "integer"},
        "topics": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["sentiment", "urgency", "topics"],
    "additionalProperties": False,
}


def _text(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        length = min(words, rng.randint(6, 18))
        words -= length
        sentence = " ".join(rng.choice(_WORDS) for _ in range(length))
        sentences.append(sentence.capitalize() + ".")
    return " ".join(sentences)


def _chat_body(rng: random.Random, index: int) -> dict[str, Any]:
    kind = rng.random()
    if kind < 0.2:
        # Structured outputs: extraction into a strict JSON schema.
        schema_name, schema = rng.choice([("person", _PERSON_SCHEMA), ("ticket", _TICKET_SCHEMA)])
        return {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": f"Extract the {schema_name} as JSON."},
                {"role": "user", "content": _text(rng, rng.randint(40, 200))},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "strict": True, "schema": schema},
            },
            "max_tokens": 120,
        }
    if kind < 0.65:
        prompt = f"Question {index}: " + _text(rng, rng.randint(8, 30))  # short
        max_tokens = 60
    elif kind < 0.92:
        prompt = "Summarise this note:\n" + _text(rng, rng.randint(150, 400))  # paragraph
        max_tokens = 150
    else:
        prompt = "Summarise this report:\n" + _text(rng, rng.randint(1000, 1800))  # document
        max_tokens = 300
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.2,
    }


def _mp3_tone(seconds: float, frequency: float, sample_rate: int = 16000) -> bytes:
    """A mono 32 kbit/s MP3 of a sine tone, encoded with lameenc (no network, no ffmpeg)."""
    import lameenc

    count = round(seconds * sample_rate)
    step = 2 * math.pi * frequency / sample_rate
    pcm = struct.pack(f"<{count}h", *(round(6000 * math.sin(step * i)) for i in range(count)))
    encoder = lameenc.Encoder()
    encoder.set_bit_rate(32)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(pcm) + encoder.flush())


def _write_recordings(folder: Path, rng: random.Random) -> list[Path]:
    """A dozen MP3s of 2-12 s (a few under the 5 s minimum); empty if lameenc is missing."""
    try:
        import lameenc  # noqa: F401
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(12):
        seconds = rng.choice([2.0, 3.5, 6.0, 8.0, 10.0, 12.0])
        path = folder / f"call-{number:02d}.mp3"
        path.write_bytes(_mp3_tone(seconds, frequency=220.0 + 40 * number))
        paths.append(path)
    return paths


def write_demo_input(directory: Path, *, seed: int = 1) -> tuple[Path, int]:
    """Write ``requests.jsonl`` (and the MP3s it names) in ``directory``; return it and its size."""
    rng = random.Random(seed)
    recordings = _write_recordings(directory / "recordings", rng)
    lines: list[dict[str, Any]] = [
        {
            "custom_id": f"chat-{index:05d}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": _chat_body(rng, index),
        }
        for index in range(CHAT_REQUESTS)
    ]
    for index in range(TRANSCRIPTIONS if recordings else 0):
        lines.append(
            {
                "custom_id": f"audio-{index:03d}",
                "method": "POST",
                "url": "/v1/audio/transcriptions",
                "body": {"model": "whisper-1", "file": str(recordings[index % len(recordings)])},
            }
        )
    rng.shuffle(lines)
    path = directory / "requests.jsonl"
    with path.open("wb") as file:
        for line in lines:
            file.write(orjson.dumps(line) + b"\n")
    return path, len(lines)


def _samples(output: Path) -> dict[str, bytes]:
    """One output line of each kind: chat, structured output, transcription, skipped, error."""
    found: dict[str, bytes] = {}
    with output.open("rb") as file:
        for raw in file:
            record = orjson.loads(raw)
            if record["error"] is not None:
                kind = "error"
            elif record["custom_id"].startswith("audio-"):
                skipped = record["response"]["body"].get("skipped")
                kind = "skipped recording" if skipped else "transcription"
            else:
                content = record["response"]["body"]["choices"][0]["message"]["content"]
                kind = "structured output" if content.startswith("{") else "chat"
            if kind not in found:
                found[kind] = raw.rstrip(b"\n")
            if len(found) == 5:
                break
    return found


def _shorten(line: bytes, limit: int = 400) -> str:
    text = line.decode("utf-8", "replace")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main() -> int:
    """Run the demo; return ``engine run``'s exit status."""
    directory = Path(tempfile.mkdtemp(prefix="quota-engine-demo-"))
    print(f"demo directory: {directory}")
    began = time.monotonic()
    source, count = write_demo_input(directory)
    print(f"wrote {count} requests to {source} ({time.monotonic() - began:.1f} s)")
    output = directory / "output.jsonl"
    print(f"starting the mock API (quota {DEMO_RPM} req/min, {DEMO_TPM} tok/min) ...")
    with serve_in_subprocess(_MOCK_ARGS) as base_url:
        command = [
            "engine", "run", str(source), "-o", str(output), "--base-url", base_url,
            "--rpm", str(DEMO_RPM), "--tpm", str(DEMO_TPM),
        ]  # fmt: skip
        print("$ OPENAI_API_KEY=... " + " ".join(command), flush=True)
        env = {**os.environ, "OPENAI_API_KEY": _DEMO_KEY}
        env.pop("OPENAI_BASE_URL", None)
        status = subprocess.call([sys.executable, "-m", *command], env=env)
        stats = httpx.get(base_url.removesuffix("/v1") + "/_mock/stats", timeout=10).json()
    print()
    print(
        f"the mock answered {stats['requests']} HTTP requests: "
        + ", ".join(f"{n} x {code}" for code, n in stats["status_counts"].items())
        + f"; busiest 60 s window: {stats['max_requests_per_60s']} requests"
    )
    print("sample output lines:")
    for kind, line in _samples(output).items():
        print(f"  {kind}: {_shorten(line)}")
    print(f"output: {output}")
    print(f"demo finished in {time.monotonic() - began:.0f} s (engine run exit status {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
