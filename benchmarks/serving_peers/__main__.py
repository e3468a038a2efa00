"""Command line: ``python -m benchmarks.serving_peers setup|run|report`` (see the package doc)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from benchmarks import report
from benchmarks.serving_peers import install, runner, tools


def write_section(results: str, doc: str, img_dir: str) -> None:
    """Regenerate only the ``serving_peers`` section of ``doc`` from ``results``.

    The verdicts in ``results`` are recomputed first (:func:`runner.judge`)
    and saved back.  ``benchmarks.report`` rewrites every section it has
    results for; this leaves the others as they are.
    """
    with open(results) as f:
        data = runner.judge(json.load(f))
    with open(results, "w") as f:
        json.dump(data, f, indent=1)
    with open(doc) as f:
        document = f.read()
    body = report.serving_peers_section(data, img_dir, os.path.dirname(doc) or ".")
    with open(doc, "w") as f:
        f.write(report.replace_section(document, "serving_peers", body).rstrip() + "\n")


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
    section = commands.add_parser(
        "report", help="write only the serving_peers section of docs/benchmarks.md"
    )
    section.add_argument("--results", default=runner.RESULTS, help="default: %(default)s")
    section.add_argument("--doc", default=report.DOC, help="default: %(default)s")
    section.add_argument("--img", default=report.IMG_DIR, help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.command == "report":
        write_section(args.results, args.doc, args.img)
        print(f"wrote the serving_peers section of {args.doc}")
        return 0
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
