"""Error text is bounded on every hop: the helpers, the engine's and router's errors,
and the edge's mapping of gRPC's own metadata-limit failure (never a 429)."""

from __future__ import annotations

import grpc

from services.common.bounded import MAX_MESSAGE_CHARS, clip, clip_trailers
from services.edge.errors import OpenAIError, from_grpc, model_not_found
from services.engine.errors import invalid_argument
from services.router.relay import Refusal


def test_clip_keeps_short_text_and_cuts_long_text_with_an_ellipsis() -> None:
    assert clip("abc") == "abc"
    cut = clip("x" * 1000)
    assert len(cut) == 200 and cut.endswith("…")
    assert clip_trailers([("tera-error-param", "p" * 10_000)])[0][1].endswith("…")


def test_every_hop_bounds_its_messages() -> None:
    huge = "v" * 1_000_000
    assert len(invalid_argument(huge, param=huge).message) == MAX_MESSAGE_CHARS
    assert len(invalid_argument(huge, param=huge).param or "") == 200
    refusal = Refusal(grpc.StatusCode.INVALID_ARGUMENT, huge, trailing=(("k", huge),))
    assert len(refusal.message) == MAX_MESSAGE_CHARS and len(refusal.trailing[0][1]) == 200
    assert len(OpenAIError(400, huge, param=huge).message) == MAX_MESSAGE_CHARS
    assert len(model_not_found(huge).message) < 300


class _Failed(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_metadata_limit_is_not_a_rate_limit() -> None:
    details = "Stream removed (received metadata size exceeds hard limit (value length 711984"
    error = from_grpc(_Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert error.status == 502 and "metadata" not in error.message
    overloaded = from_grpc(_Failed(grpc.StatusCode.RESOURCE_EXHAUSTED, "at capacity"))
    assert overloaded.status == 429
