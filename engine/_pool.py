"""Pools: several endpoints (API keys, deployments, providers) behind one client.

An :class:`Endpoint` is one member of a pool: where it is, the key it is
called with, its own quota, its weight and the models it serves.  Each
member's limit groups are groups of their own in the client's one quota book,
named ``"member/group"`` (:func:`member_group`), so the one limiter task grants
each member only what that member's quota allows; a request may go to any
member that serves its model, and goes to the one that can take it soonest
(see docs/design.md, "Pools").

What is here is pure: the configuration, the limits the quota book reads for
member groups (:class:`PoolLimits`), and the per-member counters the client
keeps (:class:`EndpointStatistics`).  The routing itself is the limiter's;
sending is the client's.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

from engine._errors import FatalError
from engine._quota import Limits

__all__ = [
    "Endpoint",
    "EndpointStatistics",
    "Pool",
    "PoolLimits",
    "member_group",
    "member_of",
]

#: What a member's name may hold: it names the member in statistics, logs,
#: metrics labels and shared-quota keys, and ends at the first "/" of a group.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def member_group(member: str, group: str) -> str:
    """The quota-book group of ``member``'s limit group ``group``: ``"member/group"``."""
    return f"{member}/{group}"


def member_of(group: str) -> str:
    """The member a :func:`member_group` name belongs to."""
    return group.partition("/")[0]


def _check_name(_instance: object, _attribute: object, name: str) -> None:
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise ValueError(
            f"endpoint name {name!r}: use 1 to 64 letters, digits, '_', '.', ':' or '-', "
            "starting with a letter or digit"
        )


def _check_weight(_instance: object, _attribute: object, weight: float) -> None:
    if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"endpoint weight must be a positive number, got {weight!r}")


def _models(models: Iterable[str] | None) -> frozenset[str] | None:
    if models is None:
        return None
    if isinstance(models, str):
        return frozenset((models,))
    chosen = frozenset(models)
    if not chosen:
        raise ValueError("endpoint models: give at least one model, or None for every model")
    return chosen


def _check_limits(
    _instance: object, _attribute: object, limits: Limits | Mapping[str, Limits] | None
) -> None:
    if limits is None or isinstance(limits, Limits):
        return
    if not isinstance(limits, Mapping) or not all(
        isinstance(value, Limits) for value in limits.values()
    ):
        raise ValueError("endpoint limits: a Limits, a mapping of group to Limits, or None")


@attrs.frozen(eq=False)
class Endpoint:
    """One member of a pool: ``open_client(endpoints=[Endpoint(...), ...])``.

    Args:
        name: names the member in statistics, logs, metrics and pinned
            requests (``client.chat(..., endpoint=name)``); 1 to 64 letters,
            digits, ``_ . : -``.  Unique within a pool.
        base_url: OpenAI-style base URL ending in ``/v1``.
        api_key: the key this member is called with (default None: no
            ``Authorization`` header).  Never logged, shown or written.
        limits: this member's quota, as ``open_client``'s ``limits``: one
            :class:`~engine.Limits` for every model, a mapping from model
            (or limit group) to Limits, or None (default) to learn them from
            the member's ``x-ratelimit-*`` headers.
        weight: breaks ties between members that can all take a request now:
            requests go to the one with the fewest granted per unit of weight
            (default 1.0).  A member's share of a saturated run follows its
            quota, not its weight.
        models: the models this member serves (default None: every model).
            A request for another model never goes to it.
    """

    name: str = attrs.field(validator=_check_name)
    base_url: str
    api_key: str | None = attrs.field(default=None, repr=False)
    limits: Limits | Mapping[str, Limits] | None = attrs.field(
        default=None, validator=_check_limits
    )
    weight: float = attrs.field(default=1.0, validator=_check_weight)
    models: frozenset[str] | None = attrs.field(default=None, converter=_models)

    def serves(self, model: str) -> bool:
        """True if requests for ``model`` may go to this member."""
        return self.models is None or model in self.models

    def limits_for(self, group: str) -> Limits:
        """This member's configured limits for limit group ``group`` (empty: learn them)."""
        limits = self.limits
        if limits is None:
            return Limits()
        if isinstance(limits, Limits):
            return limits
        return limits.get(group, Limits())


class PoolLimits(Mapping[str, Limits]):
    """The limits of a pool's member groups, as the quota book reads them.

    ``pool_limits["member/group"]`` is that member's configured
    :class:`~engine.Limits` for ``group``; a group the member configures
    nothing for is missing (the book then learns it from headers).
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = {endpoint.name: endpoint for endpoint in endpoints}

    def __getitem__(self, group: str) -> Limits:
        member, slash, rest = group.partition("/")
        endpoint = self._endpoints.get(member)
        if endpoint is None or not slash:
            raise KeyError(group)
        limits = endpoint.limits
        if isinstance(limits, Limits):
            return limits
        if limits is None or rest not in limits:
            raise KeyError(group)
        return limits[rest]

    def __iter__(self) -> Iterator[str]:
        for endpoint in self._endpoints.values():
            if isinstance(endpoint.limits, Mapping):
                for group in endpoint.limits:
                    yield member_group(endpoint.name, group)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@attrs.frozen
class EndpointStatistics:
    """One pool member's counters (``client.statistics().endpoints``).

    Attributes:
        name: the member's name.
        granted: permits the limiter gave to this member's groups.
        sent: HTTP attempts sent to it.
        succeeded: 2xx answers it gave.
        rate_limited: 429 ``rate_limit_exceeded`` answers it gave.
        errors: other error answers and transport errors.
        prompt_tokens / completion_tokens: tokens its answers reported.
        retired: why the member was retired (its 401/403 or
            ``insufficient_quota`` error message), or None while it serves.
    """

    name: str
    granted: int
    sent: int
    succeeded: int
    rate_limited: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    retired: str | None = None


@attrs.define(eq=False)
class _Member:
    """A pool member's running counters (the client's, updated on its task)."""

    endpoint: Endpoint
    sent: int = 0
    succeeded: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retired: FatalError | None = None
    #: Transport errors in a row (the client cools the member down for longer each time).
    unreachable_streak: int = 0


class Pool:
    """The members of one client's pool, their counters and their retirements.

    Args:
        endpoints: the members, in the order they are listed (at least one,
            names unique).

    Raises:
        ValueError: no endpoint, or two with one name.
    """

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("endpoints: give at least one Endpoint")
        members: dict[str, _Member] = {}
        for endpoint in endpoints:
            if not isinstance(endpoint, Endpoint):
                raise ValueError(f"endpoints: expected engine.Endpoint, got {endpoint!r}")
            if endpoint.name in members:
                raise ValueError(f"endpoints: two endpoints are named {endpoint.name!r}")
            members[endpoint.name] = _Member(endpoint)
        self._members = members
        self.limits = PoolLimits(endpoints)
        #: Member name -> weight, as the limiter breaks ties with it.
        self.weights = {name: member.endpoint.weight for name, member in members.items()}
        self._choices: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """The members' configurations, in their order."""
        return tuple(member.endpoint for member in self._members.values())

    def choices(self, model: str, group: str) -> tuple[tuple[str, str], ...]:
        """(member, member group) of every member serving ``model``, for limit group ``group``.

        Empty when no member serves the model.  Retired members are left in:
        the limiter skips them (a retirement comes after the choice is made).
        """
        key = (model, group)
        found = self._choices.get(key)
        if found is None:
            found = tuple(
                (name, member_group(name, group))
                for name, member in self._members.items()
                if member.endpoint.serves(model)
            )
            self._choices[key] = found
        return found

    def pinned(self, name: str, model: str, group: str) -> tuple[tuple[str, str], ...]:
        """The one choice of a request pinned to member ``name``.

        Raises:
            KeyError: with the message to show, when no member has that name
                or it does not serve ``model``.
        """
        member = self._members.get(name)
        if member is None:
            raise KeyError(
                f"endpoint {name!r} is not in the pool (its members: {', '.join(self._members)})"
            )
        if not member.endpoint.serves(model):
            raise KeyError(f"endpoint {name!r} does not serve model {model!r}")
        return ((name, member_group(name, group)),)

    def member(self, group: str) -> _Member:
        """The member whose group ``group`` is (a :func:`member_group` name)."""
        return self._members[member_of(group)]

    def serving(self) -> list[str]:
        """The names of the members not retired."""
        return [name for name, member in self._members.items() if member.retired is None]

    def statistics(self, granted: Mapping[str, int]) -> tuple[EndpointStatistics, ...]:
        """Each member's counters; ``granted`` is the limiter's permits per member."""
        return tuple(
            EndpointStatistics(
                name=name,
                granted=granted.get(name, 0),
                sent=member.sent,
                succeeded=member.succeeded,
                rate_limited=member.rate_limited,
                errors=member.errors,
                prompt_tokens=member.prompt_tokens,
                completion_tokens=member.completion_tokens,
                retired=None if member.retired is None else member.retired.message,
            )
            for name, member in self._members.items()
        )
