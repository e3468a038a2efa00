"""engine.app.batch in-process (run loop, resume, stop, run_batch), and the progress helpers."""

from __future__ import annotations

import io
import random
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.testing
from audio_fixtures import make_mp3
from run_summaries import make_summary

import engine
from engine.app import batch
from engine.app._progress import (
    ProgressPrinter,
    RateMeter,
    RunProgress,
    format_duration,
    format_progress_line,
)
from engine.app._summary import format_summary
from engine.mock import MockConfig, create_app

MODEL = "gpt-4o-mini"
KEY = "sk-batch-test-secret-0123456789"


def chat_line(custom_id: str, prompt: str = "hello", **body) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, lines: list) -> Path:
    with path.open("wb") as file:
        for line in lines:
            file.write(line if isinstance(line, bytes) else orjson.dumps(line))
            file.write(b"\n")
    return path


def read_output(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def options(app, **extra) -> dict:
    return {
        "base_url": "http://127.0.0.1/v1",
        "api_key": KEY,
        "transport": httpx.ASGITransport(app),
        "retry_base_delay": 0.01,
        **extra,
    }


async def test_every_input_line_gets_exactly_one_output_line_under_faults(tmp_path, autojump_clock):
    """500s and dropped connections are retried; each id ends with one line."""
    app = create_app(MockConfig(latency_ms=50, error_500_rate=0.2, seed=1))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(200)])
    summary = await batch.run_file(
        source, tmp_path / "out.jsonl", client_options=options(app, concurrency=16)
    )
    ids = [record["custom_id"] for record in read_output(tmp_path / "out.jsonl")]
    assert sorted(ids) == sorted(f"r{i}" for i in range(200))
    assert summary.succeeded + summary.failed == 200 and summary.exit_status in (0, 1)


async def test_success_lines_carry_the_server_response(tmp_path, autojump_clock):
    """A success line has status 200, the x-request-id and the response body."""
    app = create_app(MockConfig())
    source = write_input(tmp_path / "in.jsonl", [chat_line("a", "Say hi")])
    summary = await batch.run_file(source, tmp_path / "out.jsonl", client_options=options(app))
    (record,) = read_output(tmp_path / "out.jsonl")
    assert record["error"] is None and record["response"]["status_code"] == 200
    assert record["response"]["request_id"]
    assert record["response"]["body"]["choices"][0]["message"]["content"]
    assert summary.exit_status == batch.EXIT_OK
    assert summary.prompt_tokens > 0 and summary.completion_tokens > 0


async def test_rerun_sends_only_ids_missing_from_output(tmp_path, autojump_clock):
    """Resume: ids already in OUTPUT are skipped and never sent again."""
    app = create_app(MockConfig())
    lines = [chat_line(f"r{i}") for i in range(10)]
    output = tmp_path / "out.jsonl"
    first = write_input(tmp_path / "first.jsonl", lines[:4])
    await batch.run_file(first, output, client_options=options(app))
    source = write_input(tmp_path / "all.jsonl", lines)
    summary = await batch.run_file(source, output, client_options=options(app))
    assert summary.already_done == 4 and summary.succeeded == 6
    assert all(count == 1 for count in app.stats.client_request_ids.values())
    assert len(read_output(output)) == 10


async def test_torn_last_line_is_repaired_and_its_id_sent_again(tmp_path, autojump_clock):
    """A half-written last line (a crash) is dropped; its request runs again."""
    app = create_app(MockConfig())
    output = tmp_path / "out.jsonl"
    source = write_input(tmp_path / "in.jsonl", [chat_line("a"), chat_line("b")])
    await batch.run_file(source, output, client_options=options(app))
    data = output.read_bytes()
    output.write_bytes(data[: data.index(b"\n") + 1] + data[data.index(b"\n") + 1 :][:30])
    summary = await batch.run_file(source, output, client_options=options(app))
    assert summary.already_done == 1 and summary.succeeded == 1
    assert sorted(r["custom_id"] for r in read_output(output)) == ["a", "b"]


async def test_bad_lines_become_error_lines_naming_their_line_number(tmp_path, autojump_clock):
    """Not JSON, missing fields, unknown url, missing body.model: error lines, run goes on."""
    app = create_app(MockConfig())
    source = write_input(
        tmp_path / "in.jsonl",
        [
            chat_line("good"),
            b"{not json",
            {"custom_id": "nourl", "body": {}},
            {"custom_id": "badurl", "url": "/v1/embeddings", "body": {}},
            {"custom_id": "nomodel", "url": "/v1/chat/completions", "body": {"messages": [1]}},
        ],
    )
    summary = await batch.run_file(source, tmp_path / "out.jsonl", client_options=options(app))
    errors = {r["custom_id"]: r["error"] for r in read_output(tmp_path / "out.jsonl")}
    assert errors["good"] is None
    assert errors["__bad_line_2"]["message"].startswith("line 2: ")
    assert errors["nourl"]["message"].startswith("line 3: ")
    assert errors["badurl"]["message"].startswith("line 4: ")
    assert errors["nomodel"]["message"].startswith("line 5: ")
    assert summary.failed == 4 and summary.error_codes == {"invalid_input": 4}
    assert summary.exit_status == batch.EXIT_FAILED_ITEMS


async def test_missing_audio_file_is_an_error_line_naming_the_line(tmp_path, autojump_clock):
    """A transcription whose body.file cannot be read fails at once, before sending."""
    app = create_app(MockConfig())
    line = {
        "custom_id": "t",
        "url": "/v1/audio/transcriptions",
        "body": {"model": "whisper-1", "file": str(tmp_path / "missing.mp3")},
    }
    source = write_input(tmp_path / "in.jsonl", [line])
    await batch.run_file(source, tmp_path / "out.jsonl", client_options=options(app))
    (record,) = read_output(tmp_path / "out.jsonl")
    assert record["error"]["message"].startswith("line 1: cannot read body.file")
    assert sum(app.stats.status_counts.values()) == 0


async def test_default_model_fills_lines_without_one(tmp_path, autojump_clock):
    """--model supplies body.model where a line has none."""
    app = create_app(MockConfig())
    line = {"custom_id": "a", "url": "/v1/chat/completions", "body": {"messages": ["x"]}}
    line["body"]["messages"] = [{"role": "user", "content": "hi"}]
    source = write_input(tmp_path / "in.jsonl", [line])
    summary = await batch.run_file(
        source, tmp_path / "out.jsonl", client_options=options(app), default_model=MODEL
    )
    assert summary.succeeded == 1
    (record,) = read_output(tmp_path / "out.jsonl")
    assert record["response"]["body"]["model"] == MODEL


async def test_duplicate_ids_refuse_the_run_before_anything_is_sent(tmp_path, autojump_clock):
    """Every duplicated custom_id is reported with its lines; no request is sent."""
    app = create_app(MockConfig())
    lines = [chat_line("a"), chat_line("b"), chat_line("a"), chat_line("b"), chat_line("c")]
    source = write_input(tmp_path / "in.jsonl", lines)
    with pytest.raises(batch.DuplicateIdsError) as caught:
        await batch.run_file(source, tmp_path / "out.jsonl", client_options=options(app))
    assert caught.value.duplicates == {"a": [1, 3], "b": [2, 4]}
    assert "line 1, line 3" in caught.value.message
    assert sum(app.stats.status_counts.values()) == 0
    assert not (tmp_path / "out.jsonl").exists()


async def test_graceful_stop_finishes_in_flight_and_leaves_the_rest(tmp_path, autojump_clock):
    """First stop: no new requests; those in flight finish and are written; a rerun completes."""
    app = create_app(MockConfig(latency_ms=1000))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(40)])
    output = tmp_path / "out.jsonl"
    control = batch.RunControl()

    done_at_stop = []

    def stop_after_first_wave(progress: RunProgress) -> None:
        if progress.done >= 4 and not control.stopping:  # more are in flight by now
            done_at_stop.append(progress.done)
            control.stop("interrupted")

    summary = await batch.run_file(
        source,
        output,
        client_options=options(app, concurrency=4),
        control=control,
        progress=stop_after_first_wave,
        progress_interval=0.1,
    )
    sent = sum(app.stats.status_counts.values())
    assert summary.succeeded == sent > done_at_stop[0]  # all in flight finished and written
    assert summary.not_run == 40 - sent
    assert summary.stopped == "interrupted" and summary.exit_status == batch.EXIT_INTERRUPTED
    assert len(read_output(output)) == sent
    again = await batch.run_file(source, output, client_options=options(app, concurrency=4))
    assert again.succeeded == 40 - sent and again.exit_status == batch.EXIT_OK
    assert max(app.stats.client_request_ids.values()) == 1


async def test_graceful_stop_cancels_requests_still_running_after_the_grace(
    tmp_path, autojump_clock
):
    """Requests slower than the grace period are cancelled, not written, and the run ends."""
    app = create_app(MockConfig(latency_ms=100_000))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    control = batch.RunControl()
    control.stop("terminated")  # asked before the start: nothing new is sent
    summary = await batch.run_file(
        source, tmp_path / "out.jsonl", client_options=options(app), control=control
    )
    assert summary.not_run == 5 and summary.exit_status == batch.EXIT_TERMINATED
    assert (tmp_path / "out.jsonl").read_bytes() == b""


class _StopWhenInFlight:
    """A progress callback that stops the run once requests are in flight (``times`` stops)."""

    def __init__(self, control: batch.RunControl, times: int = 1, gap: float = 0.5) -> None:
        self.control = control
        self.times = times
        self.gap = gap
        self.stopped_at: list[float] = []

    def __call__(self, progress: RunProgress) -> None:
        if len(self.stopped_at) == self.times or progress.in_flight == 0:
            return
        if self.stopped_at and trio.current_time() - self.stopped_at[-1] < self.gap:
            return
        self.stopped_at.append(trio.current_time())
        self.control.stop()


async def test_grace_period_bounds_the_wait_for_slow_requests(tmp_path, autojump_clock):
    """A stop waits at most grace_period for requests in flight, then cancels them."""
    app = create_app(MockConfig(latency_ms=100_000))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    control = batch.RunControl()
    stopper = _StopWhenInFlight(control)
    summary = await batch.run_file(
        source,
        tmp_path / "out.jsonl",
        client_options=options(app),
        control=control,
        grace_period=3.0,
        progress=stopper,
        progress_interval=0.1,
    )
    ended = trio.current_time()
    assert ended - stopper.stopped_at[0] == pytest.approx(3.0, abs=0.2)
    assert summary.not_run == 5 and summary.succeeded == 0


async def test_second_stop_cancels_at_once(tmp_path, autojump_clock):
    """A second stop does not wait for the grace period."""
    app = create_app(MockConfig(latency_ms=100_000))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(5)])
    control = batch.RunControl()
    stopper = _StopWhenInFlight(control, times=2)
    summary = await batch.run_file(
        source,
        tmp_path / "out.jsonl",
        client_options=options(app),
        control=control,
        progress=stopper,
        progress_interval=0.1,
    )
    ended = trio.current_time()
    assert len(stopper.stopped_at) == 2 and ended - stopper.stopped_at[1] < 0.1
    assert summary.stopped == "interrupted" and summary.not_run == 5


async def test_wrong_key_stops_the_run_and_writes_no_run_stopped_lines(tmp_path, autojump_clock):
    """401: the run stops (exit 3); items it never finished have no line, so a rerun sends them."""
    app = create_app(MockConfig(api_key="sk-the-right-key-000000", latency_ms=10))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(30)])
    summary = await batch.run_file(
        source, tmp_path / "out.jsonl", client_options=options(app, concurrency=2)
    )
    records = read_output(tmp_path / "out.jsonl")
    assert summary.fatal_code == "invalid_api_key" and summary.exit_status == batch.EXIT_FATAL
    assert all(r["error"]["code"] != "run_stopped" for r in records)
    assert summary.not_run == 30 - len(records) > 0
    assert KEY not in (tmp_path / "out.jsonl").read_text() + format_summary(summary)


async def test_errors_to_gets_a_copy_of_each_error_line(tmp_path, autojump_clock):
    """--errors-to holds exactly the failed lines of OUTPUT."""
    app = create_app(MockConfig())
    source = write_input(tmp_path / "in.jsonl", [chat_line("ok"), b"[]"])
    await batch.run_file(
        source,
        tmp_path / "out.jsonl",
        client_options=options(app),
        errors_to=tmp_path / "errors.jsonl",
    )
    (error,) = read_output(tmp_path / "errors.jsonl")
    assert error["custom_id"] == "__bad_line_2"


async def test_progress_reports_total_done_and_failed(tmp_path, autojump_clock):
    """The progress callback sees the total to do, and at the end all of it done."""
    app = create_app(MockConfig(latency_ms=200))
    source = write_input(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(20)] + [b"x"])
    seen: list[RunProgress] = []
    await batch.run_file(
        source,
        tmp_path / "out.jsonl",
        client_options=options(app, concurrency=4),
        progress=seen.append,
        progress_interval=0.1,
    )
    assert {p.total for p in seen} == {21}
    assert seen[-1].done == 21 and seen[-1].failed == 1
    assert any(0 < p.in_flight <= 4 for p in seen)


async def test_previous_failures_keep_the_exit_status_non_zero(tmp_path, autojump_clock):
    """A resumed run exits 1 while OUTPUT holds error lines from an earlier run."""
    app = create_app(MockConfig())
    output = tmp_path / "out.jsonl"
    source = write_input(tmp_path / "in.jsonl", [chat_line("a"), b"oops"])
    await batch.run_file(source, output, client_options=options(app))
    again = await batch.run_file(source, output, client_options=options(app))
    assert again.failed == 0 and again.previously_failed == 1
    assert again.exit_status == batch.EXIT_FAILED_ITEMS


def test_run_batch_returns_results_in_input_order():
    """engine.run_batch blocks and returns one result per request, in input order."""
    app = create_app(MockConfig(latency_ms=5, latency_sigma=1.0, seed=3))
    requests = [engine.ChatRequest(messages=f"q{i}", model=MODEL) for i in range(30)]
    requests.append(chat_line("dict-line", "from a dict"))
    results = engine.run_batch(requests, **options(app, concurrency=8))
    assert [r.id for r in results] == [str(i) for i in range(30)] + ["dict-line"]
    assert all(r.ok for r in results)
    assert results[3].output == "Mock reply to: q3"


def test_run_batch_runs_transcriptions_alongside_chats(tmp_path):
    """Transcription requests come back as TranscriptionResults in their input position."""
    app = create_app(MockConfig())
    recording = make_mp3(tmp_path / "call.mp3", 6)
    requests = [
        engine.ChatRequest(messages="q", model=MODEL, id="chat"),
        engine.TranscriptionRequest(source=str(recording), id="audio"),
    ]
    chat, audio = engine.run_batch(requests, **options(app))
    assert chat.ok and isinstance(audio, engine.TranscriptionResult) and audio.ok
    assert "Mock transcription" in audio.text


def test_run_batch_refuses_repeated_ids():
    """Two requests with one id are refused before anything runs."""
    app = create_app(MockConfig())
    with pytest.raises(ValueError, match="unique"):
        engine.run_batch([chat_line("a"), chat_line("a")], **options(app))
    assert sum(app.stats.status_counts.values()) == 0


def test_run_batch_raises_one_engine_error_when_the_engine_itself_fails():
    """A bug below the engine (a transport raising) leaves run_batch as one BackgroundTaskError."""

    def broken_transport(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("transport bug")

    with pytest.raises(engine.BackgroundTaskError) as caught:
        engine.run_batch(
            [engine.ChatRequest(messages="q", model=MODEL)],
            base_url="http://127.0.0.1/v1",
            api_key="sk-test",
            transport=httpx.MockTransport(broken_transport),
            max_attempts=1,
        )
    assert isinstance(caught.value.__cause__, BaseExceptionGroup)
    assert "RuntimeError: transport bug" in str(caught.value)


def test_run_batch_marks_unfinished_requests_run_stopped_after_a_fatal_error():
    """A 401 stop still yields one result per request; unfinished ones say run_stopped."""
    app = create_app(MockConfig(api_key="sk-another-key-0000000"))
    requests = [engine.ChatRequest(messages="q", model=MODEL, id=f"r{i}") for i in range(10)]
    results = engine.run_batch(requests, **options(app, concurrency=1))
    assert len(results) == 10 and all(not r.ok for r in results)
    assert results[0].error.code == "invalid_api_key"
    assert {r.error.code for r in results[1:]} <= {"invalid_api_key", "run_stopped"}


# --------------------------------------------------------------------------- progress (pure)


def test_rate_meter_measures_per_minute_over_its_window():
    """120 requests over 60 s read as 120 per minute."""
    meter = RateMeter(window=60.0)
    for second in range(61):
        meter.sample(float(second), requests=2 * second, tokens=100 * second)
    assert meter.per_minute() == pytest.approx((120.0, 6000.0))


def test_rate_meter_forgets_samples_older_than_its_window():
    """After a stall longer than the window the rate reads zero."""
    meter = RateMeter(window=10.0)
    for second in range(11):
        meter.sample(float(second), requests=second * 10, tokens=0)
    for second in range(11, 40):
        meter.sample(float(second), requests=100, tokens=0)
    assert meter.per_minute() == pytest.approx((0.0, 0.0))


def test_rate_meter_needs_a_second_of_samples():
    """No rate from samples spanning less than a second."""
    meter = RateMeter()
    meter.sample(0.0, 0, 0)
    meter.sample(0.6, 10, 10)
    assert meter.per_minute() is None


def test_eta_is_what_is_left_at_the_recent_rate():
    """300 left at 60 per minute is five minutes."""
    progress = RunProgress(
        elapsed=10, total=400, done=100, failed=0, in_flight=3, requests_per_minute=60.0
    )
    assert progress.eta_seconds == pytest.approx(300.0)
    assert RunProgress(elapsed=1, total=None, done=1, failed=0, in_flight=0).eta_seconds is None


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, "0s"), (59.4, "59s"), (185, "3m05s"), (7620, "2h07m")]
)
def test_format_duration(seconds, shown):
    """Durations read as seconds, minutes and seconds, or hours and minutes."""
    assert format_duration(seconds) == shown


def test_progress_line_shows_counts_rates_and_eta():
    """The line names done/total, failed, in flight, the recent rates and the ETA."""
    progress = RunProgress(
        elapsed=65,
        total=1000,
        done=250,
        failed=3,
        in_flight=12,
        requests_per_minute=500.0,
        tokens_per_minute=45_000.0,
        rpm_limit=600,
        tpm_limit=90_000,
    )
    line = format_progress_line(progress, bar=False)
    assert "250/1000 (25%)" in line and "failed 3" in line and "in flight 12" in line
    assert "req/min 500  tok/min 45.0k" in line
    assert "ETA 1m30s" in line


def test_printer_redraws_in_place_on_a_terminal():
    """On a tty each update rewrites one line; finish ends it."""
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True)
    for done in range(3):
        printer.update(RunProgress(elapsed=done, total=3, done=done, failed=0, in_flight=1))
    printer.finish()
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 1 and "[" in text


def test_printer_prints_plain_lines_at_its_interval_when_not_a_terminal():
    """Off a tty a line is printed at most every plain_interval seconds of run time."""
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=False, plain_interval=10.0)
    for tenth in range(250):  # 25 s of updates every 0.1 s
        printer.update(
            RunProgress(elapsed=tenth / 10, total=None, done=tenth, failed=0, in_flight=0)
        )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("progress: ") for line in lines)
    assert "\r" not in stream.getvalue()


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, 0),
        ({"failed": 1, "succeeded": 9, "error_codes": {"invalid_input": 1}}, 1),
        ({"previously_failed": 2}, 1),
        ({"not_run": 3, "succeeded": 7, "stopped": "interrupted"}, 130),
        ({"not_run": 3, "succeeded": 7, "stopped": "terminated"}, 143),
        ({"not_run": 3, "stopped": "bad key", "fatal_code": "invalid_api_key"}, 3),
    ],
)
def test_exit_status(changes, status):
    """0 all ok, 1 error lines, 3 fatal, 130/143 stopped by a signal."""
    assert make_summary(**changes).exit_status == status


def test_summary_table_lists_error_codes_tokens_rates_and_output():
    """The summary names each error code, the tokens, the average rates and the output."""
    text = format_summary(
        make_summary(
            succeeded=7,
            failed=3,
            error_codes={"invalid_input": 2, "retries_exhausted": 1},
            rpm_limit=20.0,
        )
    )
    assert "invalid_input" in text and "retries_exhausted" in text
    assert "150 (prompt 100, completion 50)" in text
    assert "requests/min              10 average (0.2/s)" in text and "out.jsonl" in text


# --------------------------------------------------------------------------- duplicate check


def _input_with_ids(path: Path, ids: list[str]) -> Path:
    return write_input(path, [chat_line(custom_id) for custom_id in ids])


def test_compact_duplicate_check_agrees_with_the_exact_one(tmp_path):
    """On random inputs the Bloom-filter check finds exactly what the set-based one finds."""
    from engine.app._jsonl import find_duplicate_ids

    rng = random.Random(5)
    for trial in range(20):
        ids = [f"id-{rng.randrange(300)}" for _ in range(rng.randrange(1, 200))]
        path = _input_with_ids(tmp_path / f"in{trial}.jsonl", ids)
        assert batch.find_duplicate_ids_compactly(path) == find_duplicate_ids(path)


def test_compact_duplicate_check_drops_false_candidates(tmp_path, monkeypatch):
    """With a filter far too small, unique ids become candidates but are not reported."""
    monkeypatch.setattr(batch, "_FILTER_MIN_BITS", 8)
    monkeypatch.setattr(batch, "_FILTER_BITS_PER_BYTE", 0.0)
    path = _input_with_ids(tmp_path / "in.jsonl", [f"u{i}" for i in range(50)] + ["u7"])
    assert batch.find_duplicate_ids_compactly(path) == {"u7": [8, 51]}


def test_writer_that_forgets_written_ids_keeps_only_those_loaded(tmp_path):
    """remember_written=False: ids written this run do not join done_ids (memory stays flat)."""
    from engine.app._jsonl import OutputWriter, error_record

    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        writer.write(error_record("old", code="x", message="m"))
    with OutputWriter(path, remember_written=False) as writer:
        writer.write(error_record("new", code="x", message="m"))
        assert set(writer.done_ids) == {"old"}
        with pytest.raises(ValueError):
            writer.write(error_record("old", code="x", message="m"))
    assert len(read_output(path)) == 2
