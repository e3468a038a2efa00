"""The example of docs/guide.md's "A spending cap" runs against the served mock."""

from __future__ import annotations

import re

from guide_examples import run_examples


def test_the_spending_cap_example_stops_at_the_cap_against_the_mock(tmp_path):
    """The script exits 0, says it stopped, and answered some requests but not all."""
    (output,) = run_examples("A spending cap", tmp_path, mock_args=(), count=1)
    assert "stopped: the spending cap" in output
    answered, not_sent = re.search(r"(\d+) answered, (\d+) not sent", output).groups()
    assert int(answered) > 0 and int(not_sent) > 0 and int(answered) + int(not_sent) == 200
