"""The mock server's configuration: one frozen, keyword-only attrs class."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from engine.mock._quotas import Semantics, ServerLimits, check_subwindow
from engine.mock._tokens import DEFAULT_OUTPUT_TOKENS, TOKEN_RULES, TokenCounter

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_RATE_FIELDS",
    "KEY_LIMIT_FIELDS",
    "RATE_LIMIT_BODIES",
    "KeyLimits",
    "KeyMap",
    "MockConfig",
    "mask_key",
]

#: Models listed by ``GET /v1/models``.  Any model name is served regardless.
DEFAULT_MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-4.1",
    "whisper-1",
    "gpt-4o-mini-transcribe",
)

#: Faults that replace the response body; one is drawn per admitted request,
#: so their rates must add up to at most 1.
FAULT_RATE_FIELDS = (
    "error_500_rate",
    "error_502_rate",
    "error_503_rate",
    "drop_rate",
    "slow_body_rate",
    "malformed_json_rate",
)


#: Shapes of a ``rate_limit_exceeded`` 429's body (``MockConfig.rate_limit_body``).
RATE_LIMIT_BODIES = ("openai", "azure", "generic", "bare", "none")

# An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_name(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"retry_hint_header must be an HTTP header name, got {value!r}")
    return value.lower()


def _rate(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _models(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _semantics(value: Semantics | str) -> Semantics:
    return value if isinstance(value, Semantics) else Semantics(value)


def mask_key(key: str) -> str:
    """An API key as the mock ever shows it: first 3 characters, ``***``, last 4.

    A key of 10 characters or fewer is all ``***`` (as OpenAI's 401 message).
    """
    return f"{key[:3]}***{key[-4:]}" if len(key) > 10 else "***"


#: The limits a key can have of its own (``MockConfig.key_limits``).
KEY_LIMIT_FIELDS = ("rpm", "tpm", "rpd", "tpd")


def _optional_count(instance: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{attribute.name} must be an integer or None, got {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(kw_only=True)
class KeyLimits:
    """One API key's own limits (``MockConfig.key_limits``); None: the mock's global one.

    Attributes:
        rpm, tpm, rpd, tpd: requests / tokens per minute / per day for every
            (this key, model) group (default None: the ``MockConfig`` field of
            the same name, itself None for unlimited).
    """

    rpm: int | None = attrs.field(default=None, validator=_optional_count)
    tpm: int | None = attrs.field(default=None, validator=_optional_count)
    rpd: int | None = attrs.field(default=None, validator=_optional_count)
    tpd: int | None = attrs.field(default=None, validator=_optional_count)

    @classmethod
    def from_value(cls, value: KeyLimits | Mapping[str, Any]) -> KeyLimits:
        """``value`` itself, or a mapping of some of ``rpm``, ``tpm``, ``rpd``, ``tpd``."""
        if isinstance(value, KeyLimits):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(
                f"a key's limits must be a mapping of {', '.join(KEY_LIMIT_FIELDS)}, "
                f"got {type(value).__name__}"
            )
        unknown = sorted(str(name) for name in value if name not in KEY_LIMIT_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown key limits {', '.join(unknown)} (known: {', '.join(KEY_LIMIT_FIELDS)})"
            )
        return cls(**value)


_V = TypeVar("_V")


class KeyMap(Mapping[str, _V]):
    """A read-only, hashable mapping from API key, whose repr masks the keys.

    The type of ``MockConfig.key_limits`` and ``MockConfig.revoke_after``: a
    frozen config stays hashable, and printing it never shows a whole key.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, _V] | None = None) -> None:
        self._items: dict[str, _V] = dict(items or {})

    def __getitem__(self, key: str) -> _V:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        shown = ", ".join(f"{mask_key(key)!r}: {value!r}" for key, value in self._items.items())
        return f"KeyMap({{{shown}}})"


def _api_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"API keys must be non-empty strings, got {type(key).__name__}")
    return key


def _key_limits(value: Mapping[str, KeyLimits | Mapping[str, Any]] | None) -> KeyMap[KeyLimits]:
    if value is None:
        return KeyMap()
    if not isinstance(value, Mapping):
        raise TypeError(
            f"key_limits must be a mapping of API key to limits, got {type(value).__name__}"
        )
    return KeyMap({_api_key(key): KeyLimits.from_value(limits) for key, limits in value.items()})


def _revoke_after(value: Mapping[str, int] | None) -> KeyMap[int]:
    if value is None:
        return KeyMap()
    if not isinstance(value, Mapping):
        raise TypeError(
            f"revoke_after must be a mapping of API key to a count, got {type(value).__name__}"
        )
    counts = {}
    for key, count in value.items():
        shown = mask_key(_api_key(key))
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"revoke_after[{shown!r}] must be an integer, got {count!r}")
        if count < 0:
            raise ValueError(f"revoke_after[{shown!r}] must be >= 0, got {count}")
        counts[key] = count
    return KeyMap(counts)


@attrs.frozen(kw_only=True)
class MockConfig:
    """How the mock server behaves.  Every field is optional.

    Quotas (per limit group: one API key and one model):
        rpm, tpm, rpd, tpd: requests / tokens per minute / per day; ``None``
            (the default) means unlimited.  With all four ``None`` the quota
            check is skipped and no ``x-ratelimit-*`` headers are sent.
        quota_semantics: ``token_bucket`` (default), ``fixed_window``,
            ``per_second`` or ``clock_minute`` (fixed windows aligned on the
            wall-clock minute, and per-day ones on midnight UTC, as
            request-counting gateways do; the reset is the time to the next
            boundary); see :mod:`engine.mock._quotas`.
        subwindow_seconds: an undeclared sub-window, 0 < s < 60 (default None:
            none): each per-minute meter also admits at most ``limit * s / 60``
            per window of ``s`` seconds (aligned on the group's first request,
            or on the wall-clock minute under ``clock_minute``), while every
            ``x-ratelimit-*`` header keeps reporting the minute-level limit,
            remaining and reset.  1.0 is OpenAI's "quantized" 60,000 RPM
            enforced as 1,000 per second; 10.0 Azure checking RPM over 10 s.
            Its refusals are ordinary ``rate_limit_exceeded`` 429s whose wait
            is the time to the sub-window's end.  Not with ``per_second``.
        wall_clock_offset: seconds added to the mock's clock (trio's under
            trio, ``time.monotonic()`` on asyncio) to get the wall clock
            (seconds since the epoch) that ``clock_minute`` windows align on
            (default None: ``time.time()`` minus that clock, taken once, at the
            first request that needs it).  Tests set it to place the start,
            e.g., 40 s past a minute.
        default_output_tokens: output budget per choice charged at arrival when a
            request sets neither ``max_tokens`` nor ``max_completion_tokens``
            (default 512).
        token_rule: how the mock counts the tokens it charges and reports in
            ``usage``, with code of its own (never the engine's estimator):
            ``tiktoken`` (default: tiktoken with OpenAI's documented chat
            overhead) or ``chars`` (``ceil(characters / 4)`` of the messages'
            text plus 4 per message; answers ``ceil(characters / 4)``); see
            :mod:`engine.mock._tokens`.
        token_skew: the prompt tokens charged *and* reported are the rule's
            count times ``1 + token_skew``, rounded up (default 0.0; above -1):
            0.1 is a server counting 10% more than tiktoken.
        correct_to_usage: after answering, correct the token charge from
            prompt + n x budget to real usage (default True).
        insufficient_quota_after: after this many admitted requests every
            request gets 429 ``insufficient_quota``; 0 = from the start
            (default None: never).
        api_key: the only key accepted (``Authorization: Bearer KEY``); others
            get 401 ``invalid_api_key`` (default None: any key, or none).
        key_limits: API key -> that key's own limits, a :class:`KeyLimits` or
            a mapping of some of ``rpm``, ``tpm``, ``rpd``, ``tpd``
            (``{"sk-a": {"rpm": 600}}``); a limit not given is the global
            one above.  ``quota_semantics`` and ``subwindow_seconds`` stay
            global.  A key with limits turns the quota check (and the headers)
            on even when every global limit is None; each key's
            ``x-ratelimit-*`` headers report its own limits (default: none).
        revoke_after: API key -> N: once N requests with that key have been
            admitted, every later request with it (including one that arrived
            while those were in flight) gets 401 ``invalid_api_key``, as a
            wrong key does; 0 = revoked from the start (default: none).
            ``GET /_mock/stats`` counts each key's ``revoked`` 401s.
        organization: named in 429 messages (default ``"org-mock"``).
        retry_after_header: send ``retry-after`` on 429 (default True).
        retry_after_ms_header: send ``retry-after-ms`` on 429 (default True).

    How rate limits are told (what a server other than OpenAI may do instead):
        rate_limit_body: the body of a ``rate_limit_exceeded`` 429 (default
            ``"openai"``): ``openai`` OpenAI's sentence ("Rate limit reached for
            MODEL in organization ORG on requests per min (RPM): Limit L, Used U,
            Requested R. Please try again in 1.5s. ...", type ``requests`` or
            ``tokens``, code ``rate_limit_exceeded``); ``azure`` Azure OpenAI's
            (``{"error": {"code": "429", "message": "Requests to the
            ChatCompletions_Create Operation under Azure OpenAI API version
            2024-10-21 have exceeded token rate limit of your current OpenAI S0
            pricing tier. Please retry after 6 seconds. ..."}}``, no type; "call
            rate limit" for requests; the seconds are the wait rounded up);
            ``generic`` a gateway's (``{"error": {"message": "Rate limit
            exceeded, try again in 2.5s", "type": "rate_limit_error", "code":
            "too_many_requests"}}``); ``bare`` (``{"error": "Too Many
            Requests"}``); ``none`` (an empty body).  ``insufficient_quota`` and
            "Request too large" 429s keep OpenAI's shape whatever this says, and
            ``retry_after_header`` / ``retry_after_ms_header`` apply to every shape.
        rate_limit_headers: send ``x-ratelimit-*`` at all (default True; False:
            on no answer, 200s and 429s alike, as many OpenAI-compatible
            servers and gateways).
        rate_limit_headers_on_429: send ``x-ratelimit-*`` on 429s (default True;
            False: 429s carry none, other answers still do).
        reset_headers: send ``x-ratelimit-reset-*`` (default True; False: only
            ``limit`` and ``remaining``).
        retry_hint_header: the name of a non-standard header that carries the
            wait in seconds (``2.5``, rounded up to the ms) on every
            ``rate_limit_exceeded`` 429, e.g. ``x-ratelimit-retry-after-seconds``,
            for a gateway that sends no standard retry header (combine with
            ``retry_after_header=False, retry_after_ms_header=False``); stored
            lowercase (default None: none).

    Latency (slept with anyio; default none).  A non-streamed answer waits
    ``latency_ms`` plus ``ms_per_output_token`` per output token, then goes
    out whole; a streamed one (``"stream": true``) sends its first token
    ``ttft_ms`` after admission and each next one ``ms_per_output_token``
    later (``latency_ms`` does not apply to it, nor ``ttft_ms`` to a
    non-streamed answer):
        latency_ms: fixed latency, or the median when ``latency_sigma`` > 0 (default 0).
        latency_sigma: sigma of a lognormal latency around that median (default 0: fixed).
        ms_per_output_token: non-streamed: added per completion token of one
            choice; streamed: the gap between two content tokens, or its
            median when ``output_token_sigma`` > 0 (default 0: all at once).
        ttft_ms: streamed answers: time from admission to the first content
            token, or its median when ``ttft_sigma`` > 0 (default 0: at once).
        ttft_sigma: sigma of a lognormal time to first token around
            ``ttft_ms`` (default 0: fixed).
        output_token_sigma: sigma of a lognormal gap between streamed tokens
            around ``ms_per_output_token``, drawn per gap (default 0: fixed).
            The median gap is the configured value; the mean is that times
            ``exp(sigma**2 / 2)`` (what TPOT, a mean of gaps, converges to).
        seed: seeds the random generator of latencies and faults (default None: random).

    Faults (each a probability per admitted request, default 0):
        error_500_rate, error_502_rate, error_503_rate: answer that status with
            an OpenAI-shaped body (the token charge is refunded).
        drop_rate: send the status line and half the body, then drop the connection.
        slow_body_rate: send the body in 4 pieces spread over ``slow_body_ms``.
        slow_body_ms: duration of a slow body (default 2000).
        malformed_json_rate: a 200 whose JSON body is cut in half.
        missing_headers_rate: leave out every ``x-ratelimit-*`` header.
        missing_limit_headers_rate: leave out only ``x-ratelimit-limit-*`` (as Azure does).

    Faults on a streamed answer (the same rates; the head and the events before
    the fault go out on time):
        drop_rate: the connection is cut after ``stream_fault_after`` events,
            with no terminating chunk (a body cut mid-way, not a clean end).
        slow_body_rate: the stream stalls ``slow_body_ms`` after
            ``stream_fault_after`` events, then carries on.
        malformed_json_rate: event number ``stream_fault_after`` (0-based)
            carries JSON cut in half; the stream then ends normally.
        stream_fault_after: how many whole events precede the fault, counting
            chat's role chunk and the Responses API's ``response.created``
            (default None: half of the answer's events; capped so that a
            dropped stream never sends its last event).

    Other:
        models: listed by ``GET /v1/models`` (default :data:`DEFAULT_MODELS`).
        max_body_bytes: larger request bodies get 413 (default 26 MiB).
    """

    rpm: int | None = attrs.field(default=None, validator=_non_negative)
    tpm: int | None = attrs.field(default=None, validator=_non_negative)
    rpd: int | None = attrs.field(default=None, validator=_non_negative)
    tpd: int | None = attrs.field(default=None, validator=_non_negative)
    quota_semantics: Semantics = attrs.field(default=Semantics.TOKEN_BUCKET, converter=_semantics)
    subwindow_seconds: float | None = attrs.field(default=None, converter=_optional_float)
    wall_clock_offset: float | None = attrs.field(default=None, converter=_optional_float)
    default_output_tokens: int = attrs.field(default=DEFAULT_OUTPUT_TOKENS, validator=_non_negative)
    token_rule: str = attrs.field(default="tiktoken", validator=attrs.validators.in_(TOKEN_RULES))
    token_skew: float = attrs.field(default=0.0, converter=float)
    correct_to_usage: bool = True
    insufficient_quota_after: int | None = attrs.field(default=None, validator=_non_negative)
    api_key: str | None = None
    key_limits: KeyMap[KeyLimits] = attrs.field(factory=KeyMap, converter=_key_limits)
    revoke_after: KeyMap[int] = attrs.field(factory=KeyMap, converter=_revoke_after)
    organization: str = "org-mock"
    retry_after_header: bool = True
    retry_after_ms_header: bool = True
    rate_limit_body: str = attrs.field(
        default="openai", validator=attrs.validators.in_(RATE_LIMIT_BODIES)
    )
    rate_limit_headers: bool = True
    rate_limit_headers_on_429: bool = True
    reset_headers: bool = True
    retry_hint_header: str | None = attrs.field(default=None, converter=_header_name)

    latency_ms: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    latency_sigma: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    ms_per_output_token: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    ttft_ms: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    ttft_sigma: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    output_token_sigma: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    seed: int | None = None

    error_500_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    error_502_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    error_503_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    drop_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    slow_body_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    slow_body_ms: float = attrs.field(default=2000.0, converter=float, validator=_non_negative)
    malformed_json_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    missing_headers_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    missing_limit_headers_rate: float = attrs.field(default=0.0, converter=float, validator=_rate)
    stream_fault_after: int | None = attrs.field(default=None, validator=_non_negative)

    models: tuple[str, ...] = attrs.field(default=DEFAULT_MODELS, converter=_models)
    max_body_bytes: int = attrs.field(default=26 * 1024 * 1024, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        total = sum(getattr(self, name) for name in FAULT_RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}, more than 1")
        check_subwindow(self.subwindow_seconds, self.quota_semantics)
        TokenCounter(rule=self.token_rule, skew=self.token_skew)  # validates the skew

    @property
    def limits(self) -> ServerLimits:
        """The global quota limits (of every key without its own) as the quota book takes them."""
        return ServerLimits(
            rpm=self.rpm,
            tpm=self.tpm,
            rpd=self.rpd,
            tpd=self.tpd,
            semantics=self.quota_semantics,
            subwindow_seconds=self.subwindow_seconds,
        )

    @property
    def key_server_limits(self) -> dict[str, ServerLimits]:
        """Each key of ``key_limits`` and its limits, global ones filled in, for the quota book."""
        limits = self.limits
        return {
            key: attrs.evolve(
                limits,
                **{
                    name: getattr(own, name)
                    for name in KEY_LIMIT_FIELDS
                    if getattr(own, name) is not None
                },
            )
            for key, own in self.key_limits.items()
        }

    @property
    def quotas_on(self) -> bool:
        """Whether any key has any limit (else the quota check is skipped)."""
        return not self.limits.unlimited or any(
            not limits.unlimited for limits in self.key_server_limits.values()
        )
