"""Facts about the tera.v1 wire format that both sides of it need, derived from the proto.

The edge renders finish reasons for OpenAI clients and the engine maps vLLM's onto the
enum; both copy the same optional sampling fields. One table each, read off the proto,
so a field or reason added to `engine.proto` reaches both sides at once.
"""

from __future__ import annotations

from services.proto_gen.tera.v1 import engine_pb2 as pb

# Enum value -> OpenAI's `finish_reason` string ("stop", "length", ...); None while the
# choice is still running.
FINISH_REASON_NAMES: dict[int, str | None] = {
    value: name.removeprefix("FINISH_REASON_").lower() if value else None
    for name, value in pb.FinishReason.items()
}
FINISH_REASON_BY_NAME: dict[str, int] = {
    name: value for value, name in FINISH_REASON_NAMES.items() if name is not None
}

# SamplingParams fields with presence (proto3 `optional`) that travel unchanged from
# OpenAI's body to vLLM's request. `max_tokens` is not among them: the edge decides it.
OPTIONAL_SAMPLING_FIELDS: tuple[str, ...] = tuple(
    field.name
    for field in pb.SamplingParams.DESCRIPTOR.fields
    if field.has_presence and field.name != "max_tokens"
)
