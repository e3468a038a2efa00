"""The examples of docs/guide.md's "Embedding in a trio app", "Testing your app" and the
endpoint sections ("The Responses API", "Embeddings") run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from guide_examples import environment, examples, run_examples


def test_the_embedding_examples_run_against_the_mock(tmp_path):
    """Each script of "Embedding in a trio app" exits 0 against a served mock, on loopback."""
    run_examples("Embedding in a trio app", tmp_path, count=4)


@pytest.mark.parametrize("section", ["The Responses API", "Embeddings"])
def test_the_endpoint_examples_run_against_the_mock(tmp_path, section):
    """The script of each endpoint's section exits 0 against a served mock, on loopback."""
    run_examples(section, tmp_path, count=1)


def test_the_testing_example_passes_as_a_users_test_file(tmp_path):
    """The test file of "Testing your app", alone in an empty directory, passes with pytest."""
    (example,) = examples("Testing your app")
    (tmp_path / "test_app.py").write_text(example, encoding="utf-8")
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "2 passed" in finished.stdout
