"""The package as a user installs it: a wheel, a fresh virtual environment, no extras.

Builds the wheel from a copy of the source (pyproject.toml, README.md and the
engine package), installs it without extras into a new virtual environment,
and runs what a user runs first: ``import engine``, ``engine mock`` (which,
without the ``fast-mock`` extra, serves with hypercorn and says so in one line
on stderr), one request to it, and ``engine run`` on a 10-line file against it.

Every install is ``--no-index`` from a wheelhouse of the core dependencies and
the build backend: ``.pytest_cache/d/wheelhouse`` (``$QE_WHEELHOUSE`` if set;
the system temp directory when pytest's cache is off), filled by ``pip
download`` the first time and again only when pyproject.toml's requirements
change, so later runs need no network.  Marked ``packaging`` (``pytest -m
packaging`` runs it alone); ``make test`` runs it with the rest.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPOSITORY = Path(__file__).resolve().parent.parent
# What a source distribution would hold: enough to build the wheel.
SOURCE_ITEMS = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "engine")
# The fast-mock extra: must not be installed by a plain install.
FAST_MOCK_MODULES = ("httptools", "uvloop", "uvicorn")
PIP_QUIET = ("--quiet", "--disable-pip-version-check")


def run(*command: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``, failing the test with its output if it exits non-zero."""
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stderr}"
    return result


def core_requirements() -> list[str]:
    """The core dependencies and the build backend's requirements, from pyproject.toml."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
    return [*project["project"]["dependencies"], *project["build-system"]["requires"]]


def wheelhouse(pytestconfig: pytest.Config) -> Path:
    """A directory of wheels for every core requirement, downloaded once per requirement list."""
    override = os.environ.get("QE_WHEELHOUSE")
    cache = getattr(pytestconfig, "cache", None)  # None under -p no:cacheprovider
    if override:
        directory = Path(override)
    elif cache is not None:
        directory = cache.mkdir("wheelhouse")
    else:
        directory = Path(tempfile.gettempdir()) / "quota-engine-wheelhouse"
    directory.mkdir(parents=True, exist_ok=True)
    requirements = "\n".join(core_requirements()) + "\n"
    stamp = directory / "requirements.txt"
    if not stamp.exists() or stamp.read_text() != requirements:
        listed = directory / "requirements.in"
        listed.write_text(requirements)
        run(
            sys.executable,
            *("-m", "pip", "download", *PIP_QUIET, "--only-binary=:all:"),
            *("--dest", directory, "--requirement", listed),
            timeout=300,
        )
        stamp.write_text(requirements)
    return directory


def build_wheel(wheels: Path, work: Path) -> Path:
    """Build the wheel from a copy of the source tree; return its path."""
    source = work / "source"
    source.mkdir()
    for name in SOURCE_ITEMS:
        item = REPOSITORY / name
        if item.is_dir():
            shutil.copytree(item, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif item.exists():
            shutil.copy2(item, source / name)
    dist = work / "dist"
    run(
        sys.executable,
        *("-m", "pip", "wheel", *PIP_QUIET, "--no-deps", "--no-index"),
        *("--find-links", wheels, "--wheel-dir", dist, source),
    )
    (wheel,) = dist.glob("quota_engine-*.whl")
    return wheel


def source_version() -> str:
    """``__version__`` as engine/_version.py writes it."""
    text = (REPOSITORY / "engine" / "_version.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    assert match is not None
    return match[1]


def wait_for_ready_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The base URL from ``engine mock``'s ready line (``mock listening on URL``)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    output = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in output.partition(b"mock listening on ")[2]:
            left = deadline - time.monotonic()
            assert left > 0, f"engine mock printed no ready line in {timeout} s: {output!r}"
            if selector.select(left):
                data = os.read(process.stdout.fileno(), 4096)
                assert data, f"engine mock exited with status {process.wait()}: {output!r}"
                output += data
    return output.partition(b"mock listening on ")[2].split(b"\n")[0].decode().strip()


def chat_line(index: int) -> str:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"Say hi to number {index}"}],
        "max_tokens": 8,
    }
    line = {"custom_id": f"q-{index}", "method": "POST", "url": "/v1/chat/completions"}
    return json.dumps({**line, "body": body})


def test_wheel_without_extras_serves_the_mock_and_runs_a_batch(tmp_path, pytestconfig):
    """The wheel without extras: import, engine mock (on hypercorn), a request, engine run."""
    wheels = wheelhouse(pytestconfig)
    wheel = build_wheel(wheels, tmp_path)
    # Package data: the type checkers' marker and the shared quota's Lua scripts.
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "engine/py.typed" in names
    assert "engine/prices.json" in names  # the spending cap's price table
    lua = {Path(name).name for name in names if name.startswith("engine/lua/")}
    assert lua == {path.name for path in (REPOSITORY / "engine" / "lua").glob("*.lua")}
    environment = tmp_path / "venv"
    run(sys.executable, "-m", "venv", environment)
    python = environment / "bin" / "python"
    run(python, "-m", "pip", "install", *PIP_QUIET, "--no-index", "--find-links", wheels, wheel)
    # As a user runs it: away from the checkout (whose engine/ would shadow the install).
    user_env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    user_env["OPENAI_API_KEY"] = "sk-packaging-test"
    in_user_dir = {"cwd": tmp_path, "env": user_env}

    # The wheel carries the version written in engine/__init__.py, and no extra came along.
    imported = run(
        python, "-c", "import engine; print(engine.__version__, engine.__file__)", **in_user_dir
    )
    version, location = imported.stdout.split()
    assert version == source_version()
    assert Path(location).is_relative_to(environment)
    installed = run(python, "-m", "pip", "list", "--format=json").stdout
    names = {package["name"].lower() for package in json.loads(installed)}
    assert not names & set(FAST_MOCK_MODULES)

    # Asked for by name, the fast server says which extra it needs.
    refused = subprocess.run(
        [str(environment / "bin" / "engine"), "mock", "--server", "builtin"],
        capture_output=True,
        text=True,
        timeout=60,
        **in_user_dir,
    )
    assert refused.returncode == 2
    assert "quota-engine[fast-mock]" in refused.stderr

    # engine mock without the fast-mock extra: hypercorn, with a one-line note.
    stderr_path = tmp_path / "mock.stderr"
    with stderr_path.open("wb") as stderr:
        mock = subprocess.Popen(
            [str(environment / "bin" / "engine"), "mock", "--port", "0", "--rpm", "6000"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            **in_user_dir,
        )
        try:
            try:
                base_url = wait_for_ready_line(mock, timeout=60)
            except AssertionError as error:
                raise AssertionError(f"{error}\nstderr: {stderr_path.read_text()}") from None
            assert base_url.startswith("http://127.0.0.1:")
            note = [line for line in stderr_path.read_text().splitlines() if line.strip()]
            assert len(note) == 1 and "hypercorn" in note[0] and "fast-mock" in note[0], note

            request = urllib.request.Request(
                f"{base_url}/chat/completions",
                data=json.dumps(json.loads(chat_line(0))["body"]).encode(),
                headers={
                    "content-type": "application/json",
                    "authorization": "Bearer sk-packaging-test",
                },
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200
                answer = json.loads(response.read())
            assert answer["choices"][0]["message"]["role"] == "assistant"

            source = tmp_path / "requests.jsonl"
            source.write_text("".join(chat_line(index) + "\n" for index in range(1, 11)))
            output = tmp_path / "results.jsonl"
            run(
                environment / "bin" / "engine",
                *("run", source, "-o", output, "--base-url", base_url, "--rpm", "6000"),
                **in_user_dir,
                timeout=60,
            )
        finally:
            mock.terminate()
            try:
                mock.wait(10)
            except subprocess.TimeoutExpired:
                mock.kill()
                mock.wait()
            assert mock.stdout is not None
            mock.stdout.close()
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(result["custom_id"] for result in results) == sorted(
        f"q-{index}" for index in range(1, 11)
    )
    assert all(result["response"]["status_code"] == 200 for result in results), results
