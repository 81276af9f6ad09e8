"""The seam between the gRPC servicer and whatever computes the answers."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from services.common.priority import DEFAULT_RANK
from services.engine.errors import EngineError
from services.engine.prefix_cache import PrefixCacheFeed
from services.proto_gen.tera.v1 import engine_pb2 as pb


@dataclass(frozen=True)
class BackendLoad:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


class Backend(abc.ABC):
    """A model host. Subclasses implement the RPCs their model supports."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Loads the model and warms it up; the engine reports SERVING only after."""

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def models(self) -> list[pb.ModelInfo]: ...

    def load(self) -> BackendLoad:
        return BackendLoad()

    def prefix_cache(self) -> PrefixCacheFeed | None:
        """What the backend's prefix cache holds, if it has one routers can watch."""
        return None

    def generate(
        self, request: pb.GenerateRequest, *, priority: int = DEFAULT_RANK
    ) -> AsyncIterator[pb.GenerateResponse]:
        """`priority`: the caller's class, as its rank in PRIORITIES (0: highest)."""
        raise EngineError(grpc.StatusCode.UNIMPLEMENTED, "this engine does not generate text")

    def synthesize(self, request: pb.SynthesizeRequest) -> AsyncIterator[pb.SynthesizeResponse]:
        raise EngineError(grpc.StatusCode.UNIMPLEMENTED, "this engine does not synthesize speech")
