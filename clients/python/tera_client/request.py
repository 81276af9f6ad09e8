"""Builds a GenerateRequest from OpenAI-shaped arguments (messages, tools, ...)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from tera_client._gen.tera.v1 import engine_pb2 as pb


class GenerateParams(TypedDict, total=False):
    """What generate() and complete() accept besides the model: a chat (`messages`) or a
    prompt (`prompt`), then OpenAI's parameters by their OpenAI names."""

    messages: Sequence[Mapping[str, Any]]
    prompt: str | Sequence[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    frequency_penalty: float
    presence_penalty: float
    repetition_penalty: float
    seed: int
    min_tokens: int
    ignore_eos: bool
    stop: Sequence[str]
    n: int
    tools: Sequence[Mapping[str, Any]]
    tool_choice: str | Mapping[str, Any]
    parallel_tool_calls: bool
    # {"type": "json_schema", "json_schema": {"schema": {...}}} | {"type": "json_object"}
    # and Tera's: {"type": "regex", "regex": ...} | {"type": "choice", "choices": [...]}
    # | {"type": "grammar", "grammar": ...}
    response_format: Mapping[str, Any]
    reasoning_effort: str
    coalesce_window_ms: int
    request_id: str


_SAMPLING = (
    *("temperature", "top_p", "top_k", "min_p", "seed", "max_tokens", "min_tokens"),
    *("frequency_penalty", "presence_penalty", "repetition_penalty", "ignore_eos"),
)
_MODES = {"auto": pb.ToolChoice.MODE_AUTO, "none": pb.ToolChoice.MODE_NONE}
_MODES["required"] = pb.ToolChoice.MODE_REQUIRED


def build_request(model: str, params: GenerateParams) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        model=model,
        request_id=params.get("request_id", ""),
        coalesce_window_ms=params.get("coalesce_window_ms", 0),
    )
    if "messages" in params:
        request.chat.messages.extend(_message(m) for m in params["messages"])
        request.chat.reasoning_effort = params.get("reasoning_effort", "")
    elif isinstance(params.get("prompt"), str):
        request.prompt.text = params["prompt"]  # type: ignore[assignment]
    elif "prompt" in params:
        request.prompt.token_ids.ids.extend(params["prompt"])  # type: ignore[arg-type]
    else:
        raise ValueError("pass messages (chat) or prompt (completion)")
    for name in _SAMPLING:
        if name in params:
            setattr(request.sampling, name, params[name])  # type: ignore[literal-required]
    request.sampling.stop.extend(params.get("stop", ()))
    request.sampling.n = params.get("n", 0)
    if "tools" in params:
        _tools(request.tools, params)
    if "response_format" in params:
        _structured(request.structured, params["response_format"])
    return request


def _message(m: Mapping[str, Any]) -> pb.ChatMessage:
    message = pb.ChatMessage(role=m["role"], name=m.get("name") or "")
    content = m.get("content")
    if isinstance(content, str):
        message.content = content
    elif content is not None:
        message.parts.extend(
            pb.ContentPart(type=p["type"], text=p.get("text", "")) for p in content
        )
    message.tool_call_id = m.get("tool_call_id") or ""
    message.reasoning_content = m.get("reasoning_content") or ""
    for call in m.get("tool_calls") or ():
        fn = call["function"]
        message.tool_calls.add(id=call.get("id", ""), name=fn["name"], arguments=fn["arguments"])
    return message


def _tools(options: pb.ToolOptions, params: GenerateParams) -> None:
    for tool in params["tools"]:
        fn = tool.get("function", tool)
        options.tools.add(
            name=fn["name"],
            description=fn.get("description", ""),
            parameters_json=json.dumps(fn.get("parameters", {})),
            strict=bool(fn.get("strict", False)),
        )
    choice = params.get("tool_choice", "auto")
    if isinstance(choice, str):
        options.choice.mode = _MODES[choice]
    else:
        options.choice.function_name = choice.get("function", choice)["name"]
    options.parallel_tool_calls = params.get("parallel_tool_calls", True)


def _structured(out: pb.StructuredOutput, fmt: Mapping[str, Any]) -> None:
    kind = fmt["type"]
    if kind == "json_schema":
        out.json_schema = json.dumps(fmt["json_schema"]["schema"])
    elif kind == "json_object":
        out.json_object = True
    elif kind == "regex":
        out.regex = fmt["regex"]
    elif kind == "choice":
        out.choice.values.extend(fmt["choices"])
    elif kind == "grammar":
        out.grammar = fmt["grammar"]
    elif kind != "text":
        raise ValueError(f"unknown response_format type {kind!r}")
