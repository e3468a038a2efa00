"""The example of docs/guide.md's "Metrics" runs against the served mock."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from engine.mock import serve_in_subprocess

GUIDE = Path(__file__).parent.parent / "docs" / "guide.md"


def test_the_metrics_example_prints_the_run_s_counters(tmp_path):
    """The script exits 0 and prints 50 succeeded requests as Prometheus samples."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("\n## Metrics\n")
    section = text[start : text.index("\n## ", start + 1)]
    (script,) = re.findall(r"^```python\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    path = tmp_path / "example.py"
    path.write_text(script, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "OPENAI_"))}
    with serve_in_subprocess([]) as base_url:
        env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="sk-guide-example")
        finished = subprocess.run(
            [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=120
        )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert 'quota_engine_requests_total{outcome="succeeded"} 50.0' in finished.stdout
