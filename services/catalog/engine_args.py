"""The engine command line a catalog entry stands for (what `tera engine` is given)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.catalog.schema import ModelEntry


def vllm_engine_args(
    model_dir: Path, cache_dir: Path, *, model_id: str, options: dict[str, Any]
) -> list[str]:
    """Arguments of a vLLM engine process serving one local model folder."""
    return [
        "--model-dir", str(model_dir),
        "--model-id", model_id,
        "--cache-dir", str(cache_dir),
        "--vllm", json.dumps(options),
    ]  # fmt: skip


def speech_engine_args(model_id: str) -> list[str]:
    """Arguments of a Piper speech engine process."""
    return ["--backend", "piper", "--model-id", model_id]


def catalog_engine_args(
    model: ModelEntry, *, base: Path, cache_dir: Path, default_weights: Callable[[], Path]
) -> list[str]:
    """One engine of this model. Relative weights are read from the catalog's folder
    (base); a chat model naming no weights gets default_weights()."""
    if model.kind == "speech":
        return speech_engine_args(model.id)
    weights = (
        model.weights
        if model.weights is None or model.weights.is_absolute()
        else base / model.weights
    )
    if weights is None:
        weights = default_weights()
    options = {"enforce_eager": True, **model.engine}
    if model.context_length:
        options["max_model_len"] = model.context_length
    args = vllm_engine_args(weights, cache_dir, model_id=model.id, options=options)
    for flag, value in (
        ("--tool-call-parser", model.tool_call_parser),
        ("--reasoning-parser", model.reasoning_parser),
        ("--chat-template", model.chat_template),
    ):
        if value is not None:
            args += [flag, str(value)]
    return args
