"""Builds the edge's aiohttp application and runs it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from services.common.gc_heap import freeze_startup_heap
from services.common.telemetry import instrument_aiohttp_server
from services.edge import middleware
from services.edge.chat.serving import ChatServing
from services.edge.completions.serving import CompletionServing
from services.edge.config import EdgeConfig
from services.edge.engine_client import EngineClient
from services.edge.models.serving import ModelsServing
from services.edge.observe import EdgeMetrics
from services.edge.ops import create_ops_app
from services.edge.prefix import PrefixNamer
from services.edge.responses.backends import build_store
from services.edge.responses.routes import RESPONSES, STORED
from services.edge.responses.serving import ResponsesServing
from services.edge.responses.stored import StoredResponses
from services.edge.routes import (
    ADMIN,
    CHAT,
    COMPLETIONS,
    METRICS,
    MODELS,
    SPEECH,
    USAGE,
    add_routes,
)
from services.edge.speech.serving import SpeechServing
from services.edge.tenancy import setup
from services.tenancy.keys import KeyStore

KEYS = web.AppKey("keys", KeyStore)

log = logging.getLogger("tera.edge")


def create_app(config: EdgeConfig, tracer_provider: Any | None = None) -> web.Application:
    metrics = EdgeMetrics()
    tenancy = setup.build(config, metrics.registry)
    # Outermost first: tracing sees the whole request, the access log sees the final
    # status (after errors become responses), auth runs last before the handler.
    chain = [
        middleware.access(metrics),
        middleware.errors,
        middleware.auth(tenancy.keys),
    ]
    if tracer_provider is not None:
        instrument_aiohttp_server(tracer_provider)  # adds its middleware in front
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=chain)
    app[METRICS] = metrics
    app[USAGE] = tenancy.gate.usage
    app[KEYS] = tenancy.keys
    app[ADMIN] = tenancy.admin

    async def engine_client(app: web.Application) -> AsyncIterator[None]:
        catalog = tenancy.catalog
        known = frozenset(m.id for m in catalog.models) if catalog else frozenset()
        namer = PrefixNamer(config.prefix_tokenizers)
        await asyncio.to_thread(namer.load)  # off the loop: transformers imports slowly
        client = EngineClient(
            config.router,
            models_cache_s=config.models_cache_s,
            known_models=known,
            prefix_namer=namer,
            tls=config.tls,
            grace_s=config.request_timeout_s,
            transport=config.router_transport,
        )
        gate = tenancy.gate
        app[CHAT] = ChatServing(config, client, metrics, gate)
        app[COMPLETIONS] = CompletionServing(config, client, metrics, gate)
        app[MODELS] = ModelsServing(client, tenancy.catalog)
        app[SPEECH] = SpeechServing(config, client, gate)
        store = build_store(
            tenancy.catalog,
            ttl_s=config.responses_ttl_s,
            max_items=config.responses_max_stored,
            db_path=config.responses_db,
        )
        app[RESPONSES] = ResponsesServing(config, client, metrics, gate, store=store)
        app[STORED] = StoredResponses(store)
        yield
        await store.close()
        await client.close()
        await tenancy.close()

    app.cleanup_ctx.append(engine_client)
    add_routes(app)
    return app


async def serve(
    config: EdgeConfig, stop: asyncio.Event, tracer_provider: Any | None = None
) -> None:
    # handler_cancellation: a client that goes away cancels its handler at once, and
    # with it the upstream call and the engine's work.
    app = create_app(config, tracer_provider)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    freeze_startup_heap()  # the app and its clients are built: ready to serve
    runners = [runner]
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        _log_listening(config, bool(app[KEYS]))
        if config.ops_port is not None:
            ops = web.AppRunner(create_ops_app(app), access_log=None)
            await ops.setup()
            runners.append(ops)
            await web.TCPSite(ops, config.ops_host, config.ops_port).start()
            log.info(
                "edge operations (/metrics, /admin/*) on http://%s:%d",
                config.ops_host,
                config.ops_port,
            )
        await stop.wait()
    finally:
        for r in reversed(runners):
            await r.cleanup()
        log.info("edge stopped")


def _log_listening(config: EdgeConfig, keyed: bool) -> None:
    if keyed:
        log.info("edge listening on http://%s:%d/v1", config.host, config.port)
    else:
        log.warning(
            "edge listening on http://%s:%d/v1 with no API keys: loopback only",
            config.host,
            config.port,
        )
