"""The serving benchmark's figures, from plain timestamps (sans-IO, no clock, no I/O).

``engine bench --base-url`` measures a server the way ``vllm bench serve``
does (``vllm/benchmarks/serve.py`` and ``lib/endpoint_request_func.py``), so
the figures can be set beside theirs:

* **TTFT** (time to first token): from the moment the request is sent to the
  first streamed chunk that carries output (chat: ``choices[0].delta`` with
  non-empty ``content``, ``reasoning_content``/``reasoning``, ``tool_calls``
  or ``function_call``, or an empty ``content`` without ``role`` (a token
  that decodes to nothing); Responses API: a ``response.output_text.delta``
  event).
* **ITL** (inter-token latency): the gaps between consecutive output-bearing
  chunks of one request, pooled over all requests of a step.
* **TPOT** (time per output token, first token excluded):
  ``(e2e - TTFT) / (output tokens - 1)`` per request, for requests with more
  than one output token.
* **e2e** (end-to-end latency): from the send to the last output-bearing chunk
  (streamed), or to the whole answer (``--no-stream``).
* **output tokens**: ``usage.completion_tokens`` (chat) or
  ``usage.output_tokens`` (Responses API) of the final usage chunk; when a
  server sends none, the output-bearing chunks are counted.

These are vLLM's rules (``_choice_has_streamed_output`` in vLLM 0.33; earlier
versions counted every chunk with non-empty ``choices``, the role-only first
chunk and the ``finish_reason`` chunk included).  Percentiles interpolate linearly
between order statistics, as ``numpy.percentile`` does by default (vLLM's
choice).

:class:`StepRecorder` takes one call per finished request and turns a step's
calls into a :class:`StepResult`.  Nothing here checkpoints.
"""

from __future__ import annotations

import math
import operator
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

__all__ = [
    "LatencySummary",
    "Slo",
    "StepRecorder",
    "StepResult",
    "arrival_times",
    "parse_load_list",
    "parse_slo",
    "percentile",
    "summarise",
]

#: Share of the offered rate a step must answer for the offered load to count as met.
OFFERED_MET_SHARE = 0.95
#: Generator CPU share (of one core) from which a step is called client-bound.
CLIENT_BOUND_CPU_SHARE = 0.8
#: Share of the self-check ceiling from which a step is called client-bound.
CLIENT_BOUND_CEILING_SHARE = 0.8
#: Open loop: send lag (p90, seconds) from which a step is called client-bound: the
#: client could not send on time (its own CPU, or a machine that gives it too little).
CLIENT_BOUND_SEND_LAG = 0.005


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``ordered`` (sorted, non-empty), linearly interpolated.

    The same as ``numpy.percentile(values, q)`` with its default method: the
    value at rank ``q/100 * (n - 1)``, between the two nearest order statistics.
    """
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    fraction = position - below
    return ordered[below] + (ordered[above] - ordered[below]) * fraction


@attrs.frozen
class LatencySummary:
    """Mean and percentiles of one latency, in seconds (all None when nothing was measured)."""

    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    count: int = 0

    def to_ms(self) -> dict[str, float | None]:
        """``{"mean", "p50", "p90", "p99"}`` in milliseconds (None where unmeasured)."""
        return {
            name: None if value is None else value * 1000.0
            for name, value in (
                ("mean", self.mean),
                ("p50", self.p50),
                ("p90", self.p90),
                ("p99", self.p99),
            )
        }


def summarise(values: Sequence[float]) -> LatencySummary:
    """Mean, p50, p90 and p99 of ``values`` (any order); an empty summary for no values."""
    if not values:
        return LatencySummary()
    ordered = sorted(values)
    return LatencySummary(
        mean=math.fsum(ordered) / len(ordered),
        p50=percentile(ordered, 50),
        p90=percentile(ordered, 90),
        p99=percentile(ordered, 99),
        count=len(ordered),
    )


@attrs.frozen
class Slo:
    """Service-level objectives a request must all meet to count towards goodput (seconds).

    Each is None when not set.  A request with one output token has no TPOT
    and meets any TPOT objective (as in vLLM).
    """

    ttft: float | None = None
    tpot: float | None = None
    itl: float | None = None
    e2e: float | None = None

    def met_by(
        self, ttft: float | None, tpot: float | None, itl_max: float | None, e2e: float
    ) -> bool:
        """Whether a request with these figures meets every objective set."""
        if self.ttft is not None and (ttft is None or ttft > self.ttft):
            return False
        if self.tpot is not None and tpot is not None and tpot > self.tpot:
            return False
        if self.itl is not None and itl_max is not None and itl_max > self.itl:
            return False
        return not (self.e2e is not None and e2e > self.e2e)

    def to_dict(self) -> dict[str, float]:
        """The objectives set, in milliseconds."""
        return {
            name: value * 1000.0 for name, value in attrs.asdict(self).items() if value is not None
        }


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(ms|s|us|µs)?\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "µs": 1e-6, None: 1e-3}


def parse_slo(text: str) -> Slo:
    """Parse ``"ttft=200ms,tpot=50ms"`` into an :class:`Slo`.

    Names: ``ttft``, ``tpot``, ``itl`` (the largest gap of the request),
    ``e2e``.  Values take ``ms`` (the default unit), ``s`` or ``us``.
    Raises ValueError on anything else.
    """
    values: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("ttft", "tpot", "itl", "e2e"):
            raise ValueError(f"bad SLO {part.strip()!r}: expected ttft|tpot|itl|e2e=VALUE[ms|s]")
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"bad SLO value {value.strip()!r} for {name}")
        unit = match.group(2).lower() if match.group(2) else None
        values[name] = float(match.group(1)) * _UNIT_SECONDS[unit]
    if not values:
        raise ValueError("empty SLO")
    return Slo(**values)


def parse_load_list(text: str, *, integer: bool) -> list[float]:
    """Parse ``"100,200,400"`` into the loads of a sweep (each > 0; integers if ``integer``)."""
    loads: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        value = float(int(part)) if integer else float(part)
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"load must be a finite number > 0, got {part!r}")
        loads.append(value)
    if not loads:
        raise ValueError("no load given")
    return loads


def arrival_times(
    rate: float, start: float, *, poisson: bool, rng: random.Random
) -> Iterator[float]:
    """Endless send times from ``start`` at ``rate`` per second.

    Poisson arrivals (exponential gaps of mean ``1/rate``, drawn from ``rng``)
    or, with ``poisson=False``, evenly spaced ones.  The first arrival is one
    gap after ``start``.  Times are computed from the count, not summed, for
    constant arrivals, so they do not drift.
    """
    if not rate > 0:
        raise ValueError("rate must be > 0")
    if poisson:
        at = start
        while True:
            at += rng.expovariate(rate)
            yield at
    else:
        n = 1
        while True:
            yield start + n / rate
            n += 1


@attrs.frozen
class StepResult:
    """What one step of the benchmark measured (see the module docstring for the definitions).

    Attributes:
        mode: ``"concurrency"`` (closed loop) or ``"rate"`` (open loop).
        target: requests in flight, or arrivals per second.
        duration_s: the measured window (after the warm-up), seconds.
        completed: answered requests (HTTP 200, whole answer) among those sent in the window.
        errors: failures other than 429 by kind (``"http_500"``, ``"ReadTimeout"``,
            ``"stream_error"``, ``"dropped"`` ...) among those sent in the window.
        rate_limited: the 429 answers among those sent in the window (not in ``errors``).
        offered_rate: open loop: arrivals scheduled in the window per second; None in closed loop.
        requests_per_second: answered requests that finished in the window, per second.
        output_tokens_per_second: their output tokens, per second.
        ttft / itl / tpot / e2e: latency summaries over the requests sent in the window.
        goodput_rps: ``requests_per_second`` times the share of answered requests that
            met every objective of the SLO; None without an SLO.
        client_cpu_share: the generator's CPU seconds per wall second in the window.
        send_lag: open loop: how late sends left against their schedule.
        client_bound: the generator, not the server, may have set the pace.
        offered_met: open loop: the answers finishing in the window reached 95% (less one
            request) of the arrivals scheduled one median e2e earlier than the window, and
            no arrival was dropped; None in closed loop.
        input_tokens: summed ``usage`` prompt/input tokens of the answered requests.
        output_tokens: summed output tokens of the answered requests.
    """

    mode: str
    target: float
    duration_s: float
    completed: int
    errors: dict[str, int]
    rate_limited: int
    offered_rate: float | None
    requests_per_second: float
    output_tokens_per_second: float
    ttft: LatencySummary
    itl: LatencySummary
    tpot: LatencySummary
    e2e: LatencySummary
    goodput_rps: float | None
    client_cpu_share: float
    send_lag: LatencySummary
    client_bound: bool
    offered_met: bool | None
    input_tokens: int
    output_tokens: int
    client_cpu_us_per_request: float | None

    def to_dict(self) -> dict[str, Any]:
        """The step as the JSON report holds it (latencies in milliseconds)."""
        return {
            "mode": self.mode,
            "target": self.target,
            "duration_s": self.duration_s,
            "completed": self.completed,
            "errors": dict(self.errors),
            "rate_limited": self.rate_limited,
            "offered_rate": self.offered_rate,
            "requests_per_second": self.requests_per_second,
            "output_tokens_per_second": self.output_tokens_per_second,
            "ttft_ms": self.ttft.to_ms(),
            "itl_ms": self.itl.to_ms(),
            "tpot_ms": self.tpot.to_ms(),
            "e2e_ms": self.e2e.to_ms(),
            "goodput_rps": self.goodput_rps,
            "client_cpu_share": self.client_cpu_share,
            "client_cpu_us_per_request": self.client_cpu_us_per_request,
            "send_lag_ms": self.send_lag.to_ms(),
            "client_bound": self.client_bound,
            "offered_met": self.offered_met,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


@attrs.define
class StepRecorder:
    """Collects one step's requests and computes its :class:`StepResult` (mutable, sans-IO).

    The window is ``[window_start, window_start + duration)`` in the driver's
    clock.  Latency figures come from requests *sent* in the window; the
    throughputs from answers that *finished* in it (so a warm-up as long as a
    request lets the window see the steady state, and an overloaded server
    shows as a lower rate instead of a longer run).

    Args:
        mode: ``"concurrency"`` or ``"rate"``.
        target: requests in flight, or arrivals per second.
        window_start: clock time at which the measured window opens.
        duration: window length in seconds (> 0).
        slo: objectives for goodput (default None: no goodput).
    """

    mode: str
    target: float
    window_start: float
    duration: float
    slo: Slo | None = None
    ttfts: list[float] = attrs.Factory(list)
    itls: list[float] = attrs.Factory(list)
    tpots: list[float] = attrs.Factory(list)
    e2es: list[float] = attrs.Factory(list)
    lags: list[float] = attrs.Factory(list)
    errors: Counter[str] = attrs.Factory(Counter)
    completed: int = 0
    good: int = 0
    finished_in_window: int = 0
    tokens_in_window: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    scheduled_in_window: int = 0
    sent_total: int = 0
    schedule: list[float] = attrs.Factory(list)

    @property
    def window_end(self) -> float:
        """Clock time at which the window closes (no step sends after it)."""
        return self.window_start + self.duration

    def in_window(self, sent: float) -> bool:
        """Whether a request sent (or scheduled) at ``sent`` counts towards the latency figures."""
        return self.window_start <= sent < self.window_start + self.duration

    def scheduled(self, at: float, lag: float | None = None) -> None:
        """Note an open-loop arrival scheduled at ``at`` that left ``lag`` seconds late."""
        self.schedule.append(at)
        if self.in_window(at):
            self.scheduled_in_window += 1
            if lag is not None:
                self.lags.append(lag)

    def failed(self, sent: float, kind: str) -> None:
        """Note a request sent at ``sent`` that failed with ``kind`` (or was dropped)."""
        self.sent_total += 1
        if self.in_window(sent):
            self.errors[kind] += 1

    def answered(
        self,
        sent: float,
        finished: float,
        *,
        first_token: float | None,
        token_times: Sequence[float] = (),
        output_tokens: int,
        input_tokens: int = 0,
    ) -> None:
        """Note an answered request.

        Args:
            sent: when it was sent.
            finished: when its last output-bearing chunk (or the whole answer) arrived.
            first_token: when its first output-bearing chunk arrived (None: not streamed).
            token_times: arrival times of its output-bearing chunks, in order
                (the first is ``first_token``); their gaps are its ITLs.
            output_tokens: from the usage, else the number of output-bearing chunks.
            input_tokens: from the usage (0 when absent).
        """
        self.sent_total += 1
        if self.window_start <= finished < self.window_end:
            self.finished_in_window += 1
            self.tokens_in_window += output_tokens
        if not self.in_window(sent):
            return
        self.completed += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        e2e = finished - sent
        self.e2es.append(e2e)
        ttft: float | None = None
        tpot: float | None = None
        itl_max: float | None = None
        if first_token is not None:
            ttft = first_token - sent
            self.ttfts.append(ttft)
            if output_tokens > 1:
                tpot = (e2e - ttft) / (output_tokens - 1)
                self.tpots.append(tpot)
            if len(token_times) > 1:
                gaps = list(map(operator.sub, token_times[1:], token_times[:-1]))
                self.itls.extend(gaps)
                itl_max = max(gaps)
        if self.slo is not None and self.slo.met_by(ttft, tpot, itl_max, e2e):
            self.good += 1

    def result(self, *, cpu_seconds: float, ceiling: float | None = None) -> StepResult:
        """The step's figures; ``cpu_seconds`` is the generator's CPU time in the window.

        ``ceiling`` is the self-check's requests/s (None: not measured); a step
        whose load reaches 80% of it, whose generator used 80% of a core, or
        (open loop) whose sends left 5 ms late or more at p90, is client-bound.
        """
        duration = self.duration
        rps = self.finished_in_window / duration
        errors = dict(self.errors)
        rate_limited = errors.pop("http_429", 0)
        e2e = summarise(self.e2es)
        offered_rate: float | None = None
        offered_met: bool | None = None
        if self.mode == "rate":
            offered_rate = self.scheduled_in_window / duration
            # The answers finishing in the window left about one median e2e
            # earlier: compare them with the arrivals of that shifted window, so
            # Poisson noise at the window's edges does not count.  One request
            # of slack for the edges all the same.
            shift = e2e.p50 or 0.0
            shifted_start = self.window_start - shift
            shifted_end = self.window_end - shift
            offered = sum(1 for at in self.schedule if shifted_start <= at < shifted_end)
            offered_met = (
                self.finished_in_window >= OFFERED_MET_SHARE * offered - 1
                and not errors.get("dropped")
            )
        goodput: float | None = None
        if self.slo is not None:
            goodput = rps * (self.good / self.completed) if self.completed else 0.0
        cpu_share = cpu_seconds / duration
        load = self.target if self.mode == "rate" else rps
        send_lag = summarise(self.lags)
        client_bound = (
            cpu_share >= CLIENT_BOUND_CPU_SHARE
            or (ceiling is not None and load >= CLIENT_BOUND_CEILING_SHARE * ceiling)
            or (send_lag.p90 is not None and send_lag.p90 >= CLIENT_BOUND_SEND_LAG)
        )
        attempts = self.completed + rate_limited + sum(errors.values()) - errors.get("dropped", 0)
        return StepResult(
            mode=self.mode,
            target=self.target,
            duration_s=duration,
            completed=self.completed,
            errors=errors,
            rate_limited=rate_limited,
            offered_rate=offered_rate,
            requests_per_second=rps,
            output_tokens_per_second=self.tokens_in_window / duration,
            ttft=summarise(self.ttfts),
            itl=summarise(self.itls),
            tpot=summarise(self.tpots),
            e2e=e2e,
            goodput_rps=goodput,
            client_cpu_share=cpu_share,
            send_lag=send_lag,
            client_bound=client_bound,
            offered_met=offered_met,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            client_cpu_us_per_request=cpu_seconds / attempts * 1e6 if attempts else None,
        )
