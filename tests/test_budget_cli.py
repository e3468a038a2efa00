"""``engine run --max-cost``: models priced before sending, spend shown, the resume command."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from engine._budget import load_prices
from engine.app._cli_run import _budget_resume, _check_prices, _cost_of_the_rest
from engine.app._progress import RunProgress, format_progress_line
from engine.app._summary import RunSummary, format_summary


def line(custom_id: str, model: str | None = "gpt-4o-mini") -> dict:
    body: dict = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    if model is not None:
        body["model"] = model
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def arguments(tmp_path: Path, lines: list[dict], **given) -> argparse.Namespace:
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(item) + b"\n" for item in lines))
    values = {
        "input": str(source),
        "output": str(tmp_path / "out.jsonl"),
        "model": None,
        "max_cost": 1.0,
        "prices": None,
    }
    return argparse.Namespace(**{**values, **given})


def test_every_model_of_the_input_needs_a_price_before_anything_is_sent(tmp_path):
    """An unpriced model anywhere in INPUT (or --model) refuses the run, naming each one."""
    args = arguments(tmp_path, [line("a"), line("b", "mystery-1"), line("c", None)])
    with pytest.raises(ValueError, match="mystery-1") as caught:
        _check_prices(args)
    assert "Nothing was sent" in str(caught.value)
    args = arguments(tmp_path, [line("a"), line("c", None)], model="mystery-2")
    with pytest.raises(ValueError, match="mystery-2"):
        _check_prices(args)


def test_a_prices_file_can_price_a_model_the_table_lacks(tmp_path):
    """--prices FILE adds models, so the same input is accepted."""
    prices = tmp_path / "prices.json"
    prices.write_text('{"models": {"mystery-1": {"input": 1, "output": 2}}}')
    args = arguments(tmp_path, [line("a"), line("b", "mystery-1")], prices=str(prices))
    assert _check_prices(args).price_for("mystery-1") is not None


def test_max_cost_must_be_positive(tmp_path):
    """--max-cost 0 is refused before the input is read."""
    with pytest.raises(ValueError, match="positive"):
        _check_prices(arguments(tmp_path, [line("a")], max_cost=0.0))


def test_the_resume_command_carries_a_cap_that_fits_every_item_not_run(tmp_path):
    """The suggested cap is the sum of the worst cases of the ids OUTPUT lacks, in cents."""
    args = arguments(tmp_path, [line("a"), line("b"), line("c")])
    Path(args.output).write_bytes(orjson.dumps({"custom_id": "a"}) + b"\n")
    rest = _cost_of_the_rest(args, load_prices())
    price = load_prices().models["gpt-4o-mini"]
    assert rest > 2 * price.cost(0, 100)  # two items, each its whole output budget and more
    summary = RunSummary(
        input_path=args.input,
        output_path=args.output,
        errors_path=None,
        total_lines=3,
        already_done=0,
        succeeded=1,
        failed=0,
        error_codes={},
        skipped=0,
        not_run=2,
        previously_failed=0,
        prompt_tokens=0,
        completion_tokens=0,
        audio_seconds=0.0,
        elapsed=1.0,
        stopped="cap",
        fatal_code="budget_exhausted",
        max_cost=0.001,
        spent=0.0009,
    )
    resume = ["engine", "run", args.input, "-o", args.output, "--max-cost", "0.001"]
    why, command = _budget_resume(summary, resume, 1.234)
    assert command == ["engine", "run", args.input, "-o", args.output, "--max-cost", "1.24"]
    assert "2 item(s) not run" in why and "$0.0009 spent" in why
    assert "spent" in format_summary(summary) and "$0.0010 cap" in format_summary(summary)


def test_the_progress_line_shows_spend_against_the_cap():
    """With a cap the line says how much of it is spent; without one it says nothing."""
    capped = RunProgress(elapsed=1, total=10, done=2, failed=0, in_flight=1, max_cost=25, spent=3.5)
    assert "spent $3.50 of $25.00" in format_progress_line(capped, bar=False)
    plain = RunProgress(elapsed=1, total=10, done=2, failed=0, in_flight=1)
    assert "spent" not in format_progress_line(plain, bar=False)


def test_a_new_round_of_a_run_gets_only_what_the_earlier_rounds_left_of_the_cap():
    """After OUTPUT held answers, the next client's cap is the run's cap less what was spent."""
    from types import SimpleNamespace

    from engine._budget import BudgetExhaustedError
    from engine.app.batch import _options_with_budget_left

    options = {"max_cost": 10.0, "api_key": "sk-x"}
    first = SimpleNamespace(closed=[])
    assert _options_with_budget_left(options, first) == (options, None)
    later = SimpleNamespace(closed=[SimpleNamespace(spent=3.0), SimpleNamespace(spent=2.5)])
    left, fatal = _options_with_budget_left(options, later)
    assert fatal is None and left["max_cost"] == 4.5 and left["api_key"] == "sk-x"
    spent = SimpleNamespace(closed=[SimpleNamespace(spent=10.0)])
    assert isinstance(_options_with_budget_left(options, spent)[1], BudgetExhaustedError)
    assert _options_with_budget_left({"api_key": "k"}, later) == ({"api_key": "k"}, None)
