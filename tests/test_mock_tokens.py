"""The mock's own token count (issue #13): tiktoken or chars/4, a skew, never the engine's."""

from __future__ import annotations

import argparse
import ast
import math
from pathlib import Path

import httpx
import pytest

from engine.mock import MockConfig, create_app
from engine.mock._cli import config_from_args, register
from engine.mock._tokens import TokenCounter, _encoding

MODEL = "gpt-4o-mini"
MOCK_DIR = Path(__file__).resolve().parent.parent / "engine" / "mock"
TEXT = "How many tokens does the server count for this message?"
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": TEXT, "name": "ada"},
]
REQUEST = {"model": MODEL, "messages": MESSAGES, "max_tokens": 100}


def tiktoken_count(text: str) -> int:
    return len(_encoding("o200k_base").encode_ordinary(text))


async def post(app, body: dict = REQUEST) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mock"
    ) as client:
        return await client.post("/v1/chat/completions", json=body)


def test_the_mock_imports_nothing_of_the_engines_estimates_quotas_or_headers():
    """No module of engine.mock imports engine._tokens, _quota, _limiter, _headers or _client."""
    forbidden = {"engine._tokens", "engine._quota", "engine._limiter", "engine._headers"}
    forbidden |= {"engine._client", "engine._retry", "engine"}
    for path in sorted(MOCK_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            else:
                continue
            assert not names & forbidden, f"{path.name} imports {names & forbidden}"


def test_tiktoken_rule_is_openais_documented_chat_overhead():
    """3 per message, every field's tokens, 1 more for a name, 3 priming the reply."""
    expected = 3 + 2 * 3 + 1
    expected += tiktoken_count("system") + tiktoken_count("You are terse.")
    expected += tiktoken_count("user") + tiktoken_count(TEXT) + tiktoken_count("ada")
    assert TokenCounter().prompt_tokens(MESSAGES, MODEL) == expected


def test_tiktoken_rule_counts_text_parts_and_images():
    """A list content counts its text parts, and 85 per image part."""
    parts = [
        {"type": "text", "text": TEXT},
        {"type": "image_url", "image_url": {"url": "data:,"}},
    ]
    with_parts = TokenCounter().prompt_tokens([{"role": "user", "content": parts}], MODEL)
    plain = TokenCounter().prompt_tokens([{"role": "user", "content": TEXT}], MODEL)
    assert with_parts == plain + 85


def test_chars_rule_is_a_quarter_of_the_characters_plus_four_per_message():
    """ceil(characters / 4) of the messages' text, plus 4 per message; roles are not counted."""
    characters = len("You are terse.") + len(TEXT)
    counter = TokenCounter(rule="chars")
    assert counter.prompt_tokens(MESSAGES, MODEL) == math.ceil(characters / 4) + 8
    assert counter.text_tokens("abcde", MODEL) == 2
    assert counter.truncate("abcdefghij", MODEL, 2) == "abcdefgh"


@pytest.mark.parametrize(("skew", "factor"), [(0.1, 1.1), (-0.2, 0.8), (0.0, 1.0)])
def test_skew_scales_the_prompt_count_rounded_up(skew, factor):
    """The skewed count is ceil(count x (1 + skew)); 0 leaves it as it is."""
    base = TokenCounter().prompt_tokens(MESSAGES, MODEL)
    skewed = TokenCounter(skew=skew).prompt_tokens(MESSAGES, MODEL)
    assert skewed == math.ceil(base * factor - 1e-9)
    assert (skewed != base) == (skew != 0.0)


async def test_skewed_prompt_is_charged_and_reported():
    """With token_skew 0.1, usage reports the skewed prompt and the quota is charged for it."""
    base = (await post(create_app(MockConfig(tpm=100_000)))).json()["usage"]
    response = await post(create_app(MockConfig(tpm=100_000, token_skew=0.1)))
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == math.ceil(base["prompt_tokens"] * 1.1)
    assert usage["completion_tokens"] == base["completion_tokens"]
    charged = 100_000 - int(response.headers["x-ratelimit-remaining-tokens"])
    assert charged == usage["total_tokens"]


async def test_arrival_charge_is_the_skewed_prompt_plus_the_output_budget():
    """Without correction to usage, the charge stays prompt (skewed) + n x max_tokens."""
    config = MockConfig(tpm=100_000, token_skew=0.5, correct_to_usage=False)
    response = await post(create_app(config), {**REQUEST, "n": 2})
    charged = 100_000 - int(response.headers["x-ratelimit-remaining-tokens"])
    assert charged == response.json()["usage"]["prompt_tokens"] + 2 * 100


async def test_chars_rule_sets_usage_and_cuts_answers():
    """Under chars, usage is chars/4 + 4 per message, and max_tokens cuts 4 characters a token."""
    app = create_app(MockConfig(token_rule="chars"))
    body = (await post(app, {**REQUEST, "max_tokens": 3})).json()
    characters = len("You are terse.") + len(TEXT)
    assert body["usage"]["prompt_tokens"] == math.ceil(characters / 4) + 8
    assert body["choices"][0]["message"]["content"] == "Mock reply t"
    assert body["usage"]["completion_tokens"] == 3


async def test_token_rule_changes_at_run_time_even_for_a_body_seen_before():
    """POST /_mock/config with a new rule or skew recounts a request answered before."""
    app = create_app()
    before = (await post(app)).json()["usage"]["prompt_tokens"]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://mock"
    ) as client:
        changed = await client.post("/_mock/config", json={"token_rule": "chars"})
        bad = await client.post("/_mock/config", json={"token_skew": -1})
    after = (await post(app)).json()["usage"]["prompt_tokens"]
    assert changed.status_code == 200
    assert bad.status_code == 400
    assert before != after == math.ceil((len("You are terse.") + len(TEXT)) / 4) + 8


@pytest.mark.parametrize(("field", "value"), [("token_rule", "words"), ("token_skew", -1.0)])
def test_bad_token_settings_are_refused(field, value):
    """The rule is tiktoken or chars; the skew is above -1."""
    with pytest.raises(ValueError):
        MockConfig(**{field: value})


def test_token_flags_set_the_config_fields():
    """--token-rule and --token-skew are engine mock flags."""
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["mock", "--token-rule", "chars", "--token-skew", "0.1"])
    config = config_from_args(args)
    assert (config.token_rule, config.token_skew) == ("chars", 0.1)
    default = config_from_args(parser.parse_args(["mock"]))
    assert (default.token_rule, default.token_skew) == ("tiktoken", 0.0)
