"""Routes of the Responses API: parse, hand to the serving objects, return."""

from __future__ import annotations

from aiohttp import web

from services.edge.body import parse_body
from services.edge.generation.serving import RequestContext
from services.edge.responses.protocol import ResponseRequest
from services.edge.responses.serving import ResponsesServing
from services.edge.responses.stored import ListQuery, RetrieveQuery, StoredResponses
from services.edge.tenancy.gate import tenant_of

RESPONSES = web.AppKey("responses", ResponsesServing)
STORED = web.AppKey("stored_responses", StoredResponses)


async def create(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ResponseRequest)
    return await request.app[RESPONSES].create(RequestContext.from_http(request), body)


async def retrieve(request: web.Request) -> web.Response:
    tenant, response_id = tenant_of(request).name, request.match_info["response_id"]
    query = RetrieveQuery.model_validate(_retrieve_query(request), strict=False)
    return web.json_response(await request.app[STORED].retrieve(tenant, response_id, query))


def _retrieve_query(request: web.Request) -> dict:
    """include as `include[]=a&include[]=b` (OpenAI's SDKs) or repeated `include=`."""
    fields = ("stream", "starting_after", "include_obfuscation")
    query: dict = {k: request.query[k] for k in fields if k in request.query}
    include = [*request.query.getall("include[]", []), *request.query.getall("include", [])]
    return {**query, "include": include} if include else query


async def delete(request: web.Request) -> web.Response:
    tenant, response_id = tenant_of(request).name, request.match_info["response_id"]
    return web.json_response(await request.app[STORED].delete(tenant, response_id))


async def cancel(request: web.Request) -> web.Response:
    tenant, response_id = tenant_of(request).name, request.match_info["response_id"]
    return web.json_response(await request.app[STORED].cancel(tenant, response_id))


async def input_items(request: web.Request) -> web.Response:
    tenant, response_id = tenant_of(request).name, request.match_info["response_id"]
    fields = ("limit", "order", "after")
    query = ListQuery.model_validate(
        {k: request.query[k] for k in fields if k in request.query}, strict=False
    )
    return web.json_response(await request.app[STORED].input_items(tenant, response_id, query))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create)
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
