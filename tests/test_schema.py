"""Strict structured-output schemas (engine._schema) and parsing answers back."""

from __future__ import annotations

import datetime
import enum
import itertools
from typing import Annotated, Any, Generic, Literal, TypeVar

import jsonschema
import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from engine._errors import ResponseValidationError
from engine._schema import (
    KEPT_KEYWORDS,
    parse_structured,
    response_format_for,
    schema_name_for,
    strict_json_schema,
)
from engine.mock._schema import instance_for_schema

# -- the strict-rule walker ----------------------------------------------------


def assert_strict(schema: dict[str, Any]) -> None:
    """Fail unless ``schema`` obeys every OpenAI strict-mode rule we rely on."""
    assert schema.get("type") == "object", "root must be an object"
    assert "anyOf" not in schema, "root must not be a union"
    defs = schema.get("$defs", {})
    assert all(isinstance(name, str) for name in defs)
    _walk(schema, defs, "#", is_root=True)
    for name, definition in defs.items():
        _walk(definition, defs, f"#/$defs/{name}", is_root=False)


def _walk(node: dict[str, Any], defs: dict[str, Any], where: str, *, is_root: bool) -> None:
    assert isinstance(node, dict), where
    allowed = KEPT_KEYWORDS | ({"$defs"} if is_root else set())
    extra = set(node) - allowed
    assert not extra, f"{where}: keywords outside the strict subset: {extra}"
    assert "default" not in node and "oneOf" not in node, where
    if "$ref" in node:
        assert set(node) == {"$ref"}, f"{where}: $ref with siblings {set(node)}"
        ref = node["$ref"]
        assert ref == "#" or ref.removeprefix("#/$defs/") in defs, f"{where}: dangling {ref}"
        return
    assert "type" in node or "anyOf" in node, f"{where}: no type"
    types_ = node.get("type")
    type_set = set(types_) if isinstance(types_, list) else {types_}
    if "object" in type_set:
        assert node.get("additionalProperties") is False, f"{where}: object not closed"
        assert "properties" in node, f"{where}: object without properties"
        assert node["required"] == list(node["properties"]), f"{where}: not all required"
        for key, prop in node["properties"].items():
            _walk(prop, defs, f"{where}.{key}", is_root=False)
    else:
        assert "additionalProperties" not in node and "properties" not in node, where
    if "array" in type_set:
        _walk(node["items"], defs, f"{where}[]", is_root=False)
    for i, arm in enumerate(node.get("anyOf", ())):
        _walk(arm, defs, f"{where}|{i}", is_root=False)


def assert_instance_fits(model_schema: dict[str, Any], instance: BaseModel) -> None:
    """Fail unless ``instance`` dumped to JSON validates against ``model_schema``."""
    jsonschema.Draft202012Validator.check_schema(model_schema)
    jsonschema.Draft202012Validator(model_schema).validate(instance.model_dump(mode="json"))


def parse(content: str | None, model, **kwargs):
    """parse_structured with a normal finish and no refusal unless overridden."""
    kwargs.setdefault("finish_reason", "stop")
    kwargs.setdefault("refusal", None)
    return parse_structured(content, model, **kwargs)


# -- models under test ---------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    """A postal address."""

    street: str = Field(description="street and number")
    city: str
    zip_code: str | None = None


class Person(BaseModel):
    """Someone mentioned in the text."""

    name: str = Field(description="full name as written")
    age: int
    home: Address = Field(description="where they live")
    past_homes: list[Address]
    nickname: str | None = None
    score: float = 0.5


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = 9


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool = True


class Pets(BaseModel):
    plain: Cat | Dog
    tagged: Annotated[Cat | Dog, Field(discriminator="kind")]
    maybe: Cat | None = None
    number_or_word: int | str


class Choices(BaseModel):
    color: Color
    priority: Priority = Priority.LOW
    mood: Literal["happy", "sad"]
    always: Literal["yes"]
    mixed: Literal[1, "one"]
    colors: list[Color]


class TreeNode(BaseModel):
    """A node of a tree."""

    value: int
    children: list[TreeNode] = []


class Forest(BaseModel):
    trees: list[TreeNode]
    biggest: TreeNode | None = None


class Constrained(BaseModel):
    code: str = Field(min_length=2, max_length=4, pattern=r"^[A-Z]+$")
    tags: set[str]
    at: datetime.datetime
    site: pydantic.AnyUrl
    count: int = Field(ge=0, le=10, multiple_of=2)
    items: list[int] = Field(min_length=1, max_length=3)


class Empty(BaseModel):
    pass


SAMPLES: list[BaseModel] = [
    Person(
        name="Ada",
        age=36,
        home=Address(street="1 Main St", city="London"),
        past_homes=[Address(street="2 Side St", city="Paris", zip_code="75001")],
    ),
    Pets(plain=Cat(kind="cat"), tagged=Dog(kind="dog"), maybe=Cat(kind="cat"), number_or_word=3),
    Choices(
        color=Color.RED, mood="sad", always="yes", mixed="one", colors=[Color.GREEN, Color.RED]
    ),
    TreeNode(value=1, children=[TreeNode(value=2, children=[TreeNode(value=3)])]),
    Forest(trees=[TreeNode(value=1)], biggest=TreeNode(value=5, children=[TreeNode(value=6)])),
    Constrained(
        code="AB",
        tags={"x"},
        at=datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.UTC),
        site="https://example.org/",
        count=4,
        items=[1],
    ),
    Empty(),
]


# -- schema generation ---------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_generated_schema_obeys_strict_rules(sample):
    """Every model's schema passes the strict-rule walker."""
    assert_strict(strict_json_schema(type(sample)))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_generated_schema_is_valid_draft_2020_12_and_accepts_a_real_instance(sample):
    """Each schema is valid Draft 2020-12 and accepts the model's own JSON dump."""
    assert_instance_fits(strict_json_schema(type(sample)), sample)


def test_nested_model_is_closed_and_fully_required():
    """A nested model's object gets additionalProperties false and all keys required."""
    home = strict_json_schema(Person)["properties"]["home"]
    assert home["type"] == "object"
    assert home["additionalProperties"] is False
    assert home["required"] == ["street", "city", "zip_code"]


def test_list_of_models_points_at_a_closed_definition():
    """A list of models has items referring to a strict $defs entry."""
    schema = strict_json_schema(Person)
    items = schema["properties"]["past_homes"]["items"]
    assert items == {"$ref": "#/$defs/Address"}
    address = schema["$defs"]["Address"]
    assert address["additionalProperties"] is False
    assert address["required"] == ["street", "city", "zip_code"]


def test_optional_field_is_required_and_nullable():
    """An Optional field with a None default stays nullable, is required, has no default."""
    nickname = strict_json_schema(Person)["properties"]["nickname"]
    assert nickname == {"anyOf": [{"type": "string"}, {"type": "null"}]}


def test_defaulted_field_becomes_nullable_without_default():
    """A non-optional field with a default is widened to accept null and loses the default."""
    assert strict_json_schema(Person)["properties"]["score"] == {
        "anyOf": [{"type": "number"}, {"type": "null"}]
    }


def test_enum_becomes_enum_definition():
    """An Enum field refers to a definition listing the enum's values."""
    schema = strict_json_schema(Choices)
    assert schema["properties"]["color"] == {"$ref": "#/$defs/Color"}
    assert schema["$defs"]["Color"] == {"enum": ["red", "green"], "type": "string"}
    assert schema["$defs"]["Priority"] == {"enum": [1, 2], "type": "integer"}


def test_literals_become_enums():
    """Literal fields become typed enums, a one-value Literal included (no const)."""
    props = strict_json_schema(Choices)["properties"]
    assert props["mood"] == {"enum": ["happy", "sad"], "type": "string"}
    assert props["always"] == {"enum": ["yes"], "type": "string"}
    assert props["mixed"] == {"enum": [1, "one"], "type": ["integer", "string"]}


def test_unions_become_any_of_and_discriminated_unions_lose_one_of():
    """Plain and discriminated unions both become anyOf; no oneOf or discriminator."""
    props = strict_json_schema(Pets)["properties"]
    expected = {"anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}]}
    assert props["plain"] == expected
    assert props["tagged"] == expected
    assert props["number_or_word"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def test_recursive_root_model_refers_to_root():
    """A recursive root model is the root object and refers to itself as '#'."""
    schema = strict_json_schema(TreeNode)
    assert "$defs" not in schema
    assert schema["properties"]["children"]["anyOf"][0] == {
        "type": "array",
        "items": {"$ref": "#"},
    }


def test_recursive_nested_model_stays_in_defs():
    """A recursive model used inside another keeps a self-referring $defs entry."""
    schema = strict_json_schema(Forest)
    node = schema["$defs"]["TreeNode"]
    assert node["properties"]["children"]["anyOf"][0]["items"] == {"$ref": "#/$defs/TreeNode"}


def test_recursive_instance_validates_to_depth():
    """A three-level tree validates against the '#'-recursive schema, a bad leaf does not."""
    schema = strict_json_schema(TreeNode)
    validator = jsonschema.Draft202012Validator(schema)
    tree = {"value": 1, "children": [{"value": 2, "children": [{"value": 3, "children": None}]}]}
    validator.validate(tree)
    tree["children"][0]["children"][0]["value"] = "three"
    assert not validator.is_valid(tree)


def test_field_descriptions_are_kept_including_on_model_fields():
    """Field descriptions survive, and a described model field is inlined with it."""
    props = strict_json_schema(Person)["properties"]
    assert props["name"]["description"] == "full name as written"
    assert props["home"]["description"] == "where they live"
    assert props["home"]["properties"]["street"]["description"] == "street and number"


def test_description_survives_nullable_widening():
    """A described defaulted field keeps its description on the nullable wrapper."""

    class Note(BaseModel):
        length: int = Field(3, description="how long")

    assert strict_json_schema(Note)["properties"]["length"] == {
        "anyOf": [{"type": "integer"}, {"type": "null"}],
        "description": "how long",
    }


def test_docstring_becomes_schema_and_format_description():
    """The model's docstring is the schema's and the response format's description."""
    fmt = response_format_for(Person)
    assert fmt["json_schema"]["description"] == "Someone mentioned in the text."
    assert fmt["json_schema"]["schema"]["description"] == "Someone mentioned in the text."
    assert strict_json_schema(Person)["$defs"]["Address"]["description"] == "A postal address."


def test_response_format_shape():
    """response_format_for builds the json_schema response format with strict true."""
    fmt = response_format_for(Pets)
    assert fmt == {
        "type": "json_schema",
        "json_schema": {"name": "Pets", "schema": strict_json_schema(Pets), "strict": True},
    }


def test_model_without_docstring_has_no_description():
    """A model without a docstring sends no description at all."""
    assert "description" not in response_format_for(Pets)["json_schema"]
    assert "description" not in strict_json_schema(Pets)


def test_generic_model_name_is_sanitised():
    """A generic model's name is made safe for the json_schema name rule."""
    T = TypeVar("T")

    class Page(BaseModel, Generic[T]):
        items: list[T]

    name = schema_name_for(Page[int])
    assert name == "Page_int_"
    assert response_format_for(Page[int])["json_schema"]["name"] == name


def test_long_model_name_is_cut_to_64_characters():
    """A class name longer than 64 characters is cut to the limit."""
    model = pydantic.create_model("X" * 80, a=(int, ...))
    assert schema_name_for(model) == "X" * 64


def test_explicit_invalid_name_is_rejected():
    """An explicit schema name with forbidden characters raises ValueError."""
    with pytest.raises(ValueError, match="schema name must match"):
        response_format_for(Person, name="my schema!")


def test_explicit_name_is_used():
    """An explicit valid name replaces the class name."""
    assert response_format_for(Person, name="person-v2")["json_schema"]["name"] == "person-v2"


def test_unsupported_keywords_are_stripped_and_supported_ones_kept():
    """Titles, defaults, lengths and uniqueness go; pattern, date-time and bounds stay."""
    props = strict_json_schema(Constrained)["properties"]
    assert props["code"] == {"type": "string", "pattern": "^[A-Z]+$"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["at"] == {"type": "string", "format": "date-time"}
    assert props["site"] == {"type": "string"}  # format "uri" is not in the strict subset
    assert props["count"] == {"type": "integer", "minimum": 0, "maximum": 10, "multipleOf": 2}
    assert props["items"] == {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 1,
        "maxItems": 3,
    }


def test_each_call_returns_a_fresh_schema():
    """Mutating a returned schema does not change the next one."""
    strict_json_schema(Person)["properties"].clear()
    assert "name" in strict_json_schema(Person)["properties"]


def test_extra_allow_model_is_still_closed():
    """A model with extra='allow' still gets additionalProperties false."""

    class Loose(BaseModel):
        model_config = pydantic.ConfigDict(extra="allow")
        a: int

    assert strict_json_schema(Loose)["additionalProperties"] is False


def test_unused_definitions_are_pruned():
    """A definition only reached through an inlined $ref is dropped from $defs."""

    class Inner(BaseModel):
        x: int

    class Outer(BaseModel):
        inner: Inner = Field(description="the only use")

    schema = strict_json_schema(Outer)
    assert "$defs" not in schema
    assert schema["properties"]["inner"]["properties"] == {"x": {"type": "integer"}}


# -- rejected shapes -----------------------------------------------------------


def test_dict_field_is_rejected_naming_the_field():
    """dict[str, X] raises TypeError naming the model and field."""

    class Scores(BaseModel):
        scores: dict[str, int]

    with pytest.raises(TypeError, match=r"Scores\.scores: a mapping with free-form keys"):
        strict_json_schema(Scores)


def test_nested_dict_field_is_rejected_naming_its_model_and_field():
    """A dict field inside a nested model names the nested model and field."""

    class Meta(BaseModel):
        labels: dict[str, str]

    class Doc(BaseModel):
        meta: list[Meta]

    with pytest.raises(TypeError, match=r"Meta\.labels: a mapping"):
        strict_json_schema(Doc)


def test_bare_dict_field_is_rejected():
    """An untyped dict field is rejected as a free-form mapping."""

    class Blob(BaseModel):
        data: dict

    with pytest.raises(TypeError, match=r"Blob\.data: a mapping"):
        strict_json_schema(Blob)


def test_tuple_field_is_rejected():
    """A tuple field (prefixItems) raises TypeError naming it."""

    class Pair(BaseModel):
        pair: tuple[int, str]

    with pytest.raises(TypeError, match=r"Pair\.pair: a tuple"):
        strict_json_schema(Pair)


def test_any_field_is_rejected():
    """An Any field has no JSON type and is rejected naming it."""

    class Loose(BaseModel):
        anything: Any

    with pytest.raises(TypeError, match=r"Loose\.anything: a field without a JSON type"):
        strict_json_schema(Loose)


def test_non_object_root_is_rejected():
    """A RootModel over a list cannot be a structured-output root."""
    with pytest.raises(ValueError, match="root of a structured-output schema must be an object"):
        strict_json_schema(pydantic.RootModel[list[int]])


def test_non_model_is_rejected():
    """Passing something that is not a pydantic model class raises TypeError."""
    with pytest.raises(TypeError, match="must be a pydantic model class"):
        strict_json_schema(dict)  # type: ignore[arg-type]


# -- parsing answers -----------------------------------------------------------

PERSON_JSON = orjson.dumps(SAMPLES[0].model_dump(mode="json")).decode()


def test_parse_returns_model_instance():
    """A valid answer becomes an instance of the user's model, equal to the original."""
    person = parse(PERSON_JSON, Person)
    assert isinstance(person, Person)
    assert person == SAMPLES[0]


@pytest.mark.parametrize(
    "model",
    [type(sample) for sample in SAMPLES if not isinstance(sample, Constrained)],
    ids=lambda m: m.__name__,
)
def test_parse_accepts_the_mock_servers_answer_to_the_strict_schema(model):
    """What the mock answers for our strict schema parses into the model.

    Constrained is left out: its stripped constraints (max_length, uri) are
    invisible to whoever fills the schema, so a mismatch there is expected.
    """
    answer = instance_for_schema(strict_json_schema(model))
    assert isinstance(parse(orjson.dumps(answer).decode(), model), model)


def test_parse_applies_default_when_defaulted_field_is_null():
    """A null for a defaulted, non-optional field yields the field's default."""
    data = SAMPLES[0].model_dump(mode="json") | {"score": None}
    assert parse(orjson.dumps(data).decode(), Person).score == 0.5


def test_parse_keeps_null_for_optional_field_with_other_default():
    """A field whose type admits None keeps an explicit null rather than its default."""

    class Guess(BaseModel):
        year: int | None = 2000

    assert parse('{"year": null}', Guess).year is None


def test_parse_applies_defaults_inside_lists_and_nested_models():
    """Defaulted nulls are dropped at any depth: nested models and list items."""
    tree = parse('{"value": 1, "children": [{"value": 2, "children": null}]}', TreeNode)
    assert tree == TreeNode(value=1, children=[TreeNode(value=2)])


def test_parse_applies_defaults_in_the_matching_union_arm():
    """In a union of models, the arm whose keys match gets its defaults applied."""
    content = (
        '{"plain": {"kind": "dog", "good": null}, "tagged": {"kind": "cat", "lives": null},'
        ' "maybe": null, "number_or_word": "x"}'
    )
    pets = parse(content, Pets)
    assert pets.plain == Dog(kind="dog", good=True)
    assert pets.tagged == Cat(kind="cat", lives=9)


def test_parse_picks_the_union_arm_where_null_is_legal():
    """With two same-keyed arms, a null legal in one arm is not dropped for the other."""

    class Strict(BaseModel):
        a: int = 1
        b: int

    class Loose(BaseModel):
        a: int | None
        b: int

    class Holder(BaseModel):
        x: int = 0
        item: Strict | Loose

    parsed = parse('{"x": null, "item": {"a": null, "b": 2}}', Holder)
    assert parsed.x == 0
    assert parsed.item == Loose(a=None, b=2)


def test_parse_defaulted_model_field_null_gets_default_model():
    """A null for a field whose default is a model instance yields that instance."""

    class Settings(BaseModel):
        level: int = 3

    class Job(BaseModel):
        settings: Settings = Settings(level=7)

    assert parse('{"settings": null}', Job).settings == Settings(level=7)


def test_parse_root_model_wrapping_a_model():
    """A RootModel around a model is an object root and parses with defaults applied."""
    root = pydantic.RootModel[Cat]
    assert_strict(strict_json_schema(root))
    assert parse('{"kind": "cat", "lives": null}', root).root == Cat(kind="cat")


def test_parse_refusal_raises_with_refusal_kept():
    """A refusal becomes a ResponseValidationError with code 'refusal' and the text kept."""
    with pytest.raises(ResponseValidationError, match="refused") as info:
        parse(None, Person, refusal="I can't help with that.", request_id="req_1")
    assert info.value.code == "refusal"
    assert info.value.raw == "I can't help with that."
    assert info.value.request_id == "req_1"


def test_parse_truncated_output_raises_with_raw_kept():
    """finish_reason 'length' is reported as truncated output, raw content kept."""
    cut = PERSON_JSON[:20]
    with pytest.raises(ResponseValidationError, match="cut off") as info:
        parse(cut, Person, finish_reason="length")
    assert info.value.code == "output_truncated"
    assert info.value.raw == cut


def test_parse_content_filter_raises():
    """finish_reason 'content_filter' is reported as withheld output."""
    with pytest.raises(ResponseValidationError, match="content filter") as info:
        parse('{"na', Person, finish_reason="content_filter")
    assert info.value.code == "content_filter"
    assert info.value.raw == '{"na'


def test_parse_invalid_json_raises_with_raw_kept():
    """Content that is not JSON raises invalid_json with the raw text kept."""
    with pytest.raises(ResponseValidationError, match="not valid JSON") as info:
        parse("{'name': 'Ada'}", Person)
    assert info.value.code == "invalid_json"
    assert info.value.raw == "{'name': 'Ada'}"


def test_parse_cut_json_with_nulls_raises_invalid_json():
    """Broken JSON that contains nulls (the default-filling path) is still invalid_json."""
    raw = '{"name": "Ada", "score": null, "age":'
    with pytest.raises(ResponseValidationError, match="not valid JSON") as info:
        parse(raw, Person)
    assert info.value.code == "invalid_json"
    assert info.value.raw == raw


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_parse_empty_content_raises(content):
    """Missing or blank content raises empty_output."""
    with pytest.raises(ResponseValidationError, match="is empty") as info:
        parse(content, Person)
    assert info.value.code == "empty_output"
    assert info.value.raw == content


def test_parse_schema_mismatch_names_field_paths():
    """A mismatching answer names each bad field path and reason."""
    data = SAMPLES[0].model_dump(mode="json")
    data["age"] = "old"
    del data["home"]["city"]
    data["past_homes"][0]["street"] = 5
    raw = orjson.dumps(data).decode()
    with pytest.raises(ResponseValidationError) as info:
        parse(raw, Person)
    message = str(info.value)
    assert info.value.code == "schema_mismatch"
    assert info.value.raw == raw
    assert "age: Input should be a valid integer" in message
    assert "home.city: Field required" in message
    assert "past_homes[0].street: Input should be a valid string" in message
    assert "(3 errors)" in message


def test_parse_schema_mismatch_summary_is_bounded():
    """More than five errors are summarised with a count of the rest."""
    model = pydantic.create_model("Many", **{f"f{i}": (int, ...) for i in range(8)})
    with pytest.raises(ResponseValidationError, match=r"and 3 more \(8 errors\)"):
        parse("{}", model)


def test_parse_non_object_answer_is_a_mismatch():
    """A JSON array where an object was expected is a schema mismatch."""
    with pytest.raises(ResponseValidationError) as info:
        parse("[1, 2]", Person)
    assert info.value.code == "schema_mismatch"


def test_parse_rechecks_constraints_stripped_from_the_schema():
    """A max_length the schema could not carry is still enforced on parse."""
    data = SAMPLES[5].model_dump(mode="json") | {"code": "TOOLONG"}
    with pytest.raises(ResponseValidationError, match="code: String should have at most 4"):
        parse(orjson.dumps(data).decode(), Constrained)


def test_parse_error_redacts_key_shaped_text():
    """A key-shaped string echoed in a refusal never reaches the error message."""
    with pytest.raises(ResponseValidationError) as info:
        parse(None, Person, refusal="key sk-abcdefghijkl leaked")
    assert "sk-abcdefghijkl" not in str(info.value)


# -- property test: random nested shapes ----------------------------------------

_names = itertools.count()

_LEAVES: list[tuple[Any, st.SearchStrategy]] = [
    (int, st.integers(-1000, 1000)),
    (str, st.text(max_size=5)),
    (float, st.floats(allow_nan=False, allow_infinity=False, width=32)),
    (bool, st.booleans()),
    (Literal["a", "b"], st.sampled_from(["a", "b"])),
    (Color, st.sampled_from(list(Color))),
]


@st.composite
def shapes(draw, depth: int = 0) -> tuple[Any, st.SearchStrategy, bool]:
    """A random annotation, a strategy for its values, and whether it is a leaf."""
    kinds = ["leaf"] if depth >= 3 else ["leaf", "leaf", "optional", "list", "model", "union"]
    kind = draw(st.sampled_from(kinds))
    if kind == "leaf":
        annotation, values = draw(st.sampled_from(_LEAVES))
        return annotation, values, True
    if kind == "optional":
        inner, values, _ = draw(shapes(depth + 1))
        return inner | None, st.none() | values, False
    if kind == "list":
        inner, values, _ = draw(shapes(depth + 1))
        return list[inner], st.lists(values, max_size=3), False
    if kind == "union":
        a, a_values = draw(model_shapes(depth + 1))
        b, b_values = draw(model_shapes(depth + 1))
        return a | b, a_values | b_values, False
    model, values = draw(model_shapes(depth + 1))
    return model, values, False


@st.composite
def model_shapes(draw, depth: int = 0) -> tuple[type[BaseModel], st.SearchStrategy]:
    """A pydantic model built with create_model, and a strategy for its instances.

    Each model starts with a ``tag`` field holding its own name, so a union of
    two generated models is never ambiguous (an ambiguous union cannot round-trip
    through JSON, whatever the schema says).
    """
    model_name = f"Shape{next(_names)}"
    fields: dict[str, Any] = {"tag": (Literal[model_name], ...)}
    value_strategies: dict[str, st.SearchStrategy] = {"tag": st.just(model_name)}
    for i in range(draw(st.integers(1, 4))):
        annotation, values, is_leaf = draw(shapes(depth))
        name = f"f{i}"
        if is_leaf and draw(st.booleans()):
            default = draw(values)
            description = draw(st.none() | st.just(f"field {i}"))
            fields[name] = (annotation, Field(default, description=description))
        else:
            fields[name] = (annotation, ...)
        value_strategies[name] = values
    model = pydantic.create_model(model_name, **fields)
    return model, st.builds(model, **value_strategies)


_property_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_property_settings
@given(model_shapes())
def test_random_models_obey_strict_rules(shape):
    """For random nested models the strict rules hold and the schema is valid 2020-12."""
    model, _ = shape
    schema = strict_json_schema(model)
    assert_strict(schema)
    jsonschema.Draft202012Validator.check_schema(schema)


@_property_settings
@given(st.data())
def test_random_instances_fit_schema_and_parse_back(data):
    """A random instance fits its strict schema and parses back to the same JSON.

    JSON equality, not instance equality: a union of two models with the same
    fields cannot tell which one an answer was meant to be.
    """
    model, instances = data.draw(model_shapes())
    instance = data.draw(instances)
    assert_instance_fits(strict_json_schema(model), instance)
    content = instance.model_dump_json()
    parsed = parse(content, model)
    assert isinstance(parsed, model)
    assert parsed.model_dump(mode="json") == instance.model_dump(mode="json")


@_property_settings
@given(st.data())
def test_random_defaulted_nulls_parse_to_defaults(data):
    """Nulling every defaulted non-optional top-level field yields the defaults."""
    model, instances = data.draw(model_shapes())
    dumped = data.draw(instances).model_dump(mode="json")
    defaulted = [
        name
        for name, field in model.model_fields.items()
        if not field.is_required() and field.default is not None
    ]
    for name in defaulted:
        dumped[name] = None
    jsonschema.Draft202012Validator(strict_json_schema(model)).validate(dumped)
    parsed = parse(orjson.dumps(dumped).decode(), model)
    for name in defaulted:
        assert getattr(parsed, name) == model.model_fields[name].default
