"""The chaos suite's short variant: ``engine run`` under faults, kills and SIGTERM (served mock)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

import engine

# The suite lives in benchmarks/ at the repository root (not an installed package).
sys.path.insert(0, str(Path(engine.__file__).resolve().parents[1]))

from benchmarks.chaos import (
    REPO,
    SECRET,
    _environment,
    _Mock,
    check_output,
    run_chaos,
    run_policy,
    write_input,
    written_ids,
)
from engine.mock import serve_in_subprocess


def test_chaos_run_with_five_kills_writes_every_id_once_and_resends_none():
    """All faults at once, 5 SIGKILLs, a SIGTERM, then to the end: none lost, doubled, resent."""
    report = run_chaos(requests=150, kills=5, concurrency=32, seed=11, slow_body_ms=2000)
    assert report.problems == ()
    figures = report.figures
    assert (figures["lost"], figures["duplicated"], figures["resent_after_written"]) == (0, 0, 0)
    assert figures["limiter_in_flight_at_end"] == 0
    assert figures["sigterm_exit_status"] in (143, 0, 1)


def test_retries_follow_the_failure_policy_for_5xx_and_429():
    """5xx: at most max_attempts sends per id; 429s never make an item fail."""
    report = run_policy(requests=40, seed=12)
    assert report.problems == ()
    assert report.figures["429_responses"] > 0  # the storm did happen


def test_sigterm_stops_within_the_grace_period_keeps_output_whole_and_resume_completes(
    tmp_path: Path,
):
    """SIGTERM: in-flight requests finish within --grace-period, exit 143; resume ends the run."""
    ids = [f"t{i}" for i in range(40)]
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, ids)
    with serve_in_subprocess(["--latency-ms", "300"]) as base_url:
        mock = _Mock(base_url)
        command = [sys.executable, "-m", "engine", "run", str(source), "-o", str(output)]
        command += ["--base-url", base_url, "--concurrency", "4", "--grace-period", "3"]
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 20
            while len(written_ids(output)) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _stdout, stderr = process.communicate(timeout=15)
            stopped_after = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 143, stderr
        assert stopped_after < 3 + 3  # grace period + time to print the summary and exit
        assert b"stopped early: terminated" in stderr
        written = written_ids(output)
        assert 4 <= len(written) < len(ids)
        assert output.read_bytes().endswith(b"\n")  # no torn last line
        before = mock.stats()["client_request_ids"]
        mock.configure(latency_ms=0.0)
        finished = subprocess.run(
            command, cwd=REPO, env=_environment(), capture_output=True, timeout=30
        )
        after = mock.stats()["client_request_ids"]
        mock.close()
    assert finished.returncode == 0, finished.stderr
    assert [i for i in written if after.get(i) != before.get(i)] == []
    assert check_output(output, ids)[3] == []
    assert SECRET.encode() not in stderr + finished.stderr + output.read_bytes()
    assert all(orjson.loads(line)["error"] is None for line in output.read_bytes().splitlines())
