"""A spending cap for a whole client: model prices and the budget book (pure state).

A :class:`PriceTable` says what a model costs per million tokens (input,
cached input, output).  One ships with the package (``engine/prices.json``,
with the date it was copied and its source); a JSON file of the same shape
overrides it.  A :class:`Budget` is the book of one client's cap: every
permit reserves its worst case in dollars before it is granted and settles
with what the answer's usage cost, so ``spent + reserved <= cap`` always
holds (docs/design.md, "The budget").
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import attrs

from engine._errors import FatalError, RequestTooLargeError

__all__ = [
    "Budget",
    "BudgetExhaustedError",
    "OverBudgetError",
    "Price",
    "PriceTable",
    "UnknownPriceError",
    "load_prices",
    "worst_case_input",
]

#: Token estimates are tiktoken counts of what is sent; a server may count a
#: few tokens more (message framing it adds, a newer tokenizer).  The worst
#: case reserves the estimate plus this share and :data:`INPUT_MARGIN_TOKENS`,
#: so a settled request does not cost more than it reserved.
INPUT_MARGIN = 0.05
INPUT_MARGIN_TOKENS = 16
#: Below this (dollars), a difference is float rounding, not money.
EPSILON = 1e-9


class UnknownPriceError(ValueError):
    """A budget is set and a model has no price in the table."""


class BudgetExhaustedError(FatalError):
    """The spending cap is reached: the next request could take spending over it.

    Requests in flight finish; waiting and later ones come back unsent
    (``run_stopped``).
    """

    default_code = "budget_exhausted"


class OverBudgetError(RequestTooLargeError):
    """One request's worst-case cost alone exceeds the whole spending cap."""

    default_code = "over_budget"


@attrs.frozen
class Price:
    """What one model costs, in US dollars per million tokens.

    Attributes:
        input: prompt tokens.
        cached_input: prompt tokens the server served from its cache.
        output: completion (output) tokens, reasoning tokens included.
    """

    input: float
    cached_input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """Dollars for a request's usage (``cached_tokens`` is part of ``input_tokens``)."""
        fresh = max(0, input_tokens - cached_tokens)
        return (
            fresh * self.input + cached_tokens * self.cached_input + output_tokens * self.output
        ) / 1e6


@attrs.frozen
class PriceTable:
    """Prices by model, with the date they were copied and from where.

    A model is found by its exact name, else by the longest name in the
    table it starts with followed by ``-`` (``gpt-4o-mini-2024-07-18`` costs
    what ``gpt-4o-mini`` does).
    """

    models: Mapping[str, Price]
    date: str = ""
    source: str = ""

    def price_for(self, model: str) -> Price | None:
        """The price of ``model``, or None when the table has none."""
        price = self.models.get(model)
        if price is not None:
            return price
        best = ""
        for name in self.models:
            if model.startswith(name + "-") and len(name) > len(best):
                best = name
        return self.models[best] if best else None

    def require(self, model: str) -> Price:
        """The price of ``model``.

        Raises:
            UnknownPriceError: the table has no price for it.
        """
        price = self.price_for(model)
        if price is None:
            raise UnknownPriceError(
                f"no price for model {model!r} (prices of {self.date or 'unknown date'}); "
                "a spending cap needs one: add it to a prices file (--prices FILE)"
            )
        return price


def _table_from(data: Any, where: str) -> PriceTable:
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ValueError(f"{where}: expected a JSON object with a 'models' object")
    models: dict[str, Price] = {}
    for name, entry in data["models"].items():
        try:
            price = Price(
                input=float(entry["input"]),
                cached_input=float(entry.get("cached_input", entry["input"])),
                output=float(entry.get("output", 0.0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(
                f"{where}: model {name!r} needs numbers 'input', 'cached_input' and 'output'"
            ) from None
        if not all(math.isfinite(p) and p >= 0 for p in attrs.astuple(price)):
            raise ValueError(f"{where}: model {name!r} has a negative or non-finite price")
        models[str(name)] = price
    return PriceTable(models, date=str(data.get("date", "")), source=str(data.get("source", "")))


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The shipped price table, or the one in the JSON file at ``path``.

    The file has the shape of ``engine/prices.json``: ``{"date": ...,
    "source": ..., "models": {name: {"input": ..., "cached_input": ...,
    "output": ...}}}`` (USD per 1M tokens; ``cached_input`` defaults to
    ``input``, ``output`` to 0).  A file replaces the shipped table whole,
    except that models it does not name keep their shipped price.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not such a table.
    """
    shipped_text = importlib.resources.files("engine").joinpath("prices.json").read_text("utf-8")
    shipped = _table_from(json.loads(shipped_text), "engine/prices.json")
    if path is None:
        return shipped
    with open(path, encoding="utf-8") as file:
        try:
            data = json.load(file)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{os.fspath(path)}: not JSON ({exc})") from None
    given = _table_from(data, os.fspath(path))
    return PriceTable(
        {**shipped.models, **given.models},
        date=given.date or shipped.date,
        source=given.source or os.fspath(path),
    )


def worst_case_input(estimated_tokens: int) -> int:
    """Input tokens a permit reserves money for: the estimate plus a margin."""
    return math.ceil(estimated_tokens * (1 + INPUT_MARGIN)) + INPUT_MARGIN_TOKENS


@attrs.define
class Budget:
    """The book of one spending cap (dollars); pure state, owned by the limiter task.

    Attributes:
        cap: the most the client may spend.
        spent: dollars settled so far (by the answers' usage).
        reserved: worst cases of the permits in flight.
        exhausted: set once a request could not fit with nothing in flight.
    """

    cap: float
    spent: float = 0.0
    reserved: float = 0.0
    exhausted: bool = False

    def __attrs_post_init__(self) -> None:
        if not (math.isfinite(self.cap) and self.cap > 0):
            raise ValueError(f"max_cost must be a positive number, got {self.cap!r}")

    def fits(self, worst_case: float) -> bool:
        """True when reserving ``worst_case`` keeps ``spent + reserved`` within the cap."""
        return self.spent + self.reserved + worst_case <= self.cap + EPSILON

    def reserve(self, worst_case: float) -> None:
        """Hold ``worst_case`` for a granted permit."""
        self.reserved += worst_case

    def settle(self, worst_case: float, spent: float) -> None:
        """A permit's request cost ``spent``; its ``worst_case`` is no longer held."""
        self.reserved = max(0.0, self.reserved - worst_case)
        self.spent += spent

    def refund(self, worst_case: float) -> None:
        """A permit's request cost nothing (never sent, 429, an error status)."""
        self.reserved = max(0.0, self.reserved - worst_case)

    def can_never_fit(self, worst_case: float) -> bool:
        """True when ``worst_case`` does not fit even once everything in flight settles.

        Settling only frees what is reserved and only adds to what is
        spent, so a request that would take ``spent`` alone over the cap
        never fits.
        """
        return self.spent + worst_case > self.cap + EPSILON
