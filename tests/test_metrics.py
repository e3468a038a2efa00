"""engine.metrics: Prometheus text from a client's statistics, during a run and at its end."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine.app import batch
from engine.app._cli_run import _LatestStatistics
from engine.metrics import serve
from engine.mock import MockConfig, create_app, serve_in_subprocess

KEY = "sk-metrics-test-secret-0123456789"


def chat_line(custom_id: str) -> dict:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, count: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps(chat_line(f"r{i}")) + b"\n" for i in range(count)))
    return path


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus_client's own text parser."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_counters_scraped_during_a_run_end_equal_to_the_summary(tmp_path):
    """A scrape mid-run parses; the last one equals the run's summary and client counters."""
    app = create_app(MockConfig(latency_ms=20))
    source = write_input(tmp_path / "in.jsonl", 300)
    latest = _LatestStatistics()
    during: list[dict] = []
    started = trio.Event()

    def progress(snapshot) -> None:
        if snapshot.client_statistics is not None:
            latest.latest = snapshot.client_statistics
            started.set()

    with serve(latest, port=0) as server:
        assert scrape(server.port) == {}  # nothing before the first snapshot
        async with trio.open_nursery() as nursery:

            async def scrape_once_running() -> None:
                await started.wait()
                during.append(await trio.to_thread.run_sync(scrape, server.port))

            nursery.start_soon(scrape_once_running)
            summary = await batch.run_file(
                source,
                tmp_path / "out.jsonl",
                client_options={
                    "base_url": "http://127.0.0.1/v1",
                    "api_key": KEY,
                    "transport": httpx.ASGITransport(app),
                    "concurrency": 16,
                    "max_cost": 5.0,
                    "latency_histogram": True,
                },
                progress=progress,
                progress_interval=0.05,
            )
        latest.latest = summary.client_statistics
        final = await trio.to_thread.run_sync(scrape, server.port)
    assert during and ("quota_engine_requests_sent_total", ()) in during[0]
    assert during[0][("quota_engine_requests_sent_total", ())] < 300  # scraped mid-run
    stats = summary.client_statistics
    assert final[("quota_engine_requests_total", (("outcome", "succeeded"),))] == 300
    assert final[("quota_engine_requests_total", (("outcome", "succeeded"),))] == summary.succeeded
    assert final[("quota_engine_requests_total", (("outcome", "failed"),))] == summary.failed
    assert final[("quota_engine_requests_sent_total", ())] == stats.sent
    assert final[("quota_engine_tokens_total", (("kind", "prompt"),))] == summary.prompt_tokens
    completion = final[("quota_engine_tokens_total", (("kind", "completion"),))]
    assert completion == summary.completion_tokens
    assert final[("quota_engine_spent_dollars_total", ())] == pytest.approx(summary.spent)
    assert final[("quota_engine_max_cost_dollars", ())] == 5.0
    assert final[("quota_engine_requests_in_flight", ())] == 0
    assert final[("quota_engine_permits_granted_total", ())] == stats.limiter.granted
    assert final[("quota_engine_rate_limited_total", ())] == stats.rate_limited
    # no faults: every attempt was answered once, and timed once
    assert final[("quota_engine_request_duration_seconds_count", ())] == 300
    assert final[("quota_engine_request_duration_seconds_bucket", (("le", "+Inf"),))] == 300
    assert final[("quota_engine_request_duration_seconds_bucket", (("le", "0.01"),))] == 0
    assert final[("quota_engine_request_duration_seconds_sum", ())] >= 300 * 0.02


async def test_a_live_client_is_its_own_source(autojump_clock):
    """serve(client) reads the client's statistics at each scrape; no key in the text."""
    transport = httpx.ASGITransport(create_app(MockConfig()))
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=transport
    ) as client:
        await client.chat("hi", model="gpt-4o-mini")
        with serve(client, port=0) as server:
            text = await trio.to_thread.run_sync(
                lambda: httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
            )
    assert KEY not in text and "hi" not in text.split()
    families = {family.name for family in text_string_to_metric_families(text)}
    assert {"quota_engine_requests_sent", "quota_engine_quota_limit"} <= families


def test_a_missing_prometheus_client_names_the_extra():
    """Without prometheus-client, importing engine.metrics says which extra to install."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import engine.metrics\nexcept ImportError as exc:\n    print(exc)\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "quota-engine[metrics]" in finished.stdout


@pytest.mark.wallclock
def test_engine_run_serves_metrics_while_it_runs(tmp_path):
    """`engine run --metrics-port` answers /metrics mid-run; counters never exceed the end's."""
    source = write_input(tmp_path / "in.jsonl", 600)
    port = free_port()
    stats_json = tmp_path / "stats.json"
    with serve_in_subprocess(["--latency-ms", "50"]) as base_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env["OPENAI_API_KEY"] = KEY
        command = [sys.executable, "-m", "engine", "run", str(source), "-o"]
        command += [str(tmp_path / "out.jsonl"), "--base-url", base_url, "--concurrency", "8"]
        command += ["--metrics-port", str(port), "--stats-json", str(stats_json)]
        process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        scrapes = []
        try:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    samples = scrape(port)
                except httpx.HTTPError:
                    samples = None
                if samples:
                    scrapes.append(samples)
                time.sleep(0.2)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, stderr
    assert scrapes, "no scrape answered while the run ran"
    final = orjson.loads(stats_json.read_bytes())["client_statistics"]
    sent = [s[("quota_engine_requests_sent_total", ())] for s in scrapes]
    assert sent == sorted(sent) and sent[-1] <= final["sent"] == 600


async def test_429s_are_counted_by_the_limit_the_server_named():
    """rate_limited_by_limit_total carries one sample per limit named in 429s."""
    from prometheus_client import generate_latest

    from engine._limiter import Limiter
    from engine._quota import Cost, QuotaBook
    from engine.metrics import registry

    limiter = Limiter(QuotaBook(engine.Limits()))
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        for limit in ("tokens", "tokens", None):
            reservation = await limiter.acquire("m", Cost(tokens=1))
            limiter.rate_limited_nowait(reservation, retry_after=0.0, limit_type=limit)
            await trio.testing.wait_all_tasks_blocked()
        statistics = engine.ClientStatistics(
            limiter=limiter.statistics(),
            sent=3,
            succeeded=0,
            failed=0,
            retries=0,
            rate_limited=3,
            prompt_tokens=0,
            completion_tokens=0,
        )
        limiter.close()
    text = generate_latest(registry(lambda: statistics)).decode()
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("quota_engine_rate_limited_by_limit_total", (("limit", "tokens"),))] == 2
    assert samples[("quota_engine_rate_limited_by_limit_total", (("limit", "unknown"),))] == 1
    assert samples[("quota_engine_rate_limited_total", ())] == 3
