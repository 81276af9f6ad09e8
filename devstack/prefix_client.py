"""gRPC calls that name their prompt's prefix (tera-prefix-hashes-bin), for the cache
routing tests and bench: stand-in engines tokenize by words, so a caller can too."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.common import metadata, prefix_hash
from services.common.word_tokens import prompt_token_ids
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc


def chat(model: str, turns: Sequence[tuple[str, str]], max_tokens: int = 4) -> pb.GenerateRequest:
    """A chat request of (role, content) turns."""
    return pb.GenerateRequest(
        model=model,
        chat=pb.ChatInput(messages=[pb.ChatMessage(role=r, content=c) for r, c in turns]),
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0),
    )


def call_metadata(request: pb.GenerateRequest, token_ids: Sequence[int] | None = None) -> list:
    """tera-model, and the prefix names of the request (stand-in tokens unless given)."""
    ids = prompt_token_ids(request) if token_ids is None else token_ids
    names = prefix_hash.chunk_hashes(ids)
    return [(metadata.MODEL, request.model), (prefix_hash.METADATA_KEY, prefix_hash.encode(names))]


@dataclass
class Outcome:
    ttft_s: float
    seconds: float
    completion_tokens: int
    cached_tokens: int
    prompt_tokens: int


async def generate(
    stub: pb_grpc.EngineStub, request: pb.GenerateRequest, md: Sequence | None = None
) -> Outcome:
    started = time.monotonic()
    ttft = 0.0
    usage = pb.Usage()
    call = stub.Generate(request, metadata=md or call_metadata(request), timeout=120)
    async for message in call:
        if not ttft:
            ttft = time.monotonic() - started
        if message.HasField("usage"):
            usage = message.usage
    return Outcome(
        ttft,
        time.monotonic() - started,
        usage.completion_tokens,
        usage.cached_tokens,
        usage.prompt_tokens,
    )


def engine_totals(addresses: Sequence[str]) -> list[int]:
    """Calls each engine has admitted so far (which replica served a call: the one whose
    count moved)."""
    return [load.total_requests for load in engine_loads(addresses)]


def engine_loads(addresses: Sequence[str]) -> list[pb.LoadReport]:
    """Each engine's load report, asked of it directly."""
    loads = []
    for address in addresses:
        with grpc.insecure_channel(address) as channel:
            # A vLLM engine busy prefilling on a loaded 2-core host has answered GetLoad
            # after more than 5 s (test_vllm_priority's poll, in a CI run): the bound is
            # for a dead engine only.
            loads.append(pb_grpc.EngineStub(channel).GetLoad(pb.GetLoadRequest(), timeout=30))
    return loads
