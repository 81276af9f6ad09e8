"""The blocking client: TeraClient(target).generate(...) / .complete(...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Unpack

import grpc

from tera_client._calls import Metadata, StreamState, call_metadata, collect
from tera_client._gen.tera.v1 import engine_pb2 as pb
from tera_client._gen.tera.v1 import engine_pb2_grpc as pb_grpc
from tera_client.errors import from_rpc_error
from tera_client.options import RetryPolicy, channel_options
from tera_client.request import GenerateParams, build_request
from tera_client.types import Completion, Delta, Usage


class Stream:
    """Deltas as they come. cancel() (or leaving a `with` block) ends the call, and the
    engine stops generating; a failed call raises a typed error from the iteration."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._state = StreamState()

    @property
    def usage(self) -> Usage | None:
        return self._state.usage

    def __iter__(self) -> Iterator[Delta]:
        try:
            for message in self._call:
                yield from self._state.deltas(message)
        except grpc.RpcError as error:
            self._state.failed(error)
            return
        self._state.ended()

    def cancel(self) -> None:
        self._state.cancelled = True
        self._call.cancel()

    def collect(self) -> Completion:
        deltas = list(self)
        return collect(deltas, self.usage)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._call.done():
            self.cancel()


class TeraClient:
    """A channel to a Tera router (or engine) with Tera's options and retry policy.

    `timeout` is the default deadline of each call in seconds (None: no deadline);
    pass `channel` to bring your own (TLS, interceptors)."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
        metadata: Metadata = (),
    ) -> None:
        self._channel = channel or grpc.insecure_channel(target, options=channel_options(retry))
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
    ) -> Stream:
        md = call_metadata(model, routing_key, self._metadata)
        call = self._stub.Generate(
            build_request(model, params), timeout=timeout or self._timeout, metadata=md
        )
        return Stream(call)

    def complete(
        self,
        model: str,
        *,
        timeout: float | None = None,
        routing_key: str | None = None,
        **params: Unpack[GenerateParams],
    ) -> Completion:
        with self.generate(model, timeout=timeout, routing_key=routing_key, **params) as s:
            return s.collect()

    def list_models(self, *, timeout: float | None = None) -> list[pb.ModelInfo]:
        try:
            answer = self._stub.ListModels(
                pb.ListModelsRequest(), timeout=timeout or self._timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return list(answer.models)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> TeraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
