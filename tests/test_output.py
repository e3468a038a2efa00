"""engine.app._output: answers held while OUTPUT cannot be written, the sidecar, and the wording."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
from pathlib import Path

import orjson
import pytest
from io_faults import WriteFaults
from run_summaries import make_summary

import engine
from engine.app import _output
from engine.app._jsonl import OutputWriter, error_record, success_record
from engine.app._output import (
    HeldOutput,
    WriteFailure,
    describe_os_error,
    failure_paragraph,
    format_bytes,
    retry_delay,
    waiting_line,
)
from engine.app._progress import ProgressPrinter, RunProgress, format_progress_line
from engine.app._summary import format_summary


def ok(custom_id: str) -> dict:
    return success_record(custom_id, status_code=200, request_id=None, body={"x": custom_id})


def ids_in(path: Path) -> list[str]:
    return [orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines()]


@pytest.fixture
def faulty(monkeypatch):
    """Install a WriteFaults over os.write: ``faulty(path, errno, after_bytes=0)``."""

    def install(path: Path, error: int, **options) -> WriteFaults:
        faults = WriteFaults(path, error, **options)
        monkeypatch.setattr(os, "write", faults.write)
        return faults

    return install


def open_held(path: Path, **options) -> HeldOutput:
    return HeldOutput(OutputWriter(path, remember_written=False), **options)


# --------------------------------------------------------------------------- holding and flushing


def test_lines_are_held_in_order_after_a_failed_write_and_written_once_it_heals(tmp_path, faulty):
    """The failed line and every later one wait in memory, then go to OUTPUT in order."""
    path = tmp_path / "out.jsonl"
    output = open_held(path)
    assert output.write(ok("a"))
    faults = faulty(path, errno.ENOSPC, after_bytes=10)
    assert not output.write(ok("b"))  # cut short after 10 bytes, then refused
    assert not output.write(ok("c"))
    assert output.holding and output.held == 2 and output.failure.errno == errno.ENOSPC
    assert ids_in(path) == ["a"]  # the partial line was cut back
    assert not output.flush()
    faults.heal()
    assert output.flush() and not output.holding and output.held == 0
    assert output.write(ok("d"))
    output.close()
    assert ids_in(path) == ["a", "b", "c", "d"]


def test_a_failed_errors_copy_is_retried_without_writing_output_twice(tmp_path, faulty):
    """A line already in OUTPUT whose errors-file copy failed is only copied when retried."""
    path, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    output = HeldOutput(OutputWriter(path, errors_path=errors, remember_written=False))
    faults = faulty(errors, errno.EIO)
    assert not output.write(error_record("bad", code="invalid_input", message="m"))
    assert output.failure.path == str(errors) and output.failure.errno == errno.EIO
    faults.heal()
    assert output.flush()
    output.close()
    assert ids_in(path) == ["bad"] and ids_in(errors) == ["bad"]


def test_a_partial_line_that_could_not_be_cut_back_is_cut_before_the_next_write(
    tmp_path, faulty, monkeypatch
):
    """If truncating after a failed write fails too, the next write cuts the torn tail first."""
    path = tmp_path / "out.jsonl"
    output = open_held(path)
    output.write(ok("a"))
    faults = faulty(path, errno.EIO, after_bytes=7)
    real_ftruncate = os.ftruncate
    failing = [True]

    def ftruncate(fd, size):
        if failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        return real_ftruncate(fd, size)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    assert not output.write(ok("b"))
    assert path.stat().st_size > len(path.read_bytes().split(b"\n")[0]) + 1  # torn tail left
    failing[0] = False
    faults.heal()
    assert output.flush()
    output.close()
    assert ids_in(path) == ["a", "b"]


# --------------------------------------------------------------------------- deleted output


def test_a_deleted_output_is_put_back_with_every_line_written_so_far(tmp_path):
    """rm -r of OUTPUT's directory: the file is recreated from the open one and writing goes on."""
    folder = tmp_path / "results"
    folder.mkdir()
    path = folder / "out.jsonl"
    output = open_held(path)
    output.write(ok("a"))
    shutil.rmtree(folder)
    output.write(ok("b"))  # goes to the deleted file: nothing fails
    assert output.check_removed() == [str(path)]
    output.write(ok("c"))
    output.close()
    assert ids_in(path) == ["a", "b", "c"]


def test_a_deleted_output_whose_name_was_taken_holds_until_the_name_is_free(tmp_path):
    """Another file at OUTPUT's name: the run holds (never overwrites it) and retries."""
    path = tmp_path / "out.jsonl"
    output = open_held(path)
    output.write(ok("a"))
    path.unlink()
    path.write_bytes(b"someone else's file\n")
    assert output.check_removed() == []
    assert output.holding and output.failure.removed
    assert output.failure.errno == errno.EEXIST
    assert not output.write(ok("b"))
    assert not output.flush()
    path.unlink()
    assert output.flush()
    output.close()
    assert ids_in(path) == ["a", "b"]


# --------------------------------------------------------------------------- the sidecar


def test_held_answers_go_to_the_sidecar_and_the_next_run_writes_them(tmp_path, faulty):
    """save() appends the held lines next to OUTPUT; the next open writes them and deletes it."""
    path = tmp_path / "out.jsonl"
    output = open_held(path)
    output.write(ok("a"))
    faults = faulty(path, errno.ENOSPC)
    output.write(ok("b"))
    output.write(ok("c"))
    saved = output.save()
    output.close()
    assert (saved.kept, saved.lost) == (2, 0)
    assert ids_in(Path(saved.path)) == ["b", "c"] and saved.path == f"{path}.held"
    faults.heal()
    again = open_held(path)
    assert again.absorb_sidecar() == 2
    assert {"a", "b", "c"} <= set(again.done_ids)
    again.close()
    assert ids_in(path) == ["a", "b", "c"]
    assert not Path(saved.path).exists()


def test_sidecar_lines_already_in_output_or_torn_are_skipped(tmp_path):
    """A sidecar line whose id OUTPUT has, or a torn last line, is not written again."""
    path = tmp_path / "out.jsonl"
    with OutputWriter(path) as writer:
        writer.write(ok("a"))
    sidecar = Path(f"{path}.held")
    sidecar.write_bytes(orjson.dumps(ok("a")) + b"\n" + orjson.dumps(ok("b")) + b'\n{"cust')
    output = open_held(path)
    assert output.absorb_sidecar() == 1
    output.close()
    assert ids_in(path) == ["a", "b"] and not sidecar.exists()


def test_a_sidecar_output_cannot_take_yet_is_held_and_kept_until_written(tmp_path, faulty):
    """No space yet at the resume: the sidecar's lines are held and the sidecar kept."""
    path = tmp_path / "out.jsonl"
    sidecar = Path(f"{path}.held")
    sidecar.write_bytes(orjson.dumps(ok("a")) + b"\n" + orjson.dumps(ok("b")) + b"\n")
    faults = faulty(path, errno.ENOSPC)
    output = open_held(path)
    assert output.absorb_sidecar() == 2 and output.holding and output.held == 2
    saved = output.save()  # stopped again before space came back
    assert (saved.kept, saved.lost) == (2, 0) and ids_in(sidecar) == ["a", "b"]
    faults.heal()
    assert output.flush()
    output.close()
    assert ids_in(path) == ["a", "b"] and not sidecar.exists()


def test_the_reserve_makes_room_for_the_sidecar_on_a_full_disk(tmp_path, monkeypatch, faulty):
    """When the sidecar finds no room, the reserve is deleted and the save tried again."""
    path = tmp_path / "out.jsonl"
    output = open_held(path)
    reserve = tmp_path / ".out.jsonl.reserve"
    assert reserve.exists() and reserve.stat().st_blocks * 512 >= _output.MIN_RESERVE_BYTES
    faulty(path, errno.ENOSPC)
    output.write(ok("a"))
    sidecar_faults = WriteFaults(f"{path}.held", errno.ENOSPC)
    write_to_output = os.write

    def full_until_the_reserve_goes(fd, data):
        if reserve.exists():
            return sidecar_faults.write(fd, data)
        return write_to_output(fd, data)

    monkeypatch.setattr(os, "write", full_until_the_reserve_goes)
    saved = output.save()
    assert (saved.kept, saved.lost) == (1, 0) and not reserve.exists()
    output.close()


def test_no_reserve_is_kept_on_an_almost_full_disk(tmp_path, monkeypatch):
    """Less free space than four times the smallest reserve: no reserve file at all."""
    real = os.statvfs(tmp_path)

    class Tiny:
        f_bavail = 10
        f_frsize = real.f_frsize

    monkeypatch.setattr(os, "statvfs", lambda _path: Tiny)
    output = open_held(tmp_path / "out.jsonl")
    assert not (tmp_path / ".out.jsonl.reserve").exists()
    output.close()


def test_closing_deletes_the_reserve(tmp_path):
    """The reserve lives only while a run writes OUTPUT."""
    output = open_held(tmp_path / "out.jsonl")
    output.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


# --------------------------------------------------------------------------- wording (pure)


def test_retry_delay_doubles_from_half_a_second_up_to_five():
    """0.5, 1, 2, 4, then 5 s for ever."""
    assert [retry_delay(attempt) for attempt in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert retry_delay(10_000) == 5.0


@pytest.mark.parametrize(
    ("count", "shown"),
    [(0, "0 B"), (812, "812 B"), (34_500, "34.5 kB"), (1_234_567, "1.2 MB"), (3.4e9, "3.4 GB")],
)
def test_format_bytes(count, shown):
    """Sizes read in decimal units with one decimal."""
    assert format_bytes(count) == shown


def test_waiting_line_speaks_of_space_on_a_full_disk_and_of_the_error_otherwise():
    """ENOSPC: 'waiting for space ... needed'; EIO: the error and 'retrying'."""
    full = WriteFailure("/d/out.jsonl", errno.ENOSPC, "no space left on device")
    assert (
        waiting_line(full, held=231, needed=1_200_000)
        == "waiting for space on /d/out.jsonl: 1.2 MB needed; 231 answers held"
    )
    eio = WriteFailure("/d/out.jsonl", errno.EIO, "input/output error")
    assert (
        waiting_line(eio, held=1, needed=10)
        == "cannot write /d/out.jsonl (input/output error): retrying; 1 answer held"
    )


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (errno.ENOSPC, "Free some space on the file system of /d"),
        (errno.EDQUOT, "disk quota"),
        (errno.EIO, "input/output error: check it"),
        (errno.EACCES, "write permission"),
        (errno.EROFS, "remount it read-write"),
    ],
)
def test_failure_paragraph_names_the_file_what_happens_and_what_to_do(code, action):
    """One paragraph: the file and the error, sending stopped, the action, and Ctrl-C's effect."""
    failure = WriteFailure("/d/out.jsonl", code, os.strerror(code).lower())
    text = failure_paragraph(failure, held=3, needed=2048, sidecar="/d/out.jsonl.held")
    assert text.startswith(f"/d/out.jsonl cannot be written: {os.strerror(code).lower()}.")
    assert "No new requests are sent" in text and action in text
    assert "/d/out.jsonl.held" in text and "\n" not in text


def test_a_deleted_output_that_cannot_come_back_says_which_directory_to_restore():
    """A file where its directory was: the paragraph names it and asks for the directory."""
    failure = WriteFailure(
        "/d/sub/out.jsonl", errno.EEXIST, "file exists", removed=True, where="/d/sub"
    )
    text = failure_paragraph(failure, held=0, needed=0, sidecar="/d/sub/out.jsonl.held")
    assert text.startswith(
        "/d/sub/out.jsonl was deleted, and putting it back failed (/d/sub: file exists)."
    )
    assert "Make /d/sub a writable directory again" in text


def test_describe_os_error_names_a_directory_given_as_a_file():
    """IsADirectoryError reads 'is a directory, not a file'."""
    exc = IsADirectoryError(errno.EISDIR, "Is a directory", "/d/out")
    assert (
        describe_os_error(exc, role="OUTPUT", path="/d/out", action="Nothing was sent.")
        == "OUTPUT /d/out is a directory, not a file. Nothing was sent."
    )


# --------------------------------------------------------------------------- progress and summary


def test_progress_line_says_the_run_waits_for_output():
    """While answers are held the progress line ends with the waiting words."""
    progress = RunProgress(
        elapsed=5,
        total=10,
        done=4,
        failed=0,
        in_flight=0,
        stopping=True,
        output_waiting="waiting for space on o: 1 kB needed; 2 answers held",
    )
    line = format_progress_line(progress, bar=False)
    assert line.endswith("waiting for space on o: 1 kB needed; 2 answers held")
    assert "stopping" not in line


def test_plain_printer_prints_a_line_as_soon_as_the_run_waits_for_output():
    """Off a terminal the first waiting snapshot gets its line at once, not at the interval."""
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=False, plain_interval=10.0)
    for tenth in range(30):
        waiting = "waiting for space on o: 1 kB needed; 2 answers held" if tenth >= 12 else None
        printer.update(
            RunProgress(
                elapsed=tenth / 10, total=9, done=1, failed=0, in_flight=0, output_waiting=waiting
            )
        )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].endswith("2 answers held")


def test_printer_notice_ends_the_live_line_and_prints_a_paragraph():
    """A notice starts on a fresh line, prefixed 'engine: '."""
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True)
    printer.update(RunProgress(elapsed=1, total=3, done=1, failed=0, in_flight=1))
    printer.notice("out.jsonl cannot be written: boom.")
    assert stream.getvalue().endswith("\x1b[K\nengine: out.jsonl cannot be written: boom.\n")


def test_summary_shows_held_answers_and_those_lost():
    """The table says how many answers wait in the sidecar and how many will be sent again."""
    text = format_summary(
        make_summary(
            succeeded=7,
            not_run=3,
            held_saved=4,
            held_lost=1,
            sidecar_path="out.jsonl.held",
            io_error="...",
            stopped="out.jsonl: no space left on device",
        )
    )
    assert "held in out.jsonl.held" in text and "  4 (the next run writes them)" in text
    assert "answered but lost" in text and "1 (could not be saved)" in text


def test_an_io_error_gives_exit_status_4_whatever_else_happened():
    """io_error wins over a fatal error and over the signal that ended the wait."""
    assert make_summary(io_error="x").exit_status == 4
    assert make_summary(io_error="x", stopped="interrupted", not_run=2).exit_status == 4
    assert make_summary(io_error="x", fatal_code="invalid_api_key").exit_status == 4


def test_output_error_keeps_its_counts_through_pickling():
    """OutputError is an EngineError whose counts survive pickling (process pools)."""
    error = engine.OutputError("m", path="/d/o", errno=errno.EIO, kept=3, lost=1, not_run=9)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, engine.EngineError) and copy.code == "output_error"
    assert (copy.path, copy.errno, copy.kept, copy.lost, copy.not_run) == ("/d/o", 5, 3, 1, 9)
