"""``engine run`` and ``engine transcribe``: batch runs from the command line.

Both stream their input through :mod:`engine.app.batch`, show progress on stderr,
print a summary table (and, if the run stopped early, the command that
resumes it) on stderr, and return the exit status documented in
``docs/cli.md`` (:data:`engine.app.batch.EXIT_OK` and friends). The API key is read
from ``$OPENAI_API_KEY`` only, never from the command line, and never printed; with
``--endpoints FILE`` (a pool, :mod:`engine.app._endpoints_file`) each member's key
comes from the environment variable the file names for it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import shlex
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TextIO

import trio

from engine.app._progress import ProgressPrinter, RunProgress, format_dollars
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
        "--endpoints",
        metavar="FILE",
        help="a pool: send through the members (keys, deployments, providers) a TOML file "
        "lists, each with its base_url, key variable (api_key_env), limits, weight and models; "
        "not with --base-url, --rpm, --tpm, --rpd, --tpd (default: one endpoint; see docs/cli.md)",
    )
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
    metrics = parser.add_argument_group("metrics (needs the extra: quota-engine[metrics])")
    metrics.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics of the run at http://HOST:PORT/metrics "
        "(default: none; see docs/cli.md)",
    )
    metrics.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address --metrics-port listens on (default 127.0.0.1: this machine only)",
    )
    metrics.add_argument(
        "--metrics-linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep serving the final counts this long after the summary, so a scraper's "
        "last scrape sees the whole run (default 0: stop with the run; Ctrl-C ends it early)",
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
            "comes from $OPENAI_API_KEY (with --endpoints, from the variables the file names). "
            "See docs/cli.md."
        ),
    )
    run.add_argument("input", metavar="INPUT.jsonl", help="Batch API input file")
    run.add_argument(
        "-o", "--output", required=True, metavar="OUTPUT.jsonl", help="Batch API output file"
    )
    run.add_argument("--model", help="body.model for lines that set none (default: none)")
    budget = run.add_argument_group("spending cap (see docs/cli.md)")
    budget.add_argument(
        "--max-cost",
        type=float,
        metavar="DOLLARS",
        help="spend at most this many US dollars in this run (by the answers' usage at the "
        "prices of --prices); requests that could go over it are not sent and are left for a "
        "rerun (default: no cap)",
    )
    budget.add_argument(
        "--prices",
        metavar="FILE",
        help="a JSON prices file whose models override the shipped table "
        "(engine/prices.json; default: that table)",
    )
    _add_client_options(run)
    run.set_defaults(func=_run_command, usage_error=run.error)

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
    transcribe.set_defaults(func=_transcribe_command, usage_error=transcribe.error)


#: The options an ``--endpoints`` file replaces: each member has its own.
_POOL_EXCLUDES = ("base_url", "rpm", "tpm", "rpd", "tpd")


def _check_endpoints_alone(args: argparse.Namespace) -> None:
    """An argparse error (exit 2) when ``--endpoints`` comes with an option the file replaces."""
    if getattr(args, "endpoints", None) is None:
        return
    given = [
        f"--{name.replace('_', '-')}" for name in _POOL_EXCLUDES if getattr(args, name) is not None
    ]
    if given:
        args.usage_error(
            f"argument --endpoints: not allowed with {', '.join(given)} (give each member's "
            "base_url and limits in the endpoints file)"
        )


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """``open_client``'s options from the command line.

    Raises:
        EndpointsFileError: the ``--endpoints`` file cannot be used (a ValueError).
    """
    from engine._quota import Limits

    options: dict[str, Any] = {"max_attempts": args.max_attempts}
    if args.metrics_port is not None:
        options["latency_histogram"] = True  # the metrics' histogram from the first request
    if getattr(args, "endpoints", None) is not None:
        from engine.app._endpoints_file import load_endpoints

        options["endpoints"] = load_endpoints(args.endpoints)
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
    for name in ("endpoints", "rpm", "tpm", "rpd", "tpd", "base_url", "concurrency", "errors_to"):
        value = getattr(args, name, None)
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


def _check_prices(args: argparse.Namespace) -> Any:
    """The price table of a run with ``--max-cost``, once every model of INPUT has a price.

    Reads the whole input before anything is sent: a cap that finds an
    unpriced model halfway would leave the run half done.  Lines that are
    not JSON objects, name no model, or are transcriptions (not priced) are
    left to the run, which reports them as it does without a cap.

    Raises:
        ValueError: a model has no price, ``--max-cost`` is not positive, or
            ``--prices`` is not a prices file.
        OSError: INPUT or ``--prices`` cannot be read.
    """
    import math

    import orjson

    from engine._budget import load_prices

    if not (math.isfinite(args.max_cost) and args.max_cost > 0):
        raise ValueError(f"--max-cost must be a positive number of dollars, got {args.max_cost}")
    table = load_prices(args.prices)
    models: set[str] = {args.model} if args.model else set()
    with open(args.input, "rb") as file:
        for raw in file:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            body = line.get("body") if isinstance(line, dict) else None
            if not isinstance(body, dict) or "transcriptions" in str(line.get("url", "")):
                continue
            model = body.get("model")
            if isinstance(model, str) and model:
                models.add(model)
    unknown = sorted(model for model in models if table.price_for(model) is None)
    if unknown:
        raise ValueError(
            f"no price for model{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in the "
            f"prices of {table.date or 'unknown date'}; --max-cost needs one for every model. "
            "Nothing was sent. Give their prices in a JSON file with --prices FILE "
            '({"models": {"NAME": {"input": 0.15, "cached_input": 0.075, "output": 0.6}}}, '
            "US dollars per 1M tokens)."
        )
    return table


def _cost_of_the_rest(args: argparse.Namespace, prices: Any) -> float:
    """The sum of the worst cases of INPUT's items that have no line in OUTPUT (dollars).

    A cap that large lets every one of them be granted, whatever the order.
    Reads both files; an unreadable one counts nothing.
    """
    import orjson

    from engine._client import worst_case_cost

    written: set[str] = set()
    total = 0.0
    try:
        with open(args.output, "rb") as file:
            for raw in file:
                try:
                    written.add(str(orjson.loads(raw)["custom_id"]))
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
        with open(args.input, "rb") as file:
            for raw in file:
                try:
                    line = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(line, dict) or str(line.get("custom_id")) in written:
                    continue
                body = line.get("body")
                if args.model and isinstance(body, dict) and not body.get("model"):
                    line = {**line, "body": {**body, "model": args.model}}
                total += worst_case_cost(line, prices) or 0.0
    except OSError:
        pass
    return total


def _budget_resume(summary: RunSummary, resume: list[str], rest: float) -> tuple[str, list[str]]:
    """What to say when the cap stopped the run, and the command with a cap for the rest.

    ``rest`` is the sum of the worst cases of the items not run
    (:func:`_cost_of_the_rest`): the cap suggested, rounded up to the cent,
    lets every one of them be sent; they usually cost much less.
    """
    cap = summary.max_cost or 0.0
    suggested = max(0.01, math.ceil(rest * 100) / 100)
    why = (
        f"the spending cap stopped the run: {format_dollars(summary.spent)} spent of "
        f"{format_dollars(cap)}. The {summary.not_run} item(s) not run cost at most "
        f"{format_dollars(rest)} (each one's worst case); a cap counts one run's spending "
        "and answers already in OUTPUT are not sent again. To send the rest, resume with"
    )
    if "--max-cost" in resume:  # the cap this run was given makes way for the suggested one
        at = resume.index("--max-cost")
        resume = resume[:at] + resume[at + 2 :]
    return why, [*resume, "--max-cost", _plain(suggested)]


def _pool_options(command: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The client options, or None once a bad ``--endpoints`` file was reported.

    A pool's members are listed on stderr (names and base URLs, never keys)
    before anything is sent.
    """
    from engine.app._endpoints_file import EndpointsFileError, describe_endpoints

    _check_endpoints_alone(args)
    try:
        options = _client_options(args)
    except EndpointsFileError as exc:
        print(f"engine {command}: {exc}; nothing was sent", file=sys.stderr)
        return None
    endpoints = options.get("endpoints")
    if endpoints is not None:
        print(
            f"engine {command}: {len(endpoints)} endpoint{'s' if len(endpoints) != 1 else ''} "
            f"from {args.endpoints}: {describe_endpoints(endpoints)}",
            file=sys.stderr,
        )
    return options


def _run_command(args: argparse.Namespace) -> int:
    from engine.app.batch import run_file

    resume = ["engine", "run", args.input, *_shared_flags(args)]
    if args.model:
        resume += ["--model", args.model]
    options = _pool_options("run", args)
    if options is None:
        return EXIT_REFUSED
    if args.max_cost is not None:
        try:
            options["prices"] = _check_prices(args)
        except (OSError, ValueError) as exc:
            print(f"engine run: {_refusal(exc)}", file=sys.stderr)
            return EXIT_REFUSED
        options["max_cost"] = args.max_cost
        resume += ["--max-cost", _plain(args.max_cost)]
        if args.prices:
            resume += ["--prices", args.prices]

    def start(control: RunControl, printer: ProgressPrinter) -> Awaitable[Any]:
        return run_file(
            args.input,
            args.output,
            client_options=options,
            errors_to=args.errors_to,
            default_model=args.model,
            progress=printer.update,
            notify=printer.notice,
            control=control,
            grace_period=args.grace_period,
        )

    prices = options.get("prices")
    return _execute(
        "run",
        start,
        resume,
        args.grace_period,
        args.stats_json,
        debug=args.debug,
        cost_of_rest=None if prices is None else (lambda: _cost_of_the_rest(args, prices)),
        metrics=_metrics_address(args),
        metrics_linger=args.metrics_linger,
    )


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
    client_options = _pool_options("transcribe", args)
    if client_options is None:
        return EXIT_REFUSED

    def start(control: RunControl, printer: ProgressPrinter) -> Awaitable[Any]:
        return run_audio(
            args.paths,
            args.output,
            model=args.model,
            transcription_options=options,
            client_options=client_options,
            errors_to=args.errors_to,
            progress=printer.update,
            notify=printer.notice,
            control=control,
            grace_period=args.grace_period,
        )

    return _execute(
        "transcribe",
        start,
        resume,
        args.grace_period,
        args.stats_json,
        debug=args.debug,
        metrics=_metrics_address(args),
        metrics_linger=args.metrics_linger,
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
    cost_of_rest: Callable[[], float] | None = None,
    metrics: tuple[str, int] | None = None,
    metrics_linger: float = 0.0,
) -> int:
    stream = sys.stderr
    statistics = _LatestStatistics()
    printer = _FeedingPrinter(stream, tty=stream.isatty(), feed=statistics)
    server = None
    if metrics is not None:
        try:
            from engine.metrics import serve

            server = serve(statistics, port=metrics[1], host=metrics[0])
        except (ImportError, OSError) as exc:
            print(
                f"engine {command}: cannot serve metrics on {metrics[0]}:{metrics[1]}: "
                f"{exc}. Nothing was sent.",
                file=stream,
            )
            return EXIT_REFUSED
    try:
        status = _execute_run(
            command,
            start,
            resume,
            grace_period,
            stats_json,
            debug,
            cost_of_rest,
            stream,
            printer,
            statistics,
        )
        if server is not None and metrics is not None and metrics_linger > 0:
            _linger(command, metrics, metrics_linger, stream)
        return status
    finally:
        if server is not None:
            server.close()


def _linger(command: str, metrics: tuple[str, int], seconds: float, stream: TextIO) -> None:
    """Keep the metrics server up ``seconds`` with the final counts (Ctrl-C ends it early)."""
    host, port = metrics
    print(
        f"engine {command}: the final counts stay at http://{host}:{port}/metrics for "
        f"{seconds:g} s (--metrics-linger; Ctrl-C to leave now)",
        file=stream,
        flush=True,
    )
    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass


def _metrics_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """(host, port) of ``--metrics-port``, or None when not given."""
    return None if args.metrics_port is None else (args.metrics_host, args.metrics_port)


class _LatestStatistics:
    """The run's latest client counters, read by the metrics server's thread.

    Written by the run's progress task (twice a second, and at the end) and
    once more with the summary's; a snapshot is replaced whole, never
    mutated, so the reading thread sees one or the other.
    """

    def __init__(self) -> None:
        self.latest: Any = None

    def __call__(self) -> Any:
        return self.latest


class _FeedingPrinter(ProgressPrinter):
    """A progress printer that also hands each snapshot's counters to the metrics."""

    def __init__(self, stream: TextIO, *, tty: bool, feed: _LatestStatistics) -> None:
        super().__init__(stream, tty=tty)
        self._feed = feed

    def update(self, progress: RunProgress) -> None:
        if progress.client_statistics is not None:
            self._feed.latest = progress.client_statistics
        super().update(progress)


def _execute_run(
    command: str,
    start: Callable[[RunControl, ProgressPrinter], Awaitable[RunSummary]],
    resume: list[str],
    grace_period: float,
    stats_json: str | None,
    debug: bool,
    cost_of_rest: Callable[[], float] | None,
    stream: TextIO,
    printer: ProgressPrinter,
    statistics: _LatestStatistics,
) -> int:
    from engine._errors import EngineError, OutputError
    from engine._nurseries import open_service_nursery
    from engine.app.batch import RunControl

    async def main() -> RunSummary:
        control = RunControl()
        async with open_service_nursery(f"engine {command}") as nursery:
            await nursery.start(_watch_signals, control, printer, stream, grace_period)
            try:
                return await start(control, printer)
            finally:
                nursery.cancel_scope.cancel()

    try:
        with _pool_notices(printer):
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
    if summary.client_statistics is not None:
        statistics.latest = summary.client_statistics
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
    if summary.fatal_code == "budget_exhausted" and summary.not_run and cost_of_rest is not None:
        why, command_line = _budget_resume(summary, resume, cost_of_rest())
        print(f"{why}:\n  {shlex.join(command_line)}", file=stream)
    elif summary.not_run or summary.held_saved:
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


class _NoticeHandler(logging.Handler):
    """Log records shown as the printer's notices (``engine: ...``), below the live line."""

    def __init__(self, printer: ProgressPrinter) -> None:
        super().__init__(logging.WARNING)
        self._printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._printer.notice(record.getMessage())
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def _pool_notices(printer: ProgressPrinter) -> Iterator[None]:
    """During a run, a pool member's retirement (logger ``engine.pool``) is a notice.

    Without this the warning would go to stderr through logging's last
    resort, in the middle of the progress line a terminal redraws.
    """
    logger = logging.getLogger("engine.pool")
    handler = _NoticeHandler(printer)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


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
