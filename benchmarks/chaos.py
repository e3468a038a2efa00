"""The chaos suite: ``engine run`` against a served mock that misbehaves in every way at once.

Run it as ``make chaos``, ``engine bench chaos [--quick]`` or::

    python -m benchmarks.chaos [--quick] [--requests N] [--kills K] [--long N] [--json PATH]

What it does (each phase drives ``engine run`` as a subprocess, as a user would):

* **chaos** — the mock answers 5% 5xx (500/502/503), drops 2% of connections
  mid-response, cuts 1% of bodies in half (malformed JSON), leaves out the
  rate-limit headers on some responses (all of them, or only ``limit-*``),
  sends some bodies slowly over several seconds, and a *director* thread
  changes the provider's limits every second or so through
  ``POST /_mock/config``: tight limits (429 storms), with and without
  ``retry-after`` / ``retry-after-ms``, then loose again.  Meanwhile
  ``engine run`` is SIGKILLed at random moments ``kills`` times in a row and
  resumed each time, then stopped once with SIGTERM (graceful stop measured
  against the grace period), then resumed to the end with ``--stats-json``.
* **policy** — the failure policy (docs/design.md) checked per id: with only 5xx faults, no id is
  sent more than ``--max-attempts`` times and those that failed were sent
  exactly that many times; with only 429s and ``--max-attempts 1``, every
  id still succeeds (429 never counts as a failed attempt).
* **long** (``--long N``) — N requests with faults, one run, its RSS and open
  file descriptors sampled from ``/proc`` every second.

Checks (any failure makes the exit status 1 and is listed in the report):
every id exactly once in the output; no id already written is ever sent
again (the mock's ``client_request_ids`` counts, read before and after each
run, against the ids written before that run); retries within policy; the
limiter's in-flight count is 0 once the client closed (``--stats-json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import orjson

from engine.mock import serve_in_subprocess

__all__ = ["ChaosReport", "check_output", "main", "run_chaos", "run_long", "run_policy"]

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o-mini"
#: The key handed to ``engine run``; the report checks it never shows up anywhere.
SECRET = "sk-proj-ChaosSuiteSecret0123456789abcdefXYZ"
MAX_ATTEMPTS = 5
#: Grace period given to ``engine run`` in the SIGTERM phase, and the slack
#: allowed on top of it for the process to print its summary and exit.
GRACE_PERIOD = 5.0
STOP_SLACK = 3.0

#: The mock's faults during the chaos phase (probabilities per admitted request).
FAULTS: dict[str, float] = {
    "error_500_rate": 0.02,
    "error_502_rate": 0.015,
    "error_503_rate": 0.015,
    "drop_rate": 0.02,
    "malformed_json_rate": 0.01,
    "slow_body_rate": 0.004,
    "missing_headers_rate": 0.05,
    "missing_limit_headers_rate": 0.05,
}
#: Loose limits the chaos phase starts from, and the storms it switches to.
LOOSE = {"rpm": 30_000, "tpm": 3_000_000}
#: Each storm lowers a limit, then another client spends what is left of it
#: (``_Mock.drain``): the engine's next requests meet 429s it could not foresee.
STORMS: tuple[dict[str, Any], ...] = (
    {"tpm": 60_000, "retry_after_header": True, "retry_after_ms_header": True},
    {"tpm": 40_000, "retry_after_header": False, "retry_after_ms_header": False},
    {"tpm": 80_000, "retry_after_header": True, "retry_after_ms_header": False},
    {"rpm": 1_200, "tpm": 50_000, "retry_after_header": False, "retry_after_ms_header": False},
)
#: Tokens one draining request is charged (its max_tokens).
DRAIN_TOKENS = 15_000


@attrs.frozen
class ChaosReport:
    """What one phase did and found.

    Attributes:
        phase: ``chaos``, ``policy`` or ``long``.
        requests: input lines (distinct ids).
        figures: counts measured (sends, faults by kind, retries, 429s, lost,
            duplicates, RSS/fd samples, stop times, ...), JSON-ready.
        problems: every check that failed, in words; empty when all passed.
    """

    phase: str
    requests: int
    figures: dict[str, Any]
    problems: tuple[str, ...]


# -- helpers -------------------------------------------------------------------


def chat_line(custom_id: str, max_tokens: int = 16) -> bytes:
    body = {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": f"chaos {custom_id}"}],
    }
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return orjson.dumps(line)


def write_input(path: Path, ids: Sequence[str], max_tokens: int = 16) -> None:
    with path.open("wb") as file:
        for custom_id in ids:
            file.write(chat_line(custom_id, max_tokens) + b"\n")


def written_ids(path: Path) -> list[str]:
    """The custom_id of every complete line of ``path`` (a torn last line is ignored)."""
    if not path.exists():
        return []
    ids = []
    for raw in path.read_bytes().split(b"\n"):
        if not raw.strip():
            continue
        try:
            ids.append(orjson.loads(raw)["custom_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue  # a line torn by SIGKILL: the next run repairs it
    return ids


def check_output(path: Path, ids: Sequence[str]) -> tuple[int, int, int, list[str]]:
    """(lost, duplicated, unexpected, problems) of a finished output against ``ids``."""
    counts = Counter(written_ids(path))
    expected = set(ids)
    lost = sum(1 for custom_id in expected if counts[custom_id] == 0)
    duplicated = sum(n - 1 for custom_id, n in counts.items() if n > 1)
    unexpected = sum(1 for custom_id in counts if custom_id not in expected)
    lines = path.read_bytes().count(b"\n") if path.exists() else 0
    problems = []
    if lost:
        problems.append(f"{lost} id(s) have no output line")
    if duplicated:
        problems.append(f"{duplicated} duplicate output line(s)")
    if unexpected:
        problems.append(f"{unexpected} output line(s) with an id not in the input")
    if lines != len(ids):
        problems.append(f"{lines} output lines for {len(ids)} ids (torn or extra lines)")
    return lost, duplicated, unexpected, problems


class _Mock:
    """A control client for the served mock."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._http = httpx.Client(
            base_url=base_url.removesuffix("/v1"), timeout=10, trust_env=False
        )
        #: 429s the draining requests themselves got (not the engine's).
        self.drain_rejections = 0

    def configure(self, **changes: Any) -> None:
        self._http.post("/_mock/config", json=changes).raise_for_status()

    def reset(self) -> None:
        self._http.post("/_mock/reset").raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self._http.get("/_mock/stats").json()

    def drain(self, tokens: int, *, down_to: int | None = None) -> int:
        """Spend the quota behind the engine's back, as another process on the key would.

        Sends requests charged ``tokens`` each (with ``correct_to_usage`` off the
        charge stays) until the mock answers 429; with ``down_to``, then again
        with a tenth of the charge, and so on down to ``down_to`` tokens, so
        that less than ``down_to`` is left.  Returns how many were sent.
        """
        headers = {"Authorization": f"Bearer {SECRET}"}
        sent = 0
        size = tokens
        while True:
            body = {
                "model": MODEL,
                "max_tokens": size,
                "messages": [{"role": "user", "content": "drain"}],
            }
            for _ in range(20):
                sent += 1
                try:
                    response = self._http.post("/v1/chat/completions", json=body, headers=headers)
                except httpx.HTTPError:
                    continue  # a dropped connection: the fault injection hits us too
                if response.status_code == 429:
                    self.drain_rejections += 1
                    break
            if down_to is None or size <= down_to:
                return sent
            size = max(down_to, size // 10)

    def close(self) -> None:
        self._http.close()


def _environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = SECRET
    env["PYTHONPATH"] = str(REPO)
    return env


def _engine_run(
    source: Path, output: Path, base_url: str, *extra: str, stats_json: Path | None = None
) -> list[str]:
    command = [sys.executable, "-m", "engine", "run", str(source), "-o", str(output)]
    command += ["--base-url", base_url, *extra]
    if stats_json is not None:
        command += ["--stats-json", str(stats_json)]
    return command


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _resent(written: set[str], before: dict[str, int], after: dict[str, int]) -> list[str]:
    return sorted(i for i in written if after.get(i, 0) != before.get(i, 0))


def _wait_for_growth(output: Path, before: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if output.exists() and output.stat().st_size > before:
            return
        time.sleep(0.02)


class _Director(threading.Thread):
    """Changes the provider's limits (and ``retry-after`` on 429) every few ``period`` seconds."""

    def __init__(self, mock: _Mock, period: float, seed: int) -> None:
        super().__init__(daemon=True)
        self._mock = mock
        self._period = period
        self._rng = random.Random(seed)
        self._stopped = threading.Event()
        self.changes = 0
        self.drained = 0

    def run(self) -> None:
        storm = False
        # Calm spells last ~3 periods, storms ~1: frequent enough to hit every
        # run of the kill loop, rare enough that the run still makes progress.
        while not self._stopped.wait(
            self._period * self._rng.uniform(*((0.5, 1.5) if storm else (2, 4)))
        ):
            storm = not storm
            change = dict(self._rng.choice(STORMS)) if storm else dict(LOOSE)
            change["correct_to_usage"] = not storm
            # In a storm most responses carry no rate-limit headers: 429s are the news.
            change["missing_headers_rate"] = 0.8 if storm else FAULTS["missing_headers_rate"]
            if not storm:
                change.update(retry_after_header=True, retry_after_ms_header=True)
            try:
                self._mock.configure(**change)
                self.changes += 1
                if storm:
                    self.drained += self._mock.drain(DRAIN_TOKENS)
            except httpx.HTTPError:
                return

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def _fault_figures(stats: dict[str, Any], client: dict[str, Any] | None) -> dict[str, Any]:
    status = {int(code): n for code, n in stats["status_counts"].items()}
    figures = {
        "sends": stats["requests"],
        "status_counts": {str(code): n for code, n in sorted(status.items())},
        "5xx": sum(n for code, n in status.items() if 500 <= code < 600),
        "429": status.get(429, 0),
    }
    if client is not None:
        figures["client"] = client
    return figures


def _read_json(path: Path) -> dict[str, Any] | None:
    return orjson.loads(path.read_bytes()) if path.exists() else None


def _secret_leaks(*paths: Path) -> list[str]:
    return [str(p) for p in paths if p.exists() and SECRET.encode() in p.read_bytes()]


# -- the phases ----------------------------------------------------------------


def run_chaos(
    *,
    requests: int = 20_000,
    kills: int = 20,
    concurrency: int = 64,
    seed: int = 1,
    slow_body_ms: float = 4000.0,
) -> ChaosReport:
    """The chaos phase: every fault at once, ``kills`` SIGKILLs, one SIGTERM, then to the end.

    ``requests`` (default 20,000) ids; ``kills`` (default 20) SIGKILL-resume
    cycles at random moments; ``concurrency`` (default 64) is ``engine run
    --concurrency``; ``seed`` (default 1) seeds the mock and the kill times.
    """
    rng = random.Random(seed)
    problems: list[str] = []
    figures: dict[str, Any] = {"kills": kills}
    mock_args = ["--seed", str(seed), "--latency-ms", "15", "--latency-sigma", "0.7"]
    mock_args += ["--slow-body-ms", f"{slow_body_ms:g}"]
    for name, rate in FAULTS.items():
        mock_args += [f"--{name.replace('_', '-')}", str(rate)]
    mock_args += ["--rpm", str(LOOSE["rpm"]), "--tpm", str(LOOSE["tpm"])]
    with (
        tempfile.TemporaryDirectory(prefix="chaos-") as scratch,
        serve_in_subprocess(mock_args) as base_url,
    ):
        work = Path(scratch)
        ids = [f"c{i}" for i in range(requests)]
        source, output, log = work / "in.jsonl", work / "out.jsonl", work / "engine.log"
        stats_path = work / "stats.json"
        write_input(source, ids)
        mock = _Mock(base_url)
        director = _Director(mock, period=1.0, seed=seed)
        director.start()
        extra = ("--concurrency", str(concurrency), "--grace-period", f"{GRACE_PERIOD:g}")
        command = _engine_run(source, output, base_url, *extra)
        resent_total = 0
        try:
            for _ in range(kills):
                size = output.stat().st_size if output.exists() else 0
                written = set(written_ids(output))
                before = mock.stats()["client_request_ids"]
                process = _start(command, log)
                _wait_for_growth(output, size, process)
                time.sleep(rng.uniform(0.0, 0.6))
                _stop(process)
                resent = _resent(written, before, mock.stats()["client_request_ids"])
                resent_total += len(resent)
                if resent:
                    problems.append(f"written ids sent again after a resume: {resent[:5]}")
            # One graceful stop with SIGTERM, timed against the grace period.
            written = set(written_ids(output))
            before = mock.stats()["client_request_ids"]
            process = _start(command, log)
            _wait_for_growth(output, output.stat().st_size if output.exists() else 0, process)
            time.sleep(rng.uniform(0.1, 0.5))
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(GRACE_PERIOD + STOP_SLACK + 10)
            except subprocess.TimeoutExpired:
                status = None
                _stop(process)
            figures["sigterm_stop_seconds"] = round(time.monotonic() - signalled, 2)
            figures["sigterm_exit_status"] = status
            if status not in (143, 0, 1):
                problems.append(f"SIGTERM: exit status {status}, expected 143")
            if figures["sigterm_stop_seconds"] > GRACE_PERIOD + STOP_SLACK:
                problems.append(f"SIGTERM: stopped after {figures['sigterm_stop_seconds']} s")
            resent = _resent(written, before, mock.stats()["client_request_ids"])
            resent_total += len(resent)
            if resent:
                problems.append(f"written ids sent again after SIGTERM: {resent[:5]}")
            # Then to the end; a resume of a finished run must send nothing.
            written = set(written_ids(output))
            before = mock.stats()["client_request_ids"]
            final = subprocess.run(
                _engine_run(source, output, base_url, *extra, stats_json=stats_path),
                cwd=REPO,
                env=_environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=3600,
            )
        finally:
            director.stop()
            mock.configure(**LOOSE, retry_after_header=True, retry_after_ms_header=True)
        after = mock.stats()
        resent = _resent(written, before, after["client_request_ids"])
        resent_total += len(resent)
        if resent:
            problems.append(f"written ids sent again by the last run: {resent[:5]}")
        if final.returncode not in (0, 1):
            problems.append(f"last run: exit {final.returncode}: {final.stderr[-400:]!r}")
        again = subprocess.run(
            _engine_run(source, output, base_url, *extra),
            cwd=REPO,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
        )
        if mock.stats()["requests"] != after["requests"]:
            problems.append("a resume of a finished output sent requests")
        lost, duplicated, unexpected, found = check_output(output, ids)
        problems += found
        client = _read_json(stats_path)
        in_flight = client["client_statistics"]["limiter"]["in_flight"] if client else None
        if in_flight != 0:
            problems.append(f"limiter in flight after the run: {in_flight}")
        errors = Counter(
            (record.get("error") or {}).get("code", "?")
            for record in map(orjson.loads, output.read_bytes().splitlines())
            if record.get("error")
        )
        if errors.get("rate_limit_exceeded"):
            problems.append(f"{errors['rate_limit_exceeded']} item(s) failed on a 429")
        leaks = _secret_leaks(output, log, stats_path)
        if leaks or SECRET.encode() in final.stderr + again.stderr:
            problems.append(f"the API key appears in {leaks or 'stderr'}")
        figures.update(_fault_figures(after, client["client_statistics"] if client else None))
        figures["429_to_the_engine"] = figures["429"] - mock.drain_rejections
        figures.update(
            lost=lost,
            duplicated=duplicated,
            unexpected=unexpected,
            resent_after_written=resent_total,
            error_lines_by_code={str(k): v for k, v in errors.items()},
            limit_changes=director.changes,
            draining_requests=director.drained,
            limiter_in_flight_at_end=in_flight,
            final_exit_status=final.returncode,
            resume_of_finished_exit_status=again.returncode,
        )
        mock.close()
    return ChaosReport("chaos", requests, figures, tuple(problems))


def run_policy(*, requests: int = 400, seed: int = 2) -> ChaosReport:
    """The failure policy (docs/design.md) per id: 5xx retried at most ``MAX_ATTEMPTS``
    times; 429 never a failure.

    Two runs of ``requests`` ids (default 400) against a served mock seeded
    with ``seed`` (default 2): one with 30% 5xx and no quota, one with a
    token quota another client has just spent (429s only) and ``--max-attempts 1``.
    """
    problems: list[str] = []
    figures: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="chaos-policy-") as scratch,
        serve_in_subprocess(["--seed", str(seed)]) as base_url,
    ):
        work = Path(scratch)
        mock = _Mock(base_url)
        ids = [f"p{i}" for i in range(requests)]
        source = work / "in.jsonl"
        write_input(source, ids)

        mock.configure(error_500_rate=0.1, error_502_rate=0.1, error_503_rate=0.1)
        output = work / "5xx.jsonl"
        command = _engine_run(source, output, base_url, "--max-attempts", str(MAX_ATTEMPTS))
        subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, timeout=600)
        sends = mock.stats()["client_request_ids"]
        over = [i for i in ids if sends.get(i, 0) > MAX_ATTEMPTS]
        failed = [
            record["custom_id"]
            for record in map(orjson.loads, output.read_bytes().splitlines())
            if record.get("error")
        ]
        short = [i for i in failed if sends.get(i, 0) != MAX_ATTEMPTS]
        if over:
            problems.append(f"5xx: ids sent more than {MAX_ATTEMPTS} times: {over[:5]}")
        if short:
            problems.append(f"5xx: failed ids not tried {MAX_ATTEMPTS} times: {short[:5]}")
        problems += check_output(output, ids)[3]
        figures["5xx_sends_histogram"] = {
            str(n): count for n, count in sorted(Counter(sends.values()).items())
        }
        figures["5xx_failed_after_max_attempts"] = len(failed)

        mock.reset()
        mock.configure(error_500_rate=0.0, error_502_rate=0.0, error_503_rate=0.0)
        # No rate-limit headers at all: only the 429s tell the engine it went too fast.
        # Each item is charged ~510 tokens against 10,000 a second, after another
        # client spent the whole quota: the engine meets 429s from its first burst.
        mock.configure(
            tpm=600_000, correct_to_usage=False, retry_after_header=False, missing_headers_rate=1.0
        )
        heavy = work / "heavy.jsonl"
        write_input(heavy, ids, max_tokens=500)
        output = work / "429.jsonl"
        command = _engine_run(heavy, output, base_url, "--max-attempts", "1", "--concurrency", "64")
        # Less than one item's charge is left when the engine starts, and what
        # refills is spent again every 0.3 s: its first burst meets 429s.
        drained = mock.drain(150_000, down_to=500)
        storm = _start(command, work / "429.log")
        while storm.poll() is None:
            drained += mock.drain(150_000, down_to=500)
            time.sleep(0.3)
        figures["draining_requests"] = drained
        stats = mock.stats()
        figures["429_responses"] = stats["status_counts"].get("429", 0) - mock.drain_rejections
        figures["429_ids_sent_more_than_once"] = sum(
            1 for n in stats["client_request_ids"].values() if n > 1
        )
        if storm.returncode != 0:
            problems.append(f"429 storm with --max-attempts 1: exit {storm.returncode}")
        problems += check_output(output, ids)[3]
        mock.close()
    return ChaosReport("policy", requests, figures, tuple(problems))


def _sample(pid: int) -> tuple[int, int] | None:
    """(RSS in KiB, open file descriptors) of ``pid`` from /proc, None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None


def run_long(*, requests: int = 200_000, concurrency: int = 128, seed: int = 3) -> ChaosReport:
    """``requests`` ids (default 200,000) with faults in one run; RSS and fds sampled each 1 s."""
    problems: list[str] = []
    mock_args = ["--seed", str(seed), "--latency-ms", "5", "--latency-sigma", "0.5"]
    mock_args += ["--slow-body-ms", "3000"]
    for name, rate in FAULTS.items():
        mock_args += [f"--{name.replace('_', '-')}", str(rate)]
    with (
        tempfile.TemporaryDirectory(prefix="chaos-long-") as scratch,
        serve_in_subprocess(mock_args) as base_url,
    ):
        work = Path(scratch)
        ids = [f"l{i}" for i in range(requests)]
        source, output, log = work / "in.jsonl", work / "out.jsonl", work / "engine.log"
        stats_path = work / "stats.json"
        write_input(source, ids)
        mock = _Mock(base_url)
        started = time.monotonic()
        process = _start(
            _engine_run(
                source, output, base_url, "--concurrency", str(concurrency), stats_json=stats_path
            ),
            log,
        )
        samples: list[tuple[float, int, int]] = []
        while process.poll() is None:
            sample = _sample(process.pid)
            if sample is not None:
                samples.append((round(time.monotonic() - started, 1), *sample))
            time.sleep(1.0)
        elapsed = time.monotonic() - started
        lost, duplicated, unexpected, found = check_output(output, ids)
        problems += found
        client = _read_json(stats_path)
        figures = _fault_figures(mock.stats(), client["client_statistics"] if client else None)
        mock.close()
    # Steady state: skip the first 10% of samples (start-up: imports, the pre-pass)
    # and the last two (shutdown: connections closing, memory handed back).
    steady = samples[len(samples) // 10 : -2] or samples
    figures.update(
        lost=lost,
        duplicated=duplicated,
        unexpected=unexpected,
        exit_status=process.returncode,
        elapsed_seconds=round(elapsed, 1),
        rss_kib_start=steady[0][1] if steady else None,
        rss_kib_end=steady[-1][1] if steady else None,
        rss_kib_max=max(s[1] for s in steady) if steady else None,
        fds_start=steady[0][2] if steady else None,
        fds_end=steady[-1][2] if steady else None,
        fds_max=max(s[2] for s in steady) if steady else None,
        samples=len(samples),
        # Every tenth sample, for the record: (seconds, RSS KiB, open fds).
        series=samples[::10],
    )
    if steady and steady[-1][1] > steady[0][1] * 1.5 + 20_000:
        problems.append(f"RSS grew from {steady[0][1]} KiB to {steady[-1][1]} KiB")
    if steady and steady[-1][2] > steady[0][2] + 16:
        problems.append(f"open fds grew from {steady[0][2]} to {steady[-1][2]}")
    return ChaosReport("long", requests, figures, tuple(problems))


def _print(report: ChaosReport, out: Callable[[str], None] = print) -> None:
    verdict = "ok" if not report.problems else "FAILED"
    out(f"== {report.phase}: {report.requests} ids: {verdict}")
    shown = {k: v for k, v in report.figures.items() if k not in ("client", "series")}
    if "client" in report.figures:
        client = report.figures["client"]
        shown["engine_retries"] = client["retries"]
        shown["engine_429s"] = client["rate_limited"]
    out(json.dumps(shown, indent=1, default=str))
    for problem in report.problems:
        out(f"  problem: {problem}")


def phases(args: argparse.Namespace) -> Iterator[Callable[[], ChaosReport]]:
    """The phases the command line asks for, in order."""
    requests = args.requests or (3_000 if args.quick else 20_000)
    kills = args.kills if args.kills is not None else (5 if args.quick else 20)
    yield lambda: run_chaos(requests=requests, kills=kills, seed=args.seed)
    yield lambda: run_policy(seed=args.seed + 1)
    if args.long:
        yield lambda: run_long(requests=args.long, seed=args.seed + 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; print figures and problems; 0 when every check passed, else 1."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3,000 ids and 5 kills")
    parser.add_argument("--requests", type=int, help="ids in the chaos phase (default 20,000)")
    parser.add_argument("--kills", type=int, help="SIGKILL-resume cycles (default 20)")
    parser.add_argument("--long", type=int, default=0, metavar="N", help="also a long run of N")
    parser.add_argument("--seed", type=int, default=1, help="seed of the mock and kills")
    parser.add_argument("--json", dest="json_path", help="also write the reports here")
    args = parser.parse_args(argv)
    reports = []
    for phase in phases(args):
        report = phase()
        _print(report)
        reports.append(report)
    if args.json_path:
        Path(args.json_path).write_bytes(
            orjson.dumps([attrs.asdict(r) for r in reports], option=orjson.OPT_INDENT_2)
        )
    return 0 if all(not r.problems for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
