"""Table export: flat rows, DataFrame, CSV and JSONL for both result kinds."""

from __future__ import annotations

import csv
import datetime
import sys

import httpx
import orjson
import pydantic
import pytest

import engine
from engine.mock import MockConfig, create_app

MODEL = "gpt-4o-mini"
T0 = 1_700_000_000.0


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Person(pydantic.BaseModel):
    name: str
    tags: list[str]
    address: Address


def timings(offset: float = 0.0) -> engine.Timings:
    return engine.Timings(
        queued_at=T0 + offset, sent_at=T0 + offset + 1, latency=0.5, finished_at=T0 + offset + 2
    )


def structured(id: str = "p1") -> engine.ChatResult:
    return engine.ChatResult(
        id=id,
        output=Person(name="Ada", tags=["math", "code"], address=Address(city="London")),
        model=MODEL,
        usage=engine.Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15),
        attempts=1,
        timings=timings(),
        status_code=200,
        input=[{"role": "user", "content": "Ada"}],
    )


def text_chat(id: str = "c1") -> engine.ChatResult:
    return engine.ChatResult(id=id, output="hello", model=MODEL, attempts=1, timings=timings())


def failed_chat(id: str = "f1") -> engine.ChatResult:
    return engine.ChatResult(
        id=id,
        model=MODEL,
        attempts=1,
        timings=timings(),
        error=engine.ErrorInfo(code="schema_mismatch", message="age: missing"),
        raw_content='{"name": "Ada"}',
    )


def transcription(id: str = "t1", *, skipped: bool = False) -> engine.TranscriptionResult:
    return engine.TranscriptionResult(
        id=id,
        file=f"{id}.mp3",
        duration_seconds=7.1,
        text=None if skipped else "a transcript",
        model="whisper-1",
        usage=engine.AudioUsage(seconds=0 if skipped else 8),
        attempts=0 if skipped else 1,
        timings=timings(),
        skipped=skipped,
        skip_reason="too short" if skipped else None,
    )


def test_structured_output_is_flattened_into_dotted_columns():
    """Nested fields become output.address.city; lists become JSON text."""
    (row,) = engine.to_rows([structured()])
    assert row["output.name"] == "Ada"
    assert row["output.address.city"] == "London" and row["output.address.zip"] is None
    assert orjson.loads(row["output.tags"]) == ["math", "code"]
    assert "output" not in row


def test_chat_rows_carry_metadata_and_input():
    """Token counts, times, attempts and the input messages (as JSON text) are columns."""
    (row,) = engine.to_rows([structured()])
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (10, 5, 15)
    assert row["sent_at"] == T0 + 1 and row["attempts"] == 1 and row["kind"] == "chat"
    assert orjson.loads(row["input"]) == [{"role": "user", "content": "Ada"}]


def test_text_output_stays_in_one_output_column():
    """A plain-text answer fills the output column and adds no dotted columns."""
    (row,) = engine.to_rows([text_chat()])
    assert row["output"] == "hello"
    assert not any(key.startswith("output.") for key in row)


def test_failed_chat_row_has_the_error_and_raw_content():
    """A failed structured output shows its error code, message and raw content."""
    (row,) = engine.to_rows([failed_chat()])
    assert row["ok"] is False and row["error_code"] == "schema_mismatch"
    assert row["error_message"] == "age: missing" and row["raw_content"] == '{"name": "Ada"}'


def test_both_kinds_share_one_table():
    """Chat and transcription rows have the same columns, None where they do not apply."""
    rows = engine.to_rows([structured(), transcription()])
    assert rows[0].keys() == rows[1].keys()
    chat_row, audio_row = rows
    assert audio_row["kind"] == "transcription" and audio_row["file"] == "t1.mp3"
    assert audio_row["text"] == "a transcript" and audio_row["audio_seconds"] == 8
    assert audio_row["output.name"] is None and audio_row["prompt_tokens"] is None
    assert chat_row["file"] is None and chat_row["output.name"] == "Ada"


def test_columns_of_absent_kinds_are_left_out():
    """A chat-only table has no transcription columns, and the reverse."""
    (chat_row,) = engine.to_rows([text_chat()])
    (audio_row,) = engine.to_rows([transcription()])
    assert "file" not in chat_row and "skipped" not in chat_row
    assert "prompt_tokens" not in audio_row and "output" not in audio_row


def test_split_results_separates_failures_and_keeps_skips_valid():
    """split_results returns (valid, failed) in order; skipped files count as valid."""
    results = [structured("a"), failed_chat("b"), transcription("c", skipped=True), text_chat("d")]
    valid, failed = engine.split_results(iter(results))
    assert [r.id for r in valid] == ["a", "c", "d"]
    assert [r.id for r in failed] == ["b"]


def test_to_csv_writes_a_header_and_iso_times(tmp_path):
    """CSV has one header and one line per result; times are ISO 8601 UTC; None is empty."""
    path = tmp_path / "out.csv"
    count = engine.to_csv([structured(), transcription()], path)
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert count == 2 and len(rows) == 2
    assert rows[0]["output.address.city"] == "London" and rows[1]["output.address.city"] == ""
    sent = datetime.datetime.fromisoformat(rows[0]["sent_at"])
    assert sent.tzinfo is not None and sent.timestamp() == T0 + 1
    assert orjson.loads(rows[0]["output.tags"]) == ["math", "code"]


def test_to_jsonl_keeps_json_types(tmp_path):
    """JSONL lines are flat objects; lists stay lists and None is null."""
    path = tmp_path / "out.jsonl"
    count = engine.to_jsonl([structured(), failed_chat()], path)
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert count == 2 and len(lines) == 2
    assert lines[0]["output.tags"] == ["math", "code"]
    assert lines[1]["output.tags"] is None and lines[1]["error_code"] == "schema_mismatch"
    assert lines[0]["queued_at"].startswith("2023-11-14T22:13:20")


def test_to_dataframe_has_a_row_per_result_and_datetime_columns():
    """The DataFrame has one row per result, dotted columns and UTC datetimes."""
    pandas = pytest.importorskip("pandas")
    frame = engine.to_dataframe([structured(), transcription(), failed_chat()])
    assert list(frame["id"]) == ["p1", "t1", "f1"]
    assert frame.loc[0, "output.address.city"] == "London"
    assert isinstance(frame["sent_at"].dtype, pandas.DatetimeTZDtype)
    assert frame.loc[0, "sent_at"] == pandas.Timestamp(T0 + 1, unit="s", tz="UTC")


def test_to_dataframe_of_nothing_is_an_empty_frame():
    """No results give an empty DataFrame with the common columns."""
    pytest.importorskip("pandas")
    frame = engine.to_dataframe([])
    assert len(frame) == 0 and "id" in frame.columns


def test_to_dataframe_without_pandas_says_how_to_install_it(monkeypatch):
    """Without pandas, to_dataframe raises ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install quota-engine\[pandas\]"):
        engine.to_dataframe([text_chat()])


async def test_results_from_a_run_export_every_item(tmp_path, autojump_clock):
    """Results of a mixed run through the mock export one row each, ids intact."""
    from audio_fixtures import make_mp3

    items = [
        engine.ChatRequest(id=f"c{i}", messages="x", model=MODEL, response_model=Person)
        for i in range(5)
    ]
    items.append(engine.TranscriptionRequest(id="t", source=make_mp3(tmp_path / "a.mp3", 6)))
    async with engine.open_client(
        base_url="http://127.0.0.1/v1",
        api_key="sk-test-0123456789",
        transport=httpx.ASGITransport(create_app(MockConfig())),
    ) as client:
        results = [r async for r in client.map(items)]
    rows = engine.to_rows(results)
    assert sorted(row["id"] for row in rows) == ["c0", "c1", "c2", "c3", "c4", "t"]
    assert all(row["ok"] for row in rows)
    assert all(row["output.name"] for row in rows if row["kind"] == "chat")
