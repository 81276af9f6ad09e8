"""/v1/models and /v1/models/{id}: the models the router's replicas serve right now."""

from __future__ import annotations

from typing import Any

from services.catalog import Catalog, ModelEntry
from services.edge.engine_client import EngineClient
from services.edge.errors import model_not_found
from services.edge.tenancy.keys import Tenant
from services.proto_gen.tera.v1 import engine_pb2 as pb

_KINDS = {
    pb.MODEL_KIND_CHAT: "chat",
    pb.MODEL_KIND_COMPLETION: "completion",
    pb.MODEL_KIND_SPEECH: "speech",
}


def model_json(info: pb.ModelInfo) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": info.id,
        "object": "model",
        "created": info.created,
        "owned_by": info.owned_by or "tera",
        # Tera extras.
        "kind": _KINDS.get(info.kind, "chat"),
    }
    if info.max_context_length:
        body["context_length"] = info.max_context_length
    if info.voices:
        body["voices"] = list(info.voices)
    return body


class ModelsServing:
    """Lists what is servable now: with a catalog, its models (and their aliases, marked
    with `alias_of`) that have at least one serving replica; without one, whatever the
    replicas serve. A key sees only the models on its allowlist."""

    def __init__(self, client: EngineClient, catalog: Catalog | None) -> None:
        self._client = client
        self._catalog = catalog

    async def list(self, tenant: Tenant) -> dict[str, Any]:
        served = {m.id: m for m in await self._client.list_models()}
        if self._catalog is None:
            data = [model_json(m) for m in served.values() if tenant.allows(m.id)]
        else:
            data = [
                item
                for entry in self._catalog.models
                if entry.id in served
                for item in _catalog_items(entry, served[entry.id], tenant)
            ]
        return {"object": "list", "data": data}

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
