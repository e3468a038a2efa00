"""Crash-safe Batch-API JSONL files: streaming input, append-only output, resume.

This is the file layer under ``engine run`` and ``engine transcribe``. It is
synchronous and does no trio I/O: nothing here checkpoints. Reading streams one
physical line at a time, so memory stays flat however long a file is; the only
structures that grow with the file are the id sets (the done ids of
:class:`OutputWriter`, the seen ids of :func:`find_duplicate_ids`).

Input (OpenAI Batch API input format), one JSON object per line::

    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Rules applied by :func:`read_batch_input` (a broken rule never raises: the line
comes back as an :class:`InputLine` whose ``error`` names its line number):

* lines are numbered from 1 by physical line (``\\n``); a trailing ``\\r`` (CRLF
  files) and a UTF-8 byte-order mark at the start of the file are ignored;
  blank (whitespace-only) lines are skipped but still counted;
* a line longer than :data:`MAX_LINE_BYTES` (10 MiB, newline excluded) is an
  error; it is skipped in bounded chunks, never held in memory whole;
* the line must be valid UTF-8 and a JSON object;
* ``custom_id`` must be a non-empty string. Numbers are rejected rather than
  converted, because ``1`` and ``"1"`` would then name the same output line and
  the output could not echo the caller's id back unchanged;
* ``method`` must be ``"POST"`` (any letter case); a missing ``method`` is taken
  as POST;
* ``url`` must be ``/v1/chat/completions`` or ``/v1/audio/transcriptions``; the
  same paths without ``/v1`` are accepted and normalised to the ``/v1`` form;
* ``body`` must be a JSON object; for transcriptions ``body.file`` must be a
  non-empty string (a local path; whether it is readable is checked when the
  request is made, not here).

Output (OpenAI Batch API output format, the ``BatchRequestOutput`` object)::

    {"id": "batch_req_...", "custom_id": "r1",
     "response": {"status_code": 200, "request_id": "...", "body": {...}},
     "error": null}

:class:`OutputWriter` appends such lines with one ``os.write`` per line, so a
crash (even SIGKILL) can only ever leave a torn *last* line, which the next
open repairs. It keeps exactly one line per ``custom_id``: ids already in the
file are loaded on open (this is what resume skips), and writing one again
raises ``ValueError``.

Failed items (``error`` not null) are always written to OUTPUT, so they count
as done and a rerun does not send them again; with ``errors_path`` each is also
copied to a separate errors file. OUTPUT is written first and is the source of
truth: if a crash falls between the two writes, the next open copies the
missing error lines from OUTPUT to the errors file, so the errors file ends up
with exactly the failed lines of OUTPUT, once each.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from collections.abc import Iterator, Set
from typing import Any

import attrs
import orjson

from engine._errors import EngineError

__all__ = [
    "CHAT_COMPLETIONS_URL",
    "EMBEDDINGS_URL",
    "MAX_LINE_BYTES",
    "RESPONSES_URL",
    "SUPPORTED_URLS",
    "TRANSCRIPTIONS_URL",
    "InputLine",
    "OutputInUseError",
    "OutputWriter",
    "PendingLine",
    "TailRepair",
    "error_record",
    "find_duplicate_ids",
    "read_batch_input",
    "success_record",
]

#: Longest accepted input line in bytes, newline excluded (10 MiB). OpenAI caps
#: a whole batch input file at 200 MB; one request above 10 MiB is almost surely
#: a mistake (an inlined file), and the cap bounds the memory one line can take.
MAX_LINE_BYTES = 10 * 1024 * 1024

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
RESPONSES_URL = "/v1/responses"
EMBEDDINGS_URL = "/v1/embeddings"
TRANSCRIPTIONS_URL = "/v1/audio/transcriptions"
#: The endpoints a line may name, canonical form first: ``/v1/...`` or the same without ``/v1``.
SUPPORTED_URLS = (CHAT_COMPLETIONS_URL, RESPONSES_URL, EMBEDDINGS_URL, TRANSCRIPTIONS_URL)

_URLS = {
    **{url: url for url in SUPPORTED_URLS},
    **{url.removeprefix("/v1"): url for url in SUPPORTED_URLS},
}

_BOM = b"\xef\xbb\xbf"
# Size of the chunks used to skip over an oversized line and to scan backwards
# for the last newline of an output file.
_CHUNK = 1 << 16
# Prefix of the stand-in id that an input line without a usable custom_id gets
# in the output; unlikely to clash with a caller's own ids.
_BAD_LINE_ID_PREFIX = "__bad_line_"
# New output files: rw for user and group at most, never world-writable; the
# user's umask narrows this further (0o022 gives 0o644, 0o077 gives 0o600).
_NEW_FILE_MODE = 0o664
# Bytes copied per read when a deleted output is put back (see _AppendFile.recreate).
_COPY_CHUNK = 1 << 20


# --------------------------------------------------------------------------- input


@attrs.frozen
class InputLine:
    """One non-blank line of a Batch-API input file.

    Attributes:
        line_no: physical line number, from 1.
        custom_id: the line's id, or None when it has none usable.
        url: the endpoint, normalised to ``/v1/...``; None when the line is bad.
        body: the request body; None when the line is bad.
        error: None for a good line, else a message that starts with
            ``"line N: "`` and says which rule the line broke.
        endpoint: the pool member the line is pinned to (its ``"endpoint"``
            key beside ``custom_id``), or None.
    """

    line_no: int
    custom_id: str | None
    url: str | None
    body: dict[str, Any] | None
    error: str | None = None
    endpoint: str | None = None

    @property
    def output_id(self) -> str:
        """The ``custom_id`` its output line carries.

        A line without a usable ``custom_id`` still gets exactly one (error)
        output line, under the stand-in id ``"__bad_line_<line_no>"``, so that a
        rerun sees it as done. The stand-in follows the line number: editing
        lines above it changes it.
        """
        if self.custom_id is not None:
            return self.custom_id
        return f"{_BAD_LINE_ID_PREFIX}{self.line_no}"


def _iter_physical_lines(file: Any) -> Iterator[tuple[int, bytes | None]]:
    """Yield ``(line_no, content)`` for each line of a binary file.

    ``content`` keeps its line ending (JSON treats ``\\r`` and ``\\n`` as
    whitespace, so no copy is made to strip them); it is None when the line
    exceeds :data:`MAX_LINE_BYTES`, in which case the rest of that line was
    skipped in :data:`_CHUNK`-sized reads.
    """
    line_no = 0
    while True:
        raw = file.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            del raw
            while True:
                rest = file.readline(_CHUNK)
                if not rest or rest.endswith(b"\n"):
                    break
            yield line_no, None
            continue
        yield line_no, raw


def _parse_line(line_no: int, raw: bytes | None) -> InputLine | None:
    """Check one line against the input rules; None for a blank line."""
    if raw is None:
        return _bad(line_no, None, f"longer than {MAX_LINE_BYTES} bytes")
    if line_no == 1 and raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if raw.isspace() or not raw:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson checks UTF-8 itself; decode only to tell the user which problem it is.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as utf8_error:
            return _bad(line_no, None, f"not valid UTF-8 (byte {utf8_error.start + 1})")
        return _bad(line_no, None, f"not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return _bad(line_no, None, f"expected a JSON object, got {_json_type(obj)}")

    if "custom_id" not in obj:
        return _bad(line_no, None, "missing custom_id")
    custom_id = obj["custom_id"]
    if not isinstance(custom_id, str):
        return _bad(line_no, None, f"custom_id must be a string, got {_json_type(custom_id)}")
    if not custom_id:
        return _bad(line_no, None, "custom_id is empty")

    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        return _bad(line_no, custom_id, f"method must be POST, got {method!r}")
    url = obj.get("url")
    if url is None:
        return _bad(line_no, custom_id, "missing url")
    normalised_url = _URLS.get(url) if isinstance(url, str) else None
    if normalised_url is None:
        return _bad(
            line_no,
            custom_id,
            f"unsupported url {url!r} (expected one of {', '.join(SUPPORTED_URLS)})",
        )
    if "body" not in obj:
        return _bad(line_no, custom_id, "missing body")
    body = obj["body"]
    if not isinstance(body, dict):
        return _bad(line_no, custom_id, f"body must be a JSON object, got {_json_type(body)}")
    if normalised_url == TRANSCRIPTIONS_URL:
        file = body.get("file")
        if not isinstance(file, str) or not file:
            return _bad(line_no, custom_id, "body.file must be a path (a non-empty string)")
    endpoint = obj.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
        return _bad(
            line_no, custom_id, f"endpoint must be a pool member's name, got {_json_type(endpoint)}"
        )
    return InputLine(
        line_no=line_no, custom_id=custom_id, url=normalised_url, body=body, endpoint=endpoint
    )


def _bad(line_no: int, custom_id: str | None, problem: str) -> InputLine:
    return InputLine(
        line_no=line_no,
        custom_id=custom_id,
        url=None,
        body=None,
        error=f"line {line_no}: {problem}",
    )


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def read_batch_input(path: str | os.PathLike[str]) -> Iterator[InputLine]:
    """Yield one :class:`InputLine` per non-blank line of a Batch-API input file.

    Streams: holds one line at a time (at most :data:`MAX_LINE_BYTES`). A bad
    line is yielded with ``error`` set, never raised; only failing to open or
    read the file itself raises ``OSError``. See the module docstring for the
    rules. Does not check for duplicate ids: see :func:`find_duplicate_ids`.
    """
    with open(path, "rb") as file:
        for line_no, raw in _iter_physical_lines(file):
            line = _parse_line(line_no, raw)
            if line is not None:
                yield line


def find_duplicate_ids(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Return ``{custom_id: [line numbers]}`` for each id found on more than one line.

    Empty when every id is unique (the run may start). Counts every line whose
    ``custom_id`` is a non-empty string, bad lines included. Streams the file
    once, holding the set of ids seen; only when duplicates exist does it read
    the file a second time to collect their line numbers.
    """
    seen: set[str] = set()
    duplicated: set[str] = set()
    for line in read_batch_input(path):
        if line.custom_id is None:
            continue
        if line.custom_id in seen:
            duplicated.add(line.custom_id)
        else:
            seen.add(line.custom_id)
    del seen
    if not duplicated:
        return {}
    found: dict[str, list[int]] = {custom_id: [] for custom_id in duplicated}
    for line in read_batch_input(path):
        if line.custom_id in found:
            found[line.custom_id].append(line.line_no)
    return found


# --------------------------------------------------------------------------- output records


def _record_id() -> str:
    return f"batch_req_{secrets.token_hex(16)}"


def success_record(
    custom_id: str, *, status_code: int, request_id: str | None, body: dict[str, Any]
) -> dict[str, Any]:
    """Build a Batch-API output line for an answered request (``error`` null).

    ``id`` is a fresh ``"batch_req_<32 hex digits>"``; ``request_id`` is the
    server's ``x-request-id`` (None when it sent none).
    """
    return {
        "id": _record_id(),
        "custom_id": custom_id,
        "response": {"status_code": status_code, "request_id": request_id, "body": body},
        "error": None,
    }


def error_record(
    custom_id: str,
    *,
    code: str,
    message: str,
    status_code: int | None = None,
    request_id: str | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a Batch-API output line for a failed item; ``error`` is ``{code, message}``.

    ``response`` is null when no HTTP answer decided the failure
    (``status_code`` None: bad input line, transport errors, a run stopped).
    When the server's answer did (``status_code`` given), ``response`` carries
    it as OpenAI does, with ``body`` the server's JSON body; if none is given a
    body of the OpenAI error shape ``{"error": {"code", "message"}}`` stands in.
    Unlike OpenAI, which leaves ``error`` null for HTTP errors, ``error`` is
    always set on a failed item, so "failed" is simply ``error is not None``.
    """
    response = None
    if status_code is not None:
        if body is None:
            body = {"error": {"code": code, "message": message}}
        response = {"status_code": status_code, "request_id": request_id, "body": body}
    return {
        "id": _record_id(),
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }


# --------------------------------------------------------------------------- output writer


class OutputInUseError(EngineError):
    """Another writer (another ``engine run``) holds this output file open."""

    default_code = "output_in_use"


@attrs.frozen
class TailRepair:
    """What opening an output file found and fixed.

    Attributes:
        dropped_bytes: size of the torn last line that was truncated away (0: none).
        newline_added: the last line was a complete JSON object lacking its
            ``\\n``, which was added.
        unreadable_lines: complete lines that are not JSON objects with a string
            ``custom_id`` (hand edits, or zeros left by a power loss); they are
            kept as they are and count for no id.
        duplicate_lines: lines whose ``custom_id`` an earlier line already had
            (only possible if the file was edited or concatenated).
        lines: lines read, including the above.
    """

    dropped_bytes: int = 0
    newline_added: bool = False
    unreadable_lines: int = 0
    duplicate_lines: int = 0
    lines: int = 0


class _AppendFile:
    """One append-only JSONL file: locked, tail repaired, one ``os.write`` per line."""

    def __init__(self, path: str | os.PathLike[str], *, fsync_each_line: bool) -> None:
        self.path = os.fspath(path)
        self._fsync_each_line = fsync_each_line
        # A new file's directory entry must reach the disk too for it to survive a power loss.
        self._created = not os.path.exists(self.path)
        # Set when a failed write could not be cut back (see _write_all).
        self._torn_tail = False
        self._fd: int | None = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, _NEW_FILE_MODE
        )
        try:
            try:
                # A lock per open file description: a second concurrent run on
                # the same file would interleave ids and break exactly-once.
                # The kernel drops it when the process dies, even on SIGKILL.
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputInUseError(
                        f"{self.path} is being written by another run; wait for it or stop it"
                    ) from None
                raise
            self.dropped_bytes, self.newline_added = self._repair_tail()
            self.size = os.fstat(self._fd).st_size
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def _repair_tail(self) -> tuple[int, bool]:
        """Drop a torn last line, or end a complete last object with ``\\n``."""
        fd = self._require_open()
        size = os.fstat(fd).st_size
        if size == 0:
            return 0, False
        # Scan backwards for the last newline; only the tail after it is read whole.
        tail_start = 0
        position = size
        while position > 0:
            start = max(0, position - _CHUNK)
            chunk = os.pread(fd, position - start, start)
            newline = chunk.rfind(b"\n")
            if newline != -1:
                tail_start = start + newline + 1
                break
            position = start
        if tail_start == size:
            return 0, False
        tail = os.pread(fd, size - tail_start, tail_start)
        if _is_json_object(tail):
            self._write_all(b"\n", size)
            return 0, True
        os.ftruncate(fd, tail_start)
        os.fsync(fd)
        return size - tail_start, False

    def iter_lines(self) -> Iterator[bytes]:
        """Yield each line of the file (newline included), streaming, from the start."""
        fd = self._require_open()
        with open(os.dup(fd), "rb", closefd=True) as reader:
            reader.seek(0)
            yield from reader

    def append(self, line: bytes) -> None:
        """Append ``line`` (which ends in ``\\n``) with a single ``os.write``.

        Raises ``OSError`` (its ``filename`` set to this file) if the write
        fails; the file then still ends with its last whole line.
        """
        self._write_all(line, self.size)
        self.size += len(line)

    def _write_all(self, data: bytes, size_before: int) -> None:
        fd = self._require_open()
        try:
            if self._torn_tail:
                # An earlier failed write could not be cut back: do it now, or
                # this line would be glued to half of that one.
                os.ftruncate(fd, size_before)
                self._torn_tail = False
            written = os.write(fd, data)
            # A regular file takes a short write only when the disk fills or a
            # signal lands mid-copy; finish it, or undo it below.
            while written < len(data):
                written += os.write(fd, data[written:])
            if self._fsync_each_line:
                os.fsync(fd)
        except BaseException as exc:
            # Never leave half a line followed by later lines: cut back to the
            # last whole line before the error goes up.
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                self._torn_tail = True
            if isinstance(exc, OSError) and exc.filename is None:
                exc.filename = self.path  # os.write names no file; the user needs it
            raise

    def removed(self) -> bool:
        """True if the file was deleted (no name links to it) while open.

        Lines written since then went to a file nobody can reach; they are
        still readable through the open descriptor (see :meth:`recreate`).
        """
        return os.fstat(self._require_open()).st_nlink == 0

    def recreate(self) -> None:
        """Put a deleted file back at its path with every line written so far.

        Creates the missing directories, creates the file anew (never over a
        file someone else put there since), copies the whole content of the
        open, deleted file into it, ``fsync``s and locks it, and from then on
        writes there. Raises ``OSError`` (``filename`` set) if any step fails;
        nothing changes then and the deleted file stays open for a later try.
        """
        old = self._require_open()
        try:
            # The error names the directory in the way, if that is what failed.
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            new = os.open(
                self.path,
                os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                _NEW_FILE_MODE,
            )
        except OSError as exc:
            if exc.filename is None:
                exc.filename = self.path
            raise
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
            position = 0
            while position < self.size:
                chunk = os.pread(old, min(_COPY_CHUNK, self.size - position), position)
                if not chunk:
                    break  # cannot happen for a file only we write; never loop forever
                view = memoryview(chunk)
                while view:
                    view = view[os.write(new, view) :]
                position += len(chunk)
            os.fsync(new)
        except BaseException as exc:
            os.close(new)
            try:
                os.unlink(self.path)  # ours, half copied: the next try starts clean
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.filename is None:
                exc.filename = self.path
            raise
        self._fd = new
        self._torn_tail = False
        self._created = True  # its directory entry is new: fsync the directory at close
        os.close(old)

    def sync(self) -> None:
        """``fsync`` the file: its lines survive a power loss from now on."""
        os.fsync(self._require_open())

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        return self._fd

    def close(self) -> None:
        """``fsync`` and close; a second call does nothing."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._created:
            self._created = False
            directory = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)


def _same_file(first: str | os.PathLike[str], second: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:  # one does not exist yet
        return os.path.abspath(first) == os.path.abspath(second)


def _is_json_object(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


def _custom_id_and_failed(line: bytes) -> tuple[str, bool] | None:
    """``(custom_id, error is not null)`` of an output line, None if unreadable."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str):
        return None
    return custom_id, record.get("error") is not None


@attrs.define
class PendingLine:
    """One output line on its way to OUTPUT (and, if failed, to the errors file).

    Attributes:
        custom_id: the line's id.
        data: the JSON line, newline included.
        failed: its ``error`` is not null: it is copied to the errors file too.
        in_output: OUTPUT already has it (only the errors copy may be missing).
    """

    custom_id: str
    data: bytes
    failed: bool
    in_output: bool = False


class OutputWriter:
    """Appends Batch-API output lines to OUTPUT, one per ``custom_id``, crash-safely.

    Opening (the constructor) creates OUTPUT if needed (mode ``0o664`` narrowed
    by the umask: never world-writable; an existing file's mode is left alone),
    takes an exclusive ``flock`` on it (:class:`OutputInUseError` if another
    run holds it), repairs its tail (see :attr:`repair`), and streams it once
    to load the ids already written (:attr:`done_ids`). That set is the only
    memory that grows with the file (~100 bytes per id).

    Args:
        path: the OUTPUT file.
        errors_path: optional second file that receives a copy of every failed
            line (``error`` not null). Default None: no copy. It is repaired on
            open too and completed from OUTPUT (see the module docstring).
        fsync_each_line: default False: each line is handed to the kernel by
            ``os.write`` as soon as it is written, which survives the process
            being killed (SIGKILL, OOM) but not a power loss or kernel crash;
            ``fsync`` runs once at close. True also ``fsync``s every line, which
            survives power loss but costs a disk flush (~0.1-10 ms) per line.
        remember_written: default True: ids written through :meth:`write` join
            :attr:`done_ids`, so writing one twice raises. False keeps only the
            ids loaded on open, so memory does not grow with the lines written;
            for callers that already know their ids are unique (``engine run``
            refuses inputs with duplicate ids before it starts).

    Nothing here checkpoints; each :meth:`write` is one ``os.write`` of a few
    microseconds (plus the ``fsync`` if asked), fine to call from a trio task.
    Not safe to share between threads.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        errors_path: str | os.PathLike[str] | None = None,
        fsync_each_line: bool = False,
        remember_written: bool = True,
    ) -> None:
        self._remember_written = remember_written
        if errors_path is not None and _same_file(path, errors_path):
            raise ValueError("the errors file must not be the output file")
        self._output = _AppendFile(path, fsync_each_line=fsync_each_line)
        self._errors: _AppendFile | None = None
        try:
            self._done: set[str] = set()
            unreadable = duplicates = lines = 0
            for line in self._output.iter_lines():
                lines += 1
                parsed = _custom_id_and_failed(line)
                if parsed is None:
                    unreadable += 1
                elif parsed[0] in self._done:
                    duplicates += 1
                else:
                    self._done.add(parsed[0])
            self._repair = TailRepair(
                dropped_bytes=self._output.dropped_bytes,
                newline_added=self._output.newline_added,
                unreadable_lines=unreadable,
                duplicate_lines=duplicates,
                lines=lines,
            )
            self._errors_repair: TailRepair | None = None
            self._copied_to_errors = 0
            if errors_path is not None:
                self._open_errors(errors_path, fsync_each_line)
        except BaseException:
            self.close()
            raise

    def _open_errors(self, errors_path: str | os.PathLike[str], fsync_each_line: bool) -> None:
        errors = self._errors = _AppendFile(errors_path, fsync_each_line=fsync_each_line)
        in_errors: set[str] = set()
        unreadable = lines = 0
        for line in errors.iter_lines():
            lines += 1
            parsed = _custom_id_and_failed(line)
            if parsed is None:
                unreadable += 1
            else:
                in_errors.add(parsed[0])
        self._errors_repair = TailRepair(
            dropped_bytes=errors.dropped_bytes,
            newline_added=errors.newline_added,
            unreadable_lines=unreadable,
            lines=lines,
        )
        # Complete the copy a crash may have cut short (OUTPUT is written first).
        copied: set[str] = set()
        for line in self._output.iter_lines():
            parsed = _custom_id_and_failed(line)
            if parsed is None or not parsed[1]:
                continue
            custom_id = parsed[0]
            if custom_id in in_errors or custom_id in copied:
                continue
            errors.append(line if line.endswith(b"\n") else line + b"\n")
            copied.add(custom_id)
        self._copied_to_errors = len(copied)

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def done_ids(self) -> Set[str]:
        """The ``custom_id`` of every line in OUTPUT (read-only view).

        Ids written by this writer are included unless ``remember_written`` is False.
        """
        return self._done

    @property
    def repair(self) -> TailRepair:
        """What opening OUTPUT found and fixed."""
        return self._repair

    @property
    def errors_repair(self) -> TailRepair | None:
        """What opening the errors file found and fixed; None without ``errors_path``."""
        return self._errors_repair

    @property
    def copied_to_errors(self) -> int:
        """Failed lines of OUTPUT copied to the errors file on open (a crash had cut them)."""
        return self._copied_to_errors

    @property
    def path(self) -> str:
        """The OUTPUT file's path, as given."""
        return self._output.path

    @property
    def errors_path(self) -> str | None:
        """The errors file's path, None without one."""
        return self._errors.path if self._errors is not None else None

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line, handed to the kernel at once.

        Raises ``ValueError`` if its ``custom_id`` is not a string or is
        already in OUTPUT, or if the writer is closed; ``TypeError`` if it is
        not JSON-serialisable. A failed record is copied to the errors file
        after it is in OUTPUT. If the write fails (e.g. disk full) the partial
        line is cut away before the ``OSError`` goes up. The same as
        :meth:`append` of :meth:`encode`, which callers that keep a line to
        try again later use instead.
        """
        self.append(self.encode(record))

    def encode(self, record: dict[str, Any]) -> PendingLine:
        """Check ``record`` and turn it into the line :meth:`append` writes.

        Raises like :meth:`write` (a ``custom_id`` not a string or already in
        OUTPUT, a record that is not JSON-serialisable); writes nothing.
        """
        custom_id = record.get("custom_id")
        if not isinstance(custom_id, str):
            raise ValueError(f"record custom_id must be a string, got {custom_id!r}")
        if custom_id in self._done:
            raise ValueError(f"custom_id {custom_id!r} already has an output line")
        return PendingLine(
            custom_id=custom_id,
            data=orjson.dumps(record) + b"\n",
            failed=record.get("error") is not None,
        )

    def adopt(self, line: bytes) -> PendingLine | None:
        """Take a line written elsewhere (a saved sidecar) to be appended to OUTPUT.

        Returns None for a line that is not a complete output line (no
        newline, not JSON, no string ``custom_id``) or whose id OUTPUT (or an
        earlier adopted line) already has. Otherwise its id joins
        :attr:`done_ids` at once, whatever ``remember_written`` says, so that
        nothing sends it again while the line waits to be appended.
        """
        if not line.endswith(b"\n"):
            return None
        parsed = _custom_id_and_failed(line)
        if parsed is None or parsed[0] in self._done:
            return None
        self._done.add(parsed[0])
        return PendingLine(custom_id=parsed[0], data=line, failed=parsed[1])

    def append(self, pending: PendingLine) -> None:
        """Write ``pending`` to OUTPUT, then (a failed line) to the errors file.

        Each file is written once: a line whose OUTPUT write succeeded but
        whose errors copy failed goes only to the errors file when appended
        again (``pending.in_output`` says where it got). Raises ``OSError``
        with ``filename`` naming the file that failed; the file still ends
        with its last whole line. Does not check for a duplicate id: that was
        :meth:`encode`'s job.
        """
        if not pending.in_output:
            self._output.append(pending.data)
            pending.in_output = True
            if self._remember_written:
                self._done.add(pending.custom_id)
        if self._errors is not None and pending.failed:
            self._errors.append(pending.data)

    def restore_removed(self) -> list[str]:
        """Put back OUTPUT and the errors file if someone deleted them while open.

        Does nothing (returns ``[]``) in the usual case: one ``fstat`` per
        file. A deleted file (its directory removed, ``rm``) is recreated at
        its path, directories included, with every line written so far (see
        ``_AppendFile.recreate``); the paths put back are returned. Raises
        ``OSError`` (``filename`` set) when a deleted file cannot be put back;
        call again later.
        """
        restored = []
        for file in (self._output, self._errors):
            if file is not None and file.removed():
                file.recreate()
                restored.append(file.path)
        return restored

    def output_removed(self) -> bool:
        """True if OUTPUT was deleted while open and not put back (see :meth:`restore_removed`)."""
        return self._output.removed()

    def iter_output_lines(self) -> Iterator[bytes]:
        """OUTPUT's lines, read through the open file (so also after it was deleted)."""
        return self._output.iter_lines()

    def sync(self) -> None:
        """``fsync`` OUTPUT and the errors file. Raises ``OSError`` (``filename`` unset)."""
        self._output.sync()
        if self._errors is not None:
            self._errors.sync()

    def close(self) -> None:
        """``fsync`` and close both files; a second call does nothing."""
        try:
            if self._errors is not None:
                self._errors.close()
        finally:
            self._output.close()
