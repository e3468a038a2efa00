"""The examples of docs/guide.md's "Streaming in a trio app" run against a served mock
that streams (time to first token and gaps between tokens configured), on loopback."""

from __future__ import annotations

import re

from guide_examples import run_examples


def test_the_streaming_examples_run_against_the_mock(tmp_path):
    """Each script of "Streaming in a trio app" exits 0 and prints what it promises."""
    mock = ["--rpm", "6000", "--ttft-ms", "40", "--ms-per-output-token", "10"]
    outputs = run_examples("Streaming in a trio app", tmp_path, mock_args=mock, count=2)
    assert "first token after" in outputs[0] and "counted from the usage chunk" in outputs[0]
    # 4: the essay finishes within its deadline unless the machine is very slow
    assert "ttft" in outputs[1] and re.search(r"\b[34] streams read to the end$", outputs[1])
