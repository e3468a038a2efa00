"""Structured answers of the mock are valid against their JSON schema."""

from __future__ import annotations

import enum
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel

from engine.mock._schema import instance_for_schema


def assert_valid(schema: dict) -> object:
    instance = instance_for_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(instance)
    return instance


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    zip_code: str | None


class Person(BaseModel):
    name: str
    age: int
    score: float
    active: bool
    color: Color
    mood: Literal["happy", "sad"]
    tags: list[str]
    address: Address
    previous: list[Address]
    nickname: str | None = None


class Node(BaseModel):
    value: int
    children: list[Node]
    parent: Node | None


def test_pydantic_model_schema_gets_valid_instance():
    """A nested pydantic model ($defs, $ref, enum, nullable) gets a valid instance."""
    instance = assert_valid(Person.model_json_schema())
    Person.model_validate(instance)


def test_recursive_schema_terminates():
    """A self-referencing model yields a finite valid instance."""
    instance = assert_valid(Node.model_json_schema())
    Node.model_validate(instance)


def test_strict_schema_fills_every_property():
    """Strict mode's additionalProperties false + all required is satisfied."""
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}, "b": {"type": ["integer", "null"]}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }
    assert assert_valid(schema) == {"a": "mock a", "b": 1}


def test_any_of_prefers_a_real_value_over_null():
    """A nullable field gets a value, so answers exercise the parser."""
    schema = {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["x", "y"]}]}
    assert assert_valid(schema) == "x"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 10, "maximum": 20, "multipleOf": 3},
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"type": "integer", "maximum": -5},
        {"type": "string", "minLength": 30},
        {"type": "string", "maxLength": 3},
        {"type": "string", "format": "date-time"},
        {"type": "string", "format": "email"},
        {"type": "array", "items": {"type": "boolean"}, "minItems": 3, "maxItems": 4},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
        {"const": 42},
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
            ]
        },
        {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
        {"definitions": {"x": {"type": "integer"}}, "$ref": "#/definitions/x"},
    ],
)
def test_keyword_coverage(schema):
    """Each supported keyword yields a valid instance."""
    assert_valid(schema)


def test_remote_ref_is_refused():
    """A non-local $ref cannot be resolved offline and raises ValueError."""
    with pytest.raises(ValueError, match="local"):
        instance_for_schema({"$ref": "https://example.com/schema.json"})
