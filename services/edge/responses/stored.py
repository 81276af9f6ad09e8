"""GET/DELETE /v1/responses/{id}, its input_items and cancel: reads of the store, scoped
to the calling key."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from services.edge.errors import OpenAIError
from services.edge.generation.protocol import OpenAIModel
from services.edge.responses.protocol import LOGPROBS, check_includes
from services.edge.responses.serving import not_found
from services.edge.responses.store import ResponseStore, StoredResponse


class ListQuery(OpenAIModel):
    limit: int = Field(20, ge=1, le=100)
    order: str = Field("desc", pattern="^(asc|desc)$")
    after: str | None = None


class RetrieveQuery(OpenAIModel):
    """GET /v1/responses/{id}'s query. `stream` replays a background response's events;
    starting_after and include_obfuscation only shape that replay."""

    include: list[str] | None = None
    stream: bool = False
    starting_after: int | None = None
    include_obfuscation: bool | None = None

    @field_validator("include")
    @classmethod
    def _known_includes(cls, v: list[str] | None) -> list[str] | None:
        return check_includes(v)

    @field_validator("stream")
    @classmethod
    def _no_replay(cls, v: bool) -> bool:
        if v:
            raise ValueError(
                "streaming a stored response replays a background response's events, "
                "and Tera does not offer background mode"
            )
        return v


class StoredResponses:
    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    async def _get(self, tenant: str, response_id: str) -> StoredResponse:
        record = await self.store.get(tenant, response_id)
        if record is None:
            raise not_found(response_id)
        return record

    async def retrieve(self, tenant: str, response_id: str, query: RetrieveQuery) -> dict[str, Any]:
        response = (await self._get(tenant, response_id)).response
        return response if LOGPROBS in (query.include or ()) else _without_logprobs(response)

    async def delete(self, tenant: str, response_id: str) -> dict[str, Any]:
        if not await self.store.delete(tenant, response_id):
            raise not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def cancel(self, tenant: str, response_id: str) -> dict[str, Any]:
        await self._get(tenant, response_id)
        raise OpenAIError(
            400,
            "Only background responses can be cancelled, and Tera does not offer "
            "background mode: this response has already finished.",
            code="not_cancellable",
        )

    async def input_items(self, tenant: str, response_id: str, query: ListQuery) -> dict[str, Any]:
        """This response's input items (its own, not earlier turns'), paginated by id."""
        items = list((await self._get(tenant, response_id)).input)
        if query.order == "desc":
            items.reverse()
        if query.after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(query.after) + 1 :] if query.after in ids else []
        page = items[: query.limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else "",
            "last_id": page[-1]["id"] if page else "",
            "has_more": len(items) > len(page),
        }


def _without_logprobs(response: dict[str, Any]) -> dict[str, Any]:
    """The response as a retrieve without include=[logprobs] sees it: a stored record keeps
    the logprobs its create asked for; they are an extra field, shown only on request."""

    def part(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "logprobs": []} if p.get("type") == "output_text" else p

    def item(i: dict[str, Any]) -> dict[str, Any]:
        if i.get("type") != "message":
            return i
        return {**i, "content": [part(p) for p in i.get("content", [])]}

    return {**response, "output": [item(i) for i in response.get("output", [])]}
