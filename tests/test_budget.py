"""The spending cap: the budget book, the limiter under a cap, and runs against the mock."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
import trio
import trio.testing

import engine
from engine._budget import Budget, Price, PriceTable, load_prices, worst_case_input
from engine._limiter import Limiter
from engine._quota import Cost, QuotaBook
from engine.app import batch
from engine.mock import MockConfig, create_app

MODEL = "gpt-4o-mini"
KEY = "sk-budget-test-secret-0123456789"


def test_budget_fits_only_what_keeps_spent_plus_reserved_within_the_cap():
    """A reservation fits while spent + reserved + it <= cap; settling frees the worst case."""
    budget = Budget(1.0)
    assert budget.fits(0.6)
    budget.reserve(0.6)
    assert not budget.fits(0.5) and not budget.can_never_fit(0.5)
    budget.settle(0.6, 0.2)
    assert budget.spent == pytest.approx(0.2) and budget.reserved == 0
    assert budget.fits(0.8) and not budget.fits(0.81)
    assert budget.can_never_fit(0.81)


def test_refund_returns_the_whole_worst_case():
    """A 429 or an unsent permit costs nothing."""
    budget = Budget(1.0)
    budget.reserve(0.7)
    budget.refund(0.7)
    assert budget.spent == 0 and budget.reserved == 0


def test_budget_refuses_a_cap_that_is_not_positive():
    """max_cost must be a positive, finite number."""
    for cap in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_cost"):
            Budget(cap)


def test_shipped_prices_have_a_date_a_source_and_match_dated_snapshots():
    """The packaged table names its date and source; a dated model name finds its family."""
    table = load_prices()
    assert table.date and "openai" in table.source
    assert table.price_for("gpt-4o-mini-2024-07-18") == table.models["gpt-4o-mini"]
    assert table.price_for("gpt-4o-2024-08-06") == table.models["gpt-4o"]
    assert table.price_for("no-such-model") is None
    with pytest.raises(engine.UnknownPriceError, match="no-such-model"):
        table.require("no-such-model")


def test_a_prices_file_overrides_and_adds_models(tmp_path):
    """Models in the file replace or add to the shipped ones; the rest keep their price."""
    path = tmp_path / "prices.json"
    path.write_text('{"date": "2030-01-01", "models": {"mine": {"input": 1, "output": 2}}}')
    table = load_prices(path)
    assert table.models["mine"] == Price(input=1.0, cached_input=1.0, output=2.0)
    assert "gpt-4o" in table.models and table.date == "2030-01-01"
    path.write_text('{"models": {"bad": {"input": -1}}}')
    with pytest.raises(ValueError, match="negative"):
        load_prices(path)


def test_price_counts_cached_input_at_its_own_price():
    """Cached prompt tokens cost the cached price, the rest the input price."""
    price = Price(input=2.0, cached_input=1.0, output=8.0)
    assert price.cost(1_000_000, 0) == pytest.approx(2.0)
    assert price.cost(1_000_000, 1_000_000, cached_tokens=500_000) == pytest.approx(9.5)


async def test_limiter_holds_a_permit_until_settles_free_room_then_stops_when_spent():
    """No grant takes spent + reserved over the cap; a request that can never fit stops it."""
    budget = Budget(1.0)
    limiter = Limiter(QuotaBook(engine.Limits()), budget=budget)
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        first = await limiter.acquire("m", Cost(tokens=1, dollars=0.6))
        granted: list[object] = []

        async def second() -> None:
            try:
                granted.append(await limiter.acquire("m", Cost(tokens=1, dollars=0.6)))
            except engine.RunStoppedError as exc:
                granted.append(exc)

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert granted == [] and budget.reserved == pytest.approx(0.6)
        limiter.settle_nowait(first, spent=0.5)  # 0.5 + 0.6 > 1: never fits
        await trio.testing.wait_all_tasks_blocked()
        assert isinstance(granted[0], engine.RunStoppedError)
        assert isinstance(limiter.budget_error, engine.BudgetExhaustedError)
        assert budget.spent == pytest.approx(0.5) and budget.reserved == 0
        limiter.close()


async def test_a_request_over_the_whole_cap_fails_at_once():
    """A worst case above the cap is an OverBudgetError, not a wait, and stops nothing."""
    limiter = Limiter(QuotaBook(engine.Limits()), budget=Budget(1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(limiter.run)
        with pytest.raises(engine.OverBudgetError, match="exceeds the whole"):
            await limiter.acquire("m", Cost(tokens=1, dollars=1.5))
        assert limiter.budget_error is None
        reservation = await limiter.acquire("m", Cost(tokens=1, dollars=0.5))
        limiter.rate_limited_nowait(reservation)
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics().cost_reserved == 0 and limiter.statistics().spent == 0
        limiter.close()


def chat_line(custom_id: str, model: str = MODEL) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Tell me about {custom_id}"}],
        "max_tokens": 60,
    }
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_input(path: Path, lines: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def spend_of(output: Path, table: PriceTable) -> tuple[float, int]:
    """Dollars the output's answers cost by the mock's usage, and how many answers."""
    total = 0.0
    count = 0
    for raw in output.read_bytes().splitlines():
        record = orjson.loads(raw)
        usage = record["response"]["body"]["usage"]
        price = table.require(record["response"]["body"]["model"])
        total += price.cost(usage["prompt_tokens"], usage["completion_tokens"])
        count += 1
    return total, count


def client_options(app, **extra) -> dict:
    return {
        "base_url": "http://127.0.0.1/v1",
        "api_key": KEY,
        "transport": httpx.ASGITransport(app),
        "retry_base_delay": 0.01,
        **extra,
    }


async def test_half_the_cost_stops_at_the_cap_and_a_rerun_finishes_the_rest(
    tmp_path, autojump_clock
):
    """Done when (issue 17): spend ends <= cap; the rerun sends only the rest, none twice."""
    table = load_prices()
    lines = [chat_line(f"r{i}") for i in range(40)]
    source = write_input(tmp_path / "in.jsonl", lines)
    full = tmp_path / "full.jsonl"
    await batch.run_file(source, full, client_options=client_options(create_app(MockConfig())))
    whole, answered = spend_of(full, table)
    assert answered == 40

    app = create_app(MockConfig())
    output = tmp_path / "out.jsonl"
    cap = whole / 2
    summary = await batch.run_file(
        source, output, client_options=client_options(app, max_cost=cap, concurrency=8)
    )
    spent, done = spend_of(output, table)
    assert spent <= cap
    assert 0 < done < 40 and summary.not_run == 40 - done
    assert summary.fatal_code == "budget_exhausted"
    assert summary.client_statistics is not None
    assert summary.client_statistics.spent == pytest.approx(spent)

    rerun = await batch.run_file(
        source, output, client_options=client_options(app, max_cost=whole, concurrency=8)
    )
    assert rerun.stopped is None and rerun.succeeded == 40 - done
    ids = Counter(orjson.loads(raw)["custom_id"] for raw in output.read_bytes().splitlines())
    assert sorted(ids) == sorted(f"r{i}" for i in range(40)) and set(ids.values()) == {1}
    assert all(count == 1 for count in app.stats.client_request_ids.values())


async def test_a_model_without_a_price_is_an_unsent_input_error(autojump_clock):
    """With a cap, a request for an unpriced model fails before any permit or send."""
    app = create_app(MockConfig(models=("gpt-4o-mini", "mystery")))
    async with engine.open_client(**client_options(app, max_cost=1.0)) as client:
        results = [r async for r in client.map([chat_line("a", "mystery")])]
        assert results[0].error is not None and "no price" in results[0].error.message
        assert client.statistics().sent == 0


def test_worst_case_input_leaves_a_margin():
    """The reserved input is never below the estimate."""
    assert worst_case_input(0) == 16 and worst_case_input(1000) == 1066


def _answer(prompt: int, completion: int, cached: int = 0) -> httpx.Response:
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }
    body = {
        "id": "c1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }
    return httpx.Response(200, json=body)


async def test_an_answer_is_charged_its_usage_with_cached_tokens_at_the_cached_price(
    autojump_clock,
):
    """spent = fresh prompt x input + cached x cached_input + completion x output."""
    transport = httpx.MockTransport(lambda request: _answer(1000, 100, cached=600))
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=transport, max_cost=1.0
    ) as client:
        await client.chat("hi", model=MODEL)
        await trio.testing.wait_all_tasks_blocked()  # the limiter has handled the settle
        price = load_prices().models[MODEL]
        assert client.statistics().spent == pytest.approx(price.cost(1000, 100, cached_tokens=600))
        assert client.statistics().limiter.cost_reserved == 0


async def test_a_429_and_a_500_cost_nothing_and_the_retry_is_charged_once(autojump_clock):
    """Refused attempts give their reservation back; only the answer's usage is spent."""
    replies = iter(
        [
            httpx.Response(429, json={"error": {"code": "rate_limit_exceeded", "message": "x"}}),
            httpx.Response(500, json={"error": {"message": "boom"}}),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(replies, None) or _answer(20, 10))
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key=KEY,
        transport=transport,
        max_cost=1.0,
        retry_base_delay=0.01,
    ) as client:
        result = await client.chat("hi", model=MODEL)
        assert result.attempts == 3
        await trio.testing.wait_all_tasks_blocked()
        statistics = client.statistics()
        assert statistics.spent == pytest.approx(load_prices().models[MODEL].cost(20, 10))
        assert statistics.limiter.cost_reserved == 0 and statistics.max_cost == 1.0


async def test_a_client_without_a_cap_counts_no_spend(autojump_clock):
    """No max_cost: nothing is priced, and an unpriced model is sent as usual."""
    transport = httpx.MockTransport(lambda request: _answer(20, 10))
    async with engine.open_client(
        base_url="http://127.0.0.1/v1", api_key=KEY, transport=transport
    ) as client:
        await client.chat("hi", model="unpriced-model")
        assert client.statistics().spent == 0 and client.statistics().max_cost is None
