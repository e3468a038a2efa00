"""The examples of docs/guide.md's "Embedding in a trio app", "Testing your app" and the
endpoint sections ("The Responses API", "Embeddings") run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.mock import serve_in_subprocess

GUIDE = Path(__file__).parent.parent / "docs" / "guide.md"
_CODE_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def _examples(section: str) -> list[str]:
    """The python code blocks of the guide's ``## section``, up to the next ``## ``."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return _CODE_BLOCK.findall(text[start : end if end != -1 else len(text)])


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "OPENAI_"))}
    env.update(extra)
    return env


def test_the_embedding_examples_run_against_the_mock(tmp_path):
    """Each script of "Embedding in a trio app" exits 0 against a served mock, on loopback."""
    scripts = _examples("Embedding in a trio app")
    assert len(scripts) == 4
    with serve_in_subprocess(["--rpm", "6000"]) as base_url:
        env = _environment(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-guide-example")
        for number, script in enumerate(scripts):
            path = tmp_path / f"example_{number}.py"
            path.write_text(script, encoding="utf-8")
            finished = subprocess.run(
                [sys.executable, str(path)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert finished.returncode == 0, f"{path.name}:\n{finished.stdout}{finished.stderr}"
            assert "Traceback" not in finished.stderr


@pytest.mark.parametrize("section", ["The Responses API", "Embeddings"])
def test_the_endpoint_examples_run_against_the_mock(tmp_path, section):
    """The script of each endpoint's section exits 0 against a served mock, on loopback."""
    (script,) = _examples(section)
    path = tmp_path / "example.py"
    path.write_text(script, encoding="utf-8")
    with serve_in_subprocess(["--rpm", "6000"]) as base_url:
        env = _environment(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-guide-example")
        finished = subprocess.run(
            [sys.executable, str(path)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert finished.returncode == 0, f"{section}:\n{finished.stdout}{finished.stderr}"
    assert "Traceback" not in finished.stderr


def test_the_testing_example_passes_as_a_users_test_file(tmp_path):
    """The test file of "Testing your app", alone in an empty directory, passes with pytest."""
    (example,) = _examples("Testing your app")
    (tmp_path / "test_app.py").write_text(example, encoding="utf-8")
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "2 passed" in finished.stdout
