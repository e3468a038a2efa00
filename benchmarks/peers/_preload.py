"""Imported once by the fork server of :func:`benchmarks.peers._harness.fork_child`.

Every peer module, the scenario modules and tiktoken's encoding are loaded
here, so a forked child starts in milliseconds instead of paying seconds of
imports (and tokenizer loading) on the client CPU each time.
"""

from __future__ import annotations

import benchmarks.memory
import benchmarks.overhead
import benchmarks.utilisation  # noqa: F401
from benchmarks.peers import PEERS, prepare

for _name in PEERS:
    prepare(_name)
