"""quota-engine: run OpenAI-style API calls at the highest rate your quota allows.

Public names are re-exported here; the modules that define them are private.
"""

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
from engine.app.batch import run_audio, run_batch, run_file
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
