"""``engine run --endpoints FILE``: a pool's members read from a TOML file.

One ``[[endpoint]]`` table per member (see docs/cli.md, "A pool of keys")::

    [[endpoint]]
    name = "team-a"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_KEY_TEAM_A"     # the key is read from this variable
    weight = 1.0                          # optional
    models = ["gpt-4o-mini"]              # optional: default every model
    limits = { rpm = 600, tpm = 200000 }  # optional: one Limits for every model

    [endpoint.limits."gpt-4o-mini"]       # ... or limits per model (limit group)
    rpm = 600

Keys are never read from the file: a field that looks like one (``api_key``,
anything whose name holds "key", "secret", "password" or "token" but ``api_key_env``)
is refused, and the error says to put the key in an environment variable and
name it with ``api_key_env``.  No error message ever holds a value from the
file or from the environment, only names: of the file, of the endpoint (or
its position), of the field and of the variable.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from engine._pool import Endpoint
from engine._quota import Limits

__all__ = ["EndpointsFileError", "describe_endpoints", "load_endpoints"]

#: The fields an ``[[endpoint]]`` table may have.
_FIELDS = ("name", "base_url", "api_key_env", "weight", "models", "limits")
#: Limits' own fields (rpm, tpm, rpd, tpd, burst): what a limits table may hold.
_LIMIT_FIELDS = tuple(field.name for field in attrs.fields(Limits))
#: Field names that would hold a credential (``api_key_env`` names one instead).
_SECRET = re.compile(r"key|secret|password|token", re.IGNORECASE)
#: What a member's name may be (engine.Endpoint checks it too; here to name it safely).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
#: An environment variable's name.
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXAMPLE = 'with its name, base_url and (for a key) api_key_env; see docs/cli.md, "A pool of keys"'


#: Makes the error of one endpoint's field: ``error(field, problem)``.
_Error = Callable[[str, str], "EndpointsFileError"]


class EndpointsFileError(ValueError):
    """An ``--endpoints`` file that cannot be used; the message says where and why.

    It names the file, the endpoint (by name, or by position when it has no
    usable name) and the field; never a value read from the file or the
    environment.
    """


def load_endpoints(
    path: str | os.PathLike[str], environ: Mapping[str, str] = os.environ
) -> list[Endpoint]:
    """The pool members an ``--endpoints`` TOML file describes, keys read from ``environ``.

    Raises:
        EndpointsFileError: the file cannot be read, is not TOML, or breaks a
            rule of the format (see the module docstring); a variable named
            by ``api_key_env`` is not set.
    """
    shown = os.fspath(path)
    try:
        with open(path, "rb") as file:
            text = file.read()
    except OSError as exc:
        raise EndpointsFileError(
            f"cannot read the --endpoints file {shown}: {exc.strerror or exc}"
        ) from None
    try:
        document = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise EndpointsFileError(
            f"{shown}: not UTF-8 text (byte {exc.start + 1}); an --endpoints file is TOML"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message says what and where (line, column), never the text itself.
        raise EndpointsFileError(f"{shown}: not valid TOML: {exc}") from None
    if not document:
        raise EndpointsFileError(
            f"{shown}: the file is empty; list each member of the pool in an [[endpoint]] "
            f"table {_EXAMPLE}"
        )
    for field in document:
        if field != "endpoint":
            raise EndpointsFileError(
                f"{shown}: unknown top-level field {field!r}; the file holds [[endpoint]] "
                "tables only" + (_put_key_in_environment() if _SECRET.search(field) else "")
            )
    tables = document["endpoint"]
    if isinstance(tables, dict):
        raise EndpointsFileError(
            f"{shown}: [endpoint] is one table; write [[endpoint]] (double brackets) for "
            "each member of the pool"
        )
    if not isinstance(tables, list) or not tables:
        raise EndpointsFileError(
            f"{shown}: 'endpoint' must be [[endpoint]] tables, one per member, each {_EXAMPLE}"
        )
    endpoints: list[Endpoint] = []
    positions: dict[str, int] = {}
    for position, table in enumerate(tables, start=1):
        if not isinstance(table, dict):
            raise EndpointsFileError(
                f"{shown}: endpoint {position}: expected an [[endpoint]] table, "
                f"got {_type_name(table)}"
            )
        endpoint = _endpoint(shown, position, table, environ)
        earlier = positions.get(endpoint.name)
        if earlier is not None:
            raise EndpointsFileError(
                f"{shown}: endpoints {earlier} and {position} are both named "
                f"{endpoint.name!r}; each member needs a name of its own"
            )
        positions[endpoint.name] = position
        endpoints.append(endpoint)
    return endpoints


def describe_endpoints(endpoints: list[Endpoint]) -> str:
    """``"team-a (https://api.openai.com/v1), team-b (...)"``: names and base URLs, no keys.

    A user name or password written into a base URL is shown as ``***``.
    """
    return ", ".join(f"{endpoint.name} ({_shown_url(endpoint.base_url)})" for endpoint in endpoints)


def _shown_url(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def _put_key_in_environment() -> str:
    return (
        ". Keys are never read from the file: put the key in an environment variable "
        'and name that variable with api_key_env = "VARIABLE"'
    )


def _type_name(value: object) -> str:
    """The TOML name of a value's type (never the value: it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _endpoint(
    path: str, position: int, table: dict[str, Any], environ: Mapping[str, str]
) -> Endpoint:
    """One ``[[endpoint]]`` table as an Endpoint (``position`` counts from 1)."""
    name = table.get("name")
    where = f"{path}: endpoint {position}"
    if isinstance(name, str) and _NAME.fullmatch(name):
        where = f"{path}: endpoint {name!r}"

    def error(field: str, problem: str) -> EndpointsFileError:
        return EndpointsFileError(f"{where}: {field}: {problem}")

    for field in table:
        if field == "api_key_env":
            continue
        if _SECRET.search(field):
            raise error(field, "this looks like a key" + _put_key_in_environment())
        if field not in _FIELDS:
            raise error(
                field, f"unknown field; an [[endpoint]] table may have {', '.join(_FIELDS)}"
            )
    if name is None:
        raise error("name", 'missing; every endpoint needs a name (e.g. name = "team-a")')
    if not isinstance(name, str):
        raise error("name", f"must be a string, got {_type_name(name)}")
    if _NAME.fullmatch(name) is None:
        raise error(
            "name",
            "use 1 to 64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
        )
    base_url = table.get("base_url")
    if base_url is None:
        raise error("base_url", 'missing (e.g. base_url = "https://api.openai.com/v1")')
    if not isinstance(base_url, str):
        raise error("base_url", f"must be a string, got {_type_name(base_url)}")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise error("base_url", "must be an http:// or https:// URL ending in /v1")
    return Endpoint(
        name=name,
        base_url=base_url,
        api_key=_api_key(table, environ, error),
        limits=_limits(table.get("limits"), error),
        weight=_weight(table.get("weight", 1.0), error),
        models=_models(table.get("models"), error),
    )


def _api_key(table: dict[str, Any], environ: Mapping[str, str], error: _Error) -> str | None:
    """The key from the variable ``api_key_env`` names; None when it names none."""
    if "api_key_env" not in table:
        return None
    variable = table["api_key_env"]
    if not isinstance(variable, str):
        raise error(
            "api_key_env",
            f"must be the name of an environment variable (a string), got {_type_name(variable)}",
        )
    if _VARIABLE.fullmatch(variable) is None:
        # Not a variable's name: perhaps the key itself. Never shown.
        raise error(
            "api_key_env",
            "must be the name of an environment variable (letters, digits and '_'), "
            "not the key itself",
        )
    key = environ.get(variable)
    if key is None:
        raise error(
            "api_key_env",
            f"the environment variable {variable} is not set; set it to this endpoint's key",
        )
    if not key.strip():
        raise error("api_key_env", f"the environment variable {variable} is empty")
    return key


def _weight(weight: object, error: _Error) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise error("weight", f"must be a positive number, got {_type_name(weight)}")
    if not (math.isfinite(weight) and weight > 0):
        raise error("weight", "must be a positive number")
    return float(weight)


def _models(models: object, error: _Error) -> list[str] | None:
    if models is None:
        return None
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list):
        raise error(
            "models",
            f'must be a list of model names (models = ["gpt-4o-mini"]), got {_type_name(models)}',
        )
    if not models:
        raise error(
            "models", "is empty; list at least one model, or leave models out for every model"
        )
    for model in models:
        if not isinstance(model, str) or not model:
            raise error("models", "each model must be a non-empty string")
    return models


def _limits(limits: object, error: _Error) -> Limits | dict[str, Limits] | None:
    """A limits table: one Limits for every model, or one per model (limit group)."""
    if limits is None:
        return None
    if not isinstance(limits, dict):
        raise error(
            "limits",
            f"must be a table (limits = {{ rpm = 600, tpm = 200000 }}), got {_type_name(limits)}",
        )
    if not limits:
        raise error("limits", "is empty; give some of " + ", ".join(_LIMIT_FIELDS))
    tables = [key for key, value in limits.items() if isinstance(value, dict)]
    if not tables:
        return _one_limits(limits, "limits", error)
    if len(tables) != len(limits):
        plain = next(key for key, value in limits.items() if not isinstance(value, dict))
        raise error(
            f"limits.{plain}",
            "limits are either one table of limits for every model, or one table per model "
            "(limit group), not both",
        )
    return {model: _one_limits(table, f"limits.{model}", error) for model, table in limits.items()}


def _one_limits(table: dict[str, Any], field: str, error: _Error) -> Limits:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _LIMIT_FIELDS:
            raise error(
                f"{field}.{key}",
                f"unknown limit; a limits table may have {', '.join(_LIMIT_FIELDS)}",
            )
        if key == "burst":
            if not isinstance(value, bool):
                raise error(f"{field}.{key}", f"must be true or false, got {_type_name(value)}")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise error(f"{field}.{key}", f"must be a positive number, got {_type_name(value)}")
        elif not (math.isfinite(value) and value > 0):
            raise error(f"{field}.{key}", "must be a positive number")
        values[key] = value
    if not values:
        raise error(field, "is empty; give some of " + ", ".join(_LIMIT_FIELDS))
    return Limits(**values)
