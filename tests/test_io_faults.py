"""Batch runs against I/O faults: a full disk, EIO, OUTPUT's directory removed, input lost.

In-process (``engine.app.batch.run_file`` against the in-process mock, trio's
autojump clock) for the behaviour, then ``engine run`` as a subprocess against
the served mock, as a user would: a real full tmpfs when this runs as root
and can mount one (else writes made to fail with ENOSPC), a real SIGINT.

What every test checks with the mock's sends per id: no request is sent
after the first failed write (bar those already granted a permit then), and
no id is ever sent twice, across the wait, a stop and a resume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from io_faults import WriteFaults, subprocess_env

import engine
from engine.app import batch
from engine.app._jsonl import success_record
from engine.app._progress import RunProgress
from engine.mock import MockConfig, create_app, serve_in_subprocess

MODEL = "gpt-4o-mini"
KEY = "sk-io-faults-test-0123456789"
REPO = str(Path(engine.__file__).resolve().parents[1])
#: Bytes OUTPUT takes before the injected fault: ~40 answer lines.
FAULT_AFTER = 20_000


def chat_line(custom_id: str) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"q {custom_id}"}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, count: int) -> Path:
    path.write_bytes(b"".join(orjson.dumps(chat_line(f"r{i}")) + b"\n" for i in range(count)))
    return path


def exists(path: Path) -> bool:
    return path.exists()


def write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def ids_in(path: Path) -> list[str]:
    return [orjson.loads(line)["custom_id"] for line in path.read_bytes().splitlines()]


def options(app, **extra) -> dict:
    """Client options against the in-process ``app``: paced at 10 requests a second.

    With the default concurrency (up to 512 workers) every input line is
    soon held by a worker waiting for its permit, as in a real run with a
    quota: only the client refusing those permits keeps them from being sent.
    """
    return {
        "base_url": "http://127.0.0.1/v1",
        "api_key": KEY,
        "transport": httpx.ASGITransport(app),
        "retry_base_delay": 0.01,
        "limits": engine.Limits(rpm=600, burst=False),
        **extra,
    }


@pytest.fixture
def clients(monkeypatch) -> list:
    """The clients the runs of a test open, in order (to read their in-flight count)."""
    opened: list = []
    real_open_client = batch.open_client

    @contextlib.asynccontextmanager
    async def recording_open_client(**client_options):
        async with real_open_client(**client_options) as client:
            opened.append(client)
            yield client

    monkeypatch.setattr(batch, "open_client", recording_open_client)
    return opened


class Timeline:
    """A progress callback that acts at given run times after a trigger: ``at(seconds, action)``.

    ``start()`` marks the trigger (the first failed write, a deletion); each
    action runs once, at the first progress snapshot at least that many
    seconds later (run time, the autojump clock's).
    """

    def __init__(self) -> None:
        self.started_at: float | None = None
        self._actions: list[tuple[float, Callable[[], None]]] = []
        self.seen: list[RunProgress] = []
        self.before: Callable[[RunProgress], None] | None = None

    def start(self) -> None:
        if self.started_at is None:
            self.started_at = trio.current_time()

    def at(self, seconds: float, action: Callable[[], None]) -> None:
        self._actions.append((seconds, action))

    def __call__(self, progress: RunProgress) -> None:
        self.seen.append(progress)
        if self.before is not None:
            self.before(progress)
        if self.started_at is None:
            return
        due = [item for item in self._actions if trio.current_time() - self.started_at >= item[0]]
        for item in due:
            self._actions.remove(item)
            item[1]()


def sends(app) -> dict[str, int]:
    return dict(app.stats.client_request_ids)


def assert_each_id_written_and_sent_once(output: Path, app, count: int = 200) -> None:
    """Every id r0..r{count-1} has one line in ``output`` and reached ``app`` exactly once."""
    assert sorted(ids_in(output)) == sorted(f"r{i}" for i in range(count))
    assert set(app.stats.client_request_ids.values()) == {1}


# --------------------------------------------------------------------------- write failures


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
async def test_a_failed_write_stops_sending_at_once_and_the_run_finishes_when_output_heals(
    tmp_path, autojump_clock, monkeypatch, clients, code
):
    """No send after the first failed write (bar granted permits); healed, every id once."""
    app = create_app(MockConfig(latency_ms=300))
    source = write_input(tmp_path / "in.jsonl", 200)
    output = tmp_path / "out.jsonl"
    timeline = Timeline()
    snapshots: dict[str, dict[str, int]] = {}
    in_flight: list[int] = []

    def first_failure() -> None:
        snapshots["failure"] = sends(app)
        in_flight.append(clients[-1].statistics().limiter.in_flight)
        timeline.start()

    faults = WriteFaults(output, code, after_bytes=FAULT_AFTER, on_first_failure=first_failure)
    monkeypatch.setattr(os, "write", faults.write)
    timeline.at(5.0, lambda: snapshots.setdefault("settled", sends(app)))
    timeline.at(30.0, lambda: (snapshots.setdefault("healed", sends(app)), faults.heal()))
    notices: list[str] = []
    summary = await batch.run_file(
        source,
        output,
        client_options=options(app),
        progress=timeline,
        progress_interval=0.1,
        notify=notices.append,
    )
    # Permits granted before the failure may reach the mock just after it; nothing else.
    granted_then = set(snapshots["settled"]) - set(snapshots["failure"])
    assert len(granted_then) <= in_flight[0] <= 5
    assert snapshots["healed"] == snapshots["settled"]  # 25 s of waiting: nothing sent
    assert len(clients) == 2  # sending went on with a new client once OUTPUT healed
    assert summary.exit_status == batch.EXIT_OK and summary.succeeded == 200
    assert sorted(ids_in(output)) == sorted(f"r{i}" for i in range(200))
    assert len(app.stats.client_request_ids) == 200
    assert set(app.stats.client_request_ids.values()) == {1}
    assert notices[0].startswith(f"{output} cannot be written: {os.strerror(code).lower()}.")
    assert "takes lines again" in notices[1]
    waiting = [p.output_waiting for p in timeline.seen if p.output_waiting]
    expected = "waiting for space on" if code == errno.ENOSPC else "cannot write"
    assert waiting and all(text.startswith(f"{expected} {output}") for text in waiting)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
async def test_a_stop_during_the_wait_saves_held_answers_and_the_resume_sends_only_the_rest(
    tmp_path, autojump_clock, monkeypatch, code
):
    """Ctrl-C while waiting: OutputError with counts, answers in OUTPUT.held; resume: once each."""
    app = create_app(MockConfig(latency_ms=300))
    source = write_input(tmp_path / "in.jsonl", 200)
    output = tmp_path / "out.jsonl"
    control = batch.RunControl()
    timeline = Timeline()
    faults = WriteFaults(output, code, after_bytes=FAULT_AFTER, on_first_failure=timeline.start)
    monkeypatch.setattr(os, "write", faults.write)
    timeline.at(5.0, control.stop)
    with pytest.raises(engine.OutputError) as caught:
        await batch.run_file(
            source,
            output,
            client_options=options(app),
            control=control,
            progress=timeline,
            progress_interval=0.1,
        )
    error = caught.value
    sidecar = Path(f"{output}.held")
    assert error.kept > 0 and error.lost == 0 and error.sidecar == str(sidecar)
    assert len(ids_in(sidecar)) == error.kept and error.written == len(ids_in(output))
    assert error.written + error.kept + error.not_run == 200
    assert error.errno == code and error.path == str(output)
    assert error.summary.exit_status == batch.EXIT_IO_ERROR
    assert error.summary.held_saved == error.kept and error.summary.not_run == error.not_run
    assert f"{error.kept} answers it held are saved in {sidecar}:" in error.message
    assert not set(ids_in(sidecar)) & set(ids_in(output))
    assert not (tmp_path / ".out.jsonl.reserve").exists()

    faults.heal()
    resumed = await batch.run_file(source, output, client_options=options(app))
    assert resumed.exit_status == batch.EXIT_OK and resumed.succeeded == error.not_run
    assert sorted(ids_in(output)) == sorted(f"r{i}" for i in range(200))
    assert set(app.stats.client_request_ids.values()) == {1}  # no answer paid for twice
    assert not exists(sidecar)


async def test_except_output_error_catches_what_the_run_raises(
    tmp_path, autojump_clock, monkeypatch
):
    """The run raises one OutputError, never an exception group (single-exception contract)."""
    app = create_app(MockConfig(latency_ms=100))
    source = write_input(tmp_path / "in.jsonl", 60)
    output = tmp_path / "out.jsonl"
    control = batch.RunControl()
    monkeypatch.setattr(os, "write", WriteFaults(output, errno.EIO, after_bytes=2_000).write)

    def stop_once_holding(progress: RunProgress) -> None:
        if progress.output_waiting is not None:
            control.stop()

    caught: BaseException | None = None
    try:
        await batch.run_file(
            source,
            output,
            client_options=options(app),
            control=control,
            progress=stop_once_holding,
            progress_interval=0.1,
        )
    except engine.OutputError as exc:
        caught = exc
    assert type(caught) is engine.OutputError
    assert caught.__cause__ is None or not isinstance(caught.__cause__, BaseExceptionGroup)


async def test_any_other_failure_leaves_the_run_as_the_plain_exception(
    tmp_path, autojump_clock, monkeypatch
):
    """A bug met while reading the input leaves as itself, not in an exception group."""
    app = create_app(MockConfig(latency_ms=100))
    source = write_input(tmp_path / "in.jsonl", 40)
    real_read = batch.read_batch_input

    def broken_after_10_lines_on_the_event_loop(path):
        for number, line in enumerate(real_read(path)):
            if number == 10 and threading.current_thread() is threading.main_thread():
                raise LookupError("a bug")
            yield line

    monkeypatch.setattr(batch, "read_batch_input", broken_after_10_lines_on_the_event_loop)
    with pytest.raises(LookupError) as caught:
        await batch.run_file(source, tmp_path / "out.jsonl", client_options=options(app))
    assert type(caught.value) is LookupError and str(caught.value) == "a bug"


async def test_a_sidecar_the_disk_cannot_take_yet_makes_the_resume_wait_before_sending(
    tmp_path, autojump_clock, monkeypatch
):
    """Resuming while OUTPUT still fails: nothing is sent until the saved answers are written."""
    app = create_app(MockConfig())
    source = write_input(tmp_path / "in.jsonl", 20)
    output = tmp_path / "out.jsonl"
    saved = [
        orjson.dumps(success_record(f"r{i}", status_code=200, request_id=None, body={}))
        for i in range(5)
    ]
    write_bytes(Path(f"{output}.held"), b"\n".join(saved) + b"\n")
    faults = WriteFaults(output, errno.ENOSPC)
    monkeypatch.setattr(os, "write", faults.write)
    timeline = Timeline()
    timeline.before = lambda progress: timeline.start()
    seen_at_heal: list[int] = []
    timeline.at(10.0, lambda: (seen_at_heal.append(len(sends(app))), faults.heal()))
    summary = await batch.run_file(
        source, output, client_options=options(app), progress=timeline, progress_interval=0.1
    )
    assert seen_at_heal == [0]
    assert summary.exit_status == batch.EXIT_OK and summary.already_done == 5
    assert sorted(ids_in(output)) == sorted(f"r{i}" for i in range(20))
    assert set(sends(app)) == {f"r{i}" for i in range(5, 20)}


# --------------------------------------------------------------------------- OUTPUT deleted


async def test_an_output_deleted_with_its_directory_is_put_back_and_the_run_goes_on(
    tmp_path, autojump_clock
):
    """rm -r of OUTPUT's directory mid-run: the file comes back whole; every id once, sent once."""
    app = create_app(MockConfig(latency_ms=50))
    source = write_input(tmp_path / "in.jsonl", 200)
    folder = tmp_path / "results"
    folder.mkdir()
    output = folder / "out.jsonl"

    def remove_at_50(progress: RunProgress) -> None:
        if progress.done >= 50 and folder.exists() and not removed:
            shutil.rmtree(folder)
            removed.append(progress.done)

    removed: list[int] = []
    notices: list[str] = []
    summary = await batch.run_file(
        source,
        output,
        client_options=options(app),
        progress=remove_at_50,
        progress_interval=0.1,
        notify=notices.append,
    )
    assert removed and summary.exit_status == batch.EXIT_OK
    assert_each_id_written_and_sent_once(output, app)
    assert any(f"{output} was deleted while the run was writing it" in n for n in notices)


async def test_an_output_that_cannot_be_put_back_holds_and_finishes_once_it_can(
    tmp_path, autojump_clock
):
    """Its directory replaced by a file: no sends while it cannot come back; then all, once."""
    app = create_app(MockConfig(latency_ms=50))
    source = write_input(tmp_path / "in.jsonl", 200)
    folder = tmp_path / "results"
    folder.mkdir()
    output = folder / "out.jsonl"
    timeline = Timeline()
    snapshots: dict[str, dict[str, int]] = {}

    def block_at_50(progress: RunProgress) -> None:
        if progress.done >= 50 and timeline.started_at is None:
            shutil.rmtree(folder)
            folder.write_text("a file where the directory was\n")
            timeline.start()

    timeline.before = block_at_50
    timeline.at(5.0, lambda: snapshots.setdefault("settled", sends(app)))
    timeline.at(20.0, lambda: (snapshots.setdefault("unblocked", sends(app)), folder.unlink()))
    notices: list[str] = []
    summary = await batch.run_file(
        source,
        output,
        client_options=options(app),
        progress=timeline,
        progress_interval=0.1,
        notify=notices.append,
    )
    assert snapshots["unblocked"] == snapshots["settled"]
    assert summary.exit_status == batch.EXIT_OK
    assert_each_id_written_and_sent_once(output, app)
    assert any(f"Make {folder} a writable directory again" in n for n in notices)


async def test_a_stop_while_a_deleted_output_cannot_come_back_saves_all_its_lines(
    tmp_path, autojump_clock
):
    """Another file took OUTPUT's name: a stop saves the deleted file's lines and the held ones."""
    app = create_app(MockConfig(latency_ms=50))
    source = write_input(tmp_path / "in.jsonl", 200)
    output = tmp_path / "out.jsonl"
    control = batch.RunControl()
    timeline = Timeline()

    def take_the_name_at_50(progress: RunProgress) -> None:
        if progress.done >= 50 and timeline.started_at is None:
            output.unlink()
            output.write_bytes(b"someone else's file\n")
            timeline.start()

    timeline.before = take_the_name_at_50
    timeline.at(5.0, control.stop)
    with pytest.raises(engine.OutputError) as caught:
        await batch.run_file(
            source,
            output,
            client_options=options(app),
            control=control,
            progress=timeline,
            progress_interval=0.1,
        )
    error = caught.value
    assert error.summary.exit_status == batch.EXIT_IO_ERROR and error.lost == 0
    assert "was deleted and could not be put back" in error.message
    output.unlink()  # the user moves the other file away
    resumed = await batch.run_file(source, output, client_options=options(app))
    assert resumed.exit_status == batch.EXIT_OK
    assert_each_id_written_and_sent_once(output, app)


# --------------------------------------------------------------------------- input, opening


async def test_an_input_unreadable_mid_run_ends_the_run_with_exit_4_and_loses_nothing(
    tmp_path, autojump_clock, monkeypatch
):
    """EIO reading INPUT: no new sends, answers in flight written, io_error; the resume finishes."""
    app = create_app(MockConfig(latency_ms=100))
    source = write_input(tmp_path / "in.jsonl", 100)
    output = tmp_path / "out.jsonl"
    real_read = batch.read_batch_input

    def failing_after_30_lines_on_the_event_loop(path):
        # The counting passes run in worker threads; only the feed reads on the loop.
        for number, line in enumerate(real_read(path)):
            if number == 30 and threading.current_thread() is threading.main_thread():
                raise OSError(errno.EIO, "Input/output error", str(path))
            yield line

    monkeypatch.setattr(batch, "read_batch_input", failing_after_30_lines_on_the_event_loop)
    summary = await batch.run_file(source, output, client_options=options(app))
    assert summary.exit_status == batch.EXIT_IO_ERROR
    assert summary.io_error.startswith(f"cannot read INPUT {source}: input/output error.")
    assert len(ids_in(output)) == 30 == summary.succeeded and summary.not_run == 70
    monkeypatch.setattr(batch, "read_batch_input", real_read)
    resumed = await batch.run_file(source, output, client_options=options(app))
    assert resumed.exit_status == batch.EXIT_OK
    assert set(app.stats.client_request_ids.values()) == {1} and len(ids_in(output)) == 100


@pytest.mark.parametrize(
    ("make_output", "words"),
    [
        (lambda tmp: tmp / "missing" / "out.jsonl", "cannot write OUTPUT"),
        (lambda tmp: tmp, "is a directory, not a file"),
    ],
    ids=["no-such-directory", "a-directory"],
)
async def test_an_output_that_cannot_be_opened_refuses_the_run_and_sends_nothing(
    tmp_path, autojump_clock, make_output, words
):
    """OUTPUT not writable at the start: OutputError naming it, no summary, nothing sent."""
    app = create_app(MockConfig())
    source = write_input(tmp_path / "in.jsonl", 3)
    output = make_output(tmp_path)
    with pytest.raises(engine.OutputError) as caught:
        await batch.run_file(source, output, client_options=options(app))
    assert caught.value.summary is None and str(output) in caught.value.message
    assert words in caught.value.message and "Nothing was sent" in caught.value.message
    assert app.stats.client_request_ids == {}


# --------------------------------------------------------------------------- engine run


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with serve_in_subprocess(["--seed", "3", "--latency-ms", "30"]) as url:
        yield url


@pytest.fixture
def mock(mock_url: str) -> Iterator[httpx.Client]:
    root = mock_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=10, trust_env=False) as control:
        control.post("/_mock/reset").raise_for_status()
        yield control


def served_sends(mock: httpx.Client) -> dict[str, int]:
    return mock.get("/_mock/stats").json()["client_request_ids"]


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True
    )
    if probe.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


class SmallDisk:
    """OUTPUT's file system, full after a few hundred answers; ``grow()`` gives space back.

    A real 256 KB tmpfs when this runs as root and can mount one; otherwise
    writes to OUTPUT fail with ENOSPC after :data:`FAULT_AFTER` bytes (an
    injected ``sitecustomize``) until ``grow()``.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "disk"
        self.folder.mkdir()
        self.output = self.folder / "out.jsonl"
        self.real = _can_mount_tmpfs(self.folder)
        self.env: dict[str, str] = {}
        if self.real:
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(self.folder)], check=True
            )
        else:
            hooks = tmp_path / "hooks"
            hooks.mkdir()
            self._heal = tmp_path / "space-is-back"
            self.env = subprocess_env(
                hooks, self.output, errno.ENOSPC, after_bytes=FAULT_AFTER, heal_file=self._heal
            )

    def grow(self) -> None:
        if self.real:
            subprocess.run(["mount", "-o", "remount,size=8m", str(self.folder)], check=True)
        else:
            self._heal.touch()

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", str(self.folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path)
    try:
        yield disk
    finally:
        disk.close()


@contextlib.contextmanager
def engine_run(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """``engine run ARGS`` started in the background; killed on the way out if still running."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    environment["OPENAI_API_KEY"] = KEY
    extra = dict(env or {})
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [extra.pop("PYTHONPATH", ""), REPO]))
    environment.update(extra)
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "run", *args],
        cwd=REPO,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


class StderrReader:
    """Collects a child's stderr on a thread, so the test can wait for words in it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.text += line

    def wait_for(self, words: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while words not in self.text:
            if time.monotonic() > deadline:
                raise AssertionError(f"{words!r} not on stderr:\n{self.text}")
            time.sleep(0.05)

    def finish(self) -> str:
        self._thread.join(10)
        return self.text


@pytest.mark.parametrize("interrupt", [False, True], ids=["waits", "ctrl-c"])
def test_engine_run_on_a_full_disk_waits_and_ctrl_c_keeps_what_it_held(
    tmp_path, mock, mock_url, small_disk, interrupt
):
    """600 lines onto 256 KB: it waits (no sends); more space, or Ctrl-C and resume: once each."""
    source = write_input(tmp_path / "in.jsonl", 600)
    args = (str(source), "-o", str(small_disk.output), "--base-url", mock_url)
    with engine_run(*args, env=small_disk.env) as process:
        stderr = StderrReader(process)
        stderr.wait_for("waiting for space on")
        at_wait = served_sends(mock)
        time.sleep(1.5)
        assert served_sends(mock) == at_wait  # nothing sent while it waits
        if interrupt:
            process.send_signal(signal.SIGINT)
        else:
            small_disk.grow()
        process.wait(30)
        text = stderr.finish()
    assert f"{small_disk.output} cannot be written: no space left on device." in text
    assert "Traceback" not in text
    if interrupt:
        assert process.returncode == batch.EXIT_IO_ERROR
        assert f"are saved in {small_disk.output}.held" in text and "resume with" in text
        assert Path(f"{small_disk.output}.held").exists()
        small_disk.grow()
        resumed = subprocess.run(
            [sys.executable, "-m", "engine", "run", *args],
            cwd=REPO,
            env={**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": REPO},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert resumed.returncode == 0, resumed.stderr
    else:
        assert process.returncode == 0, text
        assert "takes lines again" in text
    assert sorted(ids_in(small_disk.output)) == sorted(f"r{i}" for i in range(600))
    counts = served_sends(mock)
    assert len(counts) == 600 and set(counts.values()) == {1}
    assert sorted(p.name for p in small_disk.folder.iterdir()) == ["out.jsonl"]


def test_engine_run_ctrl_c_during_an_eio_wait_exits_4_and_the_resume_sends_only_the_rest(
    tmp_path, mock, mock_url
):
    """EIO on OUTPUT: one paragraph, no traceback; Ctrl-C exits 4; resume: each id sent once."""
    source = write_input(tmp_path / "in.jsonl", 300)
    output = tmp_path / "out.jsonl"
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    env = subprocess_env(
        hooks, output, errno.EIO, after_bytes=FAULT_AFTER, heal_file=tmp_path / "healed"
    )
    args = (str(source), "-o", str(output), "--base-url", mock_url)
    with engine_run(*args, env=env) as process:
        stderr = StderrReader(process)
        stderr.wait_for(f"cannot write {output} (input/output error): retrying")
        process.send_signal(signal.SIGINT)
        process.wait(30)
        text = stderr.finish()
    assert process.returncode == batch.EXIT_IO_ERROR
    assert f"{output} cannot be written: input/output error." in text
    assert "Traceback" not in text and "stopped early" in text
    (tmp_path / "healed").touch()
    with engine_run(*args, env=env) as resumed:
        resumed.wait(60)
    assert resumed.returncode == 0
    assert sorted(ids_in(output)) == sorted(f"r{i}" for i in range(300))
    assert set(served_sends(mock).values()) == {1}


def test_engine_run_ctrl_c_after_its_directory_was_removed_keeps_every_line(
    tmp_path, mock, mock_url
):
    """rm -r of OUTPUT's directory, then Ctrl-C: the file comes back whole; resume: once each."""
    source = write_input(tmp_path / "in.jsonl", 400)
    folder = tmp_path / "results"
    folder.mkdir()
    output = folder / "out.jsonl"
    args = (str(source), "-o", str(output), "--base-url", mock_url, "--concurrency", "4")
    with engine_run(*args) as process:
        stderr = StderrReader(process)
        deadline = time.monotonic() + 30
        while not output.exists() or output.stat().st_size < 20_000:
            assert time.monotonic() < deadline, stderr.text
            time.sleep(0.02)
        shutil.rmtree(folder)
        stderr.wait_for("was deleted while the run was writing it")
        process.send_signal(signal.SIGINT)
        process.wait(30)
        text = stderr.finish()
    assert process.returncode in (0, batch.EXIT_INTERRUPTED), text
    assert "Traceback" not in text
    with engine_run(*args) as resumed:
        resumed.wait(60)
    assert resumed.returncode == 0
    assert sorted(ids_in(output)) == sorted(f"r{i}" for i in range(400))
    assert set(served_sends(mock).values()) == {1}


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_engine_run_refuses_an_output_that_is_a_directory_in_one_paragraph(
    tmp_path, mock, mock_url, debug
):
    """-o naming a directory: exit 2, the path and what to do; the traceback only with --debug."""
    source = write_input(tmp_path / "in.jsonl", 3)
    args = [str(source), "-o", str(tmp_path), "--base-url", mock_url] + (
        ["--debug"] if debug else []
    )
    with engine_run(*args) as process:
        _, text = process.communicate(timeout=60)
    assert process.returncode == batch.EXIT_REFUSED
    assert f"engine run: OUTPUT {tmp_path} is a directory, not a file. Nothing was sent." in text
    assert ("Traceback" in text) is debug
    assert served_sends(mock) == {}
