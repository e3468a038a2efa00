"""Build a JSON instance that satisfies a JSON schema, deterministically.

Covers what structured outputs use: ``type`` (one or a list), ``enum``,
``const``, objects (every property filled, as strict mode requires), arrays
(``items``, ``prefixItems``, ``minItems`` / ``maxItems``), ``$defs`` /
``definitions`` with local ``$ref``, ``anyOf`` / ``oneOf`` / ``allOf``,
nullable fields, string ``format`` and length bounds, numeric bounds and
``multipleOf``.  Strings are derived from property names so answers are
predictable.  Pure code; nothing here checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["instance_for_schema"]

# Beyond this nesting depth, optional branches (null, empty arrays) are preferred
# so that recursive schemas (a tree of nodes) terminate.
_MAX_DEPTH = 8

_FORMAT_EXAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "mock@example.com",
    "uri": "https://example.com/mock",
    "url": "https://example.com/mock",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
    "duration": "P1D",
}


def instance_for_schema(schema: Mapping[str, Any]) -> Any:
    """Return a value valid against ``schema`` (a JSON-schema document).

    ``$ref`` may point anywhere inside ``schema`` (``#/$defs/Name``,
    ``#/definitions/Name``, ``#``).
    """
    return _Builder(schema).build(schema, "value", 0)


class _Builder:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self._root = root

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise ValueError(f"only local $ref is supported: {ref!r}")
        node = self._root  # each step into the document: another object (or a schema)
        for part in ref[1:].split("/"):
            if part:
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def build(self, schema: Any, name: str, depth: int) -> Any:
        if schema is True or not isinstance(schema, Mapping):
            return None if depth > _MAX_DEPTH else f"mock {name}"
        if "$ref" in schema:
            target = self._resolve(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.build({**target, **rest} if rest else target, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                if "$ref" in part:
                    part = self._resolve(part["$ref"])
                for key, value in part.items():
                    if key in ("properties",) and key in merged:
                        merged[key] = {**merged[key], **value}
                    elif key == "required" and key in merged:
                        merged[key] = [*merged[key], *value]
                    else:
                        merged.setdefault(key, value)
            return self.build(merged, name, depth)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.build(self._choose(schema[key], depth), name, depth)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = self._choose_type(kind, depth)
        if kind is None:
            kind = _infer_type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "string":
            return _string(schema, name)
        if kind == "integer":
            return _number(schema, integer=True)
        if kind == "number":
            return _number(schema, integer=False)
        if kind == "boolean":
            return True
        return None

    def _choose(self, options: list[Any], depth: int) -> Any:
        # Prefer a real value over null, except deep in a recursive schema.
        def is_null(option: Any) -> bool:
            if isinstance(option, Mapping) and "$ref" in option:
                option = self._resolve(option["$ref"])
            return isinstance(option, Mapping) and option.get("type") == "null"

        non_null = [option for option in options if not is_null(option)]
        null = [option for option in options if is_null(option)]
        if depth > _MAX_DEPTH and null:
            return null[0]
        return (non_null or options)[0]

    @staticmethod
    def _choose_type(kinds: list[str], depth: int) -> str:
        if depth > _MAX_DEPTH and "null" in kinds:
            return "null"
        real = [kind for kind in kinds if kind != "null"]
        return (real or kinds)[0]

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        result: dict[str, Any] = {}
        for key, subschema in properties.items():
            if depth > _MAX_DEPTH and key not in required:
                continue
            result[key] = self.build(subschema, key, depth + 1)
        extra = schema.get("minProperties", 0) - len(result)
        additional = schema.get("additionalProperties", True)
        for index in range(max(0, extra)):
            key = f"extra_{index}"
            result[key] = self.build(additional if additional is not False else {}, key, depth + 1)
        return result

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems") or []
        items = schema.get("items", {})
        minimum = int(schema.get("minItems", 0))
        maximum = schema.get("maxItems")
        count = max(minimum, len(prefix), 0 if depth > _MAX_DEPTH else 1)
        if maximum is not None:
            count = min(count, int(maximum))
        if items is False:
            count = min(count, len(prefix))
        values = []
        for index in range(count):
            subschema = prefix[index] if index < len(prefix) else items
            values.append(self.build(subschema, f"{name} {index + 1}", depth + 1))
        return values


def _infer_type(schema: Mapping[str, Any]) -> str | None:
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if "minLength" in schema or "maxLength" in schema or "format" in schema:
        return "string"
    if "minimum" in schema or "maximum" in schema:
        return "number"
    return None


def _string(schema: Mapping[str, Any], name: str) -> str:
    text = _FORMAT_EXAMPLES.get(schema.get("format", ""), f"mock {name}")
    minimum = int(schema.get("minLength", 0))
    maximum = schema.get("maxLength")
    if len(text) < minimum:
        text = text + "x" * (minimum - len(text))
    if maximum is not None and len(text) > int(maximum):
        text = text[: int(maximum)]
    return text


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum")
    high = schema.get("maximum")
    exclusive_low = schema.get("exclusiveMinimum")
    exclusive_high = schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    unit = 1 if integer else (step or 0.5)
    value: float = 1 if low is None else low
    if exclusive_low is not None and value <= exclusive_low:
        value = exclusive_low + unit
    if step:
        value = math.ceil(value / step) * step
    if integer:
        value = math.ceil(value)
    upper = high if high is not None else exclusive_high
    if upper is not None and (value > upper or (high is None and value >= upper)):
        value = upper if high is not None else upper - unit
        if step:
            value = math.floor(value / step) * step
        if integer:
            value = math.floor(value)
    return int(value) if integer else float(value)
