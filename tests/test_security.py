"""Security: the API key never shows; HTTPS by default; plain http to a remote host warns;
files follow the user's umask and are never world-writable."""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest
from run_summaries import make_summary

import engine
from engine import _client
from engine._errors import EngineError
from engine.app._cli_run import _write_stats_json
from engine.app._jsonl import OutputWriter, error_record, success_record
from engine.mock import MockConfig, create_app

SECRET = "sk-proj-SecurityTestSecret0123456789abcdefXYZ"
MODEL = "gpt-4o-mini"


def _echoing_transport() -> httpx.MockTransport:
    """A server that echoes the Authorization header back in a 400 error body."""

    def handler(request: httpx.Request) -> httpx.Response:
        echoed = request.headers.get("authorization", "")
        body = {
            "error": {
                "message": f"Bad request from {echoed} (key {SECRET})",
                "type": "invalid_request_error",
                "code": "bad",
            }
        }
        return httpx.Response(400, json=body)

    return httpx.MockTransport(handler)


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


async def test_client_and_statistics_reprs_never_show_the_api_key():
    """repr/str of the client and its statistics hold no key."""
    app = create_app(MockConfig())
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=SECRET, transport=httpx.ASGITransport(app)
    ) as client:
        result = await client.chat("hi", model=MODEL, max_tokens=4)
        shown = repr(client) + str(client) + repr(client.statistics()) + repr(result)
    assert result.error is None
    assert SECRET not in shown and "Bearer" not in shown


async def test_an_error_body_echoing_the_key_is_redacted_in_results_reprs_and_exceptions():
    """A server echoing the key: results (their error body too), reprs, errors never hold it."""
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=SECRET,
        transport=_echoing_transport(),
        max_attempts=1,
    ) as client:
        with pytest.raises(EngineError) as raised:
            await client.chat("hi", model=MODEL, max_tokens=4)
        request = engine.ChatRequest(id="r1", messages="hi", model=MODEL, params={"max_tokens": 4})
        [result] = [item async for item in client.map([request])]
    assert result.error is not None
    assert result.response["error"]["code"] == "bad"  # the body is kept, only masked
    shown = [
        repr(result),
        str(result),
        result.model_dump_json(),
        repr(result.error),
        str(raised.value),
        repr(raised.value),
        raised.value.message,
        orjson.dumps(result.response).decode(),
    ]
    for text in shown:
        assert SECRET not in text
        assert "Bearer sk-" not in text


def test_https_is_the_default_base_url(monkeypatch):
    """With no base URL given or in the environment, requests go to an https:// URL."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert _client.DEFAULT_BASE_URL.startswith("https://")


@pytest.mark.parametrize("url", ["http://api.example.com/v1", "http://10.0.0.5:8000/v1"])
def test_plain_http_to_a_non_loopback_host_warns(url):
    """http:// to another machine would send the key in clear text: a warning says so."""
    with pytest.warns(UserWarning, match="unencrypted"):
        _client._check_base_url(url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000/v1", "http://localhost/v1", "https://api.example.com/v1"]
)
def test_loopback_http_and_any_https_do_not_warn(url):
    """Loopback http (the mock) and https are quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _client._check_base_url(url)


def test_output_and_errors_files_are_never_world_writable_even_under_umask_zero(tmp_path):
    """OUTPUT and --errors-to files: no write bit for others, whatever the umask."""
    output, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    with _umask(0):
        writer = OutputWriter(output, errors_path=errors)
        writer.write(success_record("a", status_code=200, request_id=None, body={"ok": True}))
        writer.write(error_record("b", code="bad", message="no"))
        writer.close()
    for path in (output, errors):
        assert not os.stat(path).st_mode & stat.S_IWOTH


def test_output_files_follow_a_restrictive_umask(tmp_path):
    """Under umask 077 the OUTPUT file is readable and writable by its owner only."""
    output = tmp_path / "out.jsonl"
    with _umask(0o077):
        writer = OutputWriter(output)
        writer.write(success_record("a", status_code=200, request_id=None, body={"ok": True}))
        writer.close()
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o600


def test_stats_json_file_is_never_world_writable_even_under_umask_zero(tmp_path):
    """--stats-json writes its file like OUTPUT: umask applies, never world-writable."""
    target = tmp_path / "stats.json"
    with _umask(0):
        _write_stats_json(
            str(target),
            make_summary(
                output_path=str(tmp_path / "out.jsonl"),
                total_lines=0,
                succeeded=0,
                prompt_tokens=0,
                completion_tokens=0,
                elapsed=0.0,
            ),
        )
    assert not os.stat(target).st_mode & stat.S_IWOTH
    assert orjson.loads(target.read_bytes())["exit_status"] == 0
