"""OUTPUT that survives failed writes: answers held, written later, or saved next to it.

A batch run pays for every answer it receives, so an answer must not be lost
because OUTPUT cannot take it right now (disk full, EIO, a revoked permission,
the file's directory removed). :class:`HeldOutput` is what ``engine run``
writes through:

* While OUTPUT takes lines, each goes straight to it (one ``os.write``, as
  :class:`~engine.app._jsonl.OutputWriter` does).
* The first failed write makes it *hold*: that line and every later one are
  kept in memory, in order. The run stops sending new requests at once, so
  only the answers of requests already in flight can still arrive: what is
  held stays small.
* :meth:`HeldOutput.flush` (called by the run with backoff, see
  :func:`retry_delay`) writes the held lines once OUTPUT takes them again.
* When the run has to end while lines are still held (Ctrl-C), :meth:`HeldOutput.save`
  appends them to the *sidecar* ``OUTPUT.held`` next to OUTPUT; the next run
  on the same OUTPUT writes the sidecar's lines into OUTPUT first
  (:meth:`HeldOutput.absorb_sidecar`) and never sends their ids.

A disk that is full for OUTPUT is full for the sidecar too, so the run keeps a
little space in hand: a hidden file ``.OUTPUT.reserve`` next to OUTPUT (at
most :data:`MAX_RESERVE_BYTES`, 1 MiB, and a quarter of the free space), which
:meth:`HeldOutput.save` deletes to make room for the sidecar, and
:meth:`HeldOutput.close` deletes at the end of the run.

A deleted OUTPUT (``rm -r`` of its directory) takes no error at all: writes go
on into a file no name reaches, and would vanish with the process.
:meth:`HeldOutput.check_removed` notices (one ``fstat``) and puts the file back
with every line written so far; when that fails, the run holds as for any
failed write.

Everything here is synchronous file I/O and nothing checkpoints: the trio
side (when to retry, stopping the sends, telling the user) is in
:mod:`engine.app.batch`. The wording for the user is here, pure:
:func:`failure_paragraph` and :func:`waiting_line`.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Iterable
from typing import Any

import attrs

from engine.app._jsonl import OutputWriter, PendingLine, _AppendFile

__all__ = [
    "MAX_RESERVE_BYTES",
    "SIDECAR_SUFFIX",
    "HeldOutput",
    "SaveOutcome",
    "WriteFailure",
    "describe_os_error",
    "failure_paragraph",
    "format_bytes",
    "retry_delay",
    "sidecar_path",
    "waiting_line",
]

#: Appended to OUTPUT's path to name the file held answers are saved to.
SIDECAR_SUFFIX = ".held"
#: Most disk space kept in hand for the sidecar (1 MiB: ~1,000 typical chat answers).
MAX_RESERVE_BYTES = 1 << 20
#: Below this the reserve is not worth a file (a quarter of the free space is taken at most).
MIN_RESERVE_BYTES = 16 << 10
#: First wait before writing held lines again, in seconds; doubled after each failure ...
RETRY_BASE_DELAY = 0.5
#: ... up to this many seconds, so space that comes back is used within 5 s.
RETRY_MAX_DELAY = 5.0

# The errors that mean "no room" (the waiting line speaks of space).
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def sidecar_path(output_path: str) -> str:
    """Where the answers a run could not write to ``output_path`` are saved."""
    return output_path + SIDECAR_SUFFIX


def retry_delay(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th try (from 0) to write held lines again.

    0.5 s, 1 s, 2 s, 4 s, then every 5 s (:data:`RETRY_BASE_DELAY`,
    :data:`RETRY_MAX_DELAY`). No jitter: one process retries one file.
    """
    return min(RETRY_MAX_DELAY, RETRY_BASE_DELAY * 2.0 ** min(attempt, 16))


def format_bytes(count: float) -> str:
    """``"812 B"``, ``"34.5 kB"``, ``"1.2 MB"``, ``"3.4 GB"`` (decimal units, as ``df -H``)."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000.0
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


@attrs.frozen
class WriteFailure:
    """Why OUTPUT (or the errors file) could not be written.

    Attributes:
        path: the file that failed.
        errno: the error number (``errno.ENOSPC``, ...), None if unknown.
        reason: the system's wording, lower case (``"no space left on device"``).
        removed: the file had been deleted (its directory removed) and could
            not be put back; ``errno`` and ``where`` say why not.
        where: for ``removed``, the path putting it back failed on: the file
            itself (another file took its name) or a directory on the way.
    """

    path: str
    errno: int | None
    reason: str
    removed: bool = False
    where: str | None = None

    @classmethod
    def from_os_error(cls, exc: OSError, *, default_path: str) -> WriteFailure:
        """The failure ``exc`` describes (``default_path`` when it names no file)."""
        return cls(
            path=os.fsdecode(exc.filename) if exc.filename is not None else default_path,
            errno=exc.errno,
            reason=_reason(exc),
        )

    @classmethod
    def not_put_back(cls, exc: OSError, *, path: str) -> WriteFailure:
        """``path`` was deleted and putting it back failed with ``exc``."""
        where = os.fsdecode(exc.filename) if exc.filename is not None else path
        return cls(path=path, errno=exc.errno, reason=_reason(exc), removed=True, where=where)

    @property
    def no_space(self) -> bool:
        """The file system (or the user's quota) is full."""
        return self.errno in _NO_SPACE


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def _action(failure: WriteFailure) -> str:
    """What the user can do about ``failure`` so that the run goes on by itself."""
    directory = os.path.dirname(os.path.abspath(failure.path))
    code = failure.errno
    if failure.removed:
        if code == errno.EEXIST and failure.where == failure.path:
            return (
                "Another file now has its name: move that file away to go on (the run "
                "puts its own back, with every line written so far)."
            )
        return (
            f"Make {directory} a writable directory again to go on (the run puts the "
            "file back, with every line written so far)."
        )
    if code == errno.ENOSPC:
        return f"Free some space on the file system of {directory} to go on."
    if code == errno.EDQUOT:
        return "Free some space within your disk quota (or have it raised) to go on."
    if code == errno.EIO:
        return (
            "The disk (or the network file system) reported an input/output error: check "
            "it (dmesg, the mount); the run goes on once writes succeed again."
        )
    if code in (errno.EACCES, errno.EPERM):
        return "Give this user write permission on it again to go on."
    if code == errno.EROFS:
        return "Its file system is now read-only: remount it read-write to go on."
    if code == errno.EFBIG:
        return (
            "It is as large as its file system allows: stop the run (Ctrl-C), move the "
            "file to a file system that takes larger files, and resume there."
        )
    if code == errno.ESTALE:
        return "The network file system lost the file (stale handle): remount it to go on."
    return "Fix what the error names to go on."


def failure_paragraph(failure: WriteFailure, *, held: int, needed: int, sidecar: str) -> str:
    """The one paragraph shown when writing starts to fail: what, what happens, what to do.

    ``held`` answers (``needed`` bytes) wait in memory; ``sidecar`` is where
    Ctrl-C would save them.
    """
    if failure.removed:
        what = f"was deleted, and putting it back failed ({failure.where}: {failure.reason})"
    else:
        what = f"cannot be written: {failure.reason}"
    return (
        f"{failure.path} {what}. No new requests are sent; the "
        f"answers of those still in flight are kept in memory ({held} so far, "
        f"{format_bytes(needed)}) and written as soon as the file takes them, trying again "
        f"every few seconds. {_action(failure)} Ctrl-C stops the run instead: held "
        f"answers then go to {sidecar}, which the next run writes into the output."
    )


def waiting_line(failure: WriteFailure, *, held: int, needed: int) -> str:
    """The progress line's few words while answers are held.

    ``"waiting for space on /data/out.jsonl: 1.2 MB needed; 231 answers held"``
    when the disk is full, else ``"cannot write /data/out.jsonl (input/output
    error): retrying; 231 answers held"``.
    """
    answers = f"{held} answer{'' if held == 1 else 's'} held"
    if failure.no_space and not failure.removed:
        return f"waiting for space on {failure.path}: {format_bytes(needed)} needed; {answers}"
    if failure.removed:
        return f"{failure.path} deleted, cannot put it back ({failure.reason}): retrying; {answers}"
    return f"cannot write {failure.path} ({failure.reason}): retrying; {answers}"


def describe_os_error(exc: OSError, *, role: str, path: str, action: str) -> str:
    """One paragraph for an ``OSError`` met on ``path`` (the file the user named as ``role``).

    ``"cannot read INPUT in.jsonl: no such file or directory. Nothing was
    sent. Check the path."``: ``action`` is the last sentence (what happened
    to the run and what to do). A directory given as a file is named as such.
    """
    name = os.fsdecode(exc.filename) if exc.filename is not None else path
    if isinstance(exc, IsADirectoryError):
        return f"{role} {name} is a directory, not a file. {action}"
    verb = "read" if role == "INPUT" else "write"
    return f"cannot {verb} {role} {name}: {_reason(exc)}. {action}"


@attrs.frozen
class SaveOutcome:
    """What :meth:`HeldOutput.save` did with the lines still held at the end.

    Attributes:
        path: the sidecar file.
        kept: held answers that are in the sidecar now (the next run writes them).
        lost: held answers that could not be saved: their ids are sent again.
        written_kept / written_lost: lines OUTPUT had held before it was
            deleted and could not be put back, saved to the sidecar / lost.
        error: why saving stopped short (None when everything was kept).
    """

    path: str
    kept: int = 0
    lost: int = 0
    written_kept: int = 0
    written_lost: int = 0
    error: WriteFailure | None = None


class _SpaceReserve:
    """A hidden file holding some disk space next to OUTPUT, given back when the sidecar needs it.

    ``posix_fallocate`` makes the file system set the blocks aside without
    writing them. Deleting the file frees them at once, for the sidecar.
    """

    def __init__(self, output_path: str, *, max_bytes: int) -> None:
        directory, name = os.path.split(os.path.abspath(output_path))
        self.path: str | None = os.path.join(directory, f".{name}.reserve")
        self.size = 0
        try:
            stats = os.statvfs(directory)
            size = min(max_bytes, stats.f_bavail * stats.f_frsize // 4)
            if size < MIN_RESERVE_BYTES:
                self.path = None
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            self.size = size
        except OSError:
            # No reserve (a full disk at the start, a file system without
            # preallocation): the run works the same, only Ctrl-C on a full
            # disk may then find no room for the sidecar.
            self.release()

    def release(self) -> bool:
        """Delete the reserve; True if there was one."""
        if self.path is None:
            return False
        path, self.path = self.path, None
        try:
            os.unlink(path)
        except OSError:
            return False
        return True


class HeldOutput:
    """OUTPUT through a :class:`~engine.app._jsonl.OutputWriter`, holding what it cannot take.

    Args:
        writer: the open OUTPUT (and errors file); closed by :meth:`close`.
        sidecar: where held answers are saved at the end, default
            ``OUTPUT.held`` (:func:`sidecar_path`).
        reserve_bytes: disk space kept in hand for the sidecar, default
            :data:`MAX_RESERVE_BYTES` (1 MiB), never more than a quarter of
            the free space; 0 keeps none.

    Synchronous; nothing checkpoints. Each method does at most a few
    ``os.write`` calls (or one copy of the file when a deleted OUTPUT is put
    back), so it may be called from a trio task.
    """

    def __init__(
        self,
        writer: OutputWriter,
        *,
        sidecar: str | None = None,
        reserve_bytes: int = MAX_RESERVE_BYTES,
    ) -> None:
        self._writer = writer
        self.sidecar = sidecar if sidecar is not None else sidecar_path(writer.path)
        self._held: collections.deque[PendingLine] = collections.deque()
        self._held_bytes = 0
        # Held lines that came from the sidecar: it still has them, save() skips them.
        self._from_sidecar: set[str] = set()
        # The sidecar exists and some of its lines may not be in OUTPUT yet.
        self._sidecar_open = False
        self.failure: WriteFailure | None = None
        #: Lines written to OUTPUT so far (answers, bad-line errors, the sidecar's).
        self.lines_written = 0
        #: Lines :meth:`absorb_sidecar` took from the sidecar (written or held).
        self.absorbed = 0
        self._reserve = (
            _SpaceReserve(writer.path, max_bytes=reserve_bytes) if reserve_bytes else None
        )

    # -- state ------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """True while a write failure is unresolved: new lines are held, not written."""
        return self.failure is not None

    @property
    def held(self) -> int:
        """Answers held in memory, waiting for OUTPUT."""
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        """Bytes OUTPUT needs to take the held answers."""
        return self._held_bytes

    @property
    def path(self) -> str:
        """OUTPUT's path."""
        return self._writer.path

    @property
    def writer(self) -> OutputWriter:
        """The writer underneath (for what it found on open: ``repair``, ``done_ids``)."""
        return self._writer

    @property
    def done_ids(self) -> Iterable[str]:
        """The writer's done ids (those of the sidecar included once absorbed)."""
        return self._writer.done_ids

    def waiting_line(self) -> str | None:
        """The progress line's words while holding (see :func:`waiting_line`), else None."""
        if self.failure is None:
            return None
        return waiting_line(self.failure, held=self.held, needed=self.held_bytes)

    def paragraph(self) -> str | None:
        """The paragraph telling what failed and what to do (:func:`failure_paragraph`)."""
        if self.failure is None:
            return None
        return failure_paragraph(
            self.failure, held=self.held, needed=self.held_bytes, sidecar=self.sidecar
        )

    # -- writing ----------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> bool:
        """Write ``record`` to OUTPUT now, or hold it; True if it was written.

        Held when an earlier failure is unresolved (lines keep their order) or
        when this write fails: :attr:`failure` then says why. Raises only what
        :meth:`OutputWriter.encode` raises for a bad record (a bug).
        """
        pending = self._writer.encode(record)
        if self.failure is None:
            try:
                self._writer.append(pending)
                self.lines_written += 1
                return True
            except OSError as exc:
                self._fail(exc)
        self._hold(pending)
        return False

    def flush(self) -> bool:
        """Write the held lines (a deleted OUTPUT put back first); True when none is left.

        Stops at the first line that fails again (:attr:`failure` updated).
        Once everything is written, a sidecar whose lines are all in OUTPUT
        now is deleted.
        """
        if self.failure is None:
            return True
        try:
            self._writer.restore_removed()
            while self._held:
                pending = self._held[0]
                self._writer.append(pending)
                self._held.popleft()
                self._held_bytes -= len(pending.data)
                self.lines_written += 1
        except OSError as exc:
            self._fail(exc, removed=self._deleted())
            return False
        self.failure = None
        self._from_sidecar.clear()
        self._forget_sidecar()
        return True

    def check_removed(self) -> list[str]:
        """Put OUTPUT (or the errors file) back if it was deleted; return the paths put back.

        One ``fstat`` per file when nothing happened. When a deleted file
        cannot be put back, the output starts holding (:attr:`failure` with
        ``removed`` set) and ``[]`` is returned. Does nothing while holding
        (:meth:`flush` puts files back then).
        """
        if self.failure is not None:
            return []
        try:
            return self._writer.restore_removed()
        except OSError as exc:
            self._fail(exc, removed=True)
            return []

    def _deleted(self) -> bool:
        try:
            return self._writer.output_removed()
        except (OSError, ValueError):
            return False

    def _fail(self, exc: OSError, *, removed: bool = False) -> None:
        if removed:
            self.failure = WriteFailure.not_put_back(exc, path=self._writer.path)
        else:
            self.failure = WriteFailure.from_os_error(exc, default_path=self._writer.path)

    def _hold(self, pending: PendingLine) -> None:
        self._held.append(pending)
        self._held_bytes += len(pending.data)

    # -- the sidecar ------------------------------------------------------------

    def absorb_sidecar(self) -> int:
        """Write the lines a stopped run saved in the sidecar into OUTPUT; return how many.

        Lines whose id OUTPUT already has (or that are torn) are skipped. The
        ids taken join the writer's done ids, so nothing sends them. Lines
        OUTPUT cannot take now are held (the run then starts by waiting);
        once all are in OUTPUT, the sidecar is deleted. A sidecar that cannot
        be read raises ``OSError``.
        """
        try:
            with open(self.sidecar, "rb") as file:
                lines = file.readlines()
        except FileNotFoundError:
            return 0
        self._sidecar_open = True
        taken = self.absorbed = 0
        for line in lines:
            pending = self._writer.adopt(line)
            if pending is None:
                continue
            taken += 1
            if self.failure is None:
                try:
                    self._writer.append(pending)
                    self.lines_written += 1
                    continue
                except OSError as exc:
                    self._fail(exc)
            self._hold(pending)
            self._from_sidecar.add(pending.custom_id)
        if self.failure is None:
            self._forget_sidecar()
        self.absorbed = taken
        return taken

    def _forget_sidecar(self) -> None:
        """Delete the sidecar once OUTPUT has every line of it, on disk."""
        if not self._sidecar_open:
            return
        try:
            # The lines must be safe in OUTPUT before their only other copy goes.
            self._writer.sync()
            os.unlink(self.sidecar)
        except FileNotFoundError:
            pass
        except OSError:
            return  # kept: the next run skips the lines OUTPUT has
        self._sidecar_open = False

    def save(self) -> SaveOutcome:
        """Append the held answers to the sidecar (at the end of a run that still holds some).

        If OUTPUT was deleted and could not be put back, its lines are saved
        there first (they exist nowhere else). Answers the sidecar already
        had count as kept without being written again; a line held only for
        the errors file is dropped (OUTPUT has it, and the next run completes
        the errors file from OUTPUT). When the first try finds no room, the
        reserve is given back and the rest tried once more.
        """
        orphaned: list[bytes] = []
        if self._deleted():
            orphaned = [line for line in self._writer.iter_output_lines() if line.endswith(b"\n")]
        answers = [
            pending.data
            for pending in self._held
            if not pending.in_output and pending.custom_id not in self._from_sidecar
        ]
        already = sum(1 for pending in self._held if pending.custom_id in self._from_sidecar)
        lines = orphaned + answers
        written = 0
        error: WriteFailure | None = None
        for attempt in range(2):
            try:
                sidecar = _AppendFile(self.sidecar, fsync_each_line=False)
                try:
                    while written < len(lines):
                        sidecar.append(lines[written])
                        written += 1
                finally:
                    sidecar.close()
                error = None
                break
            except OSError as exc:
                error = WriteFailure.from_os_error(exc, default_path=self.sidecar)
                if not (
                    attempt == 0
                    and exc.errno in _NO_SPACE
                    and self._reserve is not None
                    and self._reserve.release()
                ):
                    break
        written_kept = min(written, len(orphaned))
        kept = written - written_kept
        return SaveOutcome(
            path=self.sidecar,
            kept=already + kept,
            lost=len(answers) - kept,
            written_kept=written_kept,
            written_lost=len(orphaned) - written_kept,
            error=error,
        )

    def close(self) -> None:
        """Give the reserve back and close OUTPUT (``fsync``); raises ``OSError`` if that fails."""
        if self._reserve is not None:
            self._reserve.release()
        self._writer.close()
