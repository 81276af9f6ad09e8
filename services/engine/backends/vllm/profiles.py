"""Chat profiles: the model ids one set of loaded weights answers to, each with its own
tool-call/reasoning parsers and chat template (see ModelVariant).

Parsers are resolved at startup, so an unknown name stops the engine with a clear error
instead of failing the first request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.parser import Parser, ParserManager
from vllm.v1.engine.async_llm import AsyncLLM

from services.engine.backends.vllm.parsing import CONSTRAINED_ONLY
from services.engine.config import EngineConfig, ModelVariant


@dataclass(frozen=True)
class ChatProfile:
    model_id: str
    parser_cls: type[Parser]
    has_reasoning_parser: bool
    chat_template: str | None = None


def build_profiles(config: EngineConfig, engine: AsyncLLM) -> dict[str, ChatProfile]:
    """The configured model id first, then its variants, by model id."""
    main = ModelVariant(
        model_id=config.model_id,
        tool_call_parser=config.tool_call_parser,
        reasoning_parser=config.reasoning_parser,
        chat_template=config.chat_template,
    )
    tokenizer = engine.renderer.get_tokenizer()
    return {
        v.model_id: build_profile(
            v.model_id,
            tokenizer=tokenizer,
            model_config=engine.model_config,
            tool_call_parser=v.tool_call_parser,
            reasoning_parser=v.reasoning_parser,
            chat_template=v.chat_template.read_text() if v.chat_template else None,
        )
        for v in [main, *config.variants]
    }


def build_profile(
    model_id: str,
    *,
    tokenizer: Any,
    model_config: Any,
    tool_call_parser: str | None,
    reasoning_parser: str | None,
    chat_template: str | None,
) -> ChatProfile:
    try:
        parser_cls = ParserManager.get_parser(
            tool_parser_name=tool_call_parser or CONSTRAINED_ONLY,
            reasoning_parser_name=reasoning_parser,
            enable_auto_tools=True,
            model_name=model_id,
            is_harmony=model_config.hf_config.model_type == "gpt_oss",
            tokenizer=tokenizer,
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(
            f"model {model_id}: cannot use tool_call_parser={tool_call_parser!r} / "
            f"reasoning_parser={reasoning_parser!r}: {exc}"
        ) from exc
    assert parser_cls is not None
    return ChatProfile(model_id, parser_cls, reasoning_parser is not None, chat_template)


def needs_parsing(profile: ChatProfile, req: ChatCompletionRequest) -> bool:
    return profile.has_reasoning_parser or bool(req.tools and req.tool_choice != "none")
