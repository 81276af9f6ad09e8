"""The edge's per-request checks for a generation, run once before any quota is taken.

`admit` decides the effective max_tokens (the catalog's default and maximum, then the
edge's cap), checks n and the model name, and estimates the tokens to reserve. It
returns a frozen value and leaves the validated body as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.catalog import ModelEntry
from services.edge.config import EdgeConfig
from services.edge.errors import bad_request, model_not_found
from services.edge.generation.protocol import SamplingRequest
from services.edge.tenancy.gate import Resolved
from services.tenancy.limits import estimate_tokens


@dataclass(frozen=True)
class Admitted:
    model: str  # canonical: what the router is asked for
    reported: str  # put in the response's `model`
    max_tokens: int | None
    estimated_tokens: int  # reserved against the key's tokens per minute


def admit(
    config: EdgeConfig,
    resolved: Resolved,
    body: SamplingRequest,
    *,
    prompt_chars: int,
    choices: int,
) -> Admitted:
    """Raises the request's first problem as an OpenAI error (400, or 404 for a name)."""
    max_tokens = _catalog_max_tokens(resolved.entry, body.requested_max_tokens)
    n = body.n
    if n is not None and n > config.max_n:
        raise bad_request(f"n must be at most {config.max_n}", param="n")
    cap = config.max_tokens_limit
    if cap is not None and max_tokens is not None and max_tokens > cap:
        raise bad_request(f"max_tokens must be at most {cap}", param="max_tokens")
    if not servable_name(resolved.canonical):
        raise model_not_found(resolved.canonical)
    estimate = estimate_tokens(prompt_chars, max_tokens) * choices
    return Admitted(resolved.canonical, resolved.reported, max_tokens, estimate)


def _catalog_max_tokens(entry: ModelEntry | None, requested: int | None) -> int | None:
    limits = entry.max_tokens if entry else None
    if limits is None:
        return requested
    if requested is None:
        return limits.default
    if limits.max is not None and requested > limits.max:
        raise bad_request(
            f"max_tokens is {requested}, above this model's maximum of {limits.max}",
            param="max_tokens",
        )
    return requested


def servable_name(model: str) -> bool:
    """Model ids are printable ASCII (as Hugging Face's are, and as gRPC metadata needs):
    any other name names no model."""
    return model.isascii() and model.isprintable()
