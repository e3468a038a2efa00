"""Strict JSON schemas for structured outputs, and parsing the answers back.

Pure and synchronous: no I/O, no trio, nothing here checkpoints.

``client.chat(..., response_model=Model)`` sends :func:`response_format_for`
``(Model)`` as the request's ``response_format`` and turns the answer into a
``Model`` instance with :func:`parse_structured`.

OpenAI's *strict* structured-output mode accepts only a subset of JSON Schema.
:func:`strict_json_schema` rewrites pydantic's schema into that subset:

* every object gets ``additionalProperties: false`` and lists **every** property
  in ``required`` (top level, nested models, items of lists, ``$defs``);
* a field that has a default is made nullable (``anyOf: [..., {"type": "null"}]``)
  and its ``default`` is dropped; when the model answers ``null`` for it,
  :func:`parse_structured` drops the ``null`` so pydantic applies the default;
* ``oneOf`` (pydantic's discriminated unions) becomes ``anyOf`` and
  ``discriminator`` is dropped; a one-element ``allOf`` is merged in place;
* ``const`` (a one-value ``Literal``) becomes a one-value ``enum``; an ``enum``
  without a ``type`` gets the type of its values;
* a ``$ref`` with sibling keywords (pydantic's ``{"$ref": ..., "description": ...}``)
  is replaced by a copy of its target with the siblings applied, because strict
  mode rejects siblings next to ``$ref``; a self-reference met while inlining
  stays a bare ``$ref`` (its sibling description is the only loss);
* a recursive root model (pydantic emits ``{"$ref": "#/$defs/Node"}`` at the top)
  becomes the root object itself, and references to it become ``{"$ref": "#"}``;
  definitions no longer referenced are pruned;
* every keyword outside :data:`KEPT_KEYWORDS` is stripped (see
  :data:`STRIPPED_KEYWORDS` for the common ones).  pydantic still enforces the
  stripped constraints (``min_length``, ``max_length``, set uniqueness...) when the
  answer is parsed, so a violation becomes a schema-mismatch error, not silent
  acceptance.

Shapes strict mode cannot express raise :class:`TypeError` naming the field:
mappings with free-form keys (``dict[str, X]``, ``dict``), tuples
(``prefixItems``), ``Any`` / untyped fields, ``allOf`` with several parts,
``not`` / ``if`` / ``patternProperties`` and friends.  A root that is not an
object (``RootModel[list[int]]``, a root union) raises :class:`ValueError`.

OpenAI also caps schema size (documented at the time of writing: 5,000
properties, 10 levels of nesting, 1,000 enum values, 120,000 characters of
names and enum values); those caps are not checked here, the server reports them.
"""

from __future__ import annotations

import collections.abc
import re
import types
import typing
import weakref
from typing import Any, TypeVar

import orjson
import pydantic

from engine._errors import ResponseValidationError

__all__ = [
    "KEPT_KEYWORDS",
    "STRICT_STRING_FORMATS",
    "STRIPPED_KEYWORDS",
    "parse_structured",
    "response_format_for",
    "schema_name_for",
    "strict_json_schema",
]

M = TypeVar("M", bound=pydantic.BaseModel)

#: ``format`` values strict mode accepts on strings; any other format is dropped.
STRICT_STRING_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)

#: Keywords kept in the strict schema.  Everything else is stripped or rejected.
KEPT_KEYWORDS = frozenset(
    {
        # every schema
        "type",
        "description",
        "enum",
        "anyOf",
        "$ref",
        # objects
        "properties",
        "required",
        "additionalProperties",
        # arrays
        "items",
        "minItems",
        "maxItems",
        # strings
        "pattern",
        "format",
        # numbers
        "multipleOf",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
)

#: Keywords pydantic commonly emits that are dropped silently (documentation only,
#: or constraints strict mode rejects and pydantic re-checks when parsing).
#: Unknown keywords not listed here are dropped too.
STRIPPED_KEYWORDS = frozenset(
    {
        "title",
        "default",
        "examples",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$comment",
        "$schema",
        "$id",
        "minLength",
        "maxLength",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "discriminator",
    }
)

# Keywords whose meaning strict mode cannot express: dropping them would change
# what the schema accepts, so the model is rejected instead.
_REJECTED_KEYWORDS = {
    "prefixItems": "a tuple (fixed-position array items)",
    "patternProperties": "an object with pattern-matched keys",
    "propertyNames": "a mapping with constrained keys",
    "not": "a 'not' schema",
    "if": "a conditional ('if'/'then'/'else') schema",
    "dependentSchemas": "a 'dependentSchemas' schema",
    "dependentRequired": "a 'dependentRequired' schema",
    "unevaluatedProperties": "an 'unevaluatedProperties' schema",
    "unevaluatedItems": "an 'unevaluatedItems' schema",
    "contains": "a 'contains' array schema",
}

_DEFS_PREFIX = "#/$defs/"
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]+")
_NAME_RULE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NULL_SCHEMA: dict[str, Any] = {"type": "null"}

# Strict schemas per model class, as JSON bytes: building one costs far more than
# decoding a fresh copy, and every call returns its own mutable dict.  Weak keys,
# so models created on the fly are not kept alive.
_schema_cache: weakref.WeakKeyDictionary[type, bytes] = weakref.WeakKeyDictionary()


def strict_json_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """Return a JSON schema for ``model`` that OpenAI's strict mode accepts.

    The rules applied are listed in this module's docstring.  The result is a
    fresh dict on every call (the work itself is cached per model class).

    Raises:
        TypeError: a field has a shape strict mode cannot express (the message
            names the field, e.g. ``Person.scores``), or ``model`` is not a
            pydantic model class.
        ValueError: the model's root is not an object.
    """
    cached = _schema_cache.get(model)
    if cached is None:
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise TypeError(f"response_model must be a pydantic model class, got {model!r}")
        cached = orjson.dumps(_StrictSchemaBuilder(model).build())
        _schema_cache[model] = cached
    schema: dict[str, Any] = orjson.loads(cached)  # a fresh copy the caller may change
    return schema


def schema_name_for(model: type[pydantic.BaseModel]) -> str:
    """Return ``model``'s class name made safe for ``json_schema.name``.

    Characters outside ``[a-zA-Z0-9_-]`` become ``_`` (so ``Page[Item]`` becomes
    ``Page_Item_``), the result is cut to 64 characters, and an empty result
    becomes ``"response"``.
    """
    name = _NAME_UNSAFE.sub("_", model.__name__)[:64]
    return name or "response"


def response_format_for(
    model: type[pydantic.BaseModel], *, name: str | None = None
) -> dict[str, Any]:
    """Return the ``response_format`` request field asking for ``model``.

    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict": True}}``,
    plus ``json_schema.description`` when the model has a docstring (or a
    ``description`` in its config).

    Args:
        model: the pydantic model the answer must fit.
        name: the schema's name; default: :func:`schema_name_for` ``(model)``.
            An explicit name must match ``^[a-zA-Z0-9_-]{1,64}$``.

    Raises:
        ValueError: ``name`` breaks the naming rule, or the model's root is not
            an object.
        TypeError: as for :func:`strict_json_schema`.
    """
    if name is None:
        name = schema_name_for(model)
    elif not _NAME_RULE.match(name):
        raise ValueError(f"schema name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {name!r}")
    schema = strict_json_schema(model)
    json_schema: dict[str, Any] = {"name": name, "schema": schema, "strict": True}
    description = schema.get("description")
    if description:
        json_schema["description"] = description
    return {"type": "json_schema", "json_schema": json_schema}


class _StrictSchemaBuilder:
    """One conversion of a pydantic model's JSON schema into the strict subset.

    Reads pydantic's schema without changing it and builds new dicts.
    ``where`` arguments are dotted field paths (``Person.address.city``) used
    only in error messages.
    """

    def __init__(self, model: type[pydantic.BaseModel]) -> None:
        self.model_name = model.__name__
        source = model.model_json_schema(mode="validation")
        self.source_defs: dict[str, Any] = dict(source.get("$defs", {}))
        self.root_ref_name: str | None = None
        root_ref = source.get("$ref")
        if root_ref is not None:
            # A recursive root model: pydantic points the top level at a definition.
            self.root_ref_name = self._def_name(root_ref, self.model_name)
            siblings = {k: v for k, v in source.items() if k not in ("$ref", "$defs")}
            source = {**self.source_defs[self.root_ref_name], **siblings}
        self.source_root = source
        # $ref targets being inlined right now (a guard against endless inlining).
        self.inlining: list[str] = []

    def build(self) -> dict[str, Any]:
        root_type = self.source_root.get("type")
        if root_type != "object" or "properties" not in self.source_root:
            shape = root_type or ("a union" if "anyOf" in self.source_root else "not an object")
            raise ValueError(
                f"{self.model_name}: the root of a structured-output schema must be an "
                f"object with fields (got {shape}); wrap the value in a model with one field"
            )
        root = self._convert(self.source_root, self.model_name)
        defs = {
            name: self._convert(schema, name)
            for name, schema in self.source_defs.items()
            if name != self.root_ref_name
        }
        used = _reachable_defs(root, defs)
        if used:
            root["$defs"] = {name: defs[name] for name in defs if name in used}
        return root

    # -- references ---------------------------------------------------------

    def _def_name(self, ref: str, where: str) -> str:
        if not ref.startswith(_DEFS_PREFIX) or ref[len(_DEFS_PREFIX) :] not in self.source_defs:
            raise TypeError(f"{where}: unsupported $ref {ref!r} (only local $defs are supported)")
        return ref[len(_DEFS_PREFIX) :]

    def _strict_ref(self, ref: str, where: str) -> str:
        name = self._def_name(ref, where)
        return "#" if name == self.root_ref_name else _DEFS_PREFIX + name

    def _inline_ref(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        """Replace ``{"$ref": X, **siblings}`` by a copy of X with the siblings on top."""
        name = self._def_name(node["$ref"], where)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if name in self.inlining:
            # Inlining again would never end; keep the reference, lose the siblings.
            return {"$ref": self._strict_ref(node["$ref"], where)}
        target = self.source_root if name == self.root_ref_name else self.source_defs[name]
        self.inlining.append(name)
        try:
            return self._convert({**target, **siblings}, where)
        finally:
            self.inlining.pop()

    # -- one schema node ----------------------------------------------------

    def _convert(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        for keyword, shape in _REJECTED_KEYWORDS.items():
            if keyword in node:
                raise TypeError(
                    f"{where}: {shape} is not supported by OpenAI strict structured outputs"
                )
        node = self._merge_single_all_of(node, where)

        if "$ref" in node:
            meaningful = {k for k in node if k != "$ref" and k in KEPT_KEYWORDS}
            if meaningful:
                return self._inline_ref(node, where)
            return {"$ref": self._strict_ref(node["$ref"], where)}

        out: dict[str, Any] = {}
        union = node.get("anyOf", node.get("oneOf"))
        if union is not None:
            out["anyOf"] = [self._convert(arm, where) for arm in union]
        if "const" in node:
            out["enum"] = [node["const"]]
        elif "enum" in node:
            out["enum"] = list(node["enum"])
        if "type" in node:
            out["type"] = node["type"]
        elif "enum" in out:
            out["type"] = _json_type_of_values(out["enum"])
        if "type" not in out and "anyOf" not in out:
            raise TypeError(
                f"{where}: a field without a JSON type (Any, object, or an unconstrained "
                f"schema) is not supported by OpenAI strict structured outputs; give it "
                f"a concrete type"
            )
        if "description" in node:
            out["description"] = node["description"]

        types_ = out.get("type")
        type_set = set(types_) if isinstance(types_, list) else {types_}
        if "object" in type_set:
            self._convert_object(node, out, where)
        if "array" in type_set:
            if "items" not in node:
                raise TypeError(
                    f"{where}: a list without an item type is not supported by OpenAI strict "
                    f"structured outputs; annotate it as list[X]"
                )
            out["items"] = self._convert(node["items"], f"{where}[]")
            for keyword in ("minItems", "maxItems"):
                if keyword in node:
                    out[keyword] = node[keyword]
        if "string" in type_set:
            if "pattern" in node:
                out["pattern"] = node["pattern"]
            if node.get("format") in STRICT_STRING_FORMATS:
                out["format"] = node["format"]
        if type_set & {"number", "integer"}:
            for keyword in (
                "multipleOf",
                "minimum",
                "maximum",
                "exclusiveMinimum",
                "exclusiveMaximum",
            ):
                if keyword in node:
                    out[keyword] = node[keyword]
        return out

    def _merge_single_all_of(self, node: dict[str, Any], where: str) -> dict[str, Any]:
        all_of = node.get("allOf")
        if all_of is None:
            return node
        if len(all_of) != 1:
            raise TypeError(
                f"{where}: 'allOf' with {len(all_of)} parts is not supported by OpenAI "
                f"strict structured outputs"
            )
        rest = {k: v for k, v in node.items() if k != "allOf"}
        return {**all_of[0], **rest}

    def _convert_object(self, node: dict[str, Any], out: dict[str, Any], where: str) -> None:
        if "properties" not in node:
            # Only mappings look like this: dict[str, X] or a bare dict.
            raise TypeError(
                f"{where}: a mapping with free-form keys (dict[str, ...]) is not supported "
                f"by OpenAI strict structured outputs; use a model with named fields, or a "
                f"list of key/value models"
            )
        # A model with extra="allow" says additionalProperties: true (or a schema);
        # strict mode only ever produces the declared fields, so extras cannot appear.
        originally_required = set(node.get("required", ()))
        properties: dict[str, Any] = {}
        for key, prop in node["properties"].items():
            converted = self._convert(prop, f"{where}.{key}")
            if key not in originally_required:
                converted = _nullable(converted)
            properties[key] = converted
        out["properties"] = properties
        out["required"] = list(properties)
        out["additionalProperties"] = False


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Return ``schema`` widened to also accept null (unchanged if it already does)."""
    if _accepts_null(schema):
        return schema
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], dict(_NULL_SCHEMA)]}
    inner = {k: v for k, v in schema.items() if k != "description"}
    wrapped: dict[str, Any] = {"anyOf": [inner, dict(_NULL_SCHEMA)]}
    if "description" in schema:
        wrapped["description"] = schema["description"]
    return wrapped


def _accepts_null(schema: dict[str, Any]) -> bool:
    types_ = schema.get("type")
    if types_ == "null" or (isinstance(types_, list) and "null" in types_):
        return "enum" not in schema or None in schema["enum"]
    return any(_accepts_null(arm) for arm in schema.get("anyOf", ()))


def _json_type_of_values(values: list[Any]) -> str | list[str]:
    """The JSON type(s) of an enum's values, for enums pydantic left untyped."""
    names: list[str] = []
    for value in values:
        if value is None:
            name = "null"
        elif isinstance(value, bool):
            name = "boolean"
        elif isinstance(value, int):
            name = "integer"
        elif isinstance(value, float):
            name = "number"
        elif isinstance(value, str):
            name = "string"
        else:
            raise TypeError(f"enum value {value!r} has no JSON scalar type")
        if name not in names:
            names.append(name)
    return names[0] if len(names) == 1 else names


def _reachable_defs(root: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """Names of the definitions that ``root`` references, directly or through others."""
    seen: set[str] = set()
    pending: list[Any] = [root]  # any JSON value of the schema
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):
                name = ref[len(_DEFS_PREFIX) :]
                if name not in seen and name in defs:
                    seen.add(name)
                    pending.append(defs[name])
            pending.extend(v for k, v in node.items() if k != "$defs")
        elif isinstance(node, list):
            pending.extend(node)
    return seen


# -- parsing answers ---------------------------------------------------------

_MAX_REPORTED_ERRORS = 5


def parse_structured(
    content: str | None,
    model: type[M],
    *,
    finish_reason: str | None,
    refusal: str | None,
    request_id: str | None = None,
) -> M:
    """Turn a chat completion's message into an instance of ``model``.

    Args:
        content: ``choices[0].message.content`` (None when the model refused).
        model: the pydantic model the request asked for.
        finish_reason: ``choices[0].finish_reason``.
        refusal: ``choices[0].message.refusal`` (None unless the model refused).
        request_id: the server's ``x-request-id``, copied onto any error.

    A field that has a default but came back ``null`` (strict mode made it
    nullable) gets its default.  A field whose own type admits ``None`` keeps
    the ``null``: that is an answer the model was allowed to give anyway.

    Raises:
        ResponseValidationError: with ``raw`` set to the content received (or the
            refusal text) and ``code`` one of ``refusal``, ``content_filter``,
            ``output_truncated``, ``empty_output``, ``invalid_json``,
            ``schema_mismatch``.
    """
    label = model.__name__

    def fail(message: str, code: str, raw: str | None = content) -> ResponseValidationError:
        return ResponseValidationError(message, code=code, raw=raw, request_id=request_id)

    if refusal:
        raise fail(
            f"the model refused to answer with {label}: {refusal}", "refusal", content or refusal
        )
    if finish_reason == "content_filter":
        raise fail(f"the answer for {label} was withheld by the content filter", "content_filter")
    if finish_reason == "length":
        raise fail(
            f"the answer for {label} was cut off at the output token limit "
            f"(finish_reason 'length', {len(content or '')} characters received); "
            f"raise max_completion_tokens",
            "output_truncated",
        )
    if content is None or not content.strip():
        raise fail(f"the answer for {label} is empty", "empty_output")

    encoded: str | bytes = content
    # Strict mode made defaulted fields nullable: drop the nulls it sent for them
    # so pydantic applies the defaults.  Skipped when no field could need it.
    plan = _null_plan(model) if "null" in content else None
    if plan is not None:
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise fail(f"the answer for {label} is not valid JSON: {exc}", "invalid_json") from None
        if _drop_defaulted_nulls(data, plan):
            encoded = orjson.dumps(data)
    try:
        return model.model_validate_json(encoded)
    except pydantic.ValidationError as error:
        if any(item["type"] == "json_invalid" for item in error.errors()):
            reason = error.errors()[0]["msg"]
            raise fail(
                f"the answer for {label} is not valid JSON: {reason}", "invalid_json"
            ) from None
        raise fail(
            f"the answer does not match {label}: {_summarise(error)}", "schema_mismatch"
        ) from None


def _summarise(error: pydantic.ValidationError) -> str:
    """``field.path: reason; ...`` for the first few errors, and how many there were."""
    items = error.errors(include_url=False, include_input=False)
    parts = []
    for item in items[:_MAX_REPORTED_ERRORS]:
        path = _format_loc(item["loc"])
        parts.append(f"{path}: {item['msg']}" if path else item["msg"])
    summary = "; ".join(parts)
    if len(items) > _MAX_REPORTED_ERRORS:
        summary += f"; and {len(items) - _MAX_REPORTED_ERRORS} more"
    return f"{summary} ({len(items)} error{'s' if len(items) != 1 else ''})"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_SEQUENCE_ORIGINS = (
    list,
    set,
    frozenset,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
    collections.abc.Iterable,
)


# How to find, in a decoded answer, the nulls that stand for "use the default".
# Built once per model from its annotations (walking annotations costs far more
# than walking the data), None wherever nothing below can need it.


class _ModelPlan:
    """Keys to drop when null, and keys whose values need a look inside."""

    __slots__ = ("drop_if_null", "nested")

    def __init__(self) -> None:
        self.drop_if_null: tuple[str, ...] = ()
        self.nested: tuple[tuple[str, _Plan], ...] = ()


class _ItemsPlan:
    """A list (or set) whose items need a look inside."""

    __slots__ = ("item",)

    def __init__(self, item: _Plan) -> None:
        self.item = item


class _UnionPlan:
    """A union: which arm a value is meant to be decides which nulls to drop."""

    __slots__ = ("arms",)

    def __init__(self, arms: tuple[tuple[Any, _Plan | None], ...]) -> None:
        self.arms = arms


_Plan = _ModelPlan | _ItemsPlan | _UnionPlan

_plan_cache: weakref.WeakKeyDictionary[type, _Plan | None] = weakref.WeakKeyDictionary()


def _null_plan(model: type[pydantic.BaseModel]) -> _Plan | None:
    """The cached plan for ``model``, None when no field anywhere inside has a
    default while rejecting None."""
    try:
        return _plan_cache[model]
    except KeyError:
        pass
    building: dict[type, _ModelPlan] = {}
    plan = _build_plan(model, building)
    for built_model, built in building.items():
        _plan_cache.setdefault(built_model, built if built.drop_if_null or built.nested else None)
    _plan_cache.setdefault(model, plan)  # a RootModel is not among the models built
    return plan


def _build_plan(annotation: Any, building: dict[type, _ModelPlan]) -> _Plan | None:
    annotation = _unwrap_annotated(annotation)
    if _is_model(annotation):
        if annotation in _plan_cache:
            return _plan_cache[annotation]
        if annotation in building:
            return building[annotation]  # recursion: the plan being filled in
        if issubclass(annotation, pydantic.RootModel):
            return _build_plan(annotation.model_fields["root"].annotation, building)
        plan = building[annotation] = _ModelPlan()
        drop: list[str] = []
        nested: list[tuple[str, _Plan]] = []
        for key, field in _input_keys(annotation).items():
            if not field.is_required() and not _admits_none(field.annotation):
                drop.append(key)
            inner = _build_plan(field.annotation, building)
            if inner is not None:
                nested.append((key, inner))
        plan.drop_if_null, plan.nested = tuple(drop), tuple(nested)
        # A model that refers back to itself has itself in ``nested``, so a plan
        # that ended up empty was never handed out to a recursive reference.
        return plan if drop or nested else None
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        arms = tuple((arm, _build_plan(arm, building)) for arm in typing.get_args(annotation))
        return _UnionPlan(arms) if any(p is not None for _, p in arms) else None
    if origin in _SEQUENCE_ORIGINS:
        args = typing.get_args(annotation)
        item = _build_plan(args[0], building) if args else None
        return _ItemsPlan(item) if item is not None else None
    return None


def _drop_defaulted_nulls(value: Any, plan: _Plan) -> bool:
    """Delete, in place, the nulls ``plan`` says stand for a default.

    Returns whether anything was deleted.
    """
    if isinstance(plan, _ModelPlan):
        if not isinstance(value, dict):
            return False
        changed = False
        for key in plan.drop_if_null:
            if key in value and value[key] is None:
                del value[key]
                changed = True
        for key, inner in plan.nested:
            if key in value:
                changed |= _drop_defaulted_nulls(value[key], inner)
        return changed
    if isinstance(plan, _ItemsPlan):
        if not isinstance(value, list):
            return False
        changed = False
        for item in value:
            changed |= _drop_defaulted_nulls(item, plan.item)
        return changed
    return _drop_in_union(value, plan)


def _drop_in_union(value: Any, plan: _UnionPlan) -> bool:
    """Drop defaulted nulls for the union arm that ``value`` is meant to be.

    Which arm that is cannot be told from the keys alone (two models may share
    them, and a null may be legal in one and a defaulted field in the other), so
    each arm is tried on a copy: a value some arm accepts as it is stays as it
    is; otherwise the first arm that accepts it once its nulls are dropped wins.
    A value without any null is left alone without trying the arms.
    """
    if not isinstance(value, dict | list):
        return False  # scalars hold no fields to drop
    encoded = orjson.dumps(value)
    if b"null" not in encoded:
        return False
    if any(_accepts(arm, encoded) for arm, _ in plan.arms):
        return False
    for arm, arm_plan in plan.arms:
        if arm_plan is None:
            continue
        candidate = orjson.loads(encoded)
        if _drop_defaulted_nulls(candidate, arm_plan) and _accepts(arm, orjson.dumps(candidate)):
            if isinstance(value, dict):
                value.clear()
                value.update(candidate)
            else:
                value[:] = candidate
            return True
    return False


def _accepts(annotation: Any, encoded: bytes) -> bool:
    """Whether ``encoded`` JSON validates as ``annotation`` (a model or any type)."""
    try:
        if _is_model(annotation):
            annotation.model_validate_json(encoded)
        else:
            pydantic.TypeAdapter(annotation).validate_json(encoded)
    except pydantic.ValidationError:
        return False
    return True


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _input_keys(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The JSON key each field is read from (its alias when it has one) -> field."""
    keys = {}
    for name, field in model.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        keys[alias or field.alias or name] = field
    return keys


def _unwrap_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _admits_none(annotation: Any) -> bool:
    annotation = _unwrap_annotated(annotation)
    if annotation is None or annotation is type(None) or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_admits_none(arm) for arm in typing.get_args(annotation))
    if origin is typing.Literal:
        return None in typing.get_args(annotation)
    return False
