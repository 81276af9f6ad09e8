"""Translates tera.v1 requests into what vLLM takes: a rendered prompt and SamplingParams."""

from __future__ import annotations

import json
from typing import Any

from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

from services.engine.errors import invalid_argument
from services.proto_gen.tera.v1 import engine_pb2 as pb

# Sampling fields that map one to one; unset ones fall back to the model's
# generation_config defaults, as vLLM's own server does.
_OPTIONAL_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "seed",
    "min_tokens",
)


def chat_messages(chat: pb.ChatInput) -> list[dict[str, Any]]:
    """OpenAI-shaped message dicts, as chat templates expect them."""
    return [_message(m) for m in chat.messages]


def _message(m: pb.ChatMessage) -> dict[str, Any]:
    # Most templates only know "system"; OpenAI's "developer" means the same to them.
    role = "system" if m.role == "developer" else m.role
    msg: dict[str, Any] = {"role": role}
    if m.HasField("content"):
        msg["content"] = m.content
    elif m.parts:
        msg["content"] = [{"type": p.type or "text", "text": p.text} for p in m.parts]
    else:
        msg["content"] = ""
    if m.name:
        msg["name"] = m.name
    if m.tool_call_id:
        msg["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        msg["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in m.tool_calls
        ]
    if m.reasoning_content:
        msg["reasoning_content"] = m.reasoning_content
    return msg


def template_kwargs(chat: pb.ChatInput) -> dict[str, Any]:
    if not chat.chat_template_kwargs_json:
        return {}
    try:
        kwargs = json.loads(chat.chat_template_kwargs_json)
    except json.JSONDecodeError as exc:
        raise invalid_argument(
            f"chat_template_kwargs is not valid JSON: {exc}", param="chat_template_kwargs"
        ) from exc
    if not isinstance(kwargs, dict):
        raise invalid_argument(
            "chat_template_kwargs must be an object", param="chat_template_kwargs"
        )
    return kwargs


def check_context(
    prompt_tokens: int, max_tokens: int | None, max_model_len: int, *, prompt_param: str
) -> int:
    """Returns the effective max_tokens, or refuses a request that cannot fit."""
    if prompt_tokens >= max_model_len:
        raise invalid_argument(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt is {prompt_tokens} tokens, leaving no room for a completion. Please "
            "reduce the length of the messages or prompt.",
            param=prompt_param,
        )
    room = max_model_len - prompt_tokens
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise invalid_argument(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the length of the messages or "
            "the completion.",
            param="max_tokens",
        )
    return max_tokens


def sampling_params(
    request: pb.GenerateRequest,
    *,
    max_tokens: int,
    defaults: dict[str, Any],
) -> SamplingParams:
    s = request.sampling
    kwargs: dict[str, Any] = {
        k: v for k, v in defaults.items() if k in _OPTIONAL_SAMPLING or k == "max_tokens"
    }
    kwargs.update({f: getattr(s, f) for f in _OPTIONAL_SAMPLING if s.HasField(f)})
    out = request.output
    return SamplingParams(
        **kwargs,
        n=s.n or 1,
        stop=list(s.stop) or None,
        max_tokens=max_tokens,
        ignore_eos=s.ignore_eos,
        logit_bias=dict(s.logit_bias) or None,
        logprobs=out.top_logprobs if out.logprobs else None,
        skip_special_tokens=out.skip_special_tokens,
        structured_outputs=structured_outputs(request.structured),
        output_kind=RequestOutputKind.DELTA,
    )


def structured_outputs(s: pb.StructuredOutput) -> StructuredOutputsParams | None:
    kind = s.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "choice":
        return StructuredOutputsParams(choice=list(s.choice.values))
    if kind == "json_schema":
        return StructuredOutputsParams(json=s.json_schema)
    return StructuredOutputsParams(**{kind: getattr(s, kind)})
