"""One quota shared by many processes and machines, through Redis.

Each process keeps the design's rule: its limiter task alone owns its quota
book.  In shared mode (``QuotaBook(shared=True)``) every grant also needs
capacity *leased* from the shared quota, and the lease manager below is the
task that leases it, Doorman-style:

* **Leases.** Capacity (requests and tokens) with an expiry.  A process asks
  for a chunk when its pool runs dry — about ``ask_seconds`` of its fair share
  of the rate, never fewer than ``min_ask_requests`` requests — so Redis sees
  one command per chunk, not one per request.  Unused capacity is reported at
  every renewal and handed back when the group has been idle for
  ``idle_seconds``.  A process that dies (even SIGKILL) loses its leases when
  they expire: no capacity is held for longer than ``lease_seconds``.
* **Accounting in Redis, on Redis's clock.**  Per (namespace, limit group) a
  token bucket per limit (requests and tokens per minute, and per day when
  configured) refilling at ``limit / window``, plus one record per process
  holding a lease (expiry, capacity held).  Every change happens in an atomic
  Lua script that reads the time with ``TIME``, so processes on different
  machines need no synchronised clocks.  The bucket never refills above the
  limit less the capacity held in live leases, so leased-but-unused capacity
  cannot add to a burst.
* **Fair shares.**  A lease grants ``min(asked, available, fair share)``; the
  fair share is the limit divided by the processes holding live leases, less
  what the asking process already holds.  A process alone can use the whole
  quota (and the whole burst of a fresh token bucket).  When capacity is
  scarce (a lease leaves a bucket with less than was asked), a process asks
  again no sooner than its grant lasts at 0.9 of a fair share of the rate,
  and one that got less than it asked waits about as long as its share takes
  to accrue, so the quickest process cannot take what the others wait for
  and none starves; when capacity is plentiful nobody is paced.
* **Publication.**  A 429 cooldown seen by one process is written to a key
  with a PX expiry (and drains the shared buckets until it ends) and
  announced on :func:`cooldown_channel`, which every manager listens to;
  limits learned from headers are stored with the bucket.  Every lease call
  returns both, and the manager hands them to its limiter
  (``cool_down_nowait``, ``learn_limits_nowait``).
* **One pace.**  Paced groups (and the burst pace of unproven ones) send on
  one schedule per group kept in Redis (``PACE_SCRIPT``): the limiter asks
  for a stretch (``on_pace_needed``), the manager claims the next one after
  everything handed out and after any published cooldown, and the book
  sends within it at the whole rate (``QuotaBook(shared_pace=True)``).
* **Redis unavailable.**  The first failed call logs one warning on the
  ``engine.shared`` logger naming the URL (without credentials) and what each
  process now does: it falls back to a local share of every known limit
  (``fallback_share``, else one over the most processes it has seen sharing
  the group, else one over ``fallback_clients``), starting empty and
  refilling at that share of the rate — leases already held stay valid
  until they expire.  It retries with exponential backoff (``retry_initial``
  to ``retry_max`` seconds) and logs again when it rejoins.  A bucket found
  missing on rejoin (Redis restarted without its data) starts empty, not
  full.  Every Redis call is bounded by ``command_timeout``: never a hang.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from importlib import resources
from types import TracebackType
from typing import Any, Protocol, Self, TypedDict

import attrs
import trio

from engine._nurseries import open_service_nursery
from engine._quota import SHARED_PACE_FRACTION, Cost, Limits

__all__ = ["RedisQuota", "SharedQuotaStatistics"]

logger = logging.getLogger("engine.shared")

#: What a script's answer is made of (strings: the client decodes responses).
_RedisValue = str | bytes | int
#: What a script is called with.
_ScriptArgument = str | int | float


class _RedisScript(Protocol):
    """A Lua script registered with a Redis client (coredis's ``Script``)."""

    def __call__(self, *, keys: list[str], args: list[_ScriptArgument]) -> Awaitable[object]: ...


class _AsyncContext(Protocol):
    """An async context manager that enters as itself."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> bool | None: ...


class _Subscription(_AsyncContext, Protocol):
    """A subscription to Redis channels (``coredis``'s ``PubSub``): an async
    context manager that yields its messages (dicts with ``data``) when iterated."""

    def __aiter__(self) -> AsyncIterator[Mapping[str, Any]]: ...


class _RedisClient(_AsyncContext, Protocol):
    """What the lease manager needs of a Redis client (``coredis.Redis`` has it).

    An async context manager that registers the scripts and answers a ping;
    the manager gets a new one from its ``redis_factory`` after each outage.
    """

    def register_script(self, script: str) -> _RedisScript: ...

    def ping(self) -> Awaitable[object]: ...

    def pubsub(
        self, *, channels: Sequence[str], ignore_subscribe_messages: bool
    ) -> _Subscription: ...


class _LeasingLimiter(Protocol):
    """What the lease manager asks of the limiter it feeds (:class:`engine._limiter.Limiter`).

    A protocol, not the class: the limiter module imports nothing from here, and
    this module nothing from it.
    """

    def lease_nowait(
        self, group: str, *, requests: float, tokens: float, expires_at: float
    ) -> None: ...

    def share_nowait(self, group: str, share: float) -> None: ...

    def cool_down_nowait(self, group: str, until: float) -> None: ...

    def pace_nowait(self, group: str, start: float, end: float) -> None: ...

    def learn_limits_nowait(self, group: str, *, rpm: float | None, tpm: float | None) -> None: ...

    async def take_back_lease(self, group: str) -> tuple[float, float]: ...

    async def lease_state(self, group: str) -> tuple[float, float, float]: ...


class LimiterCallbacks(TypedDict, total=False):
    """The keyword arguments :meth:`LeaseManager.callbacks` gives the limiter (none
    without a shared quota)."""

    on_lease_needed: Callable[[str, Cost], None]
    on_cooldown: Callable[[str, float], None]
    on_limits_learned: Callable[[str, float | None, float | None], None]
    on_pace_needed: Callable[[str, float], None]


#: (name, Limits field, window in seconds, kind index: 0 requests, 1 tokens)
_DIMS = (
    ("rpm", "rpm", 60.0, 0),
    ("tpm", "tpm", 60.0, 1),
    ("rpd", "rpd", 86_400.0, 0),
    ("tpd", "tpd", 86_400.0, 1),
)


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _share(
    _instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not 0 < value <= 1:
        raise ValueError(f"{attribute.name} must be in (0, 1] or None, got {value!r}")


@attrs.frozen
class RedisQuota:
    """Share one quota between processes through a Redis server.

    Pass it as ``engine.open_client(..., shared=engine.RedisQuota(url))``
    (or ``engine run --redis URL``).  Every process using the same ``url``,
    ``namespace`` and limit group shares that group's quota.

    Attributes:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
        namespace: prefix of every key (default ``"quota-engine"``); use one
            per API key / organisation.
        lease_seconds: how long leased capacity stays usable (default 10.0).
            Also how long a killed process's capacity stays out of use, and
            how long it counts as a sharer.
        ask_seconds: a lease asks for about this many seconds of the
            process's fair share of the rate (default 2.0).
        min_ask_requests: fewest requests a lease asks for (default 20), so
            Redis sees at most one command per 20 requests.
        idle_seconds: a group whose leased capacity went unused this long
            hands it back (default 2.0).
        command_timeout: bound on connecting and on every Redis call
            (default 2.0 seconds); a call unanswered twice in a row makes
            Redis count as unavailable.
        retry_initial: first reconnection delay after a failure (default 0.5 s);
            doubles up to ``retry_max`` (default 10.0 s), with jitter.
        fallback_share: share of each limit one process uses on its own while
            Redis is unavailable (default None: one over the most processes
            seen sharing the group, or ``1 / fallback_clients`` if Redis was
            never reached).
        fallback_clients: processes assumed to share a group that was never
            seen in Redis (default 4).
        close_timeout: bound on handing leases back when the client closes
            (default 2.0 seconds).
        margin: a new shared bucket starts refilling this many seconds late
            (default 0.1), so arrival jitter at the server does not turn an
            exact fit into a 429 (the server's own bucket starts at the first
            request it sees, a little after the first lease).
        client_id: this process's name in Redis (default: host, pid and a
            random suffix).
    """

    url: str
    namespace: str = attrs.field(kw_only=True, default="quota-engine")
    lease_seconds: float = attrs.field(kw_only=True, default=10.0, validator=_positive)
    ask_seconds: float = attrs.field(kw_only=True, default=2.0, validator=_positive)
    min_ask_requests: int = attrs.field(kw_only=True, default=20, validator=_positive)
    idle_seconds: float = attrs.field(kw_only=True, default=2.0, validator=_positive)
    command_timeout: float = attrs.field(kw_only=True, default=2.0, validator=_positive)
    retry_initial: float = attrs.field(kw_only=True, default=0.5, validator=_positive)
    retry_max: float = attrs.field(kw_only=True, default=10.0, validator=_positive)
    fallback_share: float | None = attrs.field(kw_only=True, default=None, validator=_share)
    fallback_clients: int = attrs.field(kw_only=True, default=4, validator=_positive)
    close_timeout: float = attrs.field(kw_only=True, default=2.0, validator=_positive)
    margin: float = attrs.field(kw_only=True, default=0.1)
    client_id: str | None = attrs.field(kw_only=True, default=None)

    def safe_url(self) -> str:
        """The URL without its credentials, for messages."""
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return self.url
        return f"{scheme}://{rest.rpartition('@')[2]}"


@attrs.frozen
class SharedQuotaStatistics:
    """Counters of one process's lease manager.

    Attributes:
        redis_calls: Redis commands sent (scripts; connecting not counted).
        leases: lease calls answered by Redis.
        requests_leased / tokens_leased: capacity granted by Redis.
        fallback_leases: leases granted locally while Redis was unavailable.
        returns: idle leases handed back.
        connected: True while Redis answers.
        outages: times Redis became unavailable.
        clients: most processes seen sharing a group.
    """

    redis_calls: int
    leases: int
    requests_leased: float
    tokens_leased: float
    fallback_leases: int
    returns: int
    connected: bool
    outages: int
    clients: int


# -- Lua scripts (run atomically by Redis, timed by Redis's own clock) --------
# Each in engine/lua/ (package data), its keys, arguments and answer described at its top.


def _lua(name: str) -> str:
    """The Lua script ``engine/lua/NAME.lua``, read from the installed package."""
    return resources.files("engine").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


#: Leases capacity to one client from the shared buckets (and reads cooldowns, limits).
LEASE_SCRIPT = _lua("lease")
#: Hands a client's unused capacity back and ends its lease.
RETURN_SCRIPT = _lua("return")
#: Publishes a cooldown and drains the buckets until it ends.
COOLDOWN_SCRIPT = _lua("cooldown")
#: Hands out the next stretch of a group's shared pace schedule.
PACE_SCRIPT = _lua("pace")


def pace_key(namespace: str, group: str) -> str:
    """The shared pace schedule's cursor of one limit group (same slot as :func:`group_keys`)."""
    return f"{{{namespace}:{group}}}:pace"


def cooldown_channel(namespace: str) -> str:
    """The channel on which processes sharing ``namespace`` announce their 429 cooldowns."""
    return f"{namespace}:cooldowns"


def group_keys(namespace: str, group: str) -> tuple[str, str, str]:
    """(state hash, leases hash, cooldown key) of one limit group.

    The ``{namespace:group}`` hash tag keeps a group's keys in one cluster slot.
    """
    tag = f"{{{namespace}:{group}}}"
    return (f"{tag}:state", f"{tag}:leases", f"{tag}:cooldown")


@attrs.frozen
class LeaseReply:
    """What the lease script answered.  Times in microseconds of Redis's clock."""

    requests: float
    tokens: float
    redis_now_us: float
    clients: int
    cooldown_until_us: float | None
    limits: tuple[float | None, float | None, float | None, float | None]
    contended: bool = False

    @classmethod
    def parse(cls, raw: Sequence[_RedisValue]) -> LeaseReply:
        def text(value: _RedisValue) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        def limit(value: _RedisValue) -> float | None:
            return float(text(value)) or None  # 0: not known

        limits = (limit(raw[5]), limit(raw[6]), limit(raw[7]), limit(raw[8]))
        cooldown = text(raw[4])
        return cls(
            requests=float(raw[0]),
            tokens=float(raw[1]),
            redis_now_us=float(text(raw[2])),
            clients=int(raw[3]),
            cooldown_until_us=float(cooldown) if cooldown else None,
            limits=limits,
            contended=len(raw) > 9 and int(raw[9]) == 1,
        )


# -- pure helpers --------------------------------------------------------------


def ask_size(
    need: Cost,
    *,
    rpm: float | None,
    tpm: float | None,
    clients: int,
    ask_seconds: float,
    min_requests: int,
    tokens_per_request: float,
) -> tuple[int, int]:
    """(requests, tokens) one lease asks for.

    About ``ask_seconds`` of this process's fair share of the request rate
    (``rpm / 60 / clients``), never fewer than ``min_requests`` nor less than
    ``need``; tokens follow at ``tokens_per_request``, bounded by
    ``ask_seconds`` of the fair token rate when ``tpm`` is known (but never
    below ``need``).
    """
    clients = max(1, clients)
    requests = max(need.requests, min_requests)
    if rpm:
        requests = max(requests, math.ceil(rpm / 60 / clients * ask_seconds))
    tokens = math.ceil(requests * tokens_per_request)
    if tpm:
        tokens = min(tokens, max(math.ceil(tpm / 60 / clients * ask_seconds), 1))
    return requests, max(tokens, need.tokens)


def retry_delay(
    asked: tuple[float, float],
    granted: tuple[float, float],
    *,
    rates: tuple[float | None, float | None],
    clients: int,
    floor: float,
    ceiling: float,
) -> float:
    """Seconds to wait before asking again after a lease short of what was asked.

    As long as the missing part takes to accrue at this process's fair share
    of the rate, within [``floor``, ``ceiling``]; 0 when everything was granted.
    """
    wait = 0.0
    short = False
    for ask, got, rate in zip(asked, granted, rates, strict=True):
        if got >= ask:
            continue
        short = True
        if rate:
            wait = max(wait, (ask - got) / (rate / max(1, clients)))
    if not short:
        return 0.0
    return min(ceiling, max(floor, wait))


def fair_pace(
    granted: tuple[float, float],
    *,
    rates: tuple[float | None, float | None],
    clients: int,
    fraction: float = 0.9,
) -> float:
    """Seconds ``granted`` lasts at ``fraction`` of a fair share of the known rates."""
    pace = 0.0
    for got, rate in zip(granted, rates, strict=True):
        if rate and got:
            pace = max(pace, got / (fraction * rate / max(1, clients)))
    return pace


@attrs.define
class FallbackBucket:
    """A local share of a group's limits, used while Redis is unavailable.

    Per known limit a token bucket holding ``share`` of it, refilling at
    ``share`` of its rate and starting *empty* (leases held from Redis may
    still be in use).  Unknown limits grant what is asked.  Pure: time is
    passed in.
    """

    limits: tuple[float | None, float | None, float | None, float | None]
    share: float
    started: float
    levels: list[float] = attrs.field(init=False)
    updated: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.levels = [0.0] * len(_DIMS)
        self.updated = self.started

    def grant(self, ask: tuple[float, float], now: float) -> tuple[float, float]:
        """Take at most ``ask`` (requests, tokens) out of the share; return what was taken."""
        elapsed = max(0.0, now - self.updated)
        self.updated = max(self.updated, now)
        granted = list(ask)
        for i, (_name, _field, window, kind) in enumerate(_DIMS):
            limit = self.limits[i]
            if not limit:
                continue
            cap = limit * self.share
            self.levels[i] = min(cap, self.levels[i] + elapsed * cap / window)
            granted[kind] = max(0.0, min(granted[kind], math.floor(self.levels[i])))
        for i, (_name, _field, _window, kind) in enumerate(_DIMS):
            if self.limits[i]:
                self.levels[i] -= granted[kind]
        return granted[0], granted[1]


def _limits_for(limits: Limits | Mapping[str, Limits] | None, group: str) -> Limits:
    if limits is None:
        return Limits()
    if isinstance(limits, Limits):
        return limits
    return limits.get(group, Limits())


# -- the lease manager task -----------------------------------------------------


class _Unavailable(Exception):
    """A Redis call failed or timed out."""


@attrs.define(eq=False)
class _Group:
    name: str
    keys: tuple[str, str, str]
    limits: list[float | None]
    need: Cost | None = None
    flagged: bool = False
    next_ask_at: float = -math.inf
    clients: int = 1
    max_clients: int = 0
    seen_bucket: bool = False
    tokens_per_request: float = 0.0
    holding: bool = False
    idle_check_at: float = math.inf
    last_pool: tuple[float, float, float] | None = None
    cooldown_to_publish: float | None = None
    publish_limits: bool = False
    fallback: FallbackBucket | None = None
    # The shared pace schedule: seconds of it the limiter asked for (0: none),
    # whether that ask is still on its way to the manager, and (Redis down)
    # where this process's own schedule stands.
    pace_wanted: float = 0.0
    pace_flagged: bool = False
    local_pace_at: float = -math.inf


@attrs.frozen
class _Need:
    group: str
    cost: Cost


@attrs.frozen
class _Cooldown:
    group: str
    until: float


@attrs.frozen
class _PaceNeed:
    group: str
    seconds: float


@attrs.frozen
class _Learned:
    group: str
    rpm: float | None
    tpm: float | None


class LeaseManager:
    """The task that leases shared capacity from Redis for one client's limiter.

    Created by ``open_client(shared=...)``: pass :meth:`callbacks` to the
    :class:`~engine._limiter.Limiter`, then :meth:`attach` it, start
    :meth:`run` in the client's nursery, and :meth:`aclose` it before closing
    the limiter.
    """

    def __init__(
        self,
        config: RedisQuota,
        limits: Limits | Mapping[str, Limits] | None,
        *,
        redis_factory: Callable[[], _RedisClient] | None = None,
    ) -> None:
        self._config = config
        self._limits = limits
        self._redis_factory = redis_factory or self._default_redis
        self._client_id = config.client_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._send, self._receive = trio.open_memory_channel[object](math.inf)
        self._groups: dict[str, _Group] = {}
        self._attached: _LeasingLimiter | None = None
        self._scope = trio.CancelScope()
        self._finished = trio.Event()
        self._connected = False
        self._ever_connected = False
        self._outage_logged = False
        self._backoff = config.retry_initial
        self._rng = random.Random()
        self._redis_calls = 0
        self._leases = 0
        self._requests_leased = 0.0
        self._tokens_leased = 0.0
        self._fallback_leases = 0
        self._returns = 0
        self._outages = 0
        self._scripts: dict[str, _RedisScript] = {}

    # -- wiring -----------------------------------------------------------------

    def callbacks(self) -> LimiterCallbacks:
        """Keyword arguments for :class:`~engine._limiter.Limiter`."""
        return {
            "on_lease_needed": self._on_lease_needed,
            "on_cooldown": self._on_cooldown,
            "on_limits_learned": self._on_limits_learned,
            "on_pace_needed": self._on_pace_needed,
        }

    def attach(self, limiter: _LeasingLimiter) -> None:
        """Name the limiter whose book the leases go to."""
        self._attached = limiter

    @property
    def _limiter(self) -> _LeasingLimiter:
        if self._attached is None:
            raise RuntimeError("LeaseManager.attach() the limiter before running the manager")
        return self._attached

    def statistics(self) -> SharedQuotaStatistics:
        """Return a :class:`SharedQuotaStatistics` snapshot (does not checkpoint)."""
        return SharedQuotaStatistics(
            redis_calls=self._redis_calls,
            leases=self._leases,
            requests_leased=self._requests_leased,
            tokens_leased=self._tokens_leased,
            fallback_leases=self._fallback_leases,
            returns=self._returns,
            connected=self._connected,
            outages=self._outages,
            clients=max((g.max_clients for g in self._groups.values()), default=0),
        )

    # Callbacks run in the limiter task: record and return at once.

    def _on_lease_needed(self, group: str, cost: Cost) -> None:
        state = self._group(group)
        if state.flagged:
            return  # the manager has not seen the last one yet
        state.flagged = True
        self._post(_Need(group, cost))

    def _on_cooldown(self, group: str, until: float) -> None:
        self._post(_Cooldown(group, until))

    def _on_pace_needed(self, group: str, seconds: float) -> None:
        state = self._group(group)
        if state.pace_flagged:
            return  # the manager has not seen the last one yet
        state.pace_flagged = True
        self._post(_PaceNeed(group, seconds))

    def _on_limits_learned(self, group: str, rpm: float | None, tpm: float | None) -> None:
        self._post(_Learned(group, rpm, tpm))

    def _post(self, message: object) -> None:
        try:
            self._send.send_nowait(message)
        except trio.ClosedResourceError:
            pass  # closing: nothing more to lease

    def _group(self, name: str) -> _Group:
        state = self._groups.get(name)
        if state is None:
            limits = _limits_for(self._limits, name)
            state = self._groups[name] = _Group(
                name=name,
                keys=group_keys(self._config.namespace, name),
                limits=[getattr(limits, field) for _n, field, _w, _k in _DIMS],
            )
        return state

    # -- the task ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The manager task.  Returns after :meth:`aclose` (leases handed back)."""
        task_status.started()
        try:
            with self._scope:
                await self._run()
        finally:
            self._connected = False
            self._finished.set()

    async def aclose(self) -> None:
        """Stop leasing and hand back unused capacity; bounded by ``close_timeout``.

        Checkpoints.  Call before closing the limiter.
        """
        self._send.close()
        with trio.move_on_after(self._config.close_timeout):
            await self._finished.wait()
        self._scope.cancel()

    async def _run(self) -> None:
        closed = False
        while not closed:
            try:
                async with self._redis_factory() as redis:
                    self._scripts = {
                        "lease": redis.register_script(LEASE_SCRIPT),
                        "return": redis.register_script(RETURN_SCRIPT),
                        "cooldown": redis.register_script(COOLDOWN_SCRIPT),
                        "pace": redis.register_script(PACE_SCRIPT),
                    }
                    await self._ping(redis)
                    self._note_connected()
                    async with open_service_nursery("the shared quota's lease manager") as nursery:
                        nursery.start_soon(self._listen, redis)
                        await self._serve(redis, math.inf)
                        await self._hand_back(redis)
                        nursery.cancel_scope.cancel()
                closed = True
            except Exception as exc:  # Redis errors, also as exception groups
                if not _is_redis_failure(exc):
                    raise
                self._note_outage(exc)
                closed = await self._serve(None, trio.current_time() + self._next_backoff())
        await self._hand_back(None)

    async def _listen(self, redis: _RedisClient) -> None:
        """Hear the cooldowns other processes announce, and hold this one too. Checkpoints.

        A process sending on stretches of the pace schedule it claimed before
        another process was refused would otherwise learn of that 429 only
        at its next claim, after sending into the same full window.  Best
        effort: every lease and pace reply still carries the cooldown; a
        subscription that fails is logged (debug) and made again a second
        later.  Runs until cancelled.
        """
        channel = cooldown_channel(self._config.namespace)
        while True:
            try:
                async with redis.pubsub(
                    channels=[channel], ignore_subscribe_messages=True
                ) as subscription:
                    async for message in subscription:
                        self._hear_cooldown(message.get("data"), trio.current_time())
            except Exception as exc:
                if not _is_redis_failure(exc):
                    raise
                logger.debug("shared quota: cooldown subscription failed (%s)", _describe(exc))
            await trio.sleep(1.0)

    def _hear_cooldown(self, data: object, received_at: float) -> None:
        """Apply one announcement of :func:`cooldown_channel` (see engine/lua/cooldown.lua)."""
        if isinstance(data, bytes):
            data = data.decode("utf-8", "replace")
        if not isinstance(data, str):
            return
        parts = data.split(" ")
        if len(parts) != 4 or parts[3] == self._client_id:
            return  # not ours to read, or our own 429 (the limiter already holds it)
        key, ends_us, redis_now_us = parts[0], parts[1], parts[2]
        for group in self._groups.values():
            if group.keys[2] == key:
                try:
                    # Redis's clock to ours: the message left Redis just before it arrived.
                    until = received_at + (float(ends_us) - float(redis_now_us)) / 1e6
                except ValueError:
                    return
                if until > received_at:
                    self._limiter.cool_down_nowait(group.name, until)
                return

    def _default_redis(self) -> _RedisClient:
        import coredis

        timeout = self._config.command_timeout
        return coredis.Redis.from_url(
            self._config.url,
            connect_timeout=timeout,
            stream_timeout=timeout,
            decode_responses=True,
            verify_version=False,
        )

    def _note_connected(self) -> None:
        self._connected = True
        self._backoff = self._config.retry_initial
        if self._outage_logged:
            logger.warning(
                "shared quota: Redis at %s is back; leasing from the shared quota again",
                self._config.safe_url(),
            )
        self._outage_logged = False
        self._ever_connected = True
        for group in self._groups.values():
            group.fallback = None
            group.next_ask_at = -math.inf

    def _note_outage(self, exc: BaseException) -> None:
        was_connected = self._connected
        self._connected = False
        if was_connected or not self._outage_logged:
            self._outages += 1
        if not self._outage_logged:
            self._outage_logged = True
            share = self._config.fallback_share
            what = (
                f"{share:g} of each limit"
                if share is not None
                else (
                    "1/(most processes seen sharing) of each limit"
                    if self._ever_connected
                    else f"1/{self._config.fallback_clients} of each limit"
                )
            )
            logger.warning(
                "shared quota: Redis at %s is unavailable (%s); this process now uses "
                "%s on its own (leases already held stay valid until they expire) and "
                "retries with backoff up to %gs",
                self._config.safe_url(),
                _describe(exc),
                what,
                self._config.retry_max,
            )

    def _next_backoff(self) -> float:
        delay = self._backoff * self._rng.uniform(0.5, 1.0)
        self._backoff = min(self._config.retry_max, self._backoff * 2)
        return delay

    async def _serve(self, redis: _RedisClient | None, until: float) -> bool:
        """Handle messages and timers until ``until``; True once closed.

        With ``redis`` None, leases come from the local fallback share.
        Raises a Redis failure out of the connection's block.
        """
        receive = self._receive
        while True:
            deadline = min([until, *self._timers(connected=redis is not None)])
            message = None
            closed = False
            with trio.move_on_at(deadline):
                try:
                    message = await receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    closed = True
            if closed:
                return True
            while message is not None:
                self._handle(message)
                try:
                    message = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    message = None
            now = trio.current_time()
            for group in list(self._groups.values()):
                await self._step(redis, group, now)
            if trio.current_time() >= until:
                return False

    def _timers(self, *, connected: bool) -> list[float]:
        times = []
        for group in self._groups.values():
            if group.pace_wanted:
                times.append(-math.inf)
            if group.need is not None:
                times.append(group.next_ask_at)
            if group.idle_check_at != math.inf:
                times.append(group.idle_check_at)
            if connected and (group.cooldown_to_publish is not None or group.publish_limits):
                times.append(-math.inf)
        return times

    def _handle(self, message: object) -> None:
        if isinstance(message, _Need):
            group = self._group(message.group)
            group.flagged = False
            group.need = message.cost
            if message.cost.requests > 0:
                per_request = message.cost.tokens / message.cost.requests
                group.tokens_per_request = (
                    per_request
                    if not group.tokens_per_request
                    else 0.8 * group.tokens_per_request + 0.2 * per_request
                )
        elif isinstance(message, _PaceNeed):
            group = self._group(message.group)
            group.pace_flagged = False
            group.pace_wanted = message.seconds
        elif isinstance(message, _Cooldown):
            group = self._group(message.group)
            group.cooldown_to_publish = max(group.cooldown_to_publish or -math.inf, message.until)
        elif isinstance(message, _Learned):
            group = self._group(message.group)
            configured = _limits_for(self._limits, message.group)
            changed = False
            for index, value, mine in (
                (0, message.rpm, configured.rpm),
                (1, message.tpm, configured.tpm),
            ):
                if value and mine is None and group.limits[index] != value:
                    group.limits[index] = value
                    changed = True
            group.publish_limits = group.publish_limits or changed

    async def _step(self, redis: _RedisClient | None, group: _Group, now: float) -> None:
        refresh = False
        if redis is None:
            group.cooldown_to_publish = None  # nobody to tell; the local book has it
        elif group.cooldown_to_publish is not None:
            until, group.cooldown_to_publish = group.cooldown_to_publish, None
            if until > now:
                await self._call(
                    redis,
                    "cooldown",
                    [group.keys[2], group.keys[0]],
                    [
                        math.ceil((until - now) * 1e6),
                        cooldown_channel(self._config.namespace),
                        self._client_id,
                    ],
                )
                # A 429 may have switched the group to pacing, which spreads
                # only this process's share: learn how many processes share.
                refresh = True
        if group.pace_wanted:
            await self._claim_pace(redis, group, now)
        if group.need is not None and now >= group.next_ask_at:
            await self._lease(redis, group, group.need)
        elif redis is not None and (group.publish_limits or refresh):
            await self._lease(redis, group, Cost(tokens=0, requests=0))
        if now >= group.idle_check_at:
            await self._idle_check(redis, group, now)

    async def _ping(self, redis: _RedisClient) -> None:
        """Check that Redis answers (a client connects lazily)."""
        await self._bounded(redis.ping)

    async def _call(
        self, redis: _RedisClient, script: str, keys: list[str], args: list[_ScriptArgument]
    ) -> object:
        """Run one of the scripts (by its name in ``_scripts``) on ``redis``; its answer."""
        return await self._bounded(lambda: self._scripts[script](keys=keys, args=args))

    async def _bounded(self, command: Callable[[], Awaitable[object]]) -> object:
        """Run one Redis command within ``command_timeout``; raise :class:`_Unavailable`.

        A timeout is tried once more before Redis counts as unavailable: the
        time may have gone to something else blocking this event loop (a
        tokenizer loading its tables, say), not to Redis.
        """
        for _attempt in range(2):
            self._redis_calls += 1
            try:
                with trio.move_on_after(self._config.command_timeout):
                    started = trio.current_time()
                    answer = await command()
                    logger.debug("redis call: %.1f ms", (trio.current_time() - started) * 1e3)
                    return answer
            except Exception as exc:
                if _is_redis_failure(exc):
                    raise _Unavailable(_describe(exc)) from exc
                raise
        raise _Unavailable(f"no answer within {self._config.command_timeout:g}s, twice")

    async def _lease(self, redis: _RedisClient | None, group: _Group, need: Cost) -> None:
        limiter = self._limiter
        pool_requests, pool_tokens, pool_expires = await limiter.lease_state(group.name)
        started = trio.current_time()
        if pool_expires <= started:
            pool_requests = pool_tokens = 0.0
        asked = (0, 0)
        if need.requests or need.tokens:
            asked = ask_size(
                need,
                rpm=group.limits[0],
                tpm=group.limits[1],
                clients=group.clients,
                ask_seconds=self._config.ask_seconds,
                min_requests=self._config.min_ask_requests,
                tokens_per_request=group.tokens_per_request,
            )
        contended = False
        if redis is None:
            granted = self._fallback_grant(group, asked, started)
            self._fallback_leases += 1
        else:
            reply = LeaseReply.parse(
                _values(
                    await self._call(
                        redis,
                        "lease",
                        list(group.keys),
                        [
                            self._client_id,
                            math.ceil(self._config.lease_seconds * 1e6),
                            1 if group.seen_bucket else 0,
                            asked[0],
                            asked[1],
                            math.floor(pool_requests),
                            math.floor(pool_tokens),
                            *[value or 0 for value in group.limits],
                            math.ceil(max(86_400.0 * 2, self._config.lease_seconds * 4) * 1000),
                            math.ceil(self._config.margin * 1e6),
                            need.requests,
                            need.tokens,
                        ],
                    )
                )
            )
            group.publish_limits = False
            group.seen_bucket = True
            if reply.clients != group.clients and reply.clients >= 1:
                # A paced group spreads only this process's share over the
                # server's windows (several processes pacing at the full
                # rate would together overrun a per-second window).  Every
                # lease reply and every published 429 refreshes the count, so
                # the share grows back when another process is done.
                limiter.share_nowait(group.name, 1 / reply.clients)
            group.clients = reply.clients
            group.max_clients = max(group.max_clients, reply.clients)
            granted = (reply.requests, reply.tokens)
            contended = reply.contended
            self._leases += 1
            self._requests_leased += reply.requests
            self._tokens_leased += reply.tokens
            self._adopt(group, reply, started)
        now = trio.current_time()
        if granted[0] or granted[1]:
            limiter.lease_nowait(
                group.name,
                requests=granted[0],
                tokens=granted[1],
                # Redis set its expiry after we sent the call: ours is never later.
                expires_at=started + self._config.lease_seconds,
            )
            group.holding = True
            group.idle_check_at = now + self._config.idle_seconds
            group.last_pool = None
        if not (need.requests or need.tokens):
            return
        satisfied = (
            pool_requests + granted[0] >= need.requests and pool_tokens + granted[1] >= need.tokens
        )
        if satisfied:
            group.need = None
        rpm, tpm = group.limits[0], group.limits[1]
        rates = (rpm / 60 if rpm else None, tpm / 60 if tpm else None)  # per second
        group.next_ask_at = now + retry_delay(
            asked,
            granted,
            rates=rates,
            clients=group.clients,
            floor=0.02,
            ceiling=max(self._config.ask_seconds, 0.02),
        )
        if contended:
            # Capacity is scarce: ask again no sooner than this grant lasts at
            # a fair share of the rate, so the quickest process does not take
            # what the others are waiting for.
            group.next_ask_at = max(
                group.next_ask_at,
                started + fair_pace(granted, rates=rates, clients=group.clients),
            )

    async def _claim_pace(self, redis: _RedisClient | None, group: _Group, now: float) -> None:
        """Claim the stretch of the shared pace schedule the limiter asked for.

        Without Redis the process paces on its own at its fallback share of
        the rate: the stretch it gets is followed by the others' part.
        """
        seconds, group.pace_wanted = group.pace_wanted, 0.0
        if redis is None:
            share = self._config.fallback_share or 1 / max(
                group.max_clients or self._config.fallback_clients, 1
            )
            start = max(now, group.local_pace_at)
            group.local_pace_at = start + seconds / (share * SHARED_PACE_FRACTION)
            self._limiter.pace_nowait(group.name, start, start + seconds)
            return
        started = trio.current_time()
        raw = _values(
            await self._call(
                redis,
                "pace",
                [pace_key(self._config.namespace, group.name), group.keys[2]],
                [math.ceil(seconds * 1e6), math.ceil(self._config.lease_seconds * 1000)],
            )
        )
        start_us, redis_now_us, cooldown = (
            value.decode() if isinstance(value, bytes) else str(value) for value in raw
        )
        # Redis's clock to ours: the call's start stands for Redis's now (the
        # stretch starts at most one round trip later than it could).
        start = started + (float(start_us) - float(redis_now_us)) / 1e6
        if cooldown and float(cooldown) > float(redis_now_us):
            # Another process was refused: its cooldown holds this one too.
            until = started + (float(cooldown) - float(redis_now_us)) / 1e6
            self._limiter.cool_down_nowait(group.name, until)
        self._limiter.pace_nowait(group.name, start, start + seconds)

    def _adopt(self, group: _Group, reply: LeaseReply, started: float) -> None:
        """Apply what other processes published: limits, cooldowns."""
        limiter = self._limiter
        configured = _limits_for(self._limits, group.name)
        learned: list[float | None] = [None, None]
        for index, field in ((0, "rpm"), (1, "tpm")):
            value = reply.limits[index]
            if value and getattr(configured, field) is None and group.limits[index] != value:
                group.limits[index] = value
                learned[index] = value
        if learned[0] or learned[1]:
            limiter.learn_limits_nowait(group.name, rpm=learned[0], tpm=learned[1])
        if reply.cooldown_until_us is not None:
            until = started + (reply.cooldown_until_us - reply.redis_now_us) / 1e6
            if until > started:
                limiter.cool_down_nowait(group.name, until)

    def _fallback_grant(
        self, group: _Group, asked: tuple[int, int], now: float
    ) -> tuple[float, float]:
        if group.fallback is None:
            share = self._config.fallback_share
            if share is None:
                clients = group.max_clients or self._config.fallback_clients
                share = 1 / max(1, clients)
            group.fallback = FallbackBucket(
                limits=(group.limits[0], group.limits[1], group.limits[2], group.limits[3]),
                share=share,
                started=now,
            )
        return group.fallback.grant(asked, now)

    async def _idle_check(self, redis: _RedisClient | None, group: _Group, now: float) -> None:
        pool = await self._limiter.lease_state(group.name)
        expired = pool[2] <= trio.current_time()
        if group.need is None and (expired or pool == group.last_pool):
            group.idle_check_at = math.inf
            group.last_pool = None
            unused = await self._limiter.take_back_lease(group.name)
            if redis is not None and group.holding:
                await self._give_back(redis, group, unused)
            group.holding = False
            return
        group.last_pool = pool
        group.idle_check_at = now + self._config.idle_seconds

    async def _hand_back(self, redis: _RedisClient | None) -> None:
        """Closing: return what every group still holds (best effort)."""
        for group in self._groups.values():
            if not group.holding:
                continue
            unused = await self._limiter.take_back_lease(group.name)
            group.holding = False
            if redis is None:
                continue
            try:
                await self._give_back(redis, group, unused)
            except _Unavailable:
                return  # the leases expire on their own

    async def _give_back(
        self, redis: _RedisClient, group: _Group, unused: tuple[float, float]
    ) -> None:
        """Return ``unused`` (requests, tokens) to the shared buckets and end this
        process's lease of ``group``. Checkpoints; raises :class:`_Unavailable`."""
        await self._call(
            redis,
            "return",
            [group.keys[0], group.keys[1]],
            [self._client_id, math.floor(unused[0]), math.floor(unused[1])],
        )
        self._returns += 1


def _values(answer: object) -> list[_RedisValue]:
    """A script's answer that should be a list of values, as a list.

    Raises:
        _Unavailable: it is something else (not the server these scripts run on).
    """
    if not isinstance(answer, list):
        raise _Unavailable(f"unexpected answer from Redis: {answer!r:.100}")
    return answer


def _is_redis_failure(exc: BaseException) -> bool:
    """True for connection/timeouts/server errors from Redis (also inside groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_redis_failure(inner) for inner in exc.exceptions)
    if isinstance(exc, _Unavailable | OSError | TimeoutError):
        return True
    try:
        import coredis.exceptions
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, coredis.exceptions.RedisError)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, _Unavailable):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:200]
