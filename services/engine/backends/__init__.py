"""Backends host a model; the servicer wraps one behind the tera.v1.Engine service.

BACKENDS is the one list of backend names: config validation and the CLI's choices read
it, and the server builds through it, so nothing branches on names. Each entry names
its class as "module:Class", imported only when chosen (vllm and piper are heavy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Types only: config imports this module to check names, and must stay light.
if TYPE_CHECKING:
    from services.engine.backends.base import Backend
    from services.engine.config import EngineConfig

BACKENDS: dict[str, str] = {
    "vllm": "services.engine.backends.vllm.backend:VllmBackend",
    "scripted": "services.engine.backends.scripted:ScriptedBackend",
    "piper": "services.engine.backends.piper_backend:PiperBackend",
}


def create_backend(config: EngineConfig) -> Backend:
    module_name, _, cls_name = BACKENDS[config.backend].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(config)
