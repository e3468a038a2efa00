"""A run summary with plain defaults, for tests of how summaries are shown."""

from __future__ import annotations

from typing import Any

from engine.app import batch


def make_summary(**changes: Any) -> batch.RunSummary:
    """A RunSummary of 10 lines all succeeded in 60 s; ``changes`` override any field."""
    values: dict[str, Any] = dict(
        input_path="in.jsonl",
        output_path="out.jsonl",
        errors_path=None,
        total_lines=10,
        already_done=0,
        succeeded=10,
        failed=0,
        error_codes={},
        skipped=0,
        not_run=0,
        previously_failed=0,
        prompt_tokens=100,
        completion_tokens=50,
        audio_seconds=0.0,
        elapsed=60.0,
    )
    values.update(changes)
    return batch.RunSummary(**values)
