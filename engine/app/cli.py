"""The ``engine`` command: ``run``, ``transcribe``, ``mock``, ``bench``.

Each subcommand lives in its own module, which exposes
``register(subparsers) -> None``; the parser it adds sets ``func`` to a callable
taking the parsed namespace and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Subcommand modules, imported only when the parser is built so that
# ``engine mock`` does not pay for the client and vice versa.
_SUBCOMMAND_MODULES = ("engine.app._cli_run", "engine.mock._cli", "engine.app._cli_bench")


def build_parser() -> argparse.ArgumentParser:
    """Return the ``engine`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="engine",
        description="Run OpenAI-style API calls at the highest rate your quota allows.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in _SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``engine`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
