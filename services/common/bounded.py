"""Error text that never grows with the request.

A message that echoes user input (a 100,000-entry logit_bias, a megabyte grammar, a
huge model name) must not carry that input along unbounded: in gRPC the message and
trailers travel as HTTP/2 headers, and one over the peer's metadata limit turns a bad
request into RESOURCE_EXHAUSTED (a 429 at the edge) with transport internals in its
text. Every hop bounds what it sends: fragments of input where they are quoted, and
whole messages and trailer values where they leave a process.
"""

from __future__ import annotations

from collections.abc import Iterable

ELLIPSIS = "…"
# A quoted fragment of the caller's input (a model name, a key, a value).
MAX_INPUT_CHARS = 200
# A whole error message, whatever it quotes.
MAX_MESSAGE_CHARS = 1024
# One trailer value (a `param` path, a retry delay).
MAX_TRAILER_CHARS = 200


def clip(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    """text, cut to at most `limit` characters, the last an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def clip_message(text: str) -> str:
    return clip(text, MAX_MESSAGE_CHARS)


def clip_trailers(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((key, clip(value, MAX_TRAILER_CHARS)) for key, value in pairs)
