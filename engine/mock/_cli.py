"""``engine mock``: serve the mock over loopback (builtin server, uvicorn or hypercorn).

Prints ``mock listening on http://HOST:PORT/v1`` on stdout once the socket
accepts connections (``--port 0`` picks a free port and prints it), and stops
cleanly on SIGINT or SIGTERM (exit status 0).

Which server: the builtin one and uvicorn need the ``fast-mock`` extra
(httptools, uvloop, uvicorn); hypercorn is a core dependency, so a plain
``pip install quota-engine`` can always serve the mock.  ``--server auto``
(the default) takes the builtin server when httptools is installed and
otherwise hypercorn, saying so in one line on stderr.  Hypercorn is the
fallback rather than a second hand-written server: it is pure Python, already
a supported ``--server``, and adds no HTTP parser of our own to keep correct.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from engine.mock._app import DroppedConnection, create_app
from engine.mock._config import (
    DEFAULT_MODELS,
    KEY_LIMIT_FIELDS,
    RATE_LIMIT_BODIES,
    KeyLimits,
    MockConfig,
    mask_key,
)
from engine.mock._tokens import TOKEN_RULES, preload

__all__ = ["config_from_args", "parse_key_limits", "parse_revoke_key", "register", "run"]

_SERVER_LOGGERS = ("hypercorn.error", "uvicorn.error")
# The modules each --server choice cannot run without (uvloop is optional everywhere).
_SERVER_NEEDS = {"builtin": ("httptools",), "uvicorn": ("uvicorn",), "hypercorn": ("hypercorn",)}
_FAST_MOCK_INSTALL = "pip install 'quota-engine[fast-mock]'"


def register(subparsers: Any) -> None:
    """Add the ``mock`` subcommand to the ``engine`` parser."""
    parser = subparsers.add_parser(
        "mock",
        help="serve an OpenAI-compatible mock API with quotas and faults",
        description=(
            "Serve an OpenAI-compatible mock API (chat completions, the Responses API, "
            "embeddings, transcriptions, models; chat and responses stream with "
            '"stream": true) with per-key-and-model quotas, x-ratelimit-* headers, latency, '
            "time to first token and fault injection. "
            "Prints 'mock listening on http://HOST:PORT/v1' once ready. "
            "Accounting: GET /_mock/stats; POST /_mock/reset; GET/POST /_mock/config."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serving.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    serving.add_argument(
        "--server",
        choices=("auto", "builtin", "uvicorn", "hypercorn"),
        default="auto",
        help="auto: builtin when the fast-mock extra is installed, else hypercorn (with a note "
        "on stderr); builtin: the mock's own HTTP/1.1 server on uvloop + httptools (fastest, "
        "~2.5x uvicorn per CPU-second: answers chat and transcriptions without the ASGI "
        "machinery when no latency or fault is configured; fast-mock extra); uvicorn: uvicorn "
        "with uvloop and httptools (fast-mock extra); hypercorn: hypercorn's trio worker "
        "(always installed; slowest: ~1 ms of CPU per request in hypercorn itself)",
    )
    serving.add_argument(
        "--log-level", default="warning", help="server log level (debug, info, warning, error)"
    )

    quotas = parser.add_argument_group("quotas (per API key and model; omitted = unlimited)")
    quotas.add_argument("--rpm", type=int, help="requests per minute")
    quotas.add_argument("--tpm", type=int, help="tokens per minute")
    quotas.add_argument("--rpd", type=int, help="requests per day")
    quotas.add_argument("--tpd", type=int, help="tokens per day")
    quotas.add_argument(
        "--quota-semantics",
        choices=("token_bucket", "fixed_window", "per_second", "clock_minute"),
        default="token_bucket",
        help="token_bucket: continuous refill, starts full; fixed_window: resets each period "
        "(aligned on the first request); per_second: limit/60 per 1/60 of the period, declared "
        "in the headers; clock_minute: fixed windows aligned on the wall-clock minute (:00) "
        "and midnight UTC, reset = time to the next boundary",
    )
    quotas.add_argument(
        "--subwindow-seconds",
        type=float,
        metavar="S",
        help="undeclared sub-windows (0 < S < 60; not with per_second): each per-minute limit "
        "also admits at most limit*S/60 per S seconds, while x-ratelimit-* keep reporting the "
        "minute (1: OpenAI's quantized limits; 10: Azure checking RPM over 10 s)",
    )
    quotas.add_argument(
        "--wall-clock-offset",
        type=float,
        metavar="S",
        help="wall clock = the server's monotonic clock + S, for clock_minute windows "
        "(default: time.time() minus that clock, taken at the first request)",
    )
    quotas.add_argument(
        "--default-output-tokens",
        type=int,
        default=MockConfig().default_output_tokens,
        help="output budget per choice charged at arrival when a request sets no max_tokens",
    )
    quotas.add_argument(
        "--token-rule",
        choices=TOKEN_RULES,
        default="tiktoken",
        help="how the mock counts tokens (its own code, not the engine's): tiktoken with "
        "OpenAI's documented chat overhead, or chars (ceil(characters/4) of the messages' "
        "text + 4 per message)",
    )
    quotas.add_argument(
        "--token-skew",
        type=float,
        default=0.0,
        metavar="X",
        help="prompt tokens charged and reported are the rule's count x (1 + X), rounded up "
        "(0.1: the server counts 10%% more than tiktoken)",
    )
    quotas.add_argument(
        "--no-correct-to-usage",
        action="store_true",
        help="keep the arrival charge (prompt + n x budget) instead of correcting it to real usage",
    )
    quotas.add_argument(
        "--insufficient-quota-after",
        type=int,
        help="after this many admitted requests answer 429 insufficient_quota (0: always)",
    )
    quotas.add_argument(
        "--api-key", help="the only API key accepted (others get 401); omitted: accept any"
    )
    quotas.add_argument(
        "--key-limits",
        action="append",
        type=parse_key_limits,
        metavar="KEY=rpm:N,tpm:N,...",
        help="the limits of one API key's groups, overriding --rpm/--tpm/--rpd/--tpd for that "
        "key (limits not given stay the global ones; semantics and sub-windows stay global); "
        "turns quotas on even with no global limit; repeatable, one key each "
        "(e.g. --key-limits sk-a=rpm:600 --key-limits sk-b=rpm:1200,tpm:200000)",
    )
    quotas.add_argument(
        "--revoke-key",
        action="append",
        type=parse_revoke_key,
        metavar="KEY=N",
        help="revoke an API key after N admitted requests: every later request with it "
        "(even one arriving while those are in flight) gets 401 invalid_api_key; 0: from the "
        "start; repeatable, one key each",
    )
    quotas.add_argument("--organization", default="org-mock", help="named in 429 messages")
    quotas.add_argument("--no-retry-after", action="store_true", help="omit retry-after on 429")
    quotas.add_argument(
        "--no-retry-after-ms", action="store_true", help="omit retry-after-ms on 429"
    )

    told = parser.add_argument_group(
        "how rate limits are told (OpenAI's way by default; other servers differ)"
    )
    told.add_argument(
        "--rate-limit-body",
        choices=RATE_LIMIT_BODIES,
        default="openai",
        help="body of a rate_limit_exceeded 429: openai (OpenAI's sentence, type and code), "
        'azure ({"error": {"code": "429", "message": "... Please retry after N seconds. ..."}}, '
        'no type), generic (a gateway\'s: type rate_limit_error, "try again in 2.5s"), bare '
        '({"error": "Too Many Requests"}), none (empty); insufficient_quota and "Request too '
        "large\" keep OpenAI's shape",
    )
    told.add_argument(
        "--rate-limit-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send x-ratelimit-* (--no-rate-limit-headers: on no answer, as many "
        "OpenAI-compatible servers and gateways)",
    )
    told.add_argument(
        "--rate-limit-headers-on-429",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send x-ratelimit-* on 429s too (--no-rate-limit-headers-on-429: 429s carry none)",
    )
    told.add_argument(
        "--reset-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send x-ratelimit-reset-* (--no-reset-headers: limit and remaining only)",
    )
    told.add_argument(
        "--retry-hint-header",
        metavar="NAME",
        help="a non-standard header carrying the wait in seconds on rate_limit_exceeded 429s "
        "(e.g. x-ratelimit-retry-after-seconds; combine with --no-retry-after "
        "--no-retry-after-ms for a gateway without standard retry headers)",
    )

    latency = parser.add_argument_group(
        "latency (a non-streamed answer waits --latency-ms + --ms-per-output-token per token; "
        'a "stream": true one sends its first token --ttft-ms after admission, then one '
        "token every --ms-per-output-token; each spread is a lognormal sigma around the "
        "configured value, which stays the median)"
    )
    latency.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="non-streamed answers: fixed latency, or the lognormal median",
    )
    latency.add_argument(
        "--latency-sigma", type=float, default=0.0, help="lognormal sigma (0: fixed latency)"
    )
    latency.add_argument(
        "--ms-per-output-token",
        type=float,
        default=0.0,
        help="non-streamed: added per completion token; streamed: the (median) gap between "
        "two content tokens",
    )
    latency.add_argument(
        "--ttft-ms",
        type=float,
        default=0.0,
        help="streamed answers: (median) time from admission to the first content token",
    )
    latency.add_argument(
        "--ttft-sigma", type=float, default=0.0, help="lognormal sigma of --ttft-ms (0: fixed)"
    )
    latency.add_argument(
        "--output-token-sigma",
        type=float,
        default=0.0,
        help="lognormal sigma of each streamed gap around --ms-per-output-token (0: fixed)",
    )
    latency.add_argument("--seed", type=int, help="seed of the latency and fault generator")

    faults = parser.add_argument_group("faults (probability per admitted request, 0 to 1)")
    faults.add_argument("--error-500-rate", type=float, default=0.0, help="answer 500")
    faults.add_argument("--error-502-rate", type=float, default=0.0, help="answer 502")
    faults.add_argument("--error-503-rate", type=float, default=0.0, help="answer 503")
    faults.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        help="drop the connection mid-response (a stream: after --stream-fault-after events)",
    )
    faults.add_argument(
        "--slow-body-rate",
        type=float,
        default=0.0,
        help="send the body slowly, in 4 pieces (a stream: stall --slow-body-ms after "
        "--stream-fault-after events)",
    )
    faults.add_argument(
        "--slow-body-ms", type=float, default=2000.0, help="how long a slow body takes"
    )
    faults.add_argument(
        "--malformed-json-rate",
        type=float,
        default=0.0,
        help="200 with a truncated JSON body (a stream: event number --stream-fault-after "
        "cut in half)",
    )
    faults.add_argument(
        "--stream-fault-after",
        type=int,
        metavar="K",
        help="where a fault hits a streamed answer: after K whole events (default: half of them)",
    )
    faults.add_argument(
        "--missing-headers-rate", type=float, default=0.0, help="omit every x-ratelimit-* header"
    )
    faults.add_argument(
        "--missing-limit-headers-rate",
        type=float,
        default=0.0,
        help="omit only x-ratelimit-limit-* (as Azure does)",
    )

    other = parser.add_argument_group("other")
    other.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="NAME",
        help=f"a model listed by GET /v1/models (repeatable; default: {', '.join(DEFAULT_MODELS)})",
    )
    other.add_argument(
        "--max-body-bytes",
        type=int,
        default=MockConfig().max_body_bytes,
        help="larger request bodies get 413",
    )
    parser.set_defaults(func=run)


def _split_key(value: str, form: str) -> tuple[str, str]:
    """``KEY=REST`` split at the last ``=`` (keys may contain ``=``); the key never shown whole."""
    key, equals, rest = value.rpartition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected {form}, got {_shown(value)!r}")
    return key, rest


def _shown(value: str) -> str:
    """A command-line value as an error may print it: the key before ``=`` masked."""
    key, equals, rest = value.rpartition("=")
    if not equals:  # all of it may be a key
        return mask_key(value)
    return f"{mask_key(key)}={rest}" if key else value


def parse_key_limits(value: str) -> tuple[str, KeyLimits]:
    """``KEY=rpm:600,tpm:100000`` -> ``(KEY, KeyLimits(rpm=600, tpm=100000))``.

    The names are ``rpm``, ``tpm``, ``rpd``, ``tpd``, each at most once, each
    with a whole number >= 0.  Raises :class:`argparse.ArgumentTypeError`
    naming the bad part (the key masked).
    """
    form = "KEY=rpm:N,tpm:N,rpd:N,tpd:N (at least one)"
    key, spec = _split_key(value, form)
    limits: dict[str, int] = {}
    for item in spec.split(","):
        name, colon, number = item.strip().partition(":")
        name = name.strip().lower()
        if not colon or name not in KEY_LIMIT_FIELDS:
            raise argparse.ArgumentTypeError(
                f"bad limit {item.strip()!r} in {_shown(value)!r}: "
                f"expected NAME:N with NAME one of {', '.join(KEY_LIMIT_FIELDS)}"
            )
        if name in limits:
            raise argparse.ArgumentTypeError(f"{name} given twice in {_shown(value)!r}")
        limits[name] = _whole_number(number, "number", f"for {name} in {_shown(value)!r}")
    return key, KeyLimits(**limits)


def parse_revoke_key(value: str) -> tuple[str, int]:
    """``KEY=N`` -> ``(KEY, N)``, N a whole number >= 0.

    Raises :class:`argparse.ArgumentTypeError` naming the bad part (the key masked).
    """
    key, number = _split_key(value, "KEY=N (N admitted requests, 0 or more)")
    return key, _whole_number(number, "count", f"in {_shown(value)!r}")


def _whole_number(text: str, what: str, where: str) -> int:
    """``text`` as a whole number >= 0, else an ArgumentTypeError: ``bad WHAT 'TEXT' WHERE``."""
    try:
        count = int(text.strip())
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(
            f"bad {what} {text.strip()!r} {where}: expected a whole number >= 0"
        )
    return count


def _per_key(pairs: list[tuple[str, Any]] | None, option: str) -> dict[str, Any]:
    """The repeated ``option``'s (key, value) pairs as a dict; a key given twice is an error."""
    result: dict[str, Any] = {}
    for key, value in pairs or ():
        if key in result:
            raise ValueError(f"{option} names the key {mask_key(key)} twice")
        result[key] = value
    return result


def config_from_args(args: argparse.Namespace) -> MockConfig:
    """Build the :class:`MockConfig` an ``engine mock`` command line asks for."""
    return MockConfig(
        rpm=args.rpm,
        tpm=args.tpm,
        rpd=args.rpd,
        tpd=args.tpd,
        quota_semantics=args.quota_semantics,
        subwindow_seconds=args.subwindow_seconds,
        wall_clock_offset=args.wall_clock_offset,
        default_output_tokens=args.default_output_tokens,
        token_rule=args.token_rule,
        token_skew=args.token_skew,
        correct_to_usage=not args.no_correct_to_usage,
        insufficient_quota_after=args.insufficient_quota_after,
        api_key=args.api_key,
        key_limits=_per_key(args.key_limits, "--key-limits"),
        revoke_after=_per_key(args.revoke_key, "--revoke-key"),
        organization=args.organization,
        retry_after_header=not args.no_retry_after,
        retry_after_ms_header=not args.no_retry_after_ms,
        rate_limit_body=args.rate_limit_body,
        rate_limit_headers=args.rate_limit_headers,
        rate_limit_headers_on_429=args.rate_limit_headers_on_429,
        reset_headers=args.reset_headers,
        retry_hint_header=args.retry_hint_header,
        latency_ms=args.latency_ms,
        latency_sigma=args.latency_sigma,
        ms_per_output_token=args.ms_per_output_token,
        ttft_ms=args.ttft_ms,
        ttft_sigma=args.ttft_sigma,
        output_token_sigma=args.output_token_sigma,
        seed=args.seed,
        error_500_rate=args.error_500_rate,
        error_502_rate=args.error_502_rate,
        error_503_rate=args.error_503_rate,
        drop_rate=args.drop_rate,
        slow_body_rate=args.slow_body_rate,
        slow_body_ms=args.slow_body_ms,
        malformed_json_rate=args.malformed_json_rate,
        missing_headers_rate=args.missing_headers_rate,
        missing_limit_headers_rate=args.missing_limit_headers_rate,
        stream_fault_after=args.stream_fault_after,
        models=tuple(args.models) if args.models else DEFAULT_MODELS,
        max_body_bytes=args.max_body_bytes,
    )


class _HideInjectedDrops(logging.Filter):
    """Servers log an app exception with a traceback; an injected drop is not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, DroppedConnection):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


def _ready(host: str, port: int) -> None:
    shown = f"[{host}]" if ":" in host else host
    print(f"mock listening on http://{shown}:{port}/v1", flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"engine mock: {error}", file=sys.stderr)
        return 2
    server = choose_server(args.server)
    if server is None:
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    for name in _SERVER_LOGGERS:
        logging.getLogger(name).addFilter(_HideInjectedDrops())
    # Load the default tokenizer now, not during the first request (about 1 s of CPU).
    if config.token_rule == "tiktoken":
        preload("gpt-4o-mini")
    app = create_app(config)
    if server == "uvicorn":
        return _serve_uvicorn(app, args)
    if server == "hypercorn":
        return _serve_hypercorn(app, args)
    return _serve_builtin(app, args)


def choose_server(requested: str) -> str | None:
    """The server ``--server requested`` runs on: builtin, uvicorn or hypercorn.

    ``auto`` is builtin when httptools is installed, else hypercorn (after one
    line on stderr saying so).  An explicit choice whose modules are missing
    gives None, after a line on stderr naming the extra to install.
    """
    if requested == "auto":
        if _installed("httptools"):
            return "builtin"
        print(
            "engine mock: serving with hypercorn (slower); for the fast builtin server: "
            + _FAST_MOCK_INSTALL,
            file=sys.stderr,
        )
        return "hypercorn"
    missing = [module for module in _SERVER_NEEDS[requested] if not _installed(module)]
    if missing:
        print(
            f"engine mock: --server {requested} needs {', '.join(missing)}: {_FAST_MOCK_INSTALL}",
            file=sys.stderr,
        )
        return None
    return requested


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _serve_builtin(app: Any, args: argparse.Namespace) -> int:
    import asyncio

    from engine.mock._server import serve

    sock = _listening_socket(args.host, args.port)
    port = sock.getsockname()[1]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, [sock], stop=stop, ready=lambda: _ready(args.host, port))

    try:
        import uvloop
    except ImportError:  # uvloop is optional: the plain asyncio loop works, slower
        asyncio.run(main())
    else:
        uvloop.run(main())
    sock.close()
    return 0


def _serve_hypercorn(app: Any, args: argparse.Namespace) -> int:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    host = f"[{args.host}]" if ":" in args.host else args.host
    config.bind = [f"{host}:{args.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.loglevel = args.log_level.upper()
    config.backlog = 2048

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

            async def shutdown_trigger() -> None:
                async for _signal in signals:
                    return

            async with trio.open_nursery() as nursery:
                binds = await nursery.start(
                    lambda task_status: serve(
                        app, config, shutdown_trigger=shutdown_trigger, task_status=task_status
                    )
                )
                port = int(binds[0].rsplit(":", 1)[1])
                _ready(args.host, port)

    trio.run(main)
    return 0


def _serve_uvicorn(app: Any, args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    import uvicorn

    sock = _listening_socket(args.host, args.port)
    port = sock.getsockname()[1]

    run_server: Callable[[Coroutine[Any, Any, None]], None]
    try:
        import uvloop
    except ImportError:
        loop, run_server = "asyncio", asyncio.run
    else:
        loop, run_server = "uvloop", uvloop.run
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"

    config = uvicorn.Config(
        app,
        loop=loop,
        http=http,
        lifespan="on",
        access_log=False,
        log_level=args.log_level.lower(),
        log_config=None,
        backlog=2048,
    )

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn re-raises the signal after shutdown; we exit 0 instead.
            previous = {
                sig: signal.signal(sig, lambda *_: setattr(self, "should_exit", True))
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                _ready(args.host, port)

    server = Server(config)
    run_server(server.serve(sockets=[sock]))
    sock.close()
    return 0 if server.started else 1
