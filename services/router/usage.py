"""The usage a Generate stream reports in its last message.

The relay passes messages on as opaque bytes; only the last one of a call is decoded,
once, for what the router accounts after the fact (fair-share charges, cache hits).
"""

from __future__ import annotations

from services.proto_gen.tera.v1 import engine_pb2 as pb


def final_usage(method: str, last: bytes | None) -> pb.Usage | None:
    """The usage in a Generate stream's last message; None for other calls, or when the
    message carries none (a cut stream) or cannot be read."""
    if last is None or not method.endswith("/Generate"):
        return None
    try:
        message = pb.GenerateResponse.FromString(last)
    except Exception:  # an opaque relay: a message it cannot read carries no usage
        return None
    return message.usage if message.HasField("usage") else None
