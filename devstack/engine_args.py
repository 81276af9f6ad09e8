"""Engine command lines the harness starts: the default model, speech, and stand-ins."""

from __future__ import annotations

import json
from pathlib import Path

from services.catalog import engine_args as catalog_args
from services.engine.model_prep import DEFAULT_MODEL_ID

SPEECH_MODEL_ID = "rhasspy/piper-en_US-joe-medium"


def vllm_engine_args(
    model_dir: Path,
    cache_dir: Path,
    *,
    model_id: str = DEFAULT_MODEL_ID,
    eager: bool = True,
    **options: object,
) -> list[str]:
    """Arguments of a vLLM engine process serving one local model folder; `options`
    are more of its VllmOptions."""
    return catalog_args.vllm_engine_args(
        model_dir, cache_dir, model_id=model_id, options={"enforce_eager": eager, **options}
    )


def speech_engine_args(model_id: str = SPEECH_MODEL_ID) -> list[str]:
    """Arguments of a Piper speech engine process."""
    return catalog_args.speech_engine_args(model_id)


def scripted_engine_args(model_id: str, **behaviour: object) -> list[str]:
    """Arguments of a stand-in engine process (see ScriptedOptions for the behaviour)."""
    return ["--backend", "scripted", "--model-id", model_id, "--scripted", json.dumps(behaviour)]
