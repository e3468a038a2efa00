"""Exports of responses and embeddings results: one row per input, vectors kept whole."""

from __future__ import annotations

import orjson
import pytest

import engine
from engine._results import Timings

TIMINGS = Timings(queued_at=1_700_000_000.0, sent_at=1_700_000_001.0, finished_at=1_700_000_002.0)


def embedding(id: str = "e-1") -> engine.EmbeddingResult:
    return engine.EmbeddingResult(
        id=id,
        vectors=[[0.1, 0.2], [0.3, 0.4]],
        model="text-embedding-3-small",
        usage=engine.EmbeddingUsage(prompt_tokens=5, total_tokens=5),
        timings=TIMINGS,
        input=["a", [1, 2]],
    )


def response() -> engine.ResponseResult:
    return engine.ResponseResult(
        id="r-1",
        output="hello",
        model="gpt-4o-mini",
        usage=engine.ResponseUsage(input_tokens=3, output_tokens=2, total_tokens=5),
        timings=TIMINGS,
        status="completed",
        input="hi",
    )


def test_rows_give_one_row_per_embedded_input():
    """Each input of an embeddings result is its own row with its index, text and vector."""
    rows = engine.to_rows([embedding()])
    assert [(row["input_index"], row["input"]) for row in rows] == [(0, "a"), (1, "[1,2]")]
    assert orjson.loads(rows[1]["vector"]) == [0.3, 0.4]
    assert {row["kind"] for row in rows} == {"embeddings"}
    assert {row["prompt_tokens"] for row in rows} == {5}


def test_dataframe_keeps_each_vector_as_a_list_in_one_column():
    """to_dataframe: one row per input, the vector a list of floats in ``vector``."""
    pytest.importorskip("pandas")
    frame = engine.to_dataframe([embedding(), response()])
    vectors = frame.loc[frame["kind"] == "embeddings", "vector"].tolist()
    assert vectors == [[0.1, 0.2], [0.3, 0.4]]
    assert frame.loc[frame["kind"] == "responses", "output"].tolist() == ["hello"]
    assert len(frame) == 3


def test_jsonl_writes_one_object_per_embeddings_request(tmp_path):
    """to_jsonl keeps a request whole, as a Batch output line: input and vectors lists."""
    path = tmp_path / "out.jsonl"
    assert engine.to_jsonl([embedding(), response()], path) == 2
    first, second = (orjson.loads(line) for line in path.read_bytes().splitlines())
    assert first["vectors"] == [[0.1, 0.2], [0.3, 0.4]] and first["input"] == ["a", [1, 2]]
    assert second["kind"] == "responses" and second["input_tokens"] == 3


def test_csv_has_each_kinds_columns(tmp_path):
    """CSV of mixed results has the responses' token columns and the embeddings' vector."""
    path = tmp_path / "out.csv"
    assert engine.to_csv([response(), embedding()], path) == 3
    header = path.read_text().splitlines()[0].split(",")
    for column in ("input_tokens", "output_tokens", "status", "input_index", "vector"):
        assert column in header


def test_failed_embedding_is_one_row_without_vector():
    """A failed embeddings request is one row, no input index or vector."""
    failed = engine.EmbeddingResult(id="e-9", model="m", timings=TIMINGS)
    (row,) = engine.to_rows([failed])
    assert row["id"] == "e-9" and row.get("vector") is None
