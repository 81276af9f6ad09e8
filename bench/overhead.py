"""Part 3: where a request's time goes, hop by hop, from the traces of real requests
(stand-in engine, 1 output token, tracing on): edge parse/validate (HTTP span start to
the gRPC call), edge -> router, router (server span start to the upstream call, i.e.
routing) and router -> engine, as p50 over many requests."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import aiohttp

from bench.common import STAND_IN_MODEL, percentile, stand_in_stack
from tests.observability.otlp_receiver import OtlpReceiver, ReceivedSpan

MODEL = STAND_IN_MODEL
SERVER, CLIENT = 2, 3


def _hops(spans: list[ReceivedSpan]) -> dict[str, float] | None:
    def one(service: str, kind: int) -> ReceivedSpan | None:
        found = [s for s in spans if s.service == service and s.kind == kind]
        return found[0] if len(found) == 1 else None

    http, edge_call = one("tera-edge", SERVER), one("tera-edge", CLIENT)
    router, router_call = one("tera-router", SERVER), one("tera-router", CLIENT)
    engine = one("tera-engine", SERVER)
    if None in (http, edge_call, router, router_call, engine):
        return None
    ms = 1e-6
    return {
        "edge parse/validate": (edge_call.start_ns - http.start_ns) * ms,  # type: ignore[union-attr]
        "edge -> router": (router.start_ns - edge_call.start_ns) * ms,  # type: ignore[union-attr]
        "router routing": (router_call.start_ns - router.start_ns) * ms,  # type: ignore[union-attr]
        "router -> engine": (engine.start_ns - router_call.start_ns) * ms,  # type: ignore[union-attr]
    }


async def _requests(base_url: str, trace_ids: list[str]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 1,
        "stream": True,
    }
    async with aiohttp.ClientSession() as session:
        for trace_id in trace_ids:
            headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
            async with session.post(
                f"{base_url}/chat/completions", json=body, headers=headers
            ) as r:
                await r.read()


def run(results: Path, requests: int = 200) -> dict:
    with OtlpReceiver() as receiver:
        stack = stand_in_stack(results, {"tokens_per_second": 0}, env=receiver.env)
        plan = stack.plan
        try:
            trace_ids = [secrets.token_hex(16) for _ in range(requests)]
            asyncio.run(_requests(plan.base_url, trace_ids[:20]))  # warm-up, not counted
            asyncio.run(_requests(plan.base_url, trace_ids[20:]))
            services = {"tera-edge", "tera-router", "tera-engine"}
            hops = [
                h
                for t in trace_ids[20:]
                if (h := _hops(receiver.wait_for(t, services, timeout_s=30)))
            ]
        finally:
            stack.stop()
    names = list(hops[0]) if hops else []
    return {
        "requests": len(hops),
        "p50_ms": {n: percentile([h[n] for h in hops], 50) for n in names},
    }
