"""Tera's typed gRPC client: sync (TeraClient) and asyncio (AsyncTeraClient).

from tera_client import TeraClient

with TeraClient("localhost:50051", timeout=30) as tera:
    for delta in tera.generate("HuggingFaceTB/SmolLM2-135M-Instruct",
                               messages=[{"role": "user", "content": "Hi"}]):
        print(delta.text, end="")
"""

from tera_client.aio import AsyncStream, AsyncTeraClient
from tera_client.client import Stream, TeraClient
from tera_client.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    IncompleteStreamError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    from_rpc_error,
)
from tera_client.options import CHANNEL_OPTIONS, NO_RETRIES, RetryPolicy, channel_options
from tera_client.request import GenerateParams
from tera_client.types import Choice, Completion, Delta, ToolCall, ToolCallDelta, Usage

__all__ = [
    "CHANNEL_OPTIONS",
    "NO_RETRIES",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncStream",
    "AsyncTeraClient",
    "AuthenticationError",
    "BadRequestError",
    "Choice",
    "Completion",
    "ConflictError",
    "Delta",
    "GenerateParams",
    "IncompleteStreamError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "Stream",
    "TeraClient",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "channel_options",
    "from_rpc_error",
]
