"""Results as a table: flat rows, pandas DataFrames, CSV and JSONL files.

Every result kind (:class:`~engine.ChatResult`, :class:`~engine.ResponseResult`,
:class:`~engine.EmbeddingResult`, :class:`~engine.TranscriptionResult`) becomes
flat rows: one per result, except embeddings in tables (rows, CSV, DataFrames),
which give one row per input.  Columns, in this order (a kind's columns appear
only when at least one result of that kind is present):

* every row: ``id``, ``kind`` (``"chat"`` / ``"responses"`` / ``"embeddings"``
  / ``"transcription"``), ``ok``,
  ``model``, ``error_code``, ``error_message``, ``status_code``,
  ``request_id``, ``attempts``, ``queued_at``, ``sent_at`` (the real call
  time), ``latency`` (seconds), ``finished_at``;
* streamed answers (``client.stream``, ``"stream": true`` bodies), when some
  result is one: ``ttft`` (seconds to the first output), ``itl_mean``,
  ``itl_p50``, ``itl_p99`` (the gaps between outputs, seconds);
* chat: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
  ``output`` (plain-text answers), ``raw_content`` (what came back when a
  structured answer could not be used), ``input`` (the messages, as JSON text);
* transcription: ``file``, ``duration_seconds``, ``text``, ``skipped``,
  ``skip_reason``, ``audio_seconds``;
* responses: ``input_tokens``, ``output_tokens``, ``total_tokens``, ``output``,
  ``raw_content``, ``input`` (a string, or the items as JSON text), ``status``,
  ``incomplete_reason``;
* embeddings: ``prompt_tokens``, ``total_tokens`` (the request's), ``input_index``,
  ``input`` (the text, or token ids as JSON text) and ``vector`` (the floats:
  a list in DataFrames, JSON text in CSV); in :func:`to_jsonl` one object per
  request instead, as in a Batch output file: ``input`` and ``vectors`` as lists;
* structured outputs, flattened: a pydantic answer becomes ``output.<field>``
  columns, nested models join their names with dots (``output.address.city``),
  and lists become JSON text (``'["a", "b"]'``), in the order first seen.

Synchronous; file writers block.  pandas is optional (``pip install
quota-engine[pandas]``): only :func:`to_dataframe` needs it.
"""

from __future__ import annotations

import csv
import datetime
import os
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import pydantic

from engine._results import ChatResult, TranscriptionResult
from engine.endpoints import EmbeddingResult, ResponseResult

__all__ = ["split_results", "to_csv", "to_dataframe", "to_jsonl", "to_rows"]

_COMMON = (
    "id",
    "kind",
    "ok",
    "model",
    "error_code",
    "error_message",
    "status_code",
    "request_id",
    "attempts",
    "queued_at",
    "sent_at",
    "latency",
    "finished_at",
)
#: Columns of streamed answers, after the common ones (only when some result streamed).
_STREAMED = ("ttft", "itl_mean", "itl_p50", "itl_p99")
_CHAT = ("prompt_tokens", "completion_tokens", "total_tokens", "output", "raw_content", "input")
_TRANSCRIPTION = ("file", "duration_seconds", "text", "skipped", "skip_reason", "audio_seconds")
_RESPONSES = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "output",
    "raw_content",
    "input",
    "status",
    "incomplete_reason",
)
_EMBEDDINGS = ("prompt_tokens", "total_tokens", "input_index", "input", "vector", "vectors")
_KIND_COLUMNS = {
    "chat": _CHAT,
    "responses": _RESPONSES,
    "embeddings": _EMBEDDINGS,
    "transcription": _TRANSCRIPTION,
}
#: Columns holding wall-clock times (seconds since the epoch in rows).
TIME_COLUMNS = ("queued_at", "sent_at", "finished_at")

Result = ChatResult | TranscriptionResult | ResponseResult | EmbeddingResult


def split_results(results: Iterable[Result]) -> tuple[list[Result], list[Result]]:
    """Split results into ``(valid, failed)``, each in input order.

    ``failed`` holds the results with ``error`` set; ``valid`` the others,
    including transcriptions skipped below ``min_seconds`` (``skipped`` True).
    """
    valid: list[Result] = []
    failed: list[Result] = []
    for result in results:
        (failed if result.error is not None else valid).append(result)
    return valid, failed


def to_rows(results: Iterable[Result], *, lists_as_json: bool = True) -> list[dict[str, Any]]:
    """One flat dict per result, every dict with every column (missing: None).

    Times are floats (seconds since the epoch).  ``lists_as_json`` (default
    True) turns list values of structured outputs into JSON text, so each
    cell is a scalar; False keeps them as lists.
    """
    return _table(results, lists_as_json=lists_as_json)


def _table(
    results: Iterable[Result],
    *,
    lists_as_json: bool,
    vectors_as_lists: bool = False,
    per_request: bool = False,
) -> list[dict[str, Any]]:
    """The rows of ``results``, every row with every column.

    ``vectors_as_lists``: an embedding's ``vector`` cell stays a list of floats
    (DataFrames), else JSON text; ``per_request``: one row per embeddings
    request, with ``input`` and ``vectors`` as lists (JSON Lines).
    """
    rows = [
        row
        for result in results
        for row in _rows(result, lists_as_json, vectors_as_lists, per_request)
    ]
    columns = _columns(rows)
    return [{column: row.get(column) for column in columns} for row in rows]


def to_dataframe(results: Iterable[Result]) -> Any:
    """A pandas ``DataFrame`` of the results, one row each (columns: module docstring).

    Embeddings give one row per input, its vector a list of floats in ``vector``.

    The time columns are timezone-aware ``datetime64`` (UTC).

    Raises:
        ImportError: pandas is not installed (``pip install quota-engine[pandas]``).
    """
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(
            "engine.to_dataframe needs pandas: pip install quota-engine[pandas] "
            "(or use engine.to_csv / engine.to_jsonl, which need nothing)"
        ) from exc
    rows = _table(results, lists_as_json=True, vectors_as_lists=True)
    frame = pandas.DataFrame.from_records(rows, columns=_columns(rows) if rows else list(_COMMON))
    for column in TIME_COLUMNS:
        frame[column] = pandas.to_datetime(frame[column], unit="s", utc=True)
    return frame


def to_csv(results: Iterable[Result], path: str | os.PathLike[str]) -> int:
    """Write the results to a CSV file (UTF-8, header row); return the rows written.

    Times are ISO 8601 in UTC; None is an empty cell; booleans are
    ``True`` / ``False``.  Blocks.
    """
    rows = to_rows(results)
    columns = _columns(rows) if rows else list(_COMMON)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow(_with_iso_times(row))
    return len(rows)


def to_jsonl(results: Iterable[Result], path: str | os.PathLike[str]) -> int:
    """Write the results as JSON Lines, one flat object per result; return the count.

    Same columns as :func:`to_csv`, with JSON types: lists stay lists, None is
    ``null``, times are ISO 8601 strings in UTC.  An embeddings request is one
    object, as in a Batch output file, its ``input`` and ``vectors`` lists.
    Blocks.
    """
    rows = _table(results, lists_as_json=False, per_request=True)
    with open(path, "wb") as file:
        for row in rows:
            file.write(orjson.dumps(_with_iso_times(row), option=orjson.OPT_APPEND_NEWLINE))
    return len(rows)


# -- building rows --------------------------------------------------------------------


def _kind(result: Result) -> str:
    if isinstance(result, TranscriptionResult):
        return "transcription"
    if isinstance(result, ResponseResult):
        return "responses"
    if isinstance(result, EmbeddingResult):
        return "embeddings"
    return "chat"


def _rows(
    result: Result, lists_as_json: bool, vectors_as_lists: bool, per_request: bool
) -> list[dict[str, Any]]:
    row = _row(result, lists_as_json)
    if not isinstance(result, EmbeddingResult):
        return [row]
    row["prompt_tokens"] = result.usage.prompt_tokens
    row["total_tokens"] = result.usage.total_tokens
    if per_request:
        row["input"] = result.input
        row["vectors"] = result.vectors
        return [row]
    if result.vectors is None or result.input is None:
        return [row]
    rows = []
    for index, (given, vector) in enumerate(zip(result.input, result.vectors, strict=True)):
        per_input = dict(row)
        per_input["input_index"] = index
        per_input["input"] = given if isinstance(given, str) else _json_text(given)
        per_input["vector"] = vector if vectors_as_lists else _json_text(vector)
        rows.append(per_input)
    return rows


def _row(result: Result, lists_as_json: bool) -> dict[str, Any]:
    error = result.error
    timings = result.timings
    row: dict[str, Any] = {
        "id": result.id,
        "kind": _kind(result),
        "ok": error is None,
        "model": result.model,
        "error_code": error.code if error is not None else None,
        "error_message": error.message if error is not None else None,
        "status_code": result.status_code,
        "request_id": result.request_id,
        "attempts": result.attempts,
        "queued_at": timings.queued_at,
        "sent_at": timings.sent_at,
        "latency": timings.latency,
        "finished_at": timings.finished_at,
    }
    if timings.ttft is not None:
        gaps = timings.itl_summary
        row["ttft"] = timings.ttft
        row["itl_mean"] = gaps.mean if gaps is not None else None
        row["itl_p50"] = gaps.p50 if gaps is not None else None
        row["itl_p99"] = gaps.p99 if gaps is not None else None
    if isinstance(result, TranscriptionResult):
        row["file"] = result.file
        row["duration_seconds"] = result.duration_seconds
        row["text"] = result.text
        row["skipped"] = result.skipped
        row["skip_reason"] = result.skip_reason
        row["audio_seconds"] = result.usage.seconds
        return row
    if isinstance(result, EmbeddingResult):
        return row  # its columns depend on the table's shape (``_rows``)
    if isinstance(result, ResponseResult):
        row["input_tokens"] = result.usage.input_tokens
        row["output_tokens"] = result.usage.output_tokens
        row["total_tokens"] = result.usage.total_tokens
        row["status"] = result.status
        row["incomplete_reason"] = result.incomplete_reason
        row["raw_content"] = result.raw_content if error is not None else None
        given = result.input
        row["input"] = given if given is None or isinstance(given, str) else _json_text(given)
        _output_cells(result.output, row, lists_as_json)
        return row
    usage = result.usage
    row["prompt_tokens"] = usage.prompt_tokens
    row["completion_tokens"] = usage.completion_tokens
    row["total_tokens"] = usage.total_tokens
    row["raw_content"] = result.raw_content if error is not None else None
    row["input"] = None if result.input is None else _json_text(result.input)
    _output_cells(result.output, row, lists_as_json)
    return row


def _output_cells(output: Any, row: dict[str, Any], lists_as_json: bool) -> None:
    """``output`` as text, or a structured output flattened into ``output.*`` cells."""
    if isinstance(output, pydantic.BaseModel):
        _flatten(output.model_dump(mode="json"), "output", row, lists_as_json)
    else:
        row["output"] = output


def _flatten(value: Any, prefix: str, row: dict[str, Any], lists_as_json: bool) -> None:
    if isinstance(value, dict):
        if not value:
            row[prefix] = None
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}", row, lists_as_json)
    elif isinstance(value, list) and lists_as_json:
        row[prefix] = _json_text(value)
    else:
        row[prefix] = value


def _json_text(value: Any) -> str:
    # Messages may be any Mapping (frozen dicts, MappingProxy): encode them as dicts.
    return orjson.dumps(value, default=_as_json).decode()


def _as_json(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    try:
        return dict(value)
    except (TypeError, ValueError):
        return str(value)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    present = dict.fromkeys(key for row in rows for key in row)
    columns = dict.fromkeys(_COMMON)
    if "ttft" in present:
        columns.update(dict.fromkeys(_STREAMED))
    kinds = {row["kind"] for row in rows}
    for kind, kind_columns in _KIND_COLUMNS.items():
        if kind in kinds:
            columns.update(
                dict.fromkeys(column for column in kind_columns if _wanted(kind, column, present))
            )
    columns.update(dict.fromkeys(key for key in present if key not in columns))
    return list(columns)


def _wanted(kind: str, column: str, present: Mapping[str, None]) -> bool:
    """Whether a kind's column is in the table.

    ``output`` only when some answer was text (structured ones are
    ``output.*``); an embedding's columns only when some row has them (one
    row per input, or per request, has different ones).
    """
    if kind == "embeddings" or column == "output":
        return column in present
    return True


def _with_iso_times(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in TIME_COLUMNS:
        value = out.get(column)
        if value is not None:
            out[column] = datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()
    return out
