"""Command line: ``python -m benchmarks.serving_peers setup|run`` (see the package doc)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from benchmarks.serving_peers import install, runner, tools


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run ``setup`` or ``run``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving_peers",
        description="GuideLLM, AIPerf and vllm bench serve beside engine bench, offline.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser(
        "setup", help=f"install each tool in its own venv under {install.home()}"
    )
    setup.add_argument(
        "--tools", nargs="+", choices=[t.name for t in install.TOOLS], help="default: all"
    )
    setup.add_argument("--force", action="store_true", help="reinstall even if usable")
    run = commands.add_parser("run", help="run the comparison (writes bench-results/)")
    run.add_argument("--quick", action="store_true", help="5 s steps, no refinement of the sweep")
    run.add_argument("--tools", nargs="+", choices=tools.TOOLS, default=list(tools.TOOLS))
    run.add_argument(
        "--phases", nargs="+", choices=("latency", "ceiling"), default=["latency", "ceiling"]
    )
    run.add_argument("--out", default=runner.RESULTS, help="default: %(default)s")
    run.add_argument(
        "--mock-server", default="builtin", help="engine mock --server (default: %(default)s)"
    )
    run.add_argument(
        "--latency-url", help="use this running server for the latency phase instead of a mock"
    )
    run.add_argument(
        "--ceiling-url", help="use this running server for the ceiling phase instead of a mock"
    )
    args = parser.parse_args(argv)
    if args.command == "setup":
        summary = install.setup(args.tools, force=args.force)
        failed = [name for name, record in summary.items() if record.get("installed") is False]
        return 1 if failed else 0
    return runner.main_run(
        args.quick,
        args.tools,
        args.out,
        args.mock_server,
        args.phases,
        args.latency_url,
        args.ceiling_url,
    )


if __name__ == "__main__":
    sys.exit(main())
