"""Translates tera.v1 requests into vLLM's own OpenAI request models.

Building vLLM's ChatCompletionRequest/CompletionRequest (rather than SamplingParams by
hand) gives us exactly vLLM's semantics: generation_config defaults, structured outputs
from response_format, tool_choice constraints applied by its parsers, and its errors.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMClientError

from services.common.wire import OPTIONAL_SAMPLING_FIELDS
from services.engine.errors import invalid_argument
from services.proto_gen.tera.v1 import engine_pb2 as pb

_TOOL_MODES = {
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_REQUIRED: "required",
}


def chat_request(request: pb.GenerateRequest) -> ChatCompletionRequest:
    body = _sampling_fields(request)
    body["messages"] = [_message(m) for m in request.chat.messages]
    body["skip_special_tokens"] = request.output.skip_special_tokens
    if request.output.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.output.top_logprobs
    if request.tools.tools:
        body.update(_tools(request.tools))
    kwargs = template_kwargs(request.chat)
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    if request.chat.reasoning_effort:
        body["reasoning_effort"] = request.chat.reasoning_effort
    return _validate(ChatCompletionRequest, body)


def completion_request(request: pb.GenerateRequest) -> CompletionRequest:
    body = _sampling_fields(request)
    prompt = request.prompt
    body["prompt"] = (
        list(prompt.token_ids.ids) if prompt.WhichOneof("prompt") == "token_ids" else prompt.text
    )
    body["skip_special_tokens"] = request.output.skip_special_tokens
    if request.output.logprobs:
        body["logprobs"] = request.output.top_logprobs
    return _validate(CompletionRequest, body)


def _validate(model: type[Any], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        raise invalid_argument(first.get("msg", "invalid request"), param=param or None) from exc
    except VLLMClientError as exc:
        raise invalid_argument(str(exc), param=getattr(exc, "parameter", None)) from exc


def _sampling_fields(request: pb.GenerateRequest) -> dict[str, Any]:
    s = request.sampling
    body: dict[str, Any] = {
        "model": request.model or "default",
        "stream": True,
        "n": s.n or 1,
        "ignore_eos": s.ignore_eos,
    }
    body.update({f: getattr(s, f) for f in OPTIONAL_SAMPLING_FIELDS if s.HasField(f)})
    if s.stop:
        body["stop"] = list(s.stop)
    if s.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in s.logit_bias.items()}
    structured = _structured(request.structured)
    if structured is not None:
        body["structured_outputs"] = structured
    return body


def _structured(s: pb.StructuredOutput) -> dict[str, Any] | None:
    kind = s.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "json_schema":
        return {"json": _json(s.json_schema, "response_format.json_schema.schema")}
    if kind == "choice":
        return {"choice": list(s.choice.values)}
    return {kind: getattr(s, kind)}


def _tools(options: pb.ToolOptions) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description or None,
                "parameters": _json(t.parameters_json, "tools.function.parameters"),
                "strict": t.strict or None,
            },
        }
        for t in options.tools
    ]
    choice = options.choice
    if choice.WhichOneof("choice") == "function_name":
        tool_choice: Any = {"type": "function", "function": {"name": choice.function_name}}
    else:
        tool_choice = _TOOL_MODES[choice.mode]
    return {
        "tools": tools,
        "tool_choice": tool_choice,
        "parallel_tool_calls": options.parallel_tool_calls,
    }


def _json(text: str, param: str) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise invalid_argument(f"not valid JSON: {exc}", param=param) from exc


def _message(m: pb.ChatMessage) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": m.role}
    if m.HasField("content"):
        msg["content"] = m.content
    elif m.parts:
        msg["content"] = [{"type": "text", "text": p.text} for p in m.parts]
    else:
        msg["content"] = None if m.tool_calls else ""
    if m.name:
        msg["name"] = m.name
    if m.tool_call_id:
        msg["tool_call_id"] = m.tool_call_id
    if m.tool_calls:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.reasoning_content:
        msg["reasoning"] = m.reasoning_content
    return msg


def template_kwargs(chat: pb.ChatInput) -> dict[str, Any]:
    if not chat.chat_template_kwargs_json:
        return {}
    kwargs = _json(chat.chat_template_kwargs_json, "chat_template_kwargs")
    if not isinstance(kwargs, dict):
        raise invalid_argument(
            "chat_template_kwargs must be an object", param="chat_template_kwargs"
        )
    return kwargs


def check_context(
    prompt_tokens: int, max_tokens: int | None, max_model_len: int, *, prompt_param: str
) -> int:
    """Returns the effective max_tokens, or refuses a request that cannot fit.

    vLLM's own server silently shortens max_tokens to fit; OpenAI answers 400, and so
    do we: a caller asking for more than fits should know before any work is queued.
    """
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
