"""What an endpoint supplies to show a generation in its own JSON shape.

The template (`serving.GenerationServing`) owns the loop over the stream, usage, the
"truncated" check and the failure chunk; a `Renderer` only says how one choice looks,
whole (`Choice.json`) or as a streamed delta.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

from services.common.wire import FINISH_REASON_NAMES
from services.edge.errors import OpenAIError
from services.edge.sse import dumps
from services.proto_gen.tera.v1 import engine_pb2 as pb

# finish_reason of a choice whose stream broke: anything but "stop", so that no client
# mistakes a truncated answer for a complete one.
FAILED = "error"

# Each finish reason's JSON value (null for none), for chunks written without dumps.
FINISH_JSON: dict[int, str] = {value: dumps(name) for value, name in FINISH_REASON_NAMES.items()}


class Choice(Protocol):
    """One choice being accumulated for a non-streamed response."""

    finish_reason: int

    def add(self, delta: pb.ChoiceDelta) -> None: ...
    def json(self, index: int, logprobs: bool) -> dict[str, Any]: ...


class Renderer(ABC):
    id_prefix: ClassVar[str]  # "chatcmpl": the response id is f"{prefix}-{request_id}"
    object: ClassVar[str]  # the whole response's `object`
    chunk_object: ClassVar[str]  # each SSE chunk's `object`
    # Whether the final usage chunk needs a usage message from upstream (chat) or is
    # sent with zeros when none came (completions).
    usage_needs_upstream: ClassVar[bool] = False

    def __init__(self, *, logprobs: bool) -> None:
        self.logprobs = logprobs

    @abstractmethod
    def choice(self) -> Choice: ...

    @abstractmethod
    def delta(self, index: int, delta: pb.ChoiceDelta) -> dict[str, Any]:
        """One streamed choice, renumbered to `index`."""

    def delta_json(self, index: int, delta: pb.ChoiceDelta) -> str:
        """`delta(index, delta)` as JSON. A renderer may write its common case directly:
        once per streamed token, building the dict and encoding it costs more than the
        rest of rendering."""
        return dumps(self.delta(index, delta))

    @abstractmethod
    def failed(self, index: int) -> dict[str, Any]:
        """The streamed choice that closes an unfinished one when the stream breaks."""

    def opening(self, choices: int) -> list[dict[str, Any]]:
        """Streamed choices sent before any upstream message (chat's assistant role)."""
        return []


def truncated() -> OpenAIError:
    return OpenAIError(
        502,
        "The model stream ended before the answer was complete.",
        type="server_error",
        code="truncated",
    )


def usage_json(usage: pb.Usage) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }
    if usage.reasoning_tokens:
        body["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return body


def add_usage(total: pb.Usage, part: pb.Usage) -> None:
    total.prompt_tokens += part.prompt_tokens
    total.completion_tokens += part.completion_tokens
    total.cached_tokens += part.cached_tokens
    total.reasoning_tokens += part.reasoning_tokens
