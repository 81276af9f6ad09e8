"""/v1/models and /v1/models/{id}: the models the router's replicas serve right now."""

from __future__ import annotations

from typing import Any

from services.edge.engine_client import EngineClient
from services.edge.errors import model_not_found
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
    def __init__(self, client: EngineClient) -> None:
        self._client = client

    async def list(self) -> dict[str, Any]:
        models = await self._client.list_models()
        return {"object": "list", "data": [model_json(m) for m in models]}

    async def retrieve(self, model_id: str) -> dict[str, Any]:
        for info in await self._client.list_models():
            if info.id == model_id:
                return model_json(info)
        raise model_not_found(model_id)
