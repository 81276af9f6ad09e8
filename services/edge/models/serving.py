"""/v1/models and /v1/models/{id}: the models that exist, each with its state, and the
edge's readiness (every configured model servable)."""

from __future__ import annotations

from typing import Any

from services.catalog import Catalog, ModelEntry
from services.edge.engine_client import EngineClient
from services.edge.errors import OpenAIError, model_not_found
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.tenancy.keys import Tenant

_KINDS = {
    pb.MODEL_KIND_CHAT: "chat",
    pb.MODEL_KIND_COMPLETION: "completion",
    pb.MODEL_KIND_SPEECH: "speech",
}
_STATES = {
    pb.MODEL_STATE_READY: "ready",
    pb.MODEL_STATE_LOADING: "loading",
    pb.MODEL_STATE_UNAVAILABLE: "unavailable",
}
_NO_REPLICA = pb.MODEL_STATE_UNAVAILABLE


def model_json(info: pb.ModelInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by or "tera",
        # Tera extras.
        "kind": _KINDS.get(info.kind, "chat"),
        # Whether it takes requests now; "loading"/"unavailable" ones answer 503.
        "status": _STATES.get(info.state, "ready"),
    }
    if info.max_context_length:
        body["context_length"] = info.max_context_length
    if info.voices:
        body["voices"] = list(info.voices)
    return body


class ModelsServing:
    """Lists the models that exist, with a `status`: with a catalog, its models (and their
    aliases, marked with `alias_of`); without one, every model the router knows (ready,
    loading, or with no replica up just now). A key sees only its allowlist."""

    def __init__(self, client: EngineClient, catalog: Catalog | None) -> None:
        self._client = client
        self._catalog = catalog

    async def list(self, tenant: Tenant) -> dict[str, Any]:
        known = await self._known()
        if self._catalog is None:
            data = [model_json(m) for m in known.values() if tenant.allows(m.id)]
        else:
            data = [
                item
                for entry in self._catalog.models
                for item in _catalog_items(entry, known[entry.id], tenant)
            ]
        return {"object": "list", "data": data}

    async def _known(self) -> dict[str, pb.ModelInfo]:
        """What the router knows, plus catalog models it has no word of (unavailable)."""
        known = {m.id: m for m in await self._client.list_models()}
        for entry in self._catalog.models if self._catalog else ():
            known.setdefault(entry.id, pb.ModelInfo(id=entry.id, state=_NO_REPLICA))
        return known

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Ready when every configured model (the catalog's, else every model the router
        knows, of which there must be one) is servable; also each model's status."""
        try:
            known = await self._known()
        except OpenAIError:
            return False, {}
        states = {m.id: _STATES.get(m.state, "ready") for m in known.values()}
        return bool(states) and all(s == "ready" for s in states.values()), states

    async def retrieve(self, model_id: str, tenant: Tenant) -> dict[str, Any]:
        for item in (await self.list(tenant))["data"]:
            if item["id"] == model_id:
                return item
        raise model_not_found(model_id)


def _catalog_items(entry: ModelEntry, info: pb.ModelInfo, tenant: Tenant) -> list[dict[str, Any]]:
    base = model_json(info)
    base.update(kind=entry.kind, owned_by=entry.owned_by)
    if entry.context_length:
        base["context_length"] = entry.context_length
    items = [base] if tenant.allows(entry.id) else []
    items += [
        {**base, "id": alias, "alias_of": entry.id}
        for alias in entry.aliases
        if tenant.allows(alias, entry.id)
    ]
    return items
