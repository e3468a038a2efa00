"""The peers quota-engine is measured against, behind one entry point.

Each peer module exposes ``LOOP`` (``"trio"`` or ``"asyncio"``) and
``async def run(base_url, api_key, requests, limits, *, concurrency=None)
-> list[Record]`` (see :mod:`benchmarks.peers._common`).  :data:`PEERS` names
them; :func:`run_peer` runs one on the loop it needs, from synchronous code.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import math
from collections.abc import Callable, Iterable

import attrs
import trio

from benchmarks.peers._common import MODEL, BenchRequest, PeerLimits, Record, workload

__all__ = [
    "PEERS",
    "BenchRequest",
    "Peer",
    "PeerLimits",
    "Record",
    "prepare",
    "run_peer",
    "workload",
]


@attrs.frozen
class Peer:
    """One peer: a display label, its module and the coroutine function to call."""

    label: str
    module: str
    function: str = "run"

    def load(self) -> tuple[str, Callable]:
        """Import the module; return (loop name, the ``run`` coroutine function)."""
        module = importlib.import_module(self.module)
        return module.LOOP, getattr(module, self.function)


#: Every peer, in report order.
PEERS: dict[str, Peer] = {
    "openai_sdk": Peer("openai SDK + CapacityLimiter", "benchmarks.peers.openai_sdk"),
    "aiometer": Peer("aiometer (trio, httpx)", "benchmarks.peers.aiometer_peer"),
    "aiolimiter": Peer("aiolimiter + aiohttp", "benchmarks.peers.aiolimiter_peer"),
    "seed": Peer("seed approach", "benchmarks.peers.seed"),
    "engine_known": Peer("quota-engine (known limits)", "benchmarks.peers.quota_engine"),
    "engine_learned": Peer(
        "quota-engine (learned limits)", "benchmarks.peers.quota_engine", "run_learned"
    ),
}


def prepare(name: str) -> None:
    """Import peer ``name`` and load the tokenizer, so neither is timed as part of a run.

    Loading tiktoken's encoding costs seconds of CPU; every peer that counts
    tokens would otherwise pay it on its first request.
    """
    from engine._tokens import count_tokens

    PEERS[name].load()
    count_tokens("warm up", MODEL)


def run_peer(
    name: str,
    base_url: str,
    api_key: str,
    requests: Iterable[BenchRequest],
    limits: PeerLimits,
    *,
    concurrency: int | None = None,
    deadline: float | None = None,
) -> list[Record]:
    """Run peer ``name`` on its own event loop; blocks.

    ``deadline`` (seconds, default None: none) cancels the run when it passes;
    the records of the requests finished by then are returned.
    """
    loop, function = PEERS[name].load()
    records: list[Record] = []
    call = functools.partial(
        function, base_url, api_key, requests, limits, concurrency=concurrency, records=records
    )
    if loop == "trio":

        async def bounded_trio() -> None:
            with trio.move_on_after(deadline if deadline is not None else math.inf):
                await call()

        trio.run(bounded_trio)
    else:

        async def bounded_asyncio() -> None:
            try:
                await asyncio.wait_for(call(), deadline)
            except TimeoutError:
                pass

        asyncio.run(bounded_asyncio())
    return records
