"""The example of docs/guide.md's "Metrics" runs against the served mock."""

from __future__ import annotations

from guide_examples import run_examples


def test_the_metrics_example_prints_the_run_s_counters(tmp_path):
    """The script exits 0 and prints 50 succeeded requests as Prometheus samples."""
    (output,) = run_examples("Metrics", tmp_path, mock_args=(), count=1)
    assert 'quota_engine_requests_total{outcome="succeeded"} 50.0' in output
