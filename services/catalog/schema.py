"""The catalog's schema. Example: deploy/catalog.example.yaml."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from services.common.priority import Priority

ModelKind = Literal["chat", "completion", "speech"]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in the file is an error, not a no-op


class MaxTokens(Strict):
    default: int | None = Field(None, ge=1)
    max: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _default_within_max(self) -> MaxTokens:
        if self.default and self.max and self.default > self.max:
            raise ValueError(f"default ({self.default}) is above max ({self.max})")
        return self


class Serving(Strict):
    """Where the model's engines are: `addresses` and `dns` are read by the router
    (`tera router --catalog`); `replicas` is how many engines `tera run` starts."""

    replicas: int = Field(1, ge=0)
    addresses: list[str] = Field(default_factory=list)
    dns: str | None = None


class ModelEntry(Strict):
    id: str = Field(min_length=1, pattern=r"^[\x21-\x7e]+$")  # the canonical (HF) name
    aliases: list[str] = Field(default_factory=list)
    kind: ModelKind = "chat"
    weights: Path | None = None
    context_length: int | None = Field(None, ge=16)
    max_tokens: MaxTokens = Field(default_factory=MaxTokens)
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    chat_template: Path | None = None
    # Passed to the engine's vLLM options (dtype, tensor_parallel_size, ...).
    engine: dict[str, Any] = Field(default_factory=dict)
    serving: Serving = Field(default_factory=Serving)
    owned_by: str = "tera"


class Limits(Strict):
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)


class KeyEntry(Strict):
    """A tenant. The key is stored as its SHA-256 (preferred), read from an environment
    variable, or (for trials only) given in clear."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str | None = None
    env: str | None = None
    key: SecretStr | None = None
    models: list[str] | None = None  # allowlist of ids or aliases; None: every model
    limits: Limits = Field(default_factory=Limits)
    # Under overload: the key's share of a model's replicas, in tokens, relative to the
    # other keys' weights, and its class (higher classes go first, lower are shed first).
    weight: float = Field(1.0, gt=0)
    priority: Priority = "standard"

    @model_validator(mode="after")
    def _one_source(self) -> KeyEntry:
        given = [f for f in ("sha256", "env", "key") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of sha256, env or key")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return self

    def digest(self) -> str:
        if self.sha256:
            return self.sha256
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"key {self.name}: environment variable {self.env} is not set")
            return sha256_hex(value)
        assert self.key is not None
        return sha256_hex(self.key.get_secret_value())


class Admin(Strict):
    sha256: str | None = None
    env: str | None = None


class Redis(Strict):
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "tera"
    timeout_s: float = Field(0.05, gt=0)


class Catalog(Strict):
    models: list[ModelEntry] = Field(min_length=1)
    keys: list[KeyEntry] = Field(default_factory=list)
    admin: Admin | None = None
    redis: Redis | None = None
    # Responses name the canonical id; true: the name the client asked for.
    report_alias: bool = False

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelEntry]) -> list[ModelEntry]:
        seen: dict[str, str] = {}
        for model in models:
            for name in [model.id, *model.aliases]:
                if name in seen:
                    raise ValueError(f"the name {name!r} is used twice ({seen[name]}, {model.id})")
                seen[name] = model.id
        return models

    @model_validator(mode="after")
    def _allowlists_name_models(self) -> Catalog:
        names = self.names()
        for key in self.keys:
            unknown = [m for m in key.models or () if m not in names]
            if unknown:
                raise ValueError(f"key {key.name} allows unknown models {unknown}")
        if len({k.name for k in self.keys}) != len(self.keys):
            raise ValueError("key names must be unique")
        return self

    def names(self) -> dict[str, ModelEntry]:
        """Every id and alias, to its model."""
        return {n: m for m in self.models for n in (m.id, *m.aliases)}


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
