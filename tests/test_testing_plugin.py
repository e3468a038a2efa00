"""engine.testing: the mock served in-process for applications' tests (EngineMock, engine_mock)."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import engine
from engine.testing import MOCK_API_KEY, EngineMock

MODEL = "gpt-4o-mini"


async def test_a_client_of_the_mock_gets_its_answers(autojump_clock):
    """open_client() reaches the in-process mock: the mock's reply, usage and counters."""
    mock = EngineMock()
    async with mock.open_client() as client:
        result = await client.chat("Say hi", model=MODEL, id="greeting")
    assert result.output == "Mock reply to: Say hi"
    stats = mock.stats()
    assert stats.requests == 1 and stats.status_counts == {200: 1}
    assert stats.client_request_ids == {"greeting": 1}
    assert stats.tokens_charged == result.usage.total_tokens > 0


async def test_configured_faults_reach_the_client_and_the_stats_count_every_attempt(
    autojump_clock,
):
    """error_503_rate=1 makes chat fail after max_attempts, each attempt counted under its id."""
    mock = EngineMock()
    mock.configure(error_503_rate=1.0)
    async with mock.open_client(max_attempts=3) as client:
        with pytest.raises(engine.RetriesExhaustedError):
            await client.chat("hi", model=MODEL, id="doomed")
    stats = mock.stats()
    assert stats.status_counts == {503: 3} and stats.client_request_ids == {"doomed": 3}


async def test_mock_latency_runs_on_trio_time(autojump_clock):
    """latency_ms is a trio sleep: virtual seconds pass under autojump_clock, real ones do not."""
    mock = EngineMock()
    mock.configure(latency_ms=30_000)
    real_start, virtual_start = time.perf_counter(), trio.current_time()
    async with mock.open_client() as client:
        await client.chat("slow", model=MODEL)
    assert trio.current_time() - virtual_start >= 30.0
    assert time.perf_counter() - real_start < 10.0


async def test_configured_limits_are_enforced_by_the_mock(autojump_clock):
    """configure(rpm=60) makes 90 requests wait for the mock's quota to refill."""
    mock = EngineMock()
    mock.configure(rpm=60)
    requests = [engine.ChatRequest(id=f"r{i}", messages="hi", model=MODEL) for i in range(90)]
    async with mock.open_client() as client:
        results = [result async for result in client.map(requests)]
    assert all(result.ok for result in results)
    assert mock.stats().status_counts[200] == 90
    # A full bucket of 60, then one a second for the other 30.
    assert trio.current_time() >= 29.0


def test_configure_returns_the_new_config_and_works_outside_trio():
    """configure() needs no event loop; fields not given keep their values."""
    mock = EngineMock()
    config = mock.configure(rpm=600, latency_ms=250)
    assert (config.rpm, config.latency_ms) == (600, 250.0)
    config = mock.configure(error_503_rate=0.5)
    assert (config.rpm, config.error_503_rate) == (600, 0.5) and mock.config is config


def test_configure_refuses_unknown_options_and_bad_values():
    """A misspelt option is a TypeError, a value the mock refuses a ValueError; nothing changes."""
    mock = EngineMock()
    with pytest.raises(TypeError, match="rpmm"):
        mock.configure(rpmm=600)
    with pytest.raises(ValueError, match="error_503_rate"):
        mock.configure(error_503_rate=2.0)
    assert mock.config.rpm is None and mock.config.error_503_rate == 0.0


async def test_reset_zeroes_the_stats(autojump_clock):
    """reset() forgets what was received."""
    mock = EngineMock()
    async with mock.open_client() as client:
        await client.chat("hi", model=MODEL)
        mock.reset()
        assert mock.stats().requests == 0
        await client.chat("again", model=MODEL, id="second")
    assert mock.stats().client_request_ids == {"second": 1}


def test_client_options_keep_the_client_on_the_mock():
    """base_url and transport cannot be overridden; other options pass through."""
    mock = EngineMock()
    options = mock.client_options(concurrency=4)
    assert options["concurrency"] == 4 and options["api_key"] == MOCK_API_KEY
    for name in ("base_url", "transport"):
        with pytest.raises(TypeError, match=name):
            mock.client_options(**{name: None})


async def test_a_configured_api_key_is_used_and_a_wrong_one_refused(autojump_clock):
    """With api_key configured, clients send it by default; another key draws 401."""
    mock = EngineMock()
    mock.configure(api_key="sk-the-right-key-123")
    async with mock.open_client() as client:
        assert (await client.chat("hi", model=MODEL)).ok
    with pytest.raises(engine.AuthenticationError):
        async with mock.open_client(api_key="sk-a-wrong-key-456") as client:
            await client.chat("hi", model=MODEL)
    assert mock.stats().status_counts == {200: 1, 401: 1}


def test_the_plugin_is_registered_through_a_pytest11_entry_point():
    """The installed package names engine.testing as a pytest plugin (no conftest needed)."""
    plugins = importlib.metadata.entry_points(group="pytest11")
    assert "engine.testing" in {entry.value for entry in plugins}


def test_the_engine_mock_fixture_gives_a_fresh_mock(engine_mock):
    """The fixture arrives with the plugin: an EngineMock with nothing received and no limits."""
    assert isinstance(engine_mock, EngineMock)
    assert engine_mock.stats().requests == 0 and engine_mock.config.rpm is None


def test_a_users_test_file_outside_the_project_passes(tmp_path):
    """tests/plugin_user/test_reviews.py, run alone in an empty directory, passes in under 5 s."""
    example = Path(__file__).parent / "plugin_user" / "test_reviews.py"
    shutil.copy(example, tmp_path / example.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", example.name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    assert "2 passed" in output and "1000 calls:" in output
