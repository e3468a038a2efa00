"""``engine run`` and ``engine transcribe``: batch runs from the command line.

Both stream their input through :mod:`engine.app.batch`, show progress on stderr,
print a summary table (and, if the run stopped early, the command that
resumes it) on stderr, and return the exit status documented in
``docs/cli.md`` (:data:`engine.app.batch.EXIT_OK` and friends). The API key is read
from ``$OPENAI_API_KEY`` only, never from the command line, and never printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO

import trio

from engine.app._progress import ProgressPrinter
from engine.app._summary import DEFAULT_GRACE_PERIOD, EXIT_REFUSED, RunSummary, format_summary

if TYPE_CHECKING:
    from engine.app.batch import RunControl

__all__ = ["register"]

_SIGNAL_REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    limits = parser.add_argument_group(
        "limits (omitted: learned from the server's x-ratelimit-* headers)"
    )
    limits.add_argument("--rpm", type=float, help="requests per minute")
    limits.add_argument("--tpm", type=float, help="tokens per minute")
    limits.add_argument("--rpd", type=float, help="requests per day")
    limits.add_argument("--tpd", type=float, help="tokens per day")
    client = parser.add_argument_group("client")
    client.add_argument(
        "--base-url",
        help="OpenAI-style base URL ending in /v1 "
        "(default: $OPENAI_BASE_URL, else https://api.openai.com/v1)",
    )
    client.add_argument(
        "--concurrency",
        type=int,
        help="most requests in flight (default: sized automatically, up to 512)",
    )
    client.add_argument(
        "--redis",
        metavar="URL",
        help="share the quota with other processes through this Redis server, e.g. "
        "redis://127.0.0.1:6379/0 (default: none; see docs/shared-quota.md)",
    )
    client.add_argument(
        "--redis-namespace",
        default="quota-engine",
        help="key prefix in Redis: one per API key (default quota-engine)",
    )
    client.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        help="attempts per request on 408/409/5xx/connection errors (default 5); "
        "429 waits do not count",
    )
    parser.add_argument(
        "--errors-to", metavar="FILE", help="also copy every error line to FILE (default: none)"
    )
    parser.add_argument(
        "--stats-json",
        metavar="FILE",
        help="at the end, write the run's summary and the client's counters (sends, "
        "retries, 429s, the limiter's in-flight count) to FILE as JSON (default: none)",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback behind an error message (default: the message only)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=DEFAULT_GRACE_PERIOD,
        metavar="SECONDS",
        help="on the first Ctrl-C/SIGTERM, wait at most this long for requests in flight "
        f"(default {DEFAULT_GRACE_PERIOD:g})",
    )


def register(subparsers: Any) -> None:
    """Add the ``run`` and ``transcribe`` subcommands to the ``engine`` parser."""
    run = subparsers.add_parser(
        "run",
        help="run a Batch-API JSONL file of requests into an output JSONL file",
        description=(
            "Send every request of INPUT (OpenAI Batch API input lines: custom_id, method, "
            "url, body; /v1/chat/completions, /v1/responses, /v1/embeddings, or "
            "/v1/audio/transcriptions with body.file a local path) at the highest rate the "
            "quota allows, writing one Batch API output "
            "line per custom_id to OUTPUT. Rerunning with the same -o resumes. The API key "
            "comes from $OPENAI_API_KEY. See docs/cli.md."
        ),
    )
    run.add_argument("input", metavar="INPUT.jsonl", help="Batch API input file")
    run.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT.jsonl", help="Batch API output file"
    )
    run.add_argument("--model", help="body.model for lines that set none (default: none)")
    _add_client_options(run)
    run.set_defaults(func=_run_command)

    transcribe = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files and folders into an output JSONL file",
        description=(
            "Transcribe each recording given (folders are walked recursively for audio "
            "files) into OUTPUT, one Batch API output line per recording; its custom_id is "
            "its path relative to the folder given. Rerunning with the same -o resumes. "
            "The API key comes from $OPENAI_API_KEY. See docs/cli.md."
        ),
    )
    transcribe.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="audio files, folders")
    transcribe.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT.jsonl", help="Batch API output file"
    )
    transcribe.add_argument(
        "--min-seconds",
        type=float,
        default=5.0,
        help="recordings shorter than this are skipped, not sent (default 5; 0: send all)",
    )
    transcribe.add_argument(
        "--model", default="whisper-1", help="transcription model (default whisper-1)"
    )
    transcribe.add_argument(
        "--language", help="ISO-639-1 language of the audio (default: detected)"
    )
    transcribe.add_argument(
        "--response-format",
        default="json",
        choices=("json", "verbose_json", "text", "srt", "vtt"),
        help="what the server returns (default json)",
    )
    _add_client_options(transcribe)
    transcribe.set_defaults(func=_transcribe_command)


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    from engine._quota import Limits

    options: dict[str, Any] = {"max_attempts": args.max_attempts}
    if args.base_url:
        options["base_url"] = args.base_url
    if args.concurrency is not None:
        options["concurrency"] = args.concurrency
    if any(value is not None for value in (args.rpm, args.tpm, args.rpd, args.tpd)):
        options["limits"] = Limits(rpm=args.rpm, tpm=args.tpm, rpd=args.rpd, tpd=args.tpd)
    if args.redis:
        from engine._shared import RedisQuota

        options["shared"] = RedisQuota(args.redis, namespace=args.redis_namespace)
    return options


def _shared_flags(args: argparse.Namespace) -> list[str]:
    """The command-line options common to both commands, as given (for the resume hint)."""
    flags = ["-o", args.output]
    for name in ("rpm", "tpm", "rpd", "tpd", "base_url", "concurrency", "errors_to"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", _plain(value)]
    if args.redis:
        # The resume hint is printed: never show a password from the URL.
        scheme, sep, rest = args.redis.partition("://")
        host = rest.rpartition("@")[2] if sep else args.redis
        flags += ["--redis", f"{scheme}://{'***@' if '@' in rest else ''}{host}" if sep else host]
        if args.redis_namespace != "quota-engine":
            flags += ["--redis-namespace", args.redis_namespace]
    if args.max_attempts != 5:
        flags += ["--max-attempts", str(args.max_attempts)]
    if args.grace_period != DEFAULT_GRACE_PERIOD:
        flags += ["--grace-period", _plain(args.grace_period)]
    return flags


def _plain(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _run_command(args: argparse.Namespace) -> int:
    from engine.app.batch import run_file

    resume = ["engine", "run", args.input, *_shared_flags(args)]
    if args.model:
        resume += ["--model", args.model]

    def start(control: RunControl, printer: ProgressPrinter) -> Awaitable[Any]:
        return run_file(
            args.input,
            args.output,
            client_options=_client_options(args),
            errors_to=args.errors_to,
            default_model=args.model,
            progress=printer.update,
            notify=printer.notice,
            control=control,
            grace_period=args.grace_period,
        )

    return _execute("run", start, resume, args.grace_period, args.stats_json, debug=args.debug)


def _transcribe_command(args: argparse.Namespace) -> int:
    from engine.app.batch import run_audio

    resume = ["engine", "transcribe", *args.paths, *_shared_flags(args)]
    resume += ["--model", args.model, "--min-seconds", _plain(args.min_seconds)]
    options: dict[str, Any] = {
        "min_seconds": args.min_seconds,
        "response_format": args.response_format,
    }
    if args.language:
        options["language"] = args.language
        resume += ["--language", args.language]
    if args.response_format != "json":
        resume += ["--response-format", args.response_format]

    def start(control: RunControl, printer: ProgressPrinter) -> Awaitable[Any]:
        return run_audio(
            args.paths,
            args.output,
            model=args.model,
            transcription_options=options,
            client_options=_client_options(args),
            errors_to=args.errors_to,
            progress=printer.update,
            notify=printer.notice,
            control=control,
            grace_period=args.grace_period,
        )

    return _execute(
        "transcribe", start, resume, args.grace_period, args.stats_json, debug=args.debug
    )


def _write_stats_json(path: str, summary: RunSummary) -> None:
    """Write ``summary`` (with the client's counters) to ``path`` as one JSON object."""
    import attrs
    import orjson

    from engine.app._jsonl import _NEW_FILE_MODE

    record = attrs.asdict(summary, recurse=True)
    record["exit_status"] = summary.exit_status
    # Like OUTPUT: the user's umask applies, and never world-writable even under umask 0.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    with os.fdopen(os.open(path, flags, _NEW_FILE_MODE), "wb") as file:
        file.write(orjson.dumps(record, option=orjson.OPT_INDENT_2) + b"\n")


async def _watch_signals(
    control: RunControl,
    printer: ProgressPrinter,
    stream: TextIO,
    grace_period: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Turn SIGINT/SIGTERM into graceful stops; the second one into an immediate stop."""
    with trio.open_signal_receiver(*_SIGNAL_REASONS) as signals:
        task_status.started()
        async for signum in signals:
            reason = _SIGNAL_REASONS.get(signal.Signals(signum), "interrupted")
            printer.finish()
            if control.stopping:
                print(f"engine: {reason} again: stopping now", file=stream, flush=True)
                control.stop_now(reason)
            else:
                print(
                    f"engine: {reason}: no new requests; waiting up to {grace_period:g} s for "
                    "requests in flight (Ctrl-C again to stop now)",
                    file=stream,
                    flush=True,
                )
                control.stop(reason)


def _execute(
    command: str,
    start: Callable[[RunControl, ProgressPrinter], Awaitable[RunSummary]],
    resume: list[str],
    grace_period: float,
    stats_json: str | None = None,
    *,
    debug: bool = False,
) -> int:
    from engine._errors import EngineError, OutputError
    from engine._nurseries import open_service_nursery
    from engine.app.batch import RunControl

    stream = sys.stderr
    printer = ProgressPrinter(stream, tty=stream.isatty())

    async def main() -> RunSummary:
        control = RunControl()
        async with open_service_nursery(f"engine {command}") as nursery:
            await nursery.start(_watch_signals, control, printer, stream, grace_period)
            try:
                return await start(control, printer)
            finally:
                nursery.cancel_scope.cancel()

    try:
        summary = trio.run(main)
    except OutputError as exc:
        printer.finish()
        if debug:
            traceback.print_exception(exc, file=stream)
        if not isinstance(exc.summary, RunSummary):
            # None: OUTPUT (or the errors file) could not be opened: nothing was sent.
            print(f"engine {command}: {exc.message}", file=stream)
            return EXIT_REFUSED
        summary = exc.summary
    except (EngineError, OSError, ValueError) as exc:
        # Duplicate ids, OUTPUT in use by another run, unreadable input, a bad
        # --base-url or limit: refused before anything was sent.
        printer.finish()
        if debug:
            traceback.print_exception(exc, file=stream)
        print(f"engine {command}: {_refusal(exc)}", file=stream)
        return EXIT_REFUSED
    printer.finish()
    print(format_summary(summary), file=stream)
    if summary.io_error is not None:
        print(f"engine {command}: {summary.io_error}", file=stream)
    if stats_json is not None:
        try:
            _write_stats_json(stats_json, summary)
        except OSError as exc:
            print(
                f"engine {command}: cannot write --stats-json {stats_json}: "
                f"{exc.strerror or exc}; the run itself is not affected.",
                file=stream,
            )
    if summary.not_run or summary.held_saved:
        held = (
            f" (it first writes the {summary.held_saved} "
            f"{'answer' if summary.held_saved == 1 else 'answers'} held in {summary.sidecar_path})"
            if summary.held_saved
            else ""
        )
        print(
            f"{summary.not_run} item(s) have no output line yet; resume with{held}:\n  "
            + shlex.join(resume),
            file=stream,
        )
    stream.flush()
    return summary.exit_status


def _refusal(exc: Exception) -> str:
    """The paragraph for an error that refused the run before anything was sent."""
    from engine._errors import EngineError
    from engine.app._output import describe_os_error

    if isinstance(exc, EngineError):
        return exc.message
    if isinstance(exc, OSError) and exc.filename is not None:
        # Only files are read before the run starts: the input (or recordings).
        return describe_os_error(
            exc,
            role="INPUT",
            path=os.fsdecode(exc.filename),
            action="Nothing was sent. Check the path and that this user may read it.",
        )
    return str(exc)
