"""The serving benchmark's load driver: trio tasks that send, stream and time requests.

One keep-alive HTTP/1.1 connection per worker (``engine._http``), request
bodies encoded before the run, one clock (``trio.current_time``) for every
timestamp, one timestamp per piece of body received (the events in one piece
arrived together), and each streamed event decoded only as far as needed: a
chat chunk's JSON to see whether its delta carries output and to read the
final usage; a Responses API event by its ``event:`` name, its JSON only for
the final usage.  The figures are computed by
:class:`engine.app._serving_metrics.StepRecorder`.

:func:`run_steps` runs a sweep (blocking, its own trio loop);
:func:`measure_ceiling` measures the generator against a built-in mock served
in a child process (``--self-check``).
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import orjson

from engine._sse import SSEDecoder
from engine._version import __version__
from engine.app._serving_metrics import Slo, StepRecorder, StepResult, arrival_times

__all__ = [
    "DEFAULT_DURATION",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_WARMUP",
    "ServingConfig",
    "build_bodies",
    "measure_ceiling",
    "run_steps",
    "synthetic_prompt",
]

DEFAULT_DURATION = 10.0
DEFAULT_WARMUP = 1.0
#: Most requests in flight in open loop; arrivals beyond it are counted as ``dropped``.
DEFAULT_MAX_IN_FLIGHT = 1024
#: Seconds to wait after a step's window for the requests still in flight.
DEFAULT_GRACE = 30.0
#: Distinct prompts per run (cycled), so a server's prefix cache does not see one prompt only.
PROMPT_POOL = 64
#: Concurrency and length of the self-check against the built-in mock.
SELF_CHECK_CONCURRENCY = 64
#: Open-loop workers connecting at once (see _run_step).
_MAX_STARTING = 16
#: The shortest time between two wake-ups of the open loop's arrival task (seconds).
_WAKE_INTERVAL = 0.0004
SELF_CHECK_DURATION = 3.0

_CHAT_PATH = "/chat/completions"
_RESPONSES_PATH = "/responses"
_DONE = b"[DONE]"
_CONTENT_KEY = b'"content":"'
_CONTENT_KEY_LENGTH = len(_CONTENT_KEY)
_QUOTE = ord('"')
# Words that are one token each (with their leading space) in cl100k and o200k.
_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "if so no will more about can up out them said what some time only into other new "
    "two also like then could first any my now such over these may after most over "
    "made well where just those people how way many year even back good must through"
).split()


@attrs.frozen
class ServingConfig:
    """What each request of a run looks like and how the steps are timed.

    Attributes:
        base_url: OpenAI-style base URL ending in ``/v1``.
        model: the ``model`` of each request (default ``"gpt-4o-mini"``).
        endpoint: ``"chat"`` (``/chat/completions``, the default) or ``"responses"``.
        stream: ask for server-sent events (default True) or whole answers.
        output_tokens: ``max_tokens`` / ``max_output_tokens`` of each request (default 16).
        input_tokens: synthetic prompts of this many tokens (counted with the
            model's tiktoken encoding, offline); None uses ``prompt``.
        prompt: the user message when ``input_tokens`` is None.
        ignore_eos: send ``"ignore_eos": true`` (vLLM and SGLang then always
            produce ``output_tokens``); default False.
        duration: seconds per step, after the warm-up (default 10).
        warmup: seconds per step sent but not measured (default 1).
        poisson: open loop: Poisson arrivals (default) or evenly spaced ones.
        seed: seed of the arrival times and prompts (default None: random).
        max_in_flight: open loop: cap on requests in flight (default 1024).
        slo: objectives for goodput (default None).
        api_key: sent as a bearer token; never printed or written (default None).
        grace: seconds after a window to wait for requests in flight (default 30).
    """

    base_url: str
    model: str = "gpt-4o-mini"
    endpoint: str = "chat"
    stream: bool = True
    output_tokens: int = 16
    input_tokens: int | None = None
    prompt: str = "Say hi in five words."
    ignore_eos: bool = False
    duration: float = DEFAULT_DURATION
    warmup: float = DEFAULT_WARMUP
    poisson: bool = True
    seed: int | None = None
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    slo: Slo | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    grace: float = DEFAULT_GRACE

    def to_dict(self) -> dict[str, Any]:
        """The configuration as the JSON report holds it (without the API key)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "endpoint": self.endpoint,
            "stream": self.stream,
            "output_tokens": self.output_tokens,
            "input_tokens": self.input_tokens,
            "prompt": None if self.input_tokens is not None else self.prompt,
            "ignore_eos": self.ignore_eos,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "arrivals": "poisson" if self.poisson else "constant",
            "seed": self.seed,
            "max_in_flight": self.max_in_flight,
            "slo_ms": self.slo.to_dict() if self.slo is not None else None,
        }


def synthetic_prompt(tokens: int, model: str, rng: random.Random) -> str:
    """A text of exactly ``tokens`` tokens in ``model``'s tiktoken encoding (random common words).

    Offline (the encodings ship with the package).  Raises ValueError for ``tokens < 1``.
    """
    from engine._tokens import encoding_for_model

    if tokens < 1:
        raise ValueError("input tokens must be at least 1")
    encoding = encoding_for_model(model)
    words = [rng.choice(_WORDS) for _ in range(tokens + 8)]
    ids = encoding.encode(" ".join(words))[:tokens]
    text = encoding.decode(ids)
    # A cut can re-merge differently: trim or pad with one-token words until exact.
    for _ in range(64):
        count = len(encoding.encode(text))
        if count == tokens:
            return text
        if count > tokens:
            text = encoding.decode(encoding.encode(text)[: tokens - (count - tokens)])
        else:
            text += " " + rng.choice(_WORDS)
    raise ValueError(f"could not build a prompt of exactly {tokens} tokens")


def build_bodies(config: ServingConfig) -> list[bytes]:
    """The request bodies of a run, encoded once (with ``input_tokens``: distinct prompts)."""
    rng = random.Random(config.seed)
    if config.input_tokens is not None:
        prompts = [
            synthetic_prompt(config.input_tokens, config.model, rng) for _ in range(PROMPT_POOL)
        ]
    else:
        prompts = [config.prompt]
    bodies = []
    for prompt in prompts:
        body: dict[str, Any] = {"model": config.model}
        if config.endpoint == "responses":
            body["input"] = prompt
            body["max_output_tokens"] = config.output_tokens
        else:
            body["messages"] = [{"role": "user", "content": prompt}]
            body["max_tokens"] = config.output_tokens
        if config.stream:
            body["stream"] = True
            if config.endpoint == "chat":
                body["stream_options"] = {"include_usage": True}
        if config.ignore_eos:
            body["ignore_eos"] = True
        bodies.append(orjson.dumps(body))
    return bodies


# -- one request ---------------------------------------------------------------


def _chat_event(data: bytes, now: float, times: list[float], usage: list[int]) -> str | None:
    """Read a chat chunk: note ``now`` if it carries output, keep its usage; error kind or None."""
    # Fast path for the token chunks (nearly all of a stream): compact JSON
    # holding ``"content":"`` followed by anything but the closing quote has
    # non-empty content (the pattern cannot occur inside a JSON string, whose
    # quotes are escaped).  Everything else is parsed.
    at = data.find(_CONTENT_KEY)
    if at >= 0 and data[at + _CONTENT_KEY_LENGTH] != _QUOTE:
        times.append(now)
        return None
    if data == _DONE:
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "malformed_event"
    if type(chunk) is not dict:
        return "malformed_event"
    choices = chunk.get("choices")
    if choices:
        delta = choices[0].get("delta") if type(choices[0]) is dict else None
        if type(delta) is dict and (
            delta.get("content")
            or delta.get("reasoning_content")
            or delta.get("reasoning")
            or delta.get("tool_calls")
            or delta.get("function_call")
            # A token that decodes to nothing (a special token): empty content
            # without the role that marks the opening chunk, as vLLM counts it.
            or (delta.get("content") == "" and "role" not in delta)
        ):
            times.append(now)
    counts = chunk.get("usage")
    if counts:
        usage[0] = int(counts.get("prompt_tokens") or 0)
        usage[1] = int(counts.get("completion_tokens") or 0)
    if chunk.get("error"):
        return "stream_error"
    return None


_OUTPUT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.reasoning_text.delta",
        "response.function_call_arguments.delta",
    }
)
_FINAL = frozenset({"response.completed", "response.incomplete"})


def _responses_event(
    kind: str, data: bytes, now: float, times: list[float], usage: list[int]
) -> str | None:
    """Read a Responses API event (by its ``event:`` name if any); error kind or None."""
    if kind in _OUTPUT_DELTAS:
        times.append(now)
        return None
    if kind == "message":  # no ``event:`` line: the type is in the data
        try:
            kind = orjson.loads(data).get("type") or ""
        except (orjson.JSONDecodeError, AttributeError):
            return "malformed_event"
        if kind in _OUTPUT_DELTAS:
            times.append(now)
            return None
    if kind in _FINAL:
        try:
            counts = orjson.loads(data)["response"].get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return "malformed_event"
        usage[0] = int(counts.get("input_tokens") or 0)
        usage[1] = int(counts.get("output_tokens") or 0)
    elif kind in ("response.failed", "error"):
        return "stream_error"
    return None


@attrs.define
class _Sender:
    """Sends the requests of a step, each on the client it is given, and reports them.

    Counts what it sent, what was answered and what failed (for the progress
    line) and keeps the send time of each request in flight (those still
    there when the step is cut off are unfinished).
    """

    config: ServingConfig
    bodies: list[bytes]
    clock: Callable[[], float]
    recorder: StepRecorder
    #: What a failed exchange raises (``httpx.HTTPError``; given, so httpx loads only when used).
    transport_error: type[Exception] = Exception
    next_body: int = 0
    in_flight: dict[int, float] = attrs.Factory(dict)
    sent: int = 0
    ok: int = 0
    failed: int = 0

    @property
    def path(self) -> str:
        """The endpoint's path under the base URL."""
        return _RESPONSES_PATH if self.config.endpoint == "responses" else _CHAT_PATH

    def body(self) -> bytes:
        """The next request body (the pool cycled in order)."""
        index = self.next_body
        self.next_body = (index + 1) % len(self.bodies)
        return self.bodies[index]

    async def send(self, http: Any, sent: float) -> None:
        """Send one request at ``sent`` (clock time) and record what came back.  Checkpoints."""
        recorder = self.recorder
        body = self.body()
        key = self.sent
        self.sent += 1
        self.in_flight[key] = sent
        times: list[float] = []
        usage = [0, -1]
        error: str | None = None
        try:
            if self.config.stream:
                error = await self._stream(http, body, times, usage)
                finished = times[-1] if times else self.clock()
            else:
                error = await self._whole(http, body, usage)
                finished = self.clock()
        except self.transport_error as exc:
            error = type(exc).__name__
        # Not in a ``finally``: a request cancelled at the grace deadline stays
        # in ``in_flight`` and is counted as unfinished.
        del self.in_flight[key]
        if error is None and self.config.stream and not times:
            error = "no_output"
        if error is not None:
            self.failed += 1
            recorder.failed(sent, error)
            return
        self.ok += 1
        output_tokens = usage[1] if usage[1] >= 0 else len(times)
        recorder.answered(
            sent,
            finished,
            first_token=times[0] if times else None,
            token_times=times,
            output_tokens=output_tokens,
            input_tokens=usage[0],
        )

    async def _stream(
        self, http: Any, body: bytes, times: list[float], usage: list[int]
    ) -> str | None:
        clock = self.clock
        chat = self.config.endpoint != "responses"
        error: str | None = None
        async with http.stream_post(self.path, content=body, headers=_POST_HEADERS) as response:
            if response.status_code != 200:
                await response.read_rest()
                return f"http_{response.status_code}"
            decoder = SSEDecoder()
            while True:
                piece = await response.receive_some()
                now = clock()
                events = decoder.feed(piece) if piece else decoder.close()
                for event in events:
                    if chat:
                        # _chat_event's fast path inlined: one call less per token.
                        data = event.data
                        at = data.find(_CONTENT_KEY)
                        if at >= 0 and data[at + _CONTENT_KEY_LENGTH] != _QUOTE:
                            times.append(now)
                            continue
                        kind = _chat_event(data, now, times, usage)
                    else:
                        kind = _responses_event(event.event, event.data, now, times, usage)
                    if kind is not None and error is None:
                        error = kind
                if not piece:
                    return error

    async def _whole(self, http: Any, body: bytes, usage: list[int]) -> str | None:
        response = await http.post(self.path, content=body, headers=_WHOLE_POST_HEADERS)
        if response.status_code != 200:
            return f"http_{response.status_code}"
        try:
            counts = orjson.loads(response.content).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return "malformed_body"
        if self.config.endpoint == "responses":
            usage[0] = int(counts.get("input_tokens") or 0)
            usage[1] = int(counts.get("output_tokens") or 0)
        else:
            usage[0] = int(counts.get("prompt_tokens") or 0)
            usage[1] = int(counts.get("completion_tokens") or 0)
        return None


_POST_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}
_WHOLE_POST_HEADERS = {"content-type": "application/json"}


# -- steps -----------------------------------------------------------------------


ProgressHook = Callable[[str], None]


async def _run_step(
    config: ServingConfig,
    bodies: list[bytes],
    mode: str,
    target: float,
    *,
    ceiling: float | None,
    progress: ProgressHook | None,
    label: str,
    transport_factory: Callable[[], Any] | None = None,
) -> StepResult:
    """Run one step (warm-up, then the measured window, then the grace); checkpoints."""
    import httpx
    import trio

    from engine._http import TimeoutWatch, make_async_client

    clock = trio.current_time
    headers = {"user-agent": f"quota-engine-bench/{__version__}"}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    timeout = httpx.Timeout(60.0, connect=10.0)
    clients: list[Any] = []
    # One task keeps every plain-TCP connection's timeouts, as in the engine's
    # clients: a cancel scope per request was a tenth of the client's CPU.
    watch = TimeoutWatch()

    def new_client() -> Any:
        http = make_async_client(
            config.base_url,
            headers=headers,
            timeout=timeout,
            transport=transport_factory() if transport_factory is not None else None,
            watch=watch,
        )
        clients.append(http)
        return http

    start = clock()
    recorder = StepRecorder(
        mode=mode,
        target=target,
        window_start=start + config.warmup,
        duration=config.duration,
        slo=config.slo,
    )
    sender = _Sender(config, bodies, clock, recorder, transport_error=httpx.HTTPError)
    window_end = recorder.window_end
    # CPU time and the clock, sampled together: a busy loop wakes late at the
    # window's edges, so the CPU is divided by the span it was really taken over.
    cpu = [0.0, 0.0]
    wall = [0.0, 0.0]

    async def watch_window() -> None:
        await trio.sleep_until(recorder.window_start)
        cpu[0], wall[0] = time.process_time(), clock()
        await trio.sleep_until(window_end)
        cpu[1], wall[1] = time.process_time(), clock()

    async def closed_worker(http: Any) -> None:
        while (now := clock()) < window_end:
            await sender.send(http, now)

    # Open loop: a pool of worker tasks, one connection each, parked while
    # idle.  An arrival goes to a parked worker (unparking costs less than a
    # new task); a new worker is started only when none is parked, and at
    # most _MAX_STARTING at a time: at a cold start every arrival would
    # otherwise open a connection of its own while the first ones were still
    # connecting, up to --max-in-flight.  Arrivals no worker can take yet wait
    # in ``due`` (their wait is the send lag); beyond --max-in-flight of them
    # they are dropped.
    due: collections.deque[float] = collections.deque()
    parked = trio.lowlevel.ParkingLot()
    closing = False
    starting = 0  # workers started whose first request has not finished

    async def open_worker(http: Any) -> None:
        nonlocal starting
        first = True
        while True:
            if not due:
                if closing:
                    return
                await parked.park()
                continue
            scheduled = due.popleft()
            now = clock()
            recorder.scheduled(scheduled, now - scheduled)
            await sender.send(http, now)
            if first:
                first = False
                starting -= 1

    async def show_progress() -> None:
        last_ok, last_at = 0, clock()
        while True:
            await trio.sleep(0.5)
            now = clock()
            rate = (sender.ok - last_ok) / (now - last_at)
            last_ok, last_at = sender.ok, now
            phase = "warm-up" if now < recorder.window_start else "measuring"
            if now >= window_end:
                phase = "draining"
            assert progress is not None
            progress(
                f"{label} {phase} {min(now, window_end) - start:5.1f}/"
                f"{config.warmup + config.duration:g} s  sent {sender.sent:,}  ok {sender.ok:,}  "
                f"failed {sender.failed:,}  in flight {len(sender.in_flight):,}  {rate:,.0f} ok/s"
            )

    try:
        async with trio.open_nursery() as outer:
            await outer.start(watch.run)
            outer.start_soon(watch_window)
            if progress is not None:
                outer.start_soon(show_progress)
            async with trio.open_nursery() as nursery:
                if mode == "concurrency":
                    for _ in range(int(target)):
                        nursery.start_soon(closed_worker, new_client())
                else:
                    rng = random.Random(config.seed)
                    schedule = arrival_times(target, start, poisson=config.poisson, rng=rng)
                    next_at = next(schedule)
                    woke = -math.inf
                    while next_at < window_end:
                        # At most one wake-up per _WAKE_INTERVAL: above a few
                        # thousand arrivals a second a wake-up each cost a
                        # tenth of the client's CPU; the lateness this adds
                        # (under half a millisecond) is in the send lag.
                        await trio.sleep_until(max(next_at, woke + _WAKE_INTERVAL))
                        now = woke = clock()
                        # One wake-up may release many arrivals already due.
                        while next_at <= now and next_at < window_end:
                            if parked:
                                due.append(next_at)
                                parked.unpark()
                            elif starting < _MAX_STARTING and len(clients) < config.max_in_flight:
                                due.append(next_at)
                                starting += 1
                                nursery.start_soon(open_worker, new_client())
                            elif len(due) < config.max_in_flight:
                                due.append(next_at)
                            else:
                                recorder.scheduled(next_at)
                                recorder.failed(next_at, "dropped")
                            next_at = next(schedule)
                    closing = True
                    parked.unpark_all()
                nursery.cancel_scope.deadline = window_end + config.grace
            outer.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for http in clients:
                await http.aclose()
    for sent in list(sender.in_flight.values()):  # cut off by the grace deadline
        recorder.failed(sent, "unfinished")
    if cpu[1] == 0.0:
        cpu[1], wall[1] = time.process_time(), clock()
    span = wall[1] - wall[0]
    cpu_seconds = cpu[1] - cpu[0]
    if span > 0:
        cpu_seconds *= recorder.duration / span  # the window's share of it
    return recorder.result(cpu_seconds=cpu_seconds, ceiling=ceiling)


def run_steps(
    config: ServingConfig,
    mode: str,
    targets: Sequence[float],
    *,
    ceiling: float | None = None,
    progress: ProgressHook | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    transport_factory: Callable[[], Any] | None = None,
) -> list[StepResult]:
    """Run a step per target (``mode`` ``"concurrency"`` or ``"rate"``); blocks (own trio loop).

    ``progress`` gets a status line about twice a second; ``on_step`` each
    step's result as it ends; ``transport_factory`` makes each client's
    transport (tests pass ``httpx.ASGITransport``; default: the engine's own).
    """
    import trio

    if mode not in ("concurrency", "rate"):
        raise ValueError(f"mode must be 'concurrency' or 'rate', not {mode!r}")
    bodies = build_bodies(config)

    async def sweep() -> list[StepResult]:
        results = []
        for index, target in enumerate(targets, 1):
            label = f"[{index}/{len(targets)}] {mode} {target:g}"
            result = await _run_step(
                config,
                bodies,
                mode,
                target,
                ceiling=ceiling,
                progress=progress,
                label=label,
                transport_factory=transport_factory,
            )
            results.append(result)
            if on_step is not None:
                on_step(result)
        return results

    return trio.run(sweep)


# -- the self-check --------------------------------------------------------------


@contextlib.contextmanager
def _pinned_mock(mock_args: Sequence[str]) -> Iterator[tuple[str, int | None, int | None]]:
    """Serve ``engine mock`` off this thread's CPU; yield (url, client CPU, mock CPU)."""
    from engine.mock import serve_in_subprocess

    getaffinity = getattr(os, "sched_getaffinity", None)
    setaffinity = getattr(os, "sched_setaffinity", None)
    cpus = sorted(getaffinity(0)) if getaffinity is not None else []
    if setaffinity is None or len(cpus) < 2:
        with serve_in_subprocess(mock_args) as url:
            yield url, None, None
        return
    client_cpu, mock_cpu = cpus[0], cpus[1]
    # The child inherits this thread's affinity when it is started: pin, start, re-pin.
    setaffinity(0, {mock_cpu})
    try:
        with serve_in_subprocess(mock_args) as url:
            setaffinity(0, {client_cpu})
            yield url, client_cpu, mock_cpu
    finally:
        setaffinity(0, set(cpus))


def _per_cpu_second(step: StepResult) -> float | None:
    """Answers per generator CPU second in ``step``: what one core would sustain."""
    cpu_seconds = step.client_cpu_share * step.duration_s
    if cpu_seconds <= 0:
        return None
    return step.requests_per_second * step.duration_s / cpu_seconds


def measure_ceiling(config: ServingConfig, mode: str = "concurrency") -> dict[str, Any]:
    """The generator's own ceiling, measured against the built-in mock.

    The mock (no quotas, no delays) is served in a child process pinned to
    another CPU than the generator's when there are two.  A closed loop of
    64 in flight runs 3 s after a 0.5 s warm-up with ``config``'s endpoint,
    streaming and output tokens; for ``mode`` ``"rate"`` an open loop at half
    the rate it reached follows (an open loop costs more per request: fewer
    events share each wake-up of the event loop).  Returns the JSON report's
    ``self_check``: requests/s, the generator's CPU share and µs per request
    of the closed loop, ``closed_loop_ceiling_rps`` and (open loop)
    ``open_loop_ceiling_rps`` = answers per generator CPU second, and
    ``ceiling_rps``, the one of the two for ``mode``.  Blocks.
    """
    local = attrs.evolve(
        config,
        base_url="",
        duration=SELF_CHECK_DURATION,
        warmup=0.5,
        slo=None,
        api_key=None,
        input_tokens=None,
        # The mock echoes up to 200 characters of the prompt: enough for any
        # --output-tokens up to about 40 to be produced in full.
        prompt=" ".join(_WORDS[:40]),
        grace=10.0,
    )
    open_step: StepResult | None = None
    with _pinned_mock(["--server", "auto"]) as (url, client_cpu, mock_cpu):
        local = attrs.evolve(local, base_url=url)
        step = run_steps(local, "concurrency", [SELF_CHECK_CONCURRENCY])[0]
        if mode == "rate" and step.requests_per_second > 0:
            open_step = run_steps(local, "rate", [max(1.0, step.requests_per_second / 2)])[0]
    closed_ceiling = _per_cpu_second(step)
    open_ceiling = _per_cpu_second(open_step) if open_step is not None else None
    return {
        "concurrency": SELF_CHECK_CONCURRENCY,
        "duration_s": step.duration_s,
        "stream": config.stream,
        "endpoint": config.endpoint,
        "output_tokens_per_request": step.output_tokens / step.completed
        if step.completed
        else None,
        "requests_per_second": step.requests_per_second,
        "client_cpu_share": step.client_cpu_share,
        "client_cpu_us_per_request": step.client_cpu_us_per_request,
        "closed_loop_ceiling_rps": closed_ceiling,
        "open_loop_rate": open_step.target if open_step is not None else None,
        "open_loop_client_cpu_us_per_request": open_step.client_cpu_us_per_request
        if open_step is not None
        else None,
        "open_loop_ceiling_rps": open_ceiling,
        "ceiling_rps": open_ceiling if mode == "rate" and open_ceiling else closed_ceiling,
        "errors": step.errors | (open_step.errors if open_step is not None else {}),
        "client_cpu": client_cpu,
        "mock_cpu": mock_cpu,
    }


def stderr_progress() -> ProgressHook:
    """A progress hook that rewrites one line on stderr."""

    def show(line: str) -> None:
        sys.stderr.write("\r\x1b[2K" + line)
        sys.stderr.flush()

    return show
