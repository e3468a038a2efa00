"""Run docs/guide.md's examples: a section's python blocks as scripts against a served mock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from engine.mock import serve_in_subprocess

GUIDE = Path(__file__).parent.parent / "docs" / "guide.md"
_CODE_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def examples(section: str) -> list[str]:
    """The python code blocks of the guide's ``## section``, up to the next ``## ``."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return _CODE_BLOCK.findall(text[start : end if end != -1 else len(text)])


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without pytest's and OpenAI's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "OPENAI_"))}
    env.update(extra)
    return env


def run_examples(
    section: str,
    tmp_path: Path,
    *,
    mock_args: Sequence[str] = ("--rpm", "6000"),
    count: int | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """Run every python block of ``section`` against one served mock; return their stdouts.

    Each script runs in ``tmp_path`` with ``OPENAI_BASE_URL`` set to the mock
    (``engine mock *mock_args``), ``OPENAI_API_KEY`` to a test key, and
    ``env`` added; each must exit 0 without a traceback.  ``count``: how many
    blocks the section must have (None: any number, at least one).
    """
    scripts = examples(section)
    assert scripts and (count is None or len(scripts) == count), (section, len(scripts))
    outputs = []
    with serve_in_subprocess(list(mock_args)) as base_url:
        full_env = environment(
            OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-guide-example", **(env or {})
        )
        for number, script in enumerate(scripts):
            path = tmp_path / f"example_{number}.py"
            path.write_text(script, encoding="utf-8")
            finished = subprocess.run(
                [sys.executable, str(path)],
                cwd=tmp_path,
                env=full_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert finished.returncode == 0, f"{path.name}:\n{finished.stdout}{finished.stderr}"
            assert "Traceback" not in finished.stderr, finished.stderr
            outputs.append(finished.stdout)
    return outputs
