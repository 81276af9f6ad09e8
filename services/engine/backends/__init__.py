"""Backends host a model; the servicer wraps one behind the tera.v1.Engine service.

A registry maps a backend name to a factory so the server never branches on names, and
heavy imports (vllm, piper) happen only when that backend is chosen.
"""

from __future__ import annotations

import importlib

from services.engine.backends.base import Backend
from services.engine.config import EngineConfig

_FACTORIES = {
    "vllm": "services.engine.backends.vllm_backend:VllmBackend",
    "scripted": "services.engine.backends.scripted:ScriptedBackend",
    "piper": "services.engine.backends.piper_backend:PiperBackend",
}


def create_backend(config: EngineConfig) -> Backend:
    module_name, _, cls_name = _FACTORIES[config.backend].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(config)
