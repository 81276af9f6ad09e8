"""The asyncio client: AsyncTeraClient(target).generate(...) / await .complete(...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Unpack

import grpc
import grpc.aio

from tera_client._calls import Metadata, StreamState, call_metadata, collect
from tera_client._gen.tera.v1 import engine_pb2 as pb
from tera_client._gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tera_client.errors import from_rpc_error
from tera_client.options import RetryPolicy, channel_options
from tera_client.request import GenerateParams, build_request
from tera_client.types import Completion, Delta, Usage


class AsyncStream:
    """Deltas as they come. cancel(), leaving an `async with` block, or cancelling the
    task that reads ends the call, and the engine stops generating."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call
        self._state = StreamState()

    @property
    def usage(self) -> Usage | None:
        return self._state.usage

    async def __aiter__(self) -> AsyncIterator[Delta]:
        try:
            while (message := await self._call.read()) is not grpc.aio.EOF:
                for delta in self._state.deltas(message):  # type: ignore[arg-type]
                    yield delta
        except grpc.aio.AioRpcError as error:
            self._state.failed(error)
            return
        except asyncio.CancelledError:
            self.cancel()
            raise
        self._state.ended()

    def cancel(self) -> None:
        self._state.cancelled = True
        self._call.cancel()

    async def collect(self) -> Completion:
        deltas = [d async for d in self]
        return collect(deltas, self.usage)

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._call.done():
            self.cancel()


class AsyncTeraClient:
    """Like TeraClient, on a grpc.aio channel; create it inside the running loop."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        metadata: Metadata = (),
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(target, options=channel_options(retry))
        self._stub = pb_grpc.EngineStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(metadata)

    def generate(
        self,
        model: str,
        *,
        timeout: float | None = None,
        routing_key: str | None = None,
        **params: Unpack[GenerateParams],
    ) -> AsyncStream:
        md = call_metadata(model, routing_key, self._metadata)
        call = self._stub.Generate(
            build_request(model, params), timeout=timeout or self._timeout, metadata=md
        )
        return AsyncStream(call)

    async def complete(
        self,
        model: str,
        *,
        timeout: float | None = None,
        routing_key: str | None = None,
        **params: Unpack[GenerateParams],
    ) -> Completion:
        async with self.generate(model, timeout=timeout, routing_key=routing_key, **params) as s:
            return await s.collect()

    async def list_models(self, *, timeout: float | None = None) -> list[pb.ModelInfo]:
        try:
            answer = await self._stub.ListModels(
                pb.ListModelsRequest(), timeout=timeout or self._timeout, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None
        return list(answer.models)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncTeraClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
