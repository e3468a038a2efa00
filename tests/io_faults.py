"""Write failures on demand for the I/O fault tests: ``os.write`` on one file fails.

In-process, a test installs a :class:`WriteFaults` over ``os.write`` with
``monkeypatch``. For an ``engine run`` subprocess, :func:`subprocess_env`
writes a ``sitecustomize`` that installs one at interpreter start, configured
by a JSON file, and healed when a given file appears.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

_real_write = os.write
_TESTS = str(Path(__file__).resolve().parent)


class WriteFaults:
    """``os.write`` on the file at ``path`` fails with ``error`` once ``after_bytes`` more went in.

    A write that crosses the limit is cut short first (a real full disk takes
    what fits, then refuses), so the writer's clean-up of a partial line runs
    too. The file is recognised by its name through ``/proc/self/fd``, so a
    file recreated at the same path fails too. Until :meth:`heal` is called
    (or ``heal_file`` exists), every later write to it fails; other files
    are left alone. ``on_first_failure`` is called once, at the first failure.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        error: int,
        *,
        after_bytes: int = 0,
        on_first_failure: Callable[[], None] | None = None,
        heal_file: str | None = None,
    ) -> None:
        self.path = os.path.realpath(path)
        self.error = error
        self.after_bytes = after_bytes
        self.on_first_failure = on_first_failure
        self.heal_file = heal_file
        self.written = 0
        self.failures = 0
        self.healed = False

    def heal(self) -> None:
        """From now on writes to the file succeed."""
        self.healed = True

    def write(self, fd: int, data: bytes) -> int:
        """``os.write``, failing on the target file as configured."""
        if self.healed or not self._is_target(fd):
            return _real_write(fd, data)
        if self.heal_file is not None and os.path.exists(self.heal_file):
            self.healed = True
            return _real_write(fd, data)
        room = self.after_bytes - self.written
        if room <= 0:
            self.failures += 1
            if self.failures == 1 and self.on_first_failure is not None:
                self.on_first_failure()
            raise OSError(self.error, os.strerror(self.error))
        written = _real_write(fd, bytes(data)[:room])
        self.written += written
        return written

    def _is_target(self, fd: int) -> bool:
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return False
        return name.removesuffix(" (deleted)") == self.path


def subprocess_env(
    directory: Path, target: Path, error: int, *, after_bytes: int, heal_file: Path
) -> dict[str, str]:
    """Environment additions that make an ``engine run`` child fail writes to ``target``.

    The child's ``sitecustomize`` (written into ``directory``) installs a
    :class:`WriteFaults` with these settings; creating ``heal_file`` heals it.
    Returns ``{"PYTHONPATH": ...}`` to put in front of the child's own path.
    """
    config = directory / "write_faults.json"
    config.write_text(
        json.dumps(
            {
                "path": str(target),
                "errno": error,
                "after_bytes": after_bytes,
                "heal_file": str(heal_file),
            }
        )
    )
    (directory / "sitecustomize.py").write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {_TESTS!r})\n"
        "from io_faults import WriteFaults\n"
        f"_config = json.load(open({str(config)!r}))\n"
        "os.write = WriteFaults(_config['path'], _config['errno'], "
        "after_bytes=_config['after_bytes'], heal_file=_config['heal_file']).write\n"
    )
    return {"PYTHONPATH": str(directory)}
