"""The example of docs/guide.md's "A pool of keys" runs against a mock keeping a quota per key."""

from __future__ import annotations

import re

from guide_examples import run_examples

KEYS = {"KEY_A": "sk-guide-a", "KEY_B": "sk-guide-b", "KEY_C": "sk-guide-c"}


def test_the_pool_example_finishes_on_the_keys_left_when_one_is_revoked(tmp_path):
    """Every request is answered; the revoked key's member served 40, then was retired."""
    mock = [
        *("--key-limits", "sk-guide-a=rpm:600", "--key-limits", "sk-guide-b=rpm:600"),
        *("--key-limits", "sk-guide-c=rpm:1200", "--revoke-key", "sk-guide-b=40"),
    ]
    (output,) = run_examples("A pool of keys", tmp_path, mock_args=mock, count=1, env=KEYS)
    assert "300 of 300 answered" in output
    assert re.search(r"^team-b: 40 answered, 0 429s, retired \(HTTP 401: ", output, re.MULTILINE)
    served = [
        int(n) for n in re.findall(r"^team-[ac]: (\d+) answered, 0 429s, serving$", output, re.M)
    ]
    assert len(served) == 2 and sum(served) == 260
    assert "sk-guide" not in output
