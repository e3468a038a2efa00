"""``engine run --endpoints FILE``: a pool from the command line, its summary, progress, metrics."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import engine
from engine._pool import EndpointStatistics
from engine.app import batch
from engine.app._progress import RunProgress, format_progress_line
from engine.app._summary import RunSummary, format_summary
from engine.app.cli import main
from engine.metrics import registry
from engine.mock import MockConfig, create_app, serve_in_subprocess

REPO = str(Path(engine.__file__).resolve().parents[1])
MODEL = "gpt-4o-mini"
KEY_A = "sk-proj-PoolCliKeyAlpha0123456789abcdef"
KEY_B = "sk-proj-PoolCliKeyBravo0123456789abcdef"
REVOKED = "sk-proj-PoolCliKeyRevoked0123456789abcd"
SECRETS = (KEY_A, KEY_B, REVOKED)


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with serve_in_subprocess(["--seed", "11"]) as url:
        yield url


@pytest.fixture
def mock(mock_url: str) -> Iterator[httpx.Client]:
    """A control client for the served mock, reset to a fast, open configuration."""
    root = mock_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=10, trust_env=False) as control:
        configure(control, latency_ms=0.0, api_key=None, rpm=None, tpm=None)
        control.post("/_mock/reset").raise_for_status()
        yield control


def configure(mock: httpx.Client, **changes) -> None:
    mock.post("/_mock/config", json=changes).raise_for_status()


def requests_served(mock: httpx.Client) -> int:
    return mock.get("/_mock/stats").json()["requests"]


def chat_line(custom_id: str) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"q {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, count: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps(chat_line(f"r{i}")) + b"\n" for i in range(count)))
    return path


def write_endpoints(path: Path, base_url: str, *members: tuple[str, str, str]) -> Path:
    """One [[endpoint]] per (name, key variable, extra TOML lines)."""
    text = "".join(
        f'[[endpoint]]\nname = "{name}"\nbase_url = "{base_url}"\napi_key_env = "{variable}"\n'
        f"{extra}\n"
        for name, variable, extra in members
    )
    path.write_text(text)
    return path


def output_records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def environment(**keys: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env.update(keys)
    env["PYTHONPATH"] = REPO
    return env


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )


def member_row(stderr: str, name: str) -> str:
    """The summary's row of pool member ``name``."""
    (row,) = [
        line for line in stderr.splitlines() if line.strip().startswith(f"pool member {name} ")
    ]
    return row


def assert_no_key_in(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text and secret[8:] not in text


def member(name: str, **counts) -> EndpointStatistics:
    fields = dict(
        granted=0,
        sent=0,
        succeeded=0,
        rate_limited=0,
        errors=0,
        prompt_tokens=0,
        completion_tokens=0,
    )
    return EndpointStatistics(name=name, **{**fields, **counts})


def summary_with(client_statistics) -> RunSummary:
    return RunSummary(
        input_path="in.jsonl",
        output_path="out.jsonl",
        errors_path=None,
        total_lines=10,
        already_done=0,
        succeeded=10,
        failed=0,
        error_codes={},
        skipped=0,
        not_run=0,
        previously_failed=0,
        prompt_tokens=100,
        completion_tokens=50,
        audio_seconds=0.0,
        elapsed=2.0,
        client_statistics=client_statistics,
    )


# -- end to end: engine run against the served mock --------------------------------


def test_two_members_with_their_own_keys_share_a_run_and_the_summary_lists_both(
    tmp_path, mock, mock_url
):
    """Each key has its own quota: 100 items at 60 RPM a key finish at once, split over both."""
    configure(mock, rpm=60)  # per (key, model): one key alone would be refused after 60
    source = write_input(tmp_path / "in.jsonl", 100)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml",
        mock_url,
        ("alpha", "KEY_A", "limits = { rpm = 60 }"),
        ("bravo", "KEY_B", "limits = { rpm = 60 }"),
    )
    output = tmp_path / "out.jsonl"
    done = run(
        str(source),
        "-o",
        str(output),
        "--endpoints",
        str(endpoints),
        "--stats-json",
        str(tmp_path / "stats.json"),
        env=environment(KEY_A=KEY_A, KEY_B=KEY_B),
    )
    assert done.returncode == 0, done.stderr
    records = output_records(output)
    assert sorted(r["custom_id"] for r in records) == sorted(f"r{i}" for i in range(100))
    assert all(r["error"] is None for r in records)
    assert f"2 endpoints from {endpoints}: alpha ({mock_url}), bravo ({mock_url})" in done.stderr
    rows = {name: member_row(done.stderr, name) for name in ("alpha", "bravo")}
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())["client_statistics"]
    by_name = {item["name"]: item for item in stats["endpoints"]}
    assert sum(item["succeeded"] for item in by_name.values()) == 100
    for name, row in rows.items():
        succeeded = by_name[name]["succeeded"]
        assert 40 <= succeeded <= 60  # neither key can have taken more than its 60
        assert f"{succeeded} succeeded ({succeeded / 100:.0%}), 0 429s, 0 errors" in row
        assert "retired" not in row
    assert stats["rate_limited"] == 0
    assert_no_key_in(done.stdout, done.stderr, output.read_text())


def test_a_refused_key_retires_its_member_and_the_run_completes_on_the_other(
    tmp_path, mock, mock_url
):
    """The mock accepts one key: the other member gets 401s, is retired; no item is lost."""
    configure(mock, api_key=KEY_A)
    source = write_input(tmp_path / "in.jsonl", 60)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml",
        mock_url,
        ("revoked", "KEY_REVOKED", ""),
        ("alpha", "KEY_A", ""),
    )
    output = tmp_path / "out.jsonl"
    done = run(
        str(source),
        "-o",
        str(output),
        "--endpoints",
        str(endpoints),
        env=environment(KEY_A=KEY_A, KEY_REVOKED=REVOKED),
    )
    assert done.returncode == 0, done.stderr
    records = output_records(output)
    assert len(records) == 60 and all(r["error"] is None for r in records)
    assert len({r["custom_id"] for r in records}) == 60
    assert "engine: endpoint 'revoked' retired" in done.stderr  # a notice, once
    assert done.stderr.count("'revoked' retired") == 1
    revoked = member_row(done.stderr, "revoked")
    assert "0 succeeded (0%)" in revoked and "retired: HTTP 401" in revoked
    assert "60 succeeded (100%)" in member_row(done.stderr, "alpha")
    assert "stopped early" not in done.stderr
    assert_no_key_in(done.stdout, done.stderr, output.read_text())


def test_every_key_refused_stops_the_run_and_the_resume_command_carries_the_file(
    tmp_path, mock, mock_url
):
    """All members retired: exit 3, resume with --endpoints; the resume sends only the rest."""
    configure(mock, api_key=KEY_A)
    source = write_input(tmp_path / "in.jsonl", 30)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml",
        mock_url,
        ("one", "KEY_ONE", ""),
        ("two", "KEY_TWO", ""),
    )
    output = tmp_path / "out.jsonl"
    args = [str(source), "-o", str(output), "--endpoints", str(endpoints)]
    stopped = run(*args, env=environment(KEY_ONE=REVOKED, KEY_TWO=REVOKED + "2"))
    assert stopped.returncode == 3, stopped.stderr
    assert "retired: HTTP 401" in member_row(stopped.stderr, "one")
    assert "retired: HTTP 401" in member_row(stopped.stderr, "two")
    assert f"--endpoints {endpoints}" in stopped.stderr.split("resume with:")[1]
    first = {r["custom_id"] for r in output_records(output)}
    assert len(first) < 30
    resumed = run(*args, env=environment(KEY_ONE=KEY_A, KEY_TWO=KEY_A))
    assert resumed.returncode in (0, 1), resumed.stderr  # 1: the fatal item's error line
    ids = [r["custom_id"] for r in output_records(output)]
    assert sorted(ids) == sorted(f"r{i}" for i in range(30))  # each exactly once
    assert "pool member one" in resumed.stderr and "pool member two" in resumed.stderr
    assert_no_key_in(stopped.stderr, resumed.stderr, output.read_text())


def test_endpoints_with_a_max_cost_spends_under_the_cap(tmp_path, mock, mock_url):
    """--max-cost and --endpoints together: priced first, spent shown, members listed."""
    source = write_input(tmp_path / "in.jsonl", 20)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml", mock_url, ("alpha", "KEY_A", ""), ("bravo", "KEY_B", "")
    )
    done = run(
        str(source),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--endpoints",
        str(endpoints),
        "--max-cost",
        "5",
        env=environment(KEY_A=KEY_A, KEY_B=KEY_B),
    )
    assert done.returncode == 0, done.stderr
    assert "of the $5.00 cap" in done.stderr
    assert "pool member alpha" in done.stderr and "pool member bravo" in done.stderr


def test_endpoints_with_redis_share_each_member_s_quota(tmp_path, mock, mock_url, redis_server):
    """--redis with --endpoints: the run completes; each member's quota is shared on its own."""
    if shutil.which("redis-cli") is None:
        pytest.skip("redis-cli is not installed")
    source = write_input(tmp_path / "in.jsonl", 40)
    namespace = f"pool-cli-{time.monotonic_ns()}"
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml",
        mock_url,
        ("alpha", "KEY_A", "limits = { rpm = 600 }"),
        ("bravo", "KEY_B", "limits = { rpm = 600 }"),
    )
    done = run(
        str(source),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--endpoints",
        str(endpoints),
        "--redis",
        redis_server.url,
        "--redis-namespace",
        namespace,
        env=environment(KEY_A=KEY_A, KEY_B=KEY_B),
    )
    assert done.returncode == 0, done.stderr
    assert len(output_records(tmp_path / "out.jsonl")) == 40
    rows = [member_row(done.stderr, name) for name in ("alpha", "bravo")]
    assert all("succeeded" in row for row in rows)
    listed = subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "--scan", "--pattern", f"{{{namespace}:*"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    groups = {key.partition(":")[2].partition("}")[0] for key in listed.split()}
    assert groups == {f"alpha/{MODEL}", f"bravo/{MODEL}"}  # one shared quota per member


def test_engine_run_serves_per_member_metrics(tmp_path, mock, mock_url):
    """--metrics-port with --endpoints: a scrape has each member's series, parsed by Prometheus."""
    configure(mock, latency_ms=40.0)
    source = write_input(tmp_path / "in.jsonl", 150)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml", mock_url, ("alpha", "KEY_A", ""), ("bravo", "KEY_B", "")
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "engine", "run", str(source), "-o", str(tmp_path / "o.jsonl")]
    command += ["--endpoints", str(endpoints), "--concurrency", "4", "--metrics-port", str(port)]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=environment(KEY_A=KEY_A, KEY_B=KEY_B),
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    seen: dict = {}
    try:
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            except httpx.HTTPError:
                text = ""
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
            if ("quota_engine_endpoint_sent_total", (("endpoint", "bravo"),)) in samples:
                seen = samples
            time.sleep(0.1)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert seen, "no scrape with the members' series"
    for name in ("alpha", "bravo"):
        assert ("quota_engine_endpoint_retired", (("endpoint", name),)) in seen
        for outcome in ("succeeded", "rate_limited", "errors"):
            key = (("endpoint", name), ("outcome", outcome))
            assert ("quota_engine_endpoint_requests_total", key) in seen
        for kind in ("prompt", "completion"):
            key = (("endpoint", name), ("kind", kind))
            assert ("quota_engine_endpoint_tokens_total", key) in seen


def test_metrics_linger_serves_counts_equal_to_the_summary_after_the_run(tmp_path, mock, mock_url):
    """--metrics-linger: a scrape after the summary has the run's final counts, per member too."""
    source = write_input(tmp_path / "in.jsonl", 40)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml", mock_url, ("alpha", "KEY_A", ""), ("bravo", "KEY_B", "")
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "engine", "run", str(source), "-o", str(tmp_path / "o.jsonl")]
    command += ["--endpoints", str(endpoints), "--metrics-port", str(port)]
    command += ["--metrics-linger", "30", "--stats-json", str(tmp_path / "stats.json")]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=environment(KEY_A=KEY_A, KEY_B=KEY_B),
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if "final counts stay at" in line:
                break
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        process.kill()
        process.communicate()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    stats = orjson.loads((tmp_path / "stats.json").read_bytes())["client_statistics"]
    assert samples[("quota_engine_requests_total", (("outcome", "succeeded"),))] == 40
    assert samples[("quota_engine_requests_sent_total", ())] == stats["sent"]
    for member in stats["endpoints"]:
        key = (("endpoint", member["name"]), ("outcome", "succeeded"))
        assert samples[("quota_engine_endpoint_requests_total", key)] == member["succeeded"]


# -- refusals before anything is sent -------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [["--base-url", "http://127.0.0.1:1/v1"], ["--rpm", "60"], ["--tpd", "5", "--tpm", "1"]],
)
def test_endpoints_with_base_url_or_limits_is_an_argparse_error(tmp_path, capsys, extra):
    """--endpoints replaces --base-url and the limits: combining them is a usage error (exit 2)."""
    source = write_input(tmp_path / "in.jsonl", 1)
    endpoints = write_endpoints(tmp_path / "e.toml", "http://127.0.0.1:1/v1", ("a", "K", ""))
    with pytest.raises(SystemExit) as caught:
        out = str(tmp_path / "out.jsonl")
        main(["run", str(source), "-o", out, "--endpoints", str(endpoints), *extra])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert "argument --endpoints: not allowed with" in error and extra[0] in error
    assert not (tmp_path / "out.jsonl").exists()


def test_a_bad_endpoints_file_refuses_the_run_in_one_line_before_anything_is_sent(
    tmp_path, mock, mock_url
):
    """A variable not set: exit 2, one line naming the variable and the endpoint, no request."""
    source = write_input(tmp_path / "in.jsonl", 5)
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml", mock_url, ("alpha", "KEY_A", ""), ("bravo", "KEY_B", "")
    )
    refused = run(
        str(source),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--endpoints",
        str(endpoints),
        env=environment(KEY_A=KEY_A),
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("engine run: ")
    assert "endpoint 'bravo'" in lines[0] and "KEY_B" in lines[0] and "nothing was sent" in lines[0]
    assert requests_served(mock) == 0
    assert_no_key_in(refused.stderr)


def test_a_key_written_in_the_endpoints_file_refuses_the_run_without_showing_it(
    tmp_path, mock, mock_url, capsys
):
    """api_key = "..." in the file: exit 2, the advice to use api_key_env, the key not shown."""
    source = write_input(tmp_path / "in.jsonl", 1)
    endpoints = tmp_path / "endpoints.toml"
    endpoints.write_text(
        f'[[endpoint]]\nname = "a"\nbase_url = "{mock_url}"\napi_key = "{KEY_A}"\n'
    )
    status = main(
        ["run", str(source), "-o", str(tmp_path / "out.jsonl"), "--endpoints", str(endpoints)]
    )
    assert status == 2
    error = capsys.readouterr().err
    assert "api_key_env" in error and "environment variable" in error
    assert_no_key_in(error)
    assert requests_served(mock) == 0


# -- the summary, the progress line, the metrics, the rounds -------------------------


def test_the_summary_has_one_row_per_member_with_share_429s_errors_tokens_and_retirement():
    """Shares are of the members' answers; a retired member says why."""
    statistics = SimpleNamespace(
        endpoints=(
            member("a", succeeded=30, rate_limited=2, prompt_tokens=300, completion_tokens=90),
            member("b", succeeded=10, errors=1, prompt_tokens=100, completion_tokens=30),
            member("c", errors=3, retired="HTTP 401: Incorrect API key provided"),
        )
    )
    text = format_summary(summary_with(statistics))
    rows = {name: member_row(text, name) for name in "abc"}
    assert rows["a"].endswith("30 succeeded (75%), 2 429s, 0 errors, 390 tokens")
    assert rows["b"].endswith("10 succeeded (25%), 0 429s, 1 error, 130 tokens")
    assert rows["c"].endswith(
        "0 succeeded (0%), 0 429s, 3 errors, 0 tokens, retired: HTTP 401: Incorrect API key"
        " provided"
    )


def test_a_summary_without_a_pool_is_unchanged():
    """No pool (no endpoints, or no client statistics): no member rows at all."""
    plain = format_summary(summary_with(None))
    assert "pool member" not in plain
    assert format_summary(summary_with(SimpleNamespace(endpoints=()))) == plain


def test_the_progress_line_counts_answers_per_member_and_stays_one_line():
    """Up to four members are listed (retired ones say so); more are counted as serving."""
    few = SimpleNamespace(endpoints=(member("a", succeeded=1200), member("b", retired="401")))
    line = format_progress_line(
        RunProgress(elapsed=3, total=10, done=2, failed=0, in_flight=1, client_statistics=few),
        bar=False,
    )
    assert "pool a 1.2k b retired" in line and "\n" not in line
    many = SimpleNamespace(
        endpoints=tuple(member(f"m{i}", retired="403" if i == 0 else None) for i in range(6))
    )
    line = format_progress_line(
        RunProgress(elapsed=3, total=10, done=2, failed=0, in_flight=1, client_statistics=many),
        bar=False,
    )
    assert "pool 5/6 serving" in line
    plain = RunProgress(elapsed=3, total=10, done=2, failed=0, in_flight=1)
    assert "pool" not in format_progress_line(plain, bar=False)


def test_rounds_of_a_run_add_up_each_member_s_counters():
    """A run that waited for OUTPUT had several clients: members' counts are summed by name."""
    first = SimpleNamespace(
        endpoints=(member("a", sent=3, succeeded=2, errors=1), member("b", retired="HTTP 401"))
    )
    second = SimpleNamespace(
        endpoints=(member("a", sent=5, succeeded=5, prompt_tokens=7), member("b", errors=1))
    )
    a, b = batch._combined_endpoints([first, second])
    assert (a.name, a.sent, a.succeeded, a.errors, a.prompt_tokens) == ("a", 8, 7, 1, 7)
    assert (b.errors, b.retired) == (1, "HTTP 401")
    assert batch._combined_endpoints([SimpleNamespace(endpoints=())]) == ()


def scrape_of(source) -> dict:
    """Every sample of ``source``'s metrics (a client), parsed by Prometheus's own parser."""
    text = generate_latest(registry(source)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_a_pooled_client_s_metrics_have_each_member_s_series(autojump_clock):
    """A live pool: per-member counters parse, add up to the client's, and show a retirement."""
    app = create_app(MockConfig(api_key=KEY_A))
    endpoints = [
        engine.Endpoint("good", "http://127.0.0.1/v1", api_key=KEY_A),
        engine.Endpoint("bad", "http://127.0.0.1/v1", api_key=REVOKED),
    ]
    async with engine.open_client(
        endpoints=endpoints, transport=httpx.ASGITransport(app), concurrency=4
    ) as client:
        requests = [
            engine.ChatRequest(messages=f"i {i}", model=MODEL, params={"max_tokens": 5})
            for i in range(20)
        ]
        results = [result async for result in client.map(requests)]
        samples = scrape_of(client)
    assert all(result.ok for result in results)
    ok = (("endpoint", "good"), ("outcome", "succeeded"))
    assert samples[("quota_engine_endpoint_requests_total", ok)] == 20
    assert samples[("quota_engine_endpoint_retired", (("endpoint", "bad"),))] == 1
    assert samples[("quota_engine_endpoint_retired", (("endpoint", "good"),))] == 0
    sent = sum(
        value for (name, _), value in samples.items() if name == "quota_engine_endpoint_sent_total"
    )
    assert sent == samples[("quota_engine_requests_sent_total", ())]
    prompt = sum(
        value
        for (name, labels), value in samples.items()
        if name == "quota_engine_endpoint_tokens_total" and ("kind", "prompt") in labels
    )
    assert prompt == samples[("quota_engine_tokens_total", (("kind", "prompt"),))] > 0


async def test_a_client_without_a_pool_has_no_endpoint_series():
    """No pool: not one quota_engine_endpoint_* series."""
    app = create_app(MockConfig())
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key="k", transport=httpx.ASGITransport(app)
    ) as client:
        await client.chat("hi", model=MODEL, max_tokens=5)
        samples = scrape_of(client)
    assert samples[("quota_engine_requests_sent_total", ())] == 1
    assert not [name for name, _ in samples if name.startswith("quota_engine_endpoint_")]


async def test_run_file_passes_endpoints_to_the_client(tmp_path):
    """run_file(client_options={"endpoints": [...]}) runs over the pool; the summary lists it."""
    app = create_app(MockConfig())
    source = write_input(tmp_path / "in.jsonl", 12)
    summary = await batch.run_file(
        source,
        tmp_path / "out.jsonl",
        client_options={
            "endpoints": [
                engine.Endpoint("a", "http://127.0.0.1/v1", api_key=KEY_A),
                engine.Endpoint("b", "http://127.0.0.1/v1", api_key=KEY_B),
            ],
            "transport": httpx.ASGITransport(app),
        },
    )
    assert summary.succeeded == 12
    names = [item.name for item in summary.client_statistics.endpoints]
    assert names == ["a", "b"]
    assert sum(item.succeeded for item in summary.client_statistics.endpoints) == 12
    text = format_summary(summary)
    assert "pool member a" in text and "pool member b" in text


def test_input_lines_pinned_to_a_member_go_to_it_alone_and_bad_pins_fail_or_wait(
    tmp_path, mock, mock_url
):
    """Pinned lines reach only their member; an unknown name fails; a retired one waits."""
    configure(mock, api_key=KEY_A)
    lines = [chat_line(f"free{i}") for i in range(10)]
    lines += [{**chat_line(f"to-alpha{i}"), "endpoint": "alpha"} for i in range(5)]
    lines += [{**chat_line("to-nobody"), "endpoint": "nobody"}]
    lines += [{**chat_line("to-revoked"), "endpoint": "revoked"}]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    endpoints = write_endpoints(
        tmp_path / "endpoints.toml", mock_url, ("alpha", "KEY_A", ""), ("revoked", "KEY_R", "")
    )
    output = tmp_path / "out.jsonl"
    args = [str(source), "-o", str(output), "--endpoints", str(endpoints)]
    done = run(*args, "--concurrency", "1", env=environment(KEY_A=KEY_A, KEY_R=REVOKED))
    records = {r["custom_id"]: r for r in output_records(output)}
    assert all(records[f"to-alpha{i}"]["error"] is None for i in range(5))
    assert all(records[f"free{i}"]["error"] is None for i in range(10))
    nobody = records["to-nobody"]["error"]
    assert nobody["code"] == "invalid_input" and "'nobody' is not in the pool" in nobody["message"]
    # Pinned to the member retired in this run: not written, left for a rerun.
    assert "to-revoked" not in records
    assert "not run (resume to send)  1" in done.stderr, done.stderr
    assert "pool member revoked" in done.stderr and "retired: HTTP 401" in done.stderr
