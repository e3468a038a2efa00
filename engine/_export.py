"""Results as a table: flat rows, pandas DataFrames, CSV and JSONL files.

Both result kinds (:class:`~engine.ChatResult`, :class:`~engine.TranscriptionResult`)
become one flat row each.  Columns, in this order (a kind's columns appear only
when at least one result of that kind is present):

* every row: ``id``, ``kind`` (``"chat"`` / ``"transcription"``), ``ok``,
  ``model``, ``error_code``, ``error_message``, ``status_code``,
  ``request_id``, ``attempts``, ``queued_at``, ``sent_at`` (the real call
  time), ``latency`` (seconds), ``finished_at``;
* chat: ``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
  ``output`` (plain-text answers), ``raw_content`` (what came back when a
  structured answer could not be used), ``input`` (the messages, as JSON text);
* transcription: ``file``, ``duration_seconds``, ``text``, ``skipped``,
  ``skip_reason``, ``audio_seconds``;
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
from collections.abc import Iterable
from typing import Any

import orjson
import pydantic

from engine._results import ChatResult, TranscriptionResult

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
_CHAT = ("prompt_tokens", "completion_tokens", "total_tokens", "output", "raw_content", "input")
_TRANSCRIPTION = ("file", "duration_seconds", "text", "skipped", "skip_reason", "audio_seconds")
#: Columns holding wall-clock times (seconds since the epoch in rows).
TIME_COLUMNS = ("queued_at", "sent_at", "finished_at")

Result = ChatResult | TranscriptionResult


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
    rows = [_row(result, lists_as_json) for result in results]
    columns = _columns(rows)
    return [{column: row.get(column) for column in columns} for row in rows]


def to_dataframe(results: Iterable[Result]) -> Any:
    """A pandas ``DataFrame`` of the results, one row each (columns: module docstring).

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
    rows = to_rows(results)
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
    ``null``, times are ISO 8601 strings in UTC.  Blocks.
    """
    rows = to_rows(results, lists_as_json=False)
    with open(path, "wb") as file:
        for row in rows:
            file.write(orjson.dumps(_with_iso_times(row), option=orjson.OPT_APPEND_NEWLINE))
    return len(rows)


# -- building rows --------------------------------------------------------------------


def _row(result: Result, lists_as_json: bool) -> dict[str, Any]:
    error = result.error
    timings = result.timings
    row: dict[str, Any] = {
        "id": result.id,
        "kind": "transcription" if isinstance(result, TranscriptionResult) else "chat",
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
    if isinstance(result, TranscriptionResult):
        row["file"] = result.file
        row["duration_seconds"] = result.duration_seconds
        row["text"] = result.text
        row["skipped"] = result.skipped
        row["skip_reason"] = result.skip_reason
        row["audio_seconds"] = result.usage.seconds
        return row
    usage = result.usage
    row["prompt_tokens"] = usage.prompt_tokens
    row["completion_tokens"] = usage.completion_tokens
    row["total_tokens"] = usage.total_tokens
    row["raw_content"] = result.raw_content if error is not None else None
    row["input"] = None if result.input is None else _json_text(result.input)
    output = result.output
    if isinstance(output, pydantic.BaseModel):
        _flatten(output.model_dump(mode="json"), "output", row, lists_as_json)
    else:
        row["output"] = output
    return row


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
    columns = list(_COMMON)
    kinds = {row["kind"] for row in rows}
    if "chat" in kinds:
        columns += [column for column in _CHAT if column != "output" or column in present]
    if "transcription" in kinds:
        columns += _TRANSCRIPTION
    known = set(columns)
    columns += [key for key in present if key not in known]
    return columns


def _with_iso_times(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in TIME_COLUMNS:
        value = out.get(column)
        if value is not None:
            out[column] = datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat()
    return out
