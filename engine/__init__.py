"""quota-engine: run OpenAI-style API calls at the highest rate your quota allows.

Public names are re-exported here; the modules that define them are private.
"""

from engine._client import Client, ClientStatistics, open_client
from engine._errors import (
    AuthenticationError,
    BadRequestError,
    EngineError,
    FatalError,
    InputError,
    InsufficientQuotaError,
    RateLimitWaitExceeded,
    RequestError,
    RequestTooLargeError,
    ResponseValidationError,
    RetriesExhaustedError,
    RunStoppedError,
)
from engine._limiter import LimiterStatistics
from engine._quota import Limits
from engine._requests import ChatRequest
from engine._results import ChatResult, ErrorInfo, Timings, Usage

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ChatRequest",
    "ChatResult",
    "Client",
    "ClientStatistics",
    "EngineError",
    "ErrorInfo",
    "FatalError",
    "InputError",
    "InsufficientQuotaError",
    "LimiterStatistics",
    "Limits",
    "RateLimitWaitExceeded",
    "RequestError",
    "RequestTooLargeError",
    "ResponseValidationError",
    "RetriesExhaustedError",
    "RunStoppedError",
    "Timings",
    "Usage",
    "open_client",
]
