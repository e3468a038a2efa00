"""Tests for engine.app._jsonl: Batch-API input, crash-safe output, resume."""

from __future__ import annotations

import os
import random
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.app import _jsonl
from engine.app._jsonl import (
    OutputInUseError,
    OutputWriter,
    error_record,
    find_duplicate_ids,
    read_batch_input,
    success_record,
)

REPO = Path(__file__).resolve().parent.parent


def chat_line(custom_id: str = "a", **extra: object) -> dict:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(extra)
    return line


def write_lines(path: Path, *lines: dict | bytes | str) -> Path:
    """Write each item as a line: dicts as JSON, bytes/str as given (newline added)."""
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            chunks.append(orjson.dumps(line))
        elif isinstance(line, str):
            chunks.append(line.encode())
        else:
            chunks.append(line)
    path.write_bytes(b"\n".join(chunks) + b"\n")
    return path


def output_lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --------------------------------------------------------------------------- input: good lines


def test_good_chat_line_is_parsed(tmp_path):
    """A well-formed chat line yields its id, url and body with no error."""
    path = write_lines(tmp_path / "in.jsonl", chat_line("r1"))
    [line] = read_batch_input(path)
    assert (line.line_no, line.custom_id, line.url, line.error) == (
        1,
        "r1",
        "/v1/chat/completions",
        None,
    )
    assert line.body["model"] == "gpt-4o-mini"


def test_url_without_v1_is_normalised(tmp_path):
    """Every endpoint's url without ``/v1`` is read as its /v1 form."""
    path = write_lines(
        tmp_path / "in.jsonl",
        chat_line("c", url="/chat/completions"),
        chat_line("t", url="/audio/transcriptions", body={"model": "whisper-1", "file": "a.mp3"}),
        chat_line("r", url="/responses", body={"model": "gpt-4o-mini", "input": "hi"}),
        chat_line("e", url="/embeddings", body={"model": "text-embedding-3-small", "input": "a"}),
    )
    assert [line.url for line in read_batch_input(path)] == [
        "/v1/chat/completions",
        "/v1/audio/transcriptions",
        "/v1/responses",
        "/v1/embeddings",
    ]


def test_missing_method_means_post(tmp_path):
    """A line without ``method`` is taken as POST; lower-case ``post`` is accepted."""
    no_method = chat_line("a")
    del no_method["method"]
    path = write_lines(tmp_path / "in.jsonl", no_method, chat_line("b", method="post"))
    assert [line.error for line in read_batch_input(path)] == [None, None]


def test_transcription_line_with_file_path_is_good(tmp_path):
    """A transcription line whose body.file is a string path is accepted as is."""
    body = {"model": "whisper-1", "file": "calls/a.mp3"}
    path = write_lines(
        tmp_path / "in.jsonl", chat_line("t", url="/v1/audio/transcriptions", body=body)
    )
    [line] = read_batch_input(path)
    assert (line.error, line.body) == (None, body)


def test_last_line_without_newline_is_read(tmp_path):
    """The final line counts even when the file does not end with a newline."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(orjson.dumps(chat_line("a")) + b"\n" + orjson.dumps(chat_line("b")))
    assert [line.custom_id for line in read_batch_input(path)] == ["a", "b"]


def test_blank_lines_are_skipped_but_counted(tmp_path):
    """Blank and whitespace-only lines yield nothing yet keep the line numbers physical."""
    path = write_lines(tmp_path / "in.jsonl", "", chat_line("a"), "   \t", "", chat_line("b"), "")
    assert [(line.line_no, line.custom_id) for line in read_batch_input(path)] == [
        (2, "a"),
        (5, "b"),
    ]


def test_crlf_line_endings_are_accepted(tmp_path):
    """Windows line endings read like Unix ones, with the same line numbers."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        orjson.dumps(chat_line("a")) + b"\r\n\r\n" + orjson.dumps(chat_line("b")) + b"\r\n"
    )
    assert [(line.line_no, line.custom_id, line.error) for line in read_batch_input(path)] == [
        (1, "a", None),
        (3, "b", None),
    ]


def test_byte_order_mark_at_start_is_ignored(tmp_path):
    """A UTF-8 BOM before the first line does not make it invalid JSON."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(chat_line("a")) + b"\n")
    [line] = read_batch_input(path)
    assert (line.custom_id, line.error) == ("a", None)


# --------------------------------------------------------------------------- input: bad lines

BAD_LINES = [
    pytest.param(b"{not json", None, "not valid JSON", id="not-json"),
    pytest.param(b'{"custom_id": "x", ', None, "not valid JSON", id="truncated-json"),
    pytest.param(b"[1, 2]", None, "expected a JSON object, got an array", id="array"),
    pytest.param(b'"just a string"', None, "expected a JSON object, got a string", id="string"),
    pytest.param(
        orjson.dumps({k: v for k, v in chat_line().items() if k != "custom_id"}),
        None,
        "missing custom_id",
        id="no-custom-id",
    ),
    pytest.param(
        orjson.dumps(chat_line(custom_id=7)),
        None,
        "custom_id must be a string, got a number",
        id="numeric-custom-id",
    ),
    pytest.param(orjson.dumps(chat_line(custom_id="")), None, "custom_id is empty", id="empty-id"),
    pytest.param(
        orjson.dumps(chat_line(custom_id=None)),
        None,
        "custom_id must be a string, got null",
        id="null-custom-id",
    ),
    pytest.param(
        orjson.dumps(chat_line("x", method="GET")), "x", "method must be POST", id="method-get"
    ),
    pytest.param(
        orjson.dumps({k: v for k, v in chat_line("x").items() if k != "url"}),
        "x",
        "missing url",
        id="no-url",
    ),
    pytest.param(
        orjson.dumps(chat_line("x", url="/v1/moderations")),
        "x",
        "unsupported url '/v1/moderations'",
        id="unknown-url",
    ),
    pytest.param(
        orjson.dumps({k: v for k, v in chat_line("x").items() if k != "body"}),
        "x",
        "missing body",
        id="no-body",
    ),
    pytest.param(
        orjson.dumps(chat_line("x", body=[1])),
        "x",
        "body must be a JSON object, got an array",
        id="body-array",
    ),
    pytest.param(
        orjson.dumps(chat_line("x", url="/v1/audio/transcriptions", body={"model": "whisper-1"})),
        "x",
        "body.file must be a path",
        id="transcription-no-file",
    ),
    pytest.param(
        orjson.dumps(
            chat_line("x", url="/v1/audio/transcriptions", body={"model": "w", "file": 3})
        ),
        "x",
        "body.file must be a path",
        id="transcription-file-not-string",
    ),
    pytest.param(b'{"custom_id": "\xff\xfe"}', None, "not valid UTF-8 (byte 16)", id="bad-utf8"),
]


@pytest.mark.parametrize(("raw", "custom_id", "problem"), BAD_LINES)
def test_bad_line_becomes_error_naming_its_line(tmp_path, raw, custom_id, problem):
    """Each kind of bad line yields an error line starting "line N:" and naming the problem."""
    path = write_lines(tmp_path / "in.jsonl", chat_line("ok-1"), raw, chat_line("ok-3"))
    lines = list(read_batch_input(path))
    assert [line.error is None for line in lines] == [True, False, True]
    bad = lines[1]
    assert bad.error.startswith("line 2: ")
    assert problem in bad.error
    assert (bad.line_no, bad.custom_id, bad.url, bad.body) == (2, custom_id, None, None)


def test_bad_line_without_id_gets_stand_in_output_id(tmp_path):
    """A line with no usable id is written under ``__bad_line_<n>``; a good line under its id."""
    path = write_lines(tmp_path / "in.jsonl", chat_line("a"), "{oops")
    assert [line.output_id for line in read_batch_input(path)] == ["a", "__bad_line_2"]


def test_line_over_the_cap_is_an_error_and_reading_goes_on(tmp_path):
    """A line beyond MAX_LINE_BYTES (10 MiB) is an error line; the next line still reads."""
    huge = orjson.dumps(chat_line("huge", body={"pad": "x" * (_jsonl.MAX_LINE_BYTES + 10)}))
    path = write_lines(tmp_path / "in.jsonl", chat_line("a"), huge, chat_line("b"))
    lines = list(read_batch_input(path))
    assert [(line.line_no, line.custom_id) for line in lines] == [(1, "a"), (2, None), (3, "b")]
    assert lines[1].error == f"line 2: longer than {_jsonl.MAX_LINE_BYTES} bytes"


def test_line_exactly_at_the_cap_is_accepted(tmp_path, monkeypatch):
    """The cap counts the line without its newline: a line of exactly the cap is fine."""
    line = orjson.dumps(chat_line("a"))
    monkeypatch.setattr(_jsonl, "MAX_LINE_BYTES", len(line))
    path = write_lines(tmp_path / "in.jsonl", line, orjson.dumps(chat_line("bb")))
    assert [line.error is None for line in read_batch_input(path)] == [True, False]


# --------------------------------------------------------------------------- duplicates


def test_find_duplicate_ids_reports_each_line(tmp_path):
    """Ids on more than one line are reported with all their line numbers, bad lines included."""
    path = write_lines(
        tmp_path / "in.jsonl",
        chat_line("a"),
        chat_line("b"),
        chat_line("a"),
        chat_line("c"),
        chat_line("b", url="/nope"),
        chat_line("a"),
    )
    assert find_duplicate_ids(path) == {"a": [1, 3, 6], "b": [2, 5]}


def test_find_duplicate_ids_is_empty_when_ids_are_unique(tmp_path):
    """Unique ids, and lines without ids, give no duplicates."""
    path = write_lines(tmp_path / "in.jsonl", chat_line("a"), "{bad", "{bad", chat_line("b"))
    assert find_duplicate_ids(path) == {}


# --------------------------------------------------------------------------- output records

# OpenAI's BatchRequestOutput ("the per-line object of the batch output and error
# files"), transcribed from its OpenAPI description; the copy in ../shared lacks it.
BATCH_REQUEST_OUTPUT = {
    "type": "object",
    "required": ["id", "custom_id", "response", "error"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "custom_id": {"type": "string"},
        "response": {
            "type": ["object", "null"],
            "required": ["status_code", "request_id", "body"],
            "properties": {
                "status_code": {"type": "integer"},
                "request_id": {"type": ["string", "null"]},
                "body": {"type": "object"},
            },
        },
        "error": {
            "type": ["object", "null"],
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


def test_success_record_has_batch_output_shape():
    """A success line validates as BatchRequestOutput with error null."""
    record = success_record("r1", status_code=200, request_id="req_1", body={"choices": []})
    jsonschema.validate(record, BATCH_REQUEST_OUTPUT)
    assert record["id"].startswith("batch_req_")
    assert record["response"] == {
        "status_code": 200,
        "request_id": "req_1",
        "body": {"choices": []},
    }
    assert record["error"] is None


def test_error_record_without_status_has_null_response():
    """A failure with no HTTP answer has response null and error {code, message}."""
    record = error_record("r1", code="invalid_input", message="line 3: missing body")
    jsonschema.validate(record, BATCH_REQUEST_OUTPUT)
    assert record["response"] is None
    assert record["error"] == {"code": "invalid_input", "message": "line 3: missing body"}


def test_error_record_with_status_keeps_the_server_answer():
    """A failure the server decided carries its status, request id and body."""
    body = {"error": {"message": "bad", "type": "invalid_request_error"}}
    record = error_record(
        "r1", code="invalid_request", message="bad", status_code=400, request_id="req_9", body=body
    )
    jsonschema.validate(record, BATCH_REQUEST_OUTPUT)
    assert record["response"] == {"status_code": 400, "request_id": "req_9", "body": body}


def test_error_record_with_status_but_no_body_gets_openai_error_body():
    """Without a server body, the response body takes OpenAI's error shape."""
    record = error_record("r1", code="server_error", message="boom", status_code=500)
    jsonschema.validate(record, BATCH_REQUEST_OUTPUT)
    assert record["response"]["body"] == {"error": {"code": "server_error", "message": "boom"}}


def test_record_ids_are_unique():
    """Every record gets a fresh ``batch_req_`` id."""
    ids = {success_record("r", status_code=200, request_id=None, body={})["id"] for _ in range(100)}
    assert len(ids) == 100


# --------------------------------------------------------------------------- output writer


@pytest.mark.parametrize(
    ("umask", "expected_mode"), [(0o022, 0o644), (0o077, 0o600), (0o000, 0o664), (0o002, 0o664)]
)
def test_new_output_follows_umask_and_is_never_world_writable(tmp_path, umask, expected_mode):
    """A new OUTPUT gets 0o664 narrowed by the umask, so never the world-write bit."""
    old = os.umask(umask)
    try:
        OutputWriter(tmp_path / "out.jsonl").close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.jsonl").stat().st_mode) == expected_mode


def test_existing_output_mode_is_left_alone(tmp_path):
    """Opening an existing OUTPUT does not change its permissions."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    path.chmod(0o640)
    OutputWriter(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_each_write_appends_one_line_visible_at_once(tmp_path):
    """A written record is in the file as one JSON line before close (no user-space buffer)."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        writer.write(success_record("a", status_code=200, request_id=None, body={"n": 1}))
        assert output_lines(path)[0]["custom_id"] == "a"
        writer.write(error_record("b", code="x", message="y"))
        assert [line["custom_id"] for line in output_lines(path)] == ["a", "b"]
    assert path.read_bytes().count(b"\n") == 2


def test_second_write_of_a_done_id_raises(tmp_path):
    """One line per custom_id: writing a done id again raises ValueError and writes nothing."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        writer.write(success_record("a", status_code=200, request_id=None, body={}))
        with pytest.raises(ValueError, match="already has an output line"):
            writer.write(error_record("a", code="x", message="y"))
    assert len(output_lines(path)) == 1


def test_record_without_string_custom_id_raises(tmp_path):
    """A record whose custom_id is missing or not a string is refused."""
    with OutputWriter(tmp_path / "out.jsonl") as writer, pytest.raises(ValueError):
        writer.write({"id": "x", "custom_id": 5})


def test_reopen_loads_done_ids_for_resume(tmp_path):
    """Ids written before are in done_ids after reopening, and stay one line each."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        for custom_id in ("a", "b"):
            writer.write(success_record(custom_id, status_code=200, request_id=None, body={}))
    with OutputWriter(path) as writer:
        assert set(writer.done_ids) == {"a", "b"}
        with pytest.raises(ValueError):
            writer.write(success_record("a", status_code=200, request_id=None, body={}))
        writer.write(success_record("c", status_code=200, request_id=None, body={}))
        assert writer.repair.lines == 2
    assert [line["custom_id"] for line in output_lines(path)] == ["a", "b", "c"]


def test_torn_last_line_is_truncated_on_open(tmp_path):
    """A final partial line is cut away and its size reported."""
    path = tmp_path / "out.jsonl"
    good = orjson.dumps(success_record("a", status_code=200, request_id=None, body={})) + b"\n"
    torn = orjson.dumps(success_record("b", status_code=200, request_id=None, body={}))[:-7]
    path.write_bytes(good + torn)
    with OutputWriter(path) as writer:
        assert writer.repair.dropped_bytes == len(torn)
        assert not writer.repair.newline_added
        assert set(writer.done_ids) == {"a"}
    assert path.read_bytes() == good


def test_complete_last_line_without_newline_is_kept(tmp_path):
    """A final complete JSON object lacking its newline is kept and the newline added."""
    path = tmp_path / "out.jsonl"
    line = orjson.dumps(success_record("a", status_code=200, request_id=None, body={}))
    path.write_bytes(line)
    with OutputWriter(path) as writer:
        assert (writer.repair.dropped_bytes, writer.repair.newline_added) == (0, True)
        assert set(writer.done_ids) == {"a"}
        writer.write(success_record("b", status_code=200, request_id=None, body={}))
    assert [line["custom_id"] for line in output_lines(path)] == ["a", "b"]


def test_torn_tail_longer_than_a_scan_chunk_is_truncated(tmp_path):
    """The backwards scan for the last newline crosses chunk boundaries."""
    path = tmp_path / "out.jsonl"
    good = orjson.dumps(success_record("a", status_code=200, request_id=None, body={})) + b"\n"
    torn = b'{"custom_id": "b", "pad": "' + b"x" * (3 * _jsonl._CHUNK)
    path.write_bytes(good + torn)
    with OutputWriter(path) as writer:
        assert writer.repair.dropped_bytes == len(torn)
    assert path.read_bytes() == good


def test_file_that_is_all_torn_line_is_emptied(tmp_path):
    """A file holding only a partial first line is truncated to empty."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "batch_req_1", "cust')
    with OutputWriter(path) as writer:
        assert writer.repair.dropped_bytes == 27
        assert len(writer.done_ids) == 0
    assert path.read_bytes() == b""


def test_unreadable_middle_lines_are_counted_and_kept(tmp_path):
    """Complete lines that are not records are counted, left in place, and name no id."""
    path = tmp_path / "out.jsonl"
    good = orjson.dumps(success_record("a", status_code=200, request_id=None, body={}))
    path.write_bytes(b"\0\0\0\n" + good + b'\n{"no_id": 1}\n')
    with OutputWriter(path) as writer:
        assert (writer.repair.unreadable_lines, writer.repair.lines) == (2, 3)
        assert set(writer.done_ids) == {"a"}
    assert path.read_bytes().startswith(b"\0\0\0\n")


def test_duplicate_lines_already_in_output_are_counted(tmp_path):
    """An OUTPUT edited to hold an id twice is reported, and the id is done."""
    path = tmp_path / "out.jsonl"
    line = orjson.dumps(success_record("a", status_code=200, request_id=None, body={}))
    path.write_bytes(line + b"\n" + line + b"\n")
    with OutputWriter(path) as writer:
        assert writer.repair.duplicate_lines == 1
        assert set(writer.done_ids) == {"a"}


def test_write_after_close_raises(tmp_path):
    """A closed writer refuses writes; closing twice is fine."""
    writer = OutputWriter(tmp_path / "out.jsonl")
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(success_record("a", status_code=200, request_id=None, body={}))


def test_second_writer_on_same_output_is_refused(tmp_path):
    """Two runs on one OUTPUT would break exactly-once: the second open is refused."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path):
        with pytest.raises(OutputInUseError):
            OutputWriter(path)
    OutputWriter(path).close()


def test_failed_write_is_cut_back_before_the_error_goes_up(tmp_path, monkeypatch):
    """A write that fails half way (disk full) leaves no partial line and marks nothing done."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        writer.write(success_record("a", status_code=200, request_id=None, body={}))
        size = path.stat().st_size
        real_write = os.write
        calls = []

        def half_then_full(fd, data):
            calls.append(len(data))
            if len(calls) == 1:
                return real_write(fd, data[: len(data) // 2])
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(_jsonl.os, "write", half_then_full)
        with pytest.raises(OSError, match="No space"):
            writer.write(success_record("b", status_code=200, request_id=None, body={}))
        monkeypatch.setattr(_jsonl.os, "write", real_write)
        assert path.stat().st_size == size
        assert "b" not in writer.done_ids
        writer.write(success_record("b", status_code=200, request_id=None, body={}))
    assert [line["custom_id"] for line in output_lines(path)] == ["a", "b"]


@pytest.mark.parametrize(("fsync_each_line", "expected_fsyncs"), [(False, 1), (True, 4)])
def test_fsync_each_line_is_optional(tmp_path, monkeypatch, fsync_each_line, expected_fsyncs):
    """By default only close fsyncs; fsync_each_line adds one per written line."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(_jsonl.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    with OutputWriter(path, fsync_each_line=fsync_each_line) as writer:
        for custom_id in "abc":
            writer.write(success_record(custom_id, status_code=200, request_id=None, body={}))
    assert len(fsyncs) == expected_fsyncs


def test_new_output_directory_is_fsynced_at_close(tmp_path, monkeypatch):
    """Closing a newly created OUTPUT fsyncs its directory so the file survives power loss."""
    synced_kinds = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced_kinds.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(_jsonl.os, "fsync", recording_fsync)
    OutputWriter(tmp_path / "out.jsonl").close()
    assert synced_kinds == ["file", "dir"]


def test_errors_file_must_differ_from_output(tmp_path):
    """Naming the output as its own errors file is refused up front."""
    with pytest.raises(ValueError, match="must not be the output"):
        OutputWriter(tmp_path / "out.jsonl", errors_path=tmp_path / "." / "out.jsonl")


def test_failed_records_are_also_copied_to_errors_file(tmp_path):
    """With errors_path, failed lines go to OUTPUT and to the errors file; successes only OUTPUT."""
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    with OutputWriter(out, errors_path=errors) as writer:
        writer.write(success_record("a", status_code=200, request_id=None, body={}))
        writer.write(error_record("b", code="invalid_input", message="line 2: missing body"))
    assert [line["custom_id"] for line in output_lines(out)] == ["a", "b"]
    assert output_lines(errors) == output_lines(out)[1:]
    with OutputWriter(out, errors_path=errors) as writer:
        assert set(writer.done_ids) == {"a", "b"}
        assert writer.copied_to_errors == 0


def test_error_copy_cut_by_a_crash_is_completed_on_open(tmp_path):
    """A failed line in OUTPUT but missing from the errors file (crash between writes) is copied."""
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    failed = orjson.dumps(error_record("b", code="x", message="y"))
    out.write_bytes(
        orjson.dumps(success_record("a", status_code=200, request_id=None, body={}))
        + b"\n"
        + failed
        + b"\n"
    )
    errors.write_bytes(failed[:10])  # torn copy
    with OutputWriter(out, errors_path=errors) as writer:
        assert writer.errors_repair.dropped_bytes == 10
        assert writer.copied_to_errors == 1
    assert errors.read_bytes() == failed + b"\n"
    with OutputWriter(out, errors_path=errors) as writer:
        assert writer.copied_to_errors == 0


# --------------------------------------------------------------------------- crash safety

CRASH_CHILD = textwrap.dedent(
    """
    import random, sys
    from engine.app._jsonl import OutputWriter, success_record
    path, total = sys.argv[1], int(sys.argv[2])
    rng = random.Random()
    with OutputWriter(path) as writer:
        print("ready", flush=True)
        for i in range(total):
            custom_id = f"item-{i:05d}"
            if custom_id in writer.done_ids:
                continue
            # Mostly small lines, now and then a multi-megabyte one: a SIGKILL
            # landing inside a large write() can cut it short (a torn last line).
            pad = 3_000_000 if rng.random() < 0.01 else rng.randrange(0, 2_000)
            writer.write(success_record(custom_id, status_code=200, request_id=None,
                                        body={"pad": "x" * pad}))
    """
)


def check_output_intact(path: Path) -> list[str]:
    """Reopen (repairing), then assert every line parses and ids are unique; return the ids."""
    OutputWriter(path).close()
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    ids = [orjson.loads(line)["custom_id"] for line in data.splitlines()]
    assert len(ids) == len(set(ids))
    return ids


def test_sigkill_at_random_moments_never_breaks_output(tmp_path):
    """A writer SIGKILLed at random moments leaves whole lines and unique ids, then resumes."""
    path = tmp_path / "out.jsonl"
    total = 1500
    expected = [f"item-{i:05d}" for i in range(total)]
    rng = random.Random(5)
    command = [sys.executable, "-c", CRASH_CHILD, str(path), str(total)]
    for _ in range(6):
        child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline() == b"ready\n"
            try:
                child.wait(timeout=rng.uniform(0.0, 0.12))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
            child.wait()
        finally:
            child.stdout.close()
        ids = check_output_intact(path)
        # The child writes in order, skipping done ids: what survives is a prefix.
        assert ids == expected[: len(ids)]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    assert check_output_intact(path) == expected


# --------------------------------------------------------------------------- properties

VALID_OUTPUT = b"".join(
    orjson.dumps(success_record(custom_id, status_code=200, request_id=None, body={})) + b"\n"
    for custom_id in ("a", "b", "c")
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail=st.binary(min_size=1, max_size=300).filter(lambda data: b"\n" not in data))
def test_any_torn_tail_is_repaired_on_reopen(tail):
    """Any newline-free bytes after the last line are dropped, or kept if a whole JSON object."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "out.jsonl"
        path.write_bytes(VALID_OUTPUT + tail)
        with OutputWriter(path) as writer:
            assert {"a", "b", "c"} <= set(writer.done_ids)
            repair = writer.repair
        data = path.read_bytes()
        if repair.newline_added:
            assert data == VALID_OUTPUT + tail + b"\n"
            assert isinstance(orjson.loads(tail), dict)
        else:
            assert data == VALID_OUTPUT
            assert repair.dropped_bytes == len(tail)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(max_size=300))
def test_any_bytes_after_valid_lines_never_break_reopen_or_writing(garbage):
    """Whatever follows the valid lines, reopen works and a new line reads back whole."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "out.jsonl"
        path.write_bytes(VALID_OUTPUT + garbage)
        with OutputWriter(path) as writer:
            assert {"a", "b", "c"} <= set(writer.done_ids)
            new_id = "new"
            while new_id in writer.done_ids:
                new_id += "!"
            writer.write(success_record(new_id, status_code=200, request_id=None, body={}))
        data = path.read_bytes()
        assert data.startswith(VALID_OUTPUT)
        assert orjson.loads(data.splitlines()[-1])["custom_id"] == new_id


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.lists(
            st.sampled_from(
                [
                    orjson.dumps(chat_line("a")),
                    b"\r",
                    b"\n",
                    b"\xef\xbb\xbf",
                    b"{",
                    b'"custom_id"',
                    b"\xff",
                    b"[]",
                    b"null",
                    b'{"custom_id": 1}',
                ]
            ),
            max_size=20,
        ).map(b"".join),
    )
)
def test_any_bytes_never_make_the_reader_raise(data):
    """Arbitrary file contents yield InputLines (errors naming their line), never an exception."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "in.jsonl"
        path.write_bytes(data)
        lines = list(read_batch_input(path))
        find_duplicate_ids(path)
    physical = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
    for line in lines:
        assert 1 <= line.line_no <= physical
        if line.error is not None:
            assert line.error.startswith(f"line {line.line_no}: ")
        else:
            assert isinstance(line.custom_id, str) and line.custom_id
            assert line.url in ("/v1/chat/completions", "/v1/audio/transcriptions")
            assert isinstance(line.body, dict)


# --------------------------------------------------------------------------- memory


def test_reader_memory_stays_flat_over_200k_lines(tmp_path):
    """Streaming 200k lines allocates at peak a tiny fraction of the file, not the file."""
    path = tmp_path / "in.jsonl"
    template = orjson.dumps(chat_line("ID")).replace(b'"ID"', b'"%d"')
    with open(path, "wb") as file:
        for start in range(0, 200_000, 10_000):
            file.write(b"".join(template % i + b"\n" for i in range(start, start + 10_000)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_batch_input(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert size > 20_000_000
    assert peak < 512 * 1024
