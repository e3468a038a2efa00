"""Structured-output chats and transcriptions through the public API, against the served mock.

Serves ``engine mock`` in its own process (``engine.mock.serve_in_subprocess``)
and runs one ``client.map`` over a mix of ``--chats`` structured-output chat
requests and ``--transcriptions`` transcriptions of MP3 files generated
offline with lameenc (mostly 6-12 s long, some under ``min_seconds`` so they
are skipped, some corrupt so they fail locally).  Checks that every input
yields exactly one result, then prints one JSON object: counts per kind (ok,
failed, skipped), elapsed seconds, results per second, the client's and the
mock's counters, and the export row count.

    .venv/bin/python benchmarks/endpoints_run.py [--chats 200] [--transcriptions 50]
        [--short 5] [--corrupt 2] [--latency-ms 50] [--error-503-rate 0.02]
        [--concurrency 32] [--rpm 6000]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import tempfile
import time
import urllib.request

import pydantic
import trio

import engine
from engine.mock import serve_in_subprocess

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from audio_fixtures import make_corrupt_mp3, make_mp3

CHAT_MODEL = "gpt-4o-mini"


class Address(pydantic.BaseModel):
    city: str
    country: str


class CallInsight(pydantic.BaseModel):
    """What a support call was about."""

    topic: str
    sentiment: str
    follow_up: bool
    tags: list[str]
    address: Address | None


def make_inputs(directory: pathlib.Path, args: argparse.Namespace) -> list[object]:
    items: list[object] = [
        engine.ChatRequest(
            id=f"chat-{i}",
            messages=[
                {"role": "system", "content": "Extract the call's topic and sentiment."},
                {"role": "user", "content": f"Call {i}: the customer asked about invoice {i}."},
            ],
            model=CHAT_MODEL,
            response_model=CallInsight,
            params={"max_tokens": 200},
        )
        for i in range(args.chats)
    ]
    # A few distinct files, reused: generating audio is not what is measured.
    long_files = [make_mp3(directory / f"long-{s}.mp3", s) for s in (6, 9, 12)]
    short_file = make_mp3(directory / "short.mp3", 2)
    corrupt_file = make_corrupt_mp3(directory / "corrupt.mp3")
    for i in range(args.transcriptions):
        if i < args.short:
            source = short_file
        elif i < args.short + args.corrupt:
            source = corrupt_file
        else:
            source = long_files[i % len(long_files)]
        # Batch-API lines and request objects, mixed, as users would feed them.
        if i % 2:
            items.append(
                {
                    "custom_id": f"audio-{i}",
                    "method": "POST",
                    "url": "/v1/audio/transcriptions",
                    "body": {"model": "whisper-1", "file": str(source)},
                }
            )
        else:
            items.append(
                engine.TranscriptionRequest(id=f"audio-{i}", source=source, response_format="text")
            )
    # Interleave so both kinds are in flight together.
    chats, audio = items[: args.chats], items[args.chats :]
    mixed: list[object] = []
    step = max(1, len(chats) // max(1, len(audio)))
    while chats or audio:
        mixed.extend(chats[:step])
        del chats[:step]
        if audio:
            mixed.append(audio.pop(0))
    return mixed


async def run(base_url: str, items: list[object], args: argparse.Namespace) -> dict[str, object]:
    limits = engine.Limits(rpm=args.rpm, tpm=10_000_000)
    counts: dict[str, collections.Counter[str]] = {
        "chat": collections.Counter(),
        "transcription": collections.Counter(),
    }
    results = []
    async with engine.open_client(
        base_url=base_url,
        api_key="sk-bench-0123456789",
        limits=limits,
        concurrency=args.concurrency,
        retry_base_delay=0.05,
    ) as client:
        start = time.perf_counter()
        async for result in client.map(items):
            results.append(result)
            kind = "transcription" if isinstance(result, engine.TranscriptionResult) else "chat"
            if result.error is not None:
                counts[kind]["failed"] += 1
                counts[kind][f"failed:{result.error.code}"] += 1
            elif getattr(result, "skipped", False):
                counts[kind]["skipped"] += 1
            else:
                counts[kind]["ok"] += 1
        elapsed = time.perf_counter() - start
        stats = client.statistics()
    ids = [result.id for result in results]
    expected = sorted(
        item.id if hasattr(item, "id") else item["custom_id"]  # type: ignore[index]
        for item in items
    )
    valid, failed = engine.split_results(results)
    rows = engine.to_rows(results)
    return {
        "inputs": len(items),
        "results": len(results),
        "every_item_accounted_for": sorted(ids) == expected and len(set(ids)) == len(ids),
        "elapsed_s": round(elapsed, 3),
        "results_per_s": round(len(results) / elapsed, 1),
        "counts": {kind: dict(counter) for kind, counter in counts.items()},
        "valid": len(valid),
        "failed": len(failed),
        "export_rows": len(rows),
        "export_columns": len(rows[0]) if rows else 0,
        "client": {
            "sent": stats.sent,
            "retries": stats.retries,
            "rate_limited": stats.rate_limited,
            "skipped": stats.skipped,
            "audio_seconds": stats.audio_seconds,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
        },
    }


def mock_stats(base_url: str) -> dict[str, object]:
    root = base_url.removesuffix("/v1")
    with urllib.request.urlopen(f"{root}/_mock/stats", timeout=10) as response:
        stats = json.load(response)
    return {key: stats[key] for key in ("requests", "status_counts", "admitted")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--transcriptions", type=int, default=50)
    parser.add_argument("--short", type=int, default=5, help="transcriptions under 5 s")
    parser.add_argument("--corrupt", type=int, default=2, help="corrupt audio files")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--error-503-rate", type=float, default=0.02)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rpm", type=int, default=6000)
    args = parser.parse_args()
    mock_args = [
        "--latency-ms",
        str(args.latency_ms),
        "--error-503-rate",
        str(args.error_503_rate),
        "--rpm",
        str(args.rpm),
        "--seed",
        "1",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        items = make_inputs(pathlib.Path(tmp), args)
        with serve_in_subprocess(mock_args) as base_url:
            report = trio.run(run, base_url, items, args)
            report["mock"] = mock_stats(base_url)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
