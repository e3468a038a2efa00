"""GuideLLM, AIPerf and ``vllm bench serve`` side by side with ``engine bench``, offline.

The comparison issue 16 asks for, rerun with one command::

    python -m benchmarks.serving_peers setup      # once: venvs + local tokenizer
    python -m benchmarks.serving_peers run [--quick]
    python -m benchmarks.serving_peers report     # only this section of docs/benchmarks.md

``setup`` (:mod:`.install`) puts one virtual environment per tool and a
tokenizer directory built from tiktoken's o200k_base under
``~/.cache/quota-engine/serving-peers`` (``$QUOTA_ENGINE_PEERS_HOME``), never
in the repository.  ``run`` (:mod:`.runner`) starts ``engine mock`` on
loopback, runs each tool streaming against it (a latency step, then an
open-loop rate sweep), parses each tool's own result file into one schema
(:mod:`.tools`), answers the issue's questions (:mod:`.verdicts`) and writes
``bench-results/serving_peers.json``; ``benchmarks/report.py`` turns that into
the ``serving_peers`` section of docs/benchmarks.md.
"""
