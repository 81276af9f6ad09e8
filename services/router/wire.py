"""Reads one string field from serialized protobuf bytes without decoding the rest.

The router relays requests as opaque bytes; when a caller leaves out the `tera-model`
metadata, it still has to learn the model. GenerateRequest and SynthesizeRequest both
carry it as field 2 (a top-level string), so a scan of the top-level fields suffices:
each field's tag is read, its value skipped unless it is the one asked for.
"""

from __future__ import annotations

from services.proto_gen.tera.v1 import engine_pb2 as pb

# Protobuf wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
MODEL_FIELD = 2  # GenerateRequest.model and SynthesizeRequest.model


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _skip(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == _VARINT:
        return _varint(data, pos)[1]
    if wire_type == _I64:
        return pos + 8
    if wire_type == _I32:
        return pos + 4
    if wire_type == _LEN:
        length, pos = _varint(data, pos)
        return pos + length
    raise WireError(f"unsupported wire type {wire_type}")  # groups: not in proto3


def string_field(data: bytes, number: int) -> str | None:
    """The last value of top-level string field `number` (protobuf's last-wins rule)."""
    found: str | None = None
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == number and wire_type == _LEN:
            length, start = _varint(data, pos)
            pos = start + length
            if pos > len(data):
                raise WireError("truncated field")
            found = data[start:pos].decode("utf-8", errors="replace")
            continue
        pos = _skip(data, pos, wire_type)
    if pos != len(data):
        raise WireError("truncated field")
    return found


def model_of(request: bytes) -> str:
    """The request's own model field; "" when absent or the bytes do not parse."""
    try:
        return string_field(request, MODEL_FIELD) or ""
    except WireError:
        return ""


def usage_of(method: str, last: bytes | None) -> pb.Usage | None:
    """The usage in a Generate stream's last message (None: not a Generate call, no
    message, or one without usage)."""
    if last is None or not method.endswith("/Generate"):
        return None
    try:
        message = pb.GenerateResponse.FromString(last)
    except Exception:  # an opaque relay: a message it cannot read carries no usage
        return None
    return message.usage if message.HasField("usage") else None
