"""``--endpoints FILE``: the TOML loader of a pool's members (engine/app/_endpoints_file.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.app._endpoints_file import EndpointsFileError, describe_endpoints, load_endpoints

KEY_A = "sk-proj-EndpointsFileKeyA0123456789abcdef"
KEY_B = "sk-proj-EndpointsFileKeyB0123456789abcdef"
ENV = {"KEY_A": KEY_A, "KEY_B": KEY_B}
MEMBER = 'name = "team-a"\nbase_url = "https://api.openai.com/v1"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> str:
    """The message of the error loading ``text`` raises; it never holds a key."""
    path = write(tmp_path, text)
    with pytest.raises(EndpointsFileError) as caught:
        load_endpoints(path, ENV if environ is None else environ)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert str(path) in message
    for secret in (KEY_A, KEY_B, KEY_A[8:], KEY_B[8:], "sk-inline"):
        assert secret not in message
    return message


def test_a_complete_file_gives_each_member_its_fields_and_the_key_from_its_variable(tmp_path):
    """Names, URLs, weights, models, one Limits or per-model limits; keys from the environment."""
    path = write(
        tmp_path,
        f"""
[[endpoint]]
{MEMBER}api_key_env = "KEY_A"
weight = 2
models = ["gpt-4o-mini", "gpt-4o"]
limits = {{ rpm = 600, tpm = 200000 }}

[[endpoint]]
name = "team-b"
base_url = "https://example.test/v1"
api_key_env = "KEY_B"
[endpoint.limits."gpt-4o-mini"]
rpm = 60
rpd = 1000
[endpoint.limits."gpt-4o"]
tpm = 30000
burst = false
""",
    )
    a, b = load_endpoints(path, ENV)
    assert isinstance(a, engine.Endpoint) and isinstance(b, engine.Endpoint)
    assert (a.name, a.base_url, a.api_key, a.weight) == (
        "team-a",
        "https://api.openai.com/v1",
        KEY_A,
        2.0,
    )
    assert a.models == frozenset({"gpt-4o-mini", "gpt-4o"})
    assert a.limits == engine.Limits(rpm=600, tpm=200000)
    assert (b.name, b.api_key, b.weight, b.models) == ("team-b", KEY_B, 1.0, None)
    assert b.limits == {
        "gpt-4o-mini": engine.Limits(rpm=60, rpd=1000),
        "gpt-4o": engine.Limits(tpm=30000, burst=False),
    }


def test_a_member_without_api_key_env_has_no_key_and_learns_its_limits(tmp_path):
    """api_key_env, limits, weight and models are optional: no key (a local server), defaults."""
    path = write(tmp_path, '[[endpoint]]\nname = "local"\nbase_url = "http://127.0.0.1:8000/v1"\n')
    (local,) = load_endpoints(path, {})
    assert (local.api_key, local.limits, local.weight, local.models) == (None, None, 1.0, None)


def test_models_may_be_one_string(tmp_path):
    """models = "gpt-4o-mini" is read as a list of one."""
    (member,) = load_endpoints(write(tmp_path, f'[[endpoint]]\n{MEMBER}models = "m-1"\n'), {})
    assert member.models == frozenset({"m-1"})


def test_the_description_names_members_and_base_urls_never_keys_or_url_credentials(tmp_path):
    """describe_endpoints is what the run prints: names and URLs, userinfo masked."""
    path = write(
        tmp_path,
        f'[[endpoint]]\n{MEMBER}api_key_env = "KEY_A"\n'
        '[[endpoint]]\nname = "b"\nbase_url = "https://user:hunter2@proxy.test/v1"\n',
    )
    text = describe_endpoints(load_endpoints(path, ENV))
    assert text == "team-a (https://api.openai.com/v1), b (https://***@proxy.test/v1)"
    assert KEY_A not in text and "hunter2" not in text


@pytest.mark.parametrize(
    "field", ["api_key", "key", "openai_api_key", "API_KEY", "secret", "password", "token"]
)
def test_a_key_in_the_file_is_refused_and_the_user_told_to_use_api_key_env(tmp_path, field):
    """Keys are never read from the file: a key-like field names api_key_env, never its value."""
    message = refused(tmp_path, f'[[endpoint]]\n{MEMBER}{field} = "sk-inline-secret-value"\n')
    assert "endpoint 'team-a'" in message and field in message
    assert "environment variable" in message and "api_key_env" in message
    assert "secret-value" not in message


def test_a_key_at_the_top_of_the_file_is_refused_too(tmp_path):
    """A top-level api_key is refused with the same advice, its value not shown."""
    message = refused(tmp_path, f'api_key = "sk-inline-1"\n[[endpoint]]\n{MEMBER}')
    assert "'api_key'" in message and "api_key_env" in message


def test_a_variable_that_is_not_set_is_named_with_its_endpoint(tmp_path):
    """A missing variable: the error names it and the endpoint; no value of any variable."""
    message = refused(tmp_path, f'[[endpoint]]\n{MEMBER}api_key_env = "KEY_C"\n')
    assert "endpoint 'team-a'" in message and "KEY_C" in message and "not set" in message


def test_an_empty_variable_is_refused(tmp_path):
    """A variable set to nothing is no key: refused, named."""
    message = refused(tmp_path, f'[[endpoint]]\n{MEMBER}api_key_env = "KEY_A"\n', {"KEY_A": " "})
    assert "KEY_A" in message and "empty" in message


def test_api_key_env_holding_the_key_itself_is_refused_without_showing_it(tmp_path):
    """api_key_env = "sk-..." (the key, not a variable's name) is refused and not shown."""
    message = refused(tmp_path, f'[[endpoint]]\n{MEMBER}api_key_env = "{KEY_A}"\n')
    assert "api_key_env" in message and "not the key itself" in message


def test_api_key_env_must_be_a_string(tmp_path):
    """api_key_env = 3: a type error naming the field."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}api_key_env = 3\n")
    assert "api_key_env" in message and "a number" in message


def test_an_empty_file_is_refused_with_an_example(tmp_path):
    """An empty (or comment-only) file says to add [[endpoint]] tables."""
    message = refused(tmp_path, "# nothing yet\n")
    assert "empty" in message and "[[endpoint]]" in message


def test_a_file_without_endpoint_tables_is_refused(tmp_path):
    """Only [[endpoint]] tables may be at the top: another field is named."""
    message = refused(tmp_path, 'base_url = "https://api.openai.com/v1"\n')
    assert "'base_url'" in message and "[[endpoint]]" in message


def test_a_single_endpoint_table_asks_for_double_brackets(tmp_path):
    """[endpoint] instead of [[endpoint]] is told apart."""
    message = refused(tmp_path, f"[endpoint]\n{MEMBER}")
    assert "[[endpoint]]" in message and "double brackets" in message


def test_endpoint_as_a_scalar_or_an_empty_array_is_refused(tmp_path):
    """endpoint = 3 and endpoint = [] are not tables of members."""
    assert "[[endpoint]]" in refused(tmp_path, "endpoint = 3\n")
    assert "[[endpoint]]" in refused(tmp_path, "endpoint = []\n")
    assert "endpoint 1: expected an [[endpoint]] table" in refused(tmp_path, "endpoint = [1]\n")


def test_invalid_toml_names_the_file_and_where(tmp_path):
    """A syntax error names the file and tomllib's line and column, not the text."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}api_key = sk-inline-unquoted\n")
    assert "not valid TOML" in message and "line 4" in message


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    """Bytes that are not UTF-8: refused as not TOML text."""
    path = tmp_path / "endpoints.toml"
    path.write_bytes(b'[[endpoint]]\nname = "\xff"\n')
    with pytest.raises(EndpointsFileError, match="not UTF-8"):
        load_endpoints(path, {})


def test_a_file_that_cannot_be_read_is_refused(tmp_path):
    """A missing file: named, with the reason, nothing sent."""
    with pytest.raises(EndpointsFileError, match=r"cannot read the --endpoints file .*missing"):
        load_endpoints(tmp_path / "missing.toml", {})


def test_an_unknown_field_is_named_with_its_endpoint(tmp_path):
    """A misspelt field (url, wieght) is named with the endpoint and the fields allowed."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}wieght = 2\n")
    assert "endpoint 'team-a': wieght: unknown field" in message and "weight" in message


def test_an_endpoint_without_a_usable_name_is_named_by_its_position(tmp_path):
    """No name, a name that is not a string or not a valid label: 'endpoint 2'."""
    first = f"[[endpoint]]\n{MEMBER}"
    message = refused(tmp_path, first + '[[endpoint]]\nbase_url = "https://a.test/v1"\n')
    assert "endpoint 2: name: missing" in message
    message = refused(tmp_path, first + '[[endpoint]]\nname = 7\nbase_url = "https://a.test/v1"\n')
    assert "endpoint 2: name: must be a string, got a number" in message
    message = refused(tmp_path, first + '[[endpoint]]\nname = "a b"\nbase_url = "https://a/v1"\n')
    assert "endpoint 2: name: use 1 to 64 letters" in message


def test_duplicate_names_are_refused_naming_both_positions(tmp_path):
    """Two members named alike: both positions and the name."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}[[endpoint]]\n{MEMBER}")
    assert "endpoints 1 and 2 are both named 'team-a'" in message


def test_base_url_must_be_given_as_an_http_url(tmp_path):
    """base_url missing, not a string, or not http(s): named."""
    assert "base_url: missing" in refused(tmp_path, '[[endpoint]]\nname = "a"\n')
    message = refused(tmp_path, '[[endpoint]]\nname = "a"\nbase_url = 1\n')
    assert "base_url: must be a string" in message
    message = refused(tmp_path, '[[endpoint]]\nname = "a"\nbase_url = "ftp://x/v1"\n')
    assert "endpoint 'a': base_url: must be an http:// or https:// URL" in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [('"2"', "got a string"), ("true", "got a boolean"), ("0", "positive"), ("-1.5", "positive")],
)
def test_a_weight_must_be_a_positive_number(tmp_path, value, problem):
    """weight = "2", true, 0, -1.5: refused, naming the field."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}weight = {value}\n")
    assert "endpoint 'team-a': weight: must be a positive number" in message and problem in message


@pytest.mark.parametrize(
    ("value", "problem"),
    [("3", "must be a list"), ("[]", "is empty"), ('["a", 3]', "non-empty string")],
)
def test_models_must_be_a_list_of_names(tmp_path, value, problem):
    """models = 3, [], ["a", 3]: refused, naming the field."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}models = {value}\n")
    assert "endpoint 'team-a': models:" in message and problem in message


@pytest.mark.parametrize(
    ("limits", "field", "problem"),
    [
        ("limits = 600", "limits", "must be a table"),
        ("limits = {}", "limits", "is empty"),
        ("limits = { rpx = 5 }", "limits.rpx", "unknown limit"),
        ('limits = { rpm = "600" }', "limits.rpm", "must be a positive number, got a string"),
        ("limits = { rpm = true }", "limits.rpm", "got a boolean"),
        ("limits = { tpm = 0 }", "limits.tpm", "positive"),
        ("limits = { rpm = nan }", "limits.rpm", "positive"),
        ("limits = { burst = 1 }", "limits.burst", "true or false"),
        ("limits = { rpm = 5, m = { rpm = 5 } }", "limits.rpm", "not both"),
        ("limits = { m = {} }", "limits.m", "is empty"),
        ("limits = { m = { rpd = -1 } }", "limits.m.rpd", "positive"),
        ("limits = { m = { key = 1 } }", "limits.m.key", "unknown limit"),
    ],
)
def test_limits_errors_name_the_field(tmp_path, limits, field, problem):
    """Every bad limits form names the endpoint and the dotted field."""
    message = refused(tmp_path, f"[[endpoint]]\n{MEMBER}{limits}\n")
    assert f"endpoint 'team-a': {field}:" in message and problem in message


def test_limits_accept_exactly_the_fields_of_engine_limits(tmp_path):
    """rpm, tpm, rpd, tpd and burst: every field of engine.Limits, and no other."""
    path = write(
        tmp_path,
        f"[[endpoint]]\n{MEMBER}"
        "limits = { rpm = 1, tpm = 2, rpd = 3, tpd = 4.5, burst = false }\n",
    )
    (member,) = load_endpoints(path, {})
    assert member.limits == engine.Limits(rpm=1, tpm=2, rpd=3, tpd=4.5, burst=False)
