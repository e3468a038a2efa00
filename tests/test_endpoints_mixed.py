"""Chat, responses and embeddings mixed, against the served mock: issue 15's "done when"."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pydantic
import pytest

import engine
from engine.mock import serve_in_subprocess

REPO = str(Path(__file__).resolve().parent.parent)
SECRET = "sk-proj-MixedEndpoints0123456789abcdefXYZ"
CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"

pytestmark = pytest.mark.wallclock


class Person(pydantic.BaseModel):
    """Someone mentioned in the text."""

    name: str
    age: int
    nickname: str | None = None


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with serve_in_subprocess(["--seed", "15"]) as url:
        yield url


@pytest.fixture
def mock(mock_url: str) -> Iterator[httpx.Client]:
    """A control client for the served mock, reset to an open configuration without faults."""
    root = mock_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=10, trust_env=False) as control:
        control.post(
            "/_mock/config", json={"latency_ms": 0.0, "api_key": None, "error_503_rate": 0.0}
        ).raise_for_status()
        control.post("/_mock/reset").raise_for_status()
        yield control


def sent_per_id(mock: httpx.Client) -> dict[str, int]:
    return mock.get("/_mock/stats").json()["client_request_ids"]


def mixed_requests(rng: random.Random) -> tuple[list[object], dict[str, int]]:
    """100 chat, 100 responses (every other one structured), 100 embeddings of 1-50 inputs.

    Returns the requests and, per embeddings id, the vector length it must get.
    """
    requests: list[object] = []
    lengths: dict[str, int] = {}
    for i in range(100):
        requests.append(
            engine.ChatRequest(id=f"chat-{i}", messages=f"question {i}", model=CHAT_MODEL)
        )
        requests.append(
            engine.ResponseRequest(
                id=f"resp-{i}",
                input=f"Person number {i} is {20 + i} years old.",
                model=CHAT_MODEL,
                response_model=Person if i % 2 == 0 else None,
            )
        )
        dimensions = rng.choice([None, 64, 256])
        inputs = [f"passage {i}.{j} " * rng.randint(1, 30) for j in range(rng.randint(1, 50))]
        requests.append(
            engine.EmbeddingRequest(
                id=f"emb-{i}", input=inputs, model=EMBEDDING_MODEL, dimensions=dimensions
            )
        )
        lengths[f"emb-{i}"] = dimensions or 1536
    rng.shuffle(requests)
    return requests, lengths


async def test_300_mixed_requests_through_map_with_503s(mock, mock_url):
    """300 mixed requests with 2% 503s: 300 results, distinct ids, models parsed, vectors sized."""
    mock.post("/_mock/config", json={"error_503_rate": 0.02}).raise_for_status()
    requests, lengths = mixed_requests(random.Random(15))
    bad = [
        engine.EmbeddingRequest(id="bad-many", input=["word"] * 2049, model=EMBEDDING_MODEL),
        engine.EmbeddingRequest(id="bad-long", input=["token " * 9000], model=EMBEDDING_MODEL),
        engine.EmbeddingRequest(id="bad-empty", input=[], model=EMBEDDING_MODEL),
    ]
    async with engine.open_client(
        base_url=mock_url, api_key=SECRET, retry_base_delay=0.01, concurrency=32
    ) as client:
        results = [result async for result in client.map([*requests, *bad])]
    by_id = {result.id: result for result in results}
    assert len(results) == 303 and len(by_id) == 303
    failed = {result.id: result.error for result in results if result.error is not None}
    assert set(failed) == {"bad-many", "bad-long", "bad-empty"}, failed
    assert "2,049 inputs" in failed["bad-many"].message
    assert "input[0] has 9," in failed["bad-long"].message
    assert "input is empty" in failed["bad-empty"].message
    assert all(error.code == "invalid_input" for error in failed.values())
    sent = sent_per_id(mock)
    assert not {"bad-many", "bad-long", "bad-empty"} & set(sent)
    assert mock.get("/_mock/stats").json()["status_counts"].get("503", 0) > 0
    for i in range(100):
        response = by_id[f"resp-{i}"]
        assert isinstance(response, engine.ResponseResult)
        assert isinstance(response.output, Person if i % 2 == 0 else str)
        embedding = by_id[f"emb-{i}"]
        assert isinstance(embedding, engine.EmbeddingResult)
        assert len(embedding.vectors) == len(embedding.input)
        assert {len(vector) for vector in embedding.vectors} == {lengths[f"emb-{i}"]}
        assert isinstance(by_id[f"chat-{i}"], engine.ChatResult)


def mixed_line(i: int) -> dict:
    kind = i % 3
    if kind == 0:
        url = "/v1/chat/completions"
        body: dict = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": f"q {i}"}]}
    elif kind == 1:
        url = "/v1/responses"
        body = {"model": CHAT_MODEL, "input": f"q {i}", "max_output_tokens": 32}
    else:
        url = "/v1/embeddings"
        body = {"model": EMBEDDING_MODEL, "input": [f"a {i}", f"b {i}"], "dimensions": 8}
    return {"custom_id": f"id-{i}", "method": "POST", "url": url, "body": body}


def engine_run(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", "run", *args]


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env["OPENAI_API_KEY"] = SECRET
    env["PYTHONPATH"] = REPO
    return env


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_engine_run_on_10000_mixed_lines_resumes_after_sigkill(tmp_path, mock, mock_url):
    """10,000 mixed lines, SIGKILLed twice mid-run, resumed: one line per id, none resent."""
    ids = [f"id-{i}" for i in range(10_000)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(mixed_line(i)) + b"\n" for i in range(10_000)))
    output = tmp_path / "out.jsonl"
    args = (str(source), "-o", str(output), "--base-url", mock_url, "--concurrency", "32")
    rng = random.Random(15)
    for _ in range(2):
        before = line_count(output)
        written = (
            {orjson.loads(line)["custom_id"] for line in output.read_bytes().splitlines()}
            if before
            else set()
        )
        sent_before = sent_per_id(mock)
        process = subprocess.Popen(
            engine_run(*args),
            cwd=REPO,
            env=environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(lambda before=before: line_count(output) > before + 200)
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            process.kill()
            process.communicate()
        sent_after = sent_per_id(mock)
        assert [i for i in written if sent_after.get(i, 0) != sent_before.get(i, 0)] == []
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert 0 < len(records) < len(ids)  # the kills landed mid-run
    written = {record["custom_id"] for record in records}
    sent_before = sent_per_id(mock)
    finished = subprocess.run(
        engine_run(*args),
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
    )
    assert finished.returncode == 0, finished.stderr
    sent_after = sent_per_id(mock)
    assert [i for i in written if sent_after.get(i, 0) != sent_before.get(i, 0)] == []
    records = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert sorted(record["custom_id"] for record in records) == sorted(ids)
    assert all(record["error"] is None for record in records)
    objects = Counter(record["response"]["body"].get("object") for record in records)
    assert objects == {"chat.completion": 3334, "response": 3333, "list": 3333}
    assert "by endpoint" in finished.stderr and "embeddings" in finished.stderr
