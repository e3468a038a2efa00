"""quota-engine: run OpenAI-style API calls at the highest rate your quota allows.

Public names are re-exported here; the modules that define them are private.
The batch runners (``run_file``, ``run_batch``, ``run_audio``) are imported on
first use: a library user who never runs a file does not load their modules.
"""

from typing import TYPE_CHECKING, Any

from engine._audio import MAX_UPLOAD_BYTES
from engine._budget import (
    BudgetExhaustedError,
    OverBudgetError,
    Price,
    PriceTable,
    UnknownPriceError,
    load_prices,
)
from engine._client import ChatStream, Client, ClientStatistics, ResponseStream, open_client
from engine._errors import (
    AuthenticationError,
    BackgroundTaskError,
    BadRequestError,
    EngineError,
    FatalError,
    InputError,
    InsufficientQuotaError,
    OutputError,
    RateLimitWaitExceeded,
    RequestError,
    RequestTooLargeError,
    ResponseValidationError,
    RetriesExhaustedError,
    RunStoppedError,
    StreamInterruptedError,
)
from engine._export import split_results, to_csv, to_dataframe, to_jsonl, to_rows
from engine._limiter import LimiterStatistics
from engine._pool import Endpoint, EndpointStatistics
from engine._quota import DimensionState, GroupState, Limits
from engine._requests import ChatRequest, TranscriptionRequest
from engine._results import (
    AudioUsage,
    ChatResult,
    ErrorInfo,
    GapSummary,
    Timings,
    TranscriptionResult,
    Usage,
)
from engine._shared import RedisQuota
from engine._version import __version__ as __version__
from engine.endpoints import (
    EmbeddingRequest,
    EmbeddingResult,
    EmbeddingUsage,
    ResponseRequest,
    ResponseResult,
    ResponseUsage,
)

__all__ = [
    "MAX_UPLOAD_BYTES",
    "AudioUsage",
    "AuthenticationError",
    "BackgroundTaskError",
    "BadRequestError",
    "BudgetExhaustedError",
    "ChatRequest",
    "ChatResult",
    "ChatStream",
    "Client",
    "ClientStatistics",
    "DimensionState",
    "EmbeddingRequest",
    "EmbeddingResult",
    "EmbeddingUsage",
    "Endpoint",
    "EndpointStatistics",
    "EngineError",
    "ErrorInfo",
    "FatalError",
    "GapSummary",
    "GroupState",
    "InputError",
    "InsufficientQuotaError",
    "LimiterStatistics",
    "Limits",
    "OutputError",
    "OverBudgetError",
    "Price",
    "PriceTable",
    "RateLimitWaitExceeded",
    "RedisQuota",
    "RequestError",
    "RequestTooLargeError",
    "ResponseRequest",
    "ResponseResult",
    "ResponseStream",
    "ResponseUsage",
    "ResponseValidationError",
    "RetriesExhaustedError",
    "RunStoppedError",
    "StreamInterruptedError",
    "Timings",
    "TranscriptionRequest",
    "TranscriptionResult",
    "UnknownPriceError",
    "Usage",
    "load_prices",
    "open_client",
    "run_audio",
    "run_batch",
    "run_file",
    "split_results",
    "to_csv",
    "to_dataframe",
    "to_jsonl",
    "to_rows",
]

if TYPE_CHECKING:
    from engine.app.batch import run_audio, run_batch, run_file

_LAZY = {"run_audio", "run_batch", "run_file"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from engine.app import batch

        value = getattr(batch, name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
