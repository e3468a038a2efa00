"""An application's tests, using quota-engine's pytest plugin.

Needs only pytest, pytest-trio and quota-engine installed: the ``engine_mock``
fixture comes with quota-engine, no conftest and no import of the plugin.
"""

import time

import pytest
import trio

import engine


# The application under test.  In a real project it lives in the app's package.
async def label_reviews(client: engine.Client, reviews: list[str]) -> dict[str, str]:
    """Ask the model for one label per review; return {review id: label}."""
    requests = (
        engine.ChatRequest(
            id=f"review-{number}",
            messages=f"Label this review as positive or negative: {text}",
            model="gpt-4o-mini",
            params={"max_tokens": 5},
        )
        for number, text in enumerate(reviews)
    )
    labels = {}
    async for result in client.map(requests):
        result.raise_for_error()
        labels[result.id] = result.output
    return labels


@pytest.mark.trio
async def test_a_thousand_reviews_are_labelled_within_the_rate_limit(engine_mock, autojump_clock):
    """1,000 calls at 600 requests a minute: each sent once, no 429, 40 virtual seconds."""
    engine_mock.configure(rpm=600, latency_ms=300)
    started = time.perf_counter()
    async with engine_mock.open_client(limits=engine.Limits(rpm=600)) as client:
        labels = await label_reviews(client, [f"review {n}" for n in range(1000)])
    wall = time.perf_counter() - started
    print(f"1000 calls: {wall:.2f} s of wall time, {trio.current_time():.1f} s of trio time")

    assert len(labels) == 1000
    stats = engine_mock.stats()
    assert stats.status_counts == {200: 1000}
    assert stats.client_request_ids == {f"review-{n}": 1 for n in range(1000)}
    assert stats.tokens_charged > 0
    # A full minute's bucket (600) at once, then 10 a second: at least 40 s, all virtual.
    assert trio.current_time() >= 40
    assert wall < 5


@pytest.mark.trio
async def test_the_app_reports_a_server_outage(engine_mock, autojump_clock):
    """When every call gets 503, the app's error is the engine's, retried max_attempts times."""
    engine_mock.configure(error_503_rate=1.0)
    async with engine_mock.open_client(max_attempts=2) as client:
        with pytest.raises(engine.RetriesExhaustedError):
            await label_reviews(client, ["fine"])
    assert engine_mock.stats().client_request_ids == {"review-0": 2}
