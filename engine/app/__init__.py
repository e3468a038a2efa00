"""The application layer: the ``engine`` command and the batch runs under it.

Built on the core (``engine/`` itself: the client, the limiter and its quota
book, the HTTP transport, the pure header, retry and token rules), which
imports nothing from here. ``cli`` is the ``engine`` command; ``_cli_run`` and
``_cli_bench`` its ``run``/``transcribe`` and ``bench`` subcommands (``mock``
lives with the mock, :mod:`engine.mock`); ``batch`` runs a JSONL file or a
folder of recordings through a client, on the file layer ``_jsonl`` (input,
crash-safe output, resume), ``_output`` (answers held while OUTPUT cannot
take them), ``_audio_inputs`` (recordings found in folders), ``_progress``
(the live line) and ``_summary`` (what a run did, its exit status); ``demo``
is ``make demo``.
"""
