"""``engine run`` / ``engine transcribe`` end to end: subprocesses against a served mock."""

from __future__ import annotations

import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from audio_fixtures import make_mp3

import engine
from engine.mock import serve_in_subprocess

REPO = str(Path(engine.__file__).resolve().parents[1])
SECRET = "sk-proj-CliRunSecret0123456789abcdefXYZ"
MODEL = "gpt-4o-mini"


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with serve_in_subprocess(["--seed", "7"]) as url:
        yield url


@pytest.fixture
def mock(mock_url: str) -> Iterator[httpx.Client]:
    """A control client for the served mock, reset to a fast, open configuration."""
    root = mock_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=10, trust_env=False) as control:
        control.post("/_mock/config", json={"latency_ms": 0.0, "api_key": None}).raise_for_status()
        control.post("/_mock/reset").raise_for_status()
        yield control


def configure(mock: httpx.Client, **changes) -> None:
    mock.post("/_mock/config", json=changes).raise_for_status()


def sent_per_id(mock: httpx.Client) -> dict[str, int]:
    return mock.get("/_mock/stats").json()["client_request_ids"]


def chat_line(custom_id: str) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"q {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, lines: list) -> Path:
    with path.open("wb") as file:
        for line in lines:
            file.write((line if isinstance(line, bytes) else orjson.dumps(line)) + b"\n")
    return path


def output_records(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def engine_command(*args: str) -> list[str]:
    """``engine run ARGS``, or ``engine transcribe ARGS`` when the first argument says so."""
    if args and args[0] == "transcribe":
        return [sys.executable, "-m", "engine", *args]
    return [sys.executable, "-m", "engine", "run", *args]


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = SECRET
    env["PYTHONPATH"] = REPO
    return env


_started: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_leftover_processes() -> Iterator[None]:
    """A failed test must not leave an ``engine run`` behind: kill those it started."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.communicate()


def start(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        engine_command(*args),
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    _started.append(process)
    return process


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        engine_command(*args),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=timeout,
    )


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def read_stderr_until(process: subprocess.Popen[str], text: str, timeout: float) -> str:
    """Read ``process``'s stderr until ``text`` appears; return what was read.

    Reads the pipe's descriptor directly, so ``communicate()`` later gets the rest.
    """
    assert process.stderr is not None
    descriptor = process.stderr.fileno()
    deadline = time.monotonic() + timeout
    seen = b""
    with selectors.DefaultSelector() as selector:
        selector.register(descriptor, selectors.EVENT_READ)
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"{text!r} not on stderr in time; got {seen!r}")
            chunk = os.read(descriptor, 65536)
            if not chunk:
                raise AssertionError(f"stderr closed before {text!r}; got {seen!r}")
            seen += chunk
    return seen.decode()


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.wallclock
def test_resume_after_sigkill_writes_each_id_once_and_never_resends_a_written_id(
    tmp_path, mock, mock_url
):
    """SIGKILL at random moments, four times in a row, then resume: one line per id, none resent."""
    configure(mock, latency_ms=40.0, latency_sigma=0.5)
    # 2,000 ids: at the mock's pace (16 in flight, 40 ms: ~400/s) four runs killed at
    # most 0.5 s after their first line cannot write them all, however fast the machine.
    ids = [f"r{i}" for i in range(2000)]
    source = write_input(tmp_path / "in.jsonl", [chat_line(i) for i in ids])
    output = tmp_path / "out.jsonl"
    args = (str(source), "-o", str(output), "--base-url", mock_url, "--concurrency", "16")
    rng = random.Random()

    def resent_since(written: set[str], sent_before: dict[str, int]) -> list[str]:
        sent_after = sent_per_id(mock)
        return [i for i in written if sent_after.get(i, 0) != sent_before.get(i, 0)]

    for _ in range(4):
        before = line_count(output)
        written = {record["custom_id"] for record in output_records(output)} if before else set()
        sent_before = sent_per_id(mock)
        process = start(*args)
        wait_until(lambda before=before: line_count(output) > before)
        time.sleep(rng.uniform(0.0, 0.5))
        process.kill()
        process.communicate()
        assert resent_since(written, sent_before) == []
    written = {record["custom_id"] for record in output_records(output)}
    assert 0 < len(written) < len(ids)  # the kills landed mid-run
    sent_before = sent_per_id(mock)
    finished = run(*args, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert resent_since(written, sent_before) == []
    assert sorted(record["custom_id"] for record in output_records(output)) == sorted(ids)


@pytest.mark.wallclock
def test_sigint_stops_prints_summary_and_resume_command_and_resume_completes(
    tmp_path, mock, mock_url
):
    """Ctrl-C: in-flight finish, summary and resume command on stderr, exit 130; resume ends it."""
    # 200 lines at 4 in flight and 400 ms take 20 s: the Ctrl-C lands mid-run even when
    # this test is held up for seconds on a loaded machine.
    configure(mock, latency_ms=400.0)
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(200)])
    output = tmp_path / "out.jsonl"
    process = start(str(source), "-o", str(output), "--base-url", mock_url, "--concurrency", "4")
    wait_until(lambda: line_count(output) >= 4)
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "summary:" in stderr and "stopped early: interrupted" in stderr
    resume = stderr.split("resume with:\n", 1)[1].strip()
    assert resume.startswith("engine run ") and f"-o {output}" in resume
    written = len(output_records(output))
    assert 4 <= written < 200

    configure(mock, latency_ms=0.0)
    finished = run(*resume.split()[2:])
    assert finished.returncode == 0, finished.stderr
    assert len(output_records(output)) == 200
    assert set(sent_per_id(mock).values()) == {1}


@pytest.mark.wallclock
def test_second_sigint_exits_at_once_without_a_torn_line(tmp_path, mock, mock_url):
    """A second Ctrl-C does not wait out the grace period; nothing half written."""
    configure(mock, latency_ms=600_000.0)
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(20)])
    output = tmp_path / "out.jsonl"
    # A grace period of 120 s against an exit expected at once: a loaded machine's
    # seconds of delay cannot be mistaken for the grace period being waited out.
    args = ("-o", str(output), "--base-url", mock_url, "--concurrency", "4")
    process = start(str(source), *args, "--grace-period", "120")
    wait_until(lambda: len(sent_per_id(mock)) >= 1)
    process.send_signal(signal.SIGINT)
    read_stderr_until(process, "no new requests", timeout=30)
    interrupted_at = time.monotonic()
    process.send_signal(signal.SIGINT)
    _stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - interrupted_at < 60
    assert process.returncode == 130
    assert "stopping now" in stderr and "summary:" in stderr
    assert output.read_bytes() == b""


def test_malformed_lines_become_error_lines_naming_the_line_and_exit_1(tmp_path, mock, mock_url):
    """Bad lines are reported in OUTPUT with their line number; the others succeed."""
    source = write_input(
        tmp_path / "in.jsonl",
        [chat_line("ok"), b"{broken", {"custom_id": "u", "url": "/v1/files", "body": {}}],
    )
    output = tmp_path / "out.jsonl"
    result = run(str(source), "-o", str(output), "--base-url", mock_url)
    assert result.returncode == 1
    errors = {r["custom_id"]: r["error"] for r in output_records(output)}
    assert errors["ok"] is None
    assert errors["__bad_line_2"]["message"].startswith("line 2: not valid JSON")
    assert errors["u"]["message"].startswith("line 3: unsupported url")
    assert "invalid_input" in result.stderr


def test_duplicate_ids_are_all_reported_and_nothing_is_sent(tmp_path, mock, mock_url):
    """Duplicate custom_ids: exit 2, each duplicate and its lines named, no request sent."""
    lines = [chat_line("a"), chat_line("b"), chat_line("a"), chat_line("c"), chat_line("b")]
    source = write_input(tmp_path / "in.jsonl", lines)
    result = run(str(source), "-o", str(tmp_path / "out.jsonl"), "--base-url", mock_url)
    assert result.returncode == 2
    assert "'a': line 1, line 3" in result.stderr and "'b': line 2, line 5" in result.stderr
    assert mock.get("/_mock/stats").json()["requests"] == 0


def test_api_key_never_appears_in_output_logs_or_errors(tmp_path, mock, mock_url):
    """With the right key and with a wrong one (401), the key is nowhere in what is written."""
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    ok = run(str(source), "-o", str(tmp_path / "ok.jsonl"), "--base-url", mock_url)
    assert ok.returncode == 0
    configure(mock, api_key="sk-proj-TheOnlyAcceptedKey000000000")
    refused = run(
        str(source),
        "-o",
        str(tmp_path / "refused.jsonl"),
        "--errors-to",
        str(tmp_path / "errors.jsonl"),
        "--base-url",
        mock_url,
    )
    assert refused.returncode == 3
    assert "invalid_api_key" in refused.stderr
    texts = [ok.stdout, ok.stderr, refused.stdout, refused.stderr]
    texts += [path.read_text() for path in tmp_path.iterdir()]
    for text in texts:
        assert SECRET not in text and SECRET[8:] not in text


def test_transcribe_writes_one_line_per_recording_and_skips_short_ones(tmp_path, mock, mock_url):
    """engine transcribe walks folders; ids are relative paths; short files get a skipped line."""
    folder = tmp_path / "calls"
    (folder / "day2").mkdir(parents=True)
    make_mp3(folder / "one.mp3", 6)
    make_mp3(folder / "day2" / "two.mp3", 6)
    make_mp3(folder / "tiny.mp3", 1)
    (folder / "notes.txt").write_text("not audio")
    output = tmp_path / "out.jsonl"
    result = run("transcribe", str(folder), "-o", str(output), "--base-url", mock_url)
    assert result.returncode == 0, result.stderr
    records = {r["custom_id"]: r for r in output_records(output)}
    assert set(records) == {"one.mp3", "day2/two.mp3", "tiny.mp3"}
    assert "Mock transcription" in records["one.mp3"]["response"]["body"]["text"]
    assert records["tiny.mp3"]["response"]["body"]["skipped"] is True
    assert sent_per_id(mock) == {"one.mp3": 1, "day2/two.mp3": 1}
    again = run("transcribe", str(folder), "-o", str(output), "--base-url", mock_url)
    assert again.returncode == 0 and len(output_records(output)) == 3
    assert sent_per_id(mock) == {"one.mp3": 1, "day2/two.mp3": 1}
