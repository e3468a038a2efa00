"""Prometheus metrics of a client: a collector over :meth:`engine.Client.statistics`.

Needs the optional extra ``metrics`` (``pip install 'quota-engine[metrics]'``,
which installs ``prometheus-client``).  Nothing here is on a request's path:
the collector reads the client's counters when Prometheus scrapes.

* :func:`serve` exposes them over HTTP (``/metrics``, on 127.0.0.1 unless
  told otherwise) from a thread of its own;
* :func:`registry` returns a ``CollectorRegistry`` to mount in your own app
  (``prometheus_client.make_asgi_app(registry=...)``), :class:`ClientCollector`
  the collector itself.

The source is a :class:`~engine.Client` (read from the scraping thread; a
read that races the client's task is tried again) or any callable returning
a :class:`~engine.ClientStatistics` snapshot, or None before there is one
(``engine run`` hands over a snapshot taken by the run's own task twice a
second).  The metrics expose counts, tokens, dollars and limits, never a
key, a prompt or an answer.  Names follow Prometheus conventions (a
``quota_engine_`` prefix, counters end in ``_total``, base units):

Counters: ``quota_engine_requests_sent_total`` (HTTP attempts),
``quota_engine_requests_total{outcome="succeeded"|"failed"}``,
``quota_engine_retries_total``, ``quota_engine_rate_limited_total`` (429s),
``quota_engine_rate_limited_by_limit_total{limit="requests"|"tokens"|"unknown"}``,
``quota_engine_tokens_total{kind="prompt"|"completion"}`` (as the server
reported), ``quota_engine_tokens_reserved_total`` (estimates),
``quota_engine_permits_granted_total``,
``quota_engine_requests_too_large_total`` (over a limit or the cap),
``quota_engine_spent_dollars_total`` (with a cap).  Gauges:
``quota_engine_requests_in_flight``,
``quota_engine_limiter_waiting_requests`` (queued for a permit),
``quota_engine_in_flight_limit``, ``quota_engine_reserved_dollars`` (worst
cases in flight), ``quota_engine_max_cost_dollars`` (only with a cap),
``quota_engine_quota_limit{group,dimension}`` (configured or learned) and
``quota_engine_quota_available{group,dimension}`` (what the quota book
believes is left now).  Histogram: ``quota_engine_request_duration_seconds``
(sending an attempt to its answer, any status but 429).

``dimension`` is ``requests_per_minute``, ``tokens_per_minute``,
``requests_per_day`` or ``tokens_per_day``.

A client with a pool (``open_client(endpoints=...)``, ``engine run
--endpoints``) adds each member's series, labelled with its name
(``endpoint``): counters ``quota_engine_endpoint_sent_total{endpoint}``
(HTTP attempts sent to it),
``quota_engine_endpoint_requests_total{endpoint,outcome="succeeded"|"rate_limited"|"errors"}``
(its answers: 2xx, 429 ``rate_limit_exceeded``, other errors and transport
errors), ``quota_engine_endpoint_tokens_total{endpoint,kind="prompt"|"completion"}``,
and the gauge ``quota_engine_endpoint_retired{endpoint}`` (1 once retired by
a 401/403 or ``insufficient_quota``, 0 while it serves).  A client without a
pool has none of these series.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "engine.metrics needs prometheus-client, an optional extra: "
        "pip install 'quota-engine[metrics]'"
    ) from exc

import attrs

from engine._client import Client, ClientStatistics
from engine._limiter import LATENCY_BUCKETS, LimiterStatistics
from engine._pool import EndpointStatistics
from engine._quota import GroupState

__all__ = ["ClientCollector", "MetricsServer", "registry", "serve"]

#: A source of statistics: a client, or a callable returning a snapshot (None: none yet).
Source = Client | Callable[[], ClientStatistics | None]

#: Reads of a live client from the scraping thread retried this often when
#: they race the client's task (a dict resized under the read).
_READ_ATTEMPTS = 3


def _snapshot(source: Source) -> ClientStatistics | None:
    read = source.statistics if isinstance(source, Client) else source
    for attempt in range(_READ_ATTEMPTS):
        try:
            return read()
        except RuntimeError:
            if attempt == _READ_ATTEMPTS - 1:
                raise
    return None  # pragma: no cover - the loop returns or raises


class ClientCollector(Collector):
    """A Prometheus collector over a client's statistics (see the module docstring).

    Args:
        source: a :class:`~engine.Client`, or a callable returning a
            :class:`~engine.ClientStatistics` snapshot or None.
    """

    def __init__(self, source: Source) -> None:
        self._source = source
        if isinstance(source, Client):
            # The latency histogram counts from now on (a snapshot source's
            # client is opened with latency_histogram=True instead).
            source._limiter.count_latencies()

    def describe(self) -> list[Metric]:
        """Nothing up front: the groups and their limits are known only at a scrape."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metrics of the snapshot read now; none before the first snapshot."""
        statistics = _snapshot(self._source)
        if statistics is None:
            return
        limiter = statistics.limiter

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"quota_engine_{name}", documentation, value=value)

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"quota_engine_{name}", documentation, value=value)

        yield counter("requests_sent", "HTTP attempts sent.", statistics.sent)
        finished = CounterMetricFamily(
            "quota_engine_requests", "Requests finished, by outcome.", labels=["outcome"]
        )
        finished.add_metric(["succeeded"], statistics.succeeded)
        finished.add_metric(["failed"], statistics.failed)
        yield finished
        yield counter(
            "retries", "Attempts repeated after 408/409/5xx/transport errors.", statistics.retries
        )
        yield counter(
            "rate_limited", "429 rate_limit_exceeded answers received.", statistics.rate_limited
        )
        by_limit = CounterMetricFamily(
            "quota_engine_rate_limited_by_limit",
            "429 rate_limit_exceeded answers by the limit the server named.",
            labels=["limit"],
        )
        for limit, count in sorted(limiter.rate_limited_by.items()):
            by_limit.add_metric([limit], count)
        yield by_limit
        tokens = CounterMetricFamily(
            "quota_engine_tokens", "Tokens the server reported, by kind.", labels=["kind"]
        )
        tokens.add_metric(["prompt"], statistics.prompt_tokens)
        tokens.add_metric(["completion"], statistics.completion_tokens)
        yield tokens
        yield counter(
            "tokens_reserved",
            "Tokens reserved by granted permits (estimates).",
            limiter.tokens_reserved,
        )
        yield counter("permits_granted", "Permits the limiter granted.", limiter.granted)
        yield counter(
            "requests_too_large",
            "Requests refused for exceeding a limit or the spending cap.",
            limiter.too_large,
        )
        yield counter(
            "spent_dollars",
            "US dollars spent by the answers' usage at the client's prices (with a cap).",
            statistics.spent,
        )
        yield gauge("requests_in_flight", "Permits granted and not yet settled.", limiter.in_flight)
        yield gauge("limiter_waiting_requests", "Requests queued for a permit.", limiter.waiting)
        yield gauge(
            "in_flight_limit", "The current bound on requests in flight.", limiter.in_flight_cap
        )
        yield gauge(
            "reserved_dollars",
            "Worst-case US dollars held by permits in flight (with a cap).",
            limiter.cost_reserved,
        )
        if statistics.max_cost is not None:
            yield gauge("max_cost_dollars", "The spending cap in US dollars.", statistics.max_cost)
        yield from _quota_gauges(limiter.groups)
        if limiter.latency_counts:
            yield _latency_histogram(limiter)
        if statistics.endpoints:
            yield from _endpoint_metrics(statistics.endpoints)


def _endpoint_metrics(members: tuple[EndpointStatistics, ...]) -> Iterator[Metric]:
    """Each pool member's counters and whether it is retired, labelled ``endpoint``."""
    sent = CounterMetricFamily(
        "quota_engine_endpoint_sent",
        "HTTP attempts sent to each pool member.",
        labels=["endpoint"],
    )
    requests = CounterMetricFamily(
        "quota_engine_endpoint_requests",
        "Each pool member's answers, by outcome (2xx, 429, other errors).",
        labels=["endpoint", "outcome"],
    )
    tokens = CounterMetricFamily(
        "quota_engine_endpoint_tokens",
        "Tokens each pool member's answers reported, by kind.",
        labels=["endpoint", "kind"],
    )
    retired = GaugeMetricFamily(
        "quota_engine_endpoint_retired",
        "1 once a pool member is retired (401/403, insufficient_quota), 0 while it serves.",
        labels=["endpoint"],
    )
    for member in members:
        name = member.name
        sent.add_metric([name], member.sent)
        requests.add_metric([name, "succeeded"], member.succeeded)
        requests.add_metric([name, "rate_limited"], member.rate_limited)
        requests.add_metric([name, "errors"], member.errors)
        tokens.add_metric([name, "prompt"], member.prompt_tokens)
        tokens.add_metric([name, "completion"], member.completion_tokens)
        retired.add_metric([name], 0 if member.retired is None else 1)
    yield sent
    yield requests
    yield tokens
    yield retired


def _latency_histogram(limiter: LimiterStatistics) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*LATENCY_BUCKETS, math.inf), limiter.latency_counts, strict=True):
        total += count
        buckets.append(("+Inf" if math.isinf(bound) else repr(bound), total))
    return HistogramMetricFamily(
        "quota_engine_request_duration_seconds",
        "Seconds from sending an attempt to its answer (any status but 429).",
        buckets=buckets,
        sum_value=limiter.latency_sum,
    )


def _quota_gauges(groups: tuple[GroupState, ...]) -> Iterator[Metric]:
    limit = GaugeMetricFamily(
        "quota_engine_quota_limit",
        "Each limit of each group, configured or learned.",
        labels=["group", "dimension"],
    )
    available = GaugeMetricFamily(
        "quota_engine_quota_available",
        "What the quota book believes is left of each limit now.",
        labels=["group", "dimension"],
    )
    for group in groups:
        for dimension, state in group.dimensions.items():
            if state.limit is not None and math.isfinite(state.limit):
                limit.add_metric([group.name, dimension], state.limit)
            if math.isfinite(state.level):
                available.add_metric([group.name, dimension], state.level)
    yield limit
    yield available


def registry(source: Source) -> CollectorRegistry:
    """A new ``CollectorRegistry`` holding only a :class:`ClientCollector` of ``source``."""
    result = CollectorRegistry(auto_describe=False)
    result.register(ClientCollector(source))
    return result


@attrs.define
class MetricsServer:
    """The HTTP server of :func:`serve`; :meth:`close` (or leaving ``with``) stops it.

    Attributes:
        host / port: where it listens (the port the system chose for ``port=0``).
    """

    host: str
    port: int
    _server: Any
    _thread: Any

    def close(self) -> None:
        """Stop serving and wait for the server's thread (blocks, briefly)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def serve(source: Source, port: int = 9100, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``source``'s metrics at ``http://HOST:PORT/metrics`` from a daemon thread.

    Args:
        source: a :class:`~engine.Client` or a callable returning a snapshot.
        port: the TCP port (default 9100; 0 lets the system choose).
        host: the address to listen on (default 127.0.0.1: this machine only).

    Raises:
        OSError: the address cannot be listened on (e.g. the port is in use).
    """
    server, thread = start_http_server(port, addr=host, registry=registry(source))
    return MetricsServer(host, server.server_address[1], server, thread)
