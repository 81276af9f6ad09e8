"""HTTP routes: parse, hand to the serving object, return. No logic lives here."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from services.edge.body import parse_body
from services.edge.chat.protocol import ChatCompletionRequest
from services.edge.chat.serving import ChatServing
from services.edge.completions.protocol import CompletionRequest
from services.edge.completions.serving import CompletionServing
from services.edge.errors import OpenAIError
from services.edge.generation.serving import RequestContext
from services.edge.models.serving import ModelsServing
from services.edge.observe import EdgeMetrics
from services.edge.responses import routes as responses
from services.edge.speech.protocol import SpeechRequest
from services.edge.speech.serving import SpeechServing
from services.edge.tenancy.gate import tenant_of
from services.tenancy.keys import KeyStore
from services.tenancy.usage import UsageLedger

CHAT = web.AppKey("chat", ChatServing)
COMPLETIONS = web.AppKey("completions", CompletionServing)
MODELS = web.AppKey("models", ModelsServing)
METRICS = web.AppKey("metrics", EdgeMetrics)
SPEECH = web.AppKey("speech", SpeechServing)
USAGE = web.AppKey("usage", UsageLedger)
ADMIN = web.AppKey("admin", KeyStore)

# Endpoints of OpenAI's API that Tera does not offer: a clear 404 says so.
NOT_OFFERED = (
    "/v1/embeddings",
    "/v1/images/{tail:.*}",
    "/v1/moderations",
    "/v1/fine_tuning/{tail:.*}",
    "/v1/files{tail:.*}",
    "/v1/batches{tail:.*}",
    "/v1/assistants{tail:.*}",
    "/v1/threads{tail:.*}",
    "/v1/responses/input_tokens",
    "/v1/responses/compact",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, ChatCompletionRequest)
    return await request.app[CHAT].create(RequestContext.from_http(request), body)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, CompletionRequest)
    return await request.app[COMPLETIONS].create(RequestContext.from_http(request), body)


async def speech(request: web.Request) -> web.StreamResponse:
    body = await parse_body(request, SpeechRequest)
    return await request.app[SPEECH].create(RequestContext.from_http(request), body)


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(await request.app[MODELS].list(tenant_of(request)))


async def retrieve_model(request: web.Request) -> web.Response:
    model = request.match_info["model"]
    return web.json_response(await request.app[MODELS].retrieve(model, tenant_of(request)))


async def admin_usage(request: web.Request) -> web.Response:
    """Usage per key and model, for operators (ops port, admin key; see ops.py)."""
    return web.json_response(request.app[USAGE].snapshot())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, or OpenMetrics (with trace-id exemplars) when asked for."""
    registry = request.app[METRICS].registry
    if "application/openmetrics-text" in request.headers.get("Accept", ""):
        body, content_type = openmetrics.generate_latest(registry), openmetrics.CONTENT_TYPE_LATEST
    else:
        body, content_type = generate_latest(registry), CONTENT_TYPE_LATEST
    return web.Response(body=body, headers={"Content-Type": content_type})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness for probes and scripts: 200 once every configured model is servable,
    else 503; either way each model's status."""
    is_ready, models = await request.app[MODELS].readiness()
    body = {"status": "ready" if is_ready else "not_ready", "models": models}
    return web.json_response(body, status=200 if is_ready else 503)


async def not_offered(request: web.Request) -> web.Response:
    raise OpenAIError(404, f"Tera does not offer {request.path}.", code="unknown_url")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
    app.router.add_delete("/v1/models/{model:.+}", not_offered)  # fine-tuned model deletion
    responses.add_routes(app)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    # Stored chat completions (OpenAI's GET/DELETE on these paths): not offered.
    app.router.add_get("/v1/chat/completions", not_offered)
    app.router.add_route("*", "/v1/chat/completions/{tail:.+}", not_offered)
    for path in NOT_OFFERED:
        app.router.add_route("*", path, not_offered)
