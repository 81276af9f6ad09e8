"""What the sync and asyncio clients share: call metadata and stream bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from tera_client._gen.tera.v1 import engine_pb2 as pb
from tera_client.errors import IncompleteStreamError, from_rpc_error
from tera_client.tracing import trace_metadata
from tera_client.types import Choice, Completion, Delta, Usage

MODEL = "tera-model"
ROUTING_KEY = "tera-routing-key"

Metadata = Sequence[tuple[str, str]]


def call_metadata(model: str, routing_key: str | None, extra: Metadata) -> list[tuple[str, str]]:
    md = [(MODEL, model), *trace_metadata(), *extra]
    if routing_key:
        md.append((ROUTING_KEY, routing_key))
    return md


class StreamState:
    """Turns response messages into deltas, keeps usage, and decides how a call ended."""

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.cancelled = False
        self._unfinished: set[int] = set()

    def deltas(self, message: pb.GenerateResponse) -> list[Delta]:
        if message.HasField("usage"):
            self.usage = Usage.from_proto(message.usage)
        deltas = [Delta.from_proto(d) for d in message.choices]
        for d in deltas:
            (self._unfinished.discard if d.finish_reason else self._unfinished.add)(d.index)
        return deltas

    def failed(self, error: grpc.RpcError) -> None:
        """Raises the typed error, unless the caller cancelled the call itself."""
        if self.cancelled and error.code() == grpc.StatusCode.CANCELLED:  # type: ignore[attr-defined]
            return
        raise from_rpc_error(error) from None

    def ended(self) -> None:
        if self._unfinished and not self.cancelled:
            raise IncompleteStreamError(f"choices {sorted(self._unfinished)} did not finish")


def collect(deltas: list[Delta], usage: Usage | None) -> Completion:
    choices: dict[int, Choice] = {}
    for d in deltas:
        choices.setdefault(d.index, Choice(d.index)).add(d)
    return Completion([choices[i] for i in sorted(choices)], usage)
