"""The examples of docs/guide.md's "Streaming in a trio app" run against a served mock
that streams (time to first token and gaps between tokens configured), on loopback."""

from __future__ import annotations

import re
import subprocess
import sys

from test_guide_examples import _environment, _examples

from engine.mock import serve_in_subprocess


def test_the_streaming_examples_run_against_the_mock(tmp_path):
    """Each script of "Streaming in a trio app" exits 0 and prints what it promises."""
    scripts = _examples("Streaming in a trio app")
    assert len(scripts) == 2
    outputs = []
    mock = ["--rpm", "6000", "--ttft-ms", "40", "--ms-per-output-token", "10"]
    with serve_in_subprocess(mock) as base_url:
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
            outputs.append(finished.stdout)
    assert "first token after" in outputs[0] and "counted from the usage chunk" in outputs[0]
    # 4: the essay finishes within its deadline unless the machine is very slow
    assert "ttft" in outputs[1] and re.search(r"\b[34] streams read to the end$", outputs[1])
