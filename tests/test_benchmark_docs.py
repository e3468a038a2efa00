"""docs/benchmarks.md keeps the generated sections that benchmarks/report.py rewrites."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import report

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTIONS = ("utilisation", "overhead", "memory", "pool", "robustness")


@pytest.mark.parametrize("name", SECTIONS)
def test_the_report_holds_each_generated_section_once(name):
    """Each section report.py writes has its begin and end markers once, in order."""
    text = (DOCS / "benchmarks.md").read_text()
    begin, end = f"<!-- bench:begin {name} -->", f"<!-- bench:end {name} -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    assert text.index(begin) < text.index(end)


def test_regenerating_a_section_replaces_it_in_place():
    """replace_section finds the report's section: new body in, nothing appended."""
    text = (DOCS / "benchmarks.md").read_text()
    replaced = report.replace_section(text, "memory", "## Memory\n\nnew body")
    assert "new body" in replaced
    assert replaced.rstrip().endswith("<!-- bench:end robustness -->")
    assert len(replaced) < len(text)


def test_the_history_has_no_generated_section():
    """The dated notes are written by hand only: regenerating never touches them."""
    assert "bench:begin" not in (DOCS / "benchmarks-history.md").read_text()
