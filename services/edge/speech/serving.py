"""/v1/audio/speech: audio bytes as they are synthesized, or SSE events with base64."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from aiohttp import web

from services.edge.config import EdgeConfig
from services.edge.engine_client import EngineClient
from services.edge.errors import OpenAIError, model_not_found
from services.edge.generation.admission import servable_name
from services.edge.generation.serving import RequestContext
from services.edge.speech.protocol import SpeechRequest
from services.edge.sse import SSE_HEADERS, frame
from services.edge.tenancy.gate import Gate, tenant_of
from services.proto_gen.tera.v1 import engine_pb2 as pb

# OpenAI bills speech in tokens; Tera's engines count characters in and 20 ms frames of
# audio out, reported in those fields.
AUDIO_FRAME_S = 0.02


class SpeechServing:
    def __init__(self, config: EdgeConfig, client: EngineClient, gate: Gate) -> None:
        self._config = config
        self._client = client
        self._gate = gate

    async def create(self, ctx: RequestContext, body: SpeechRequest) -> web.StreamResponse:
        if not servable_name(body.model):
            raise model_not_found(body.model)
        resolved = self._gate.resolve(ctx.http, body.model)
        async with self._gate.account(ctx.http, ctx.headers, resolved) as account:
            await account.reserve(0)  # requests and concurrency; speech bills no tokens
            stream = self._client.synthesize(
                body.to_proto(ctx.request_id, resolved.canonical),
                timeout_s=self._config.request_timeout_s,
                idle_timeout_s=self._config.stream_idle_timeout_s,
                tenant=tenant_of(ctx.http).name,
            )
            try:
                first = await anext(stream, None)  # errors before audio get a real status
                if body.stream_format == "sse":
                    return await self._sse(ctx, first, stream)
                return await self._audio(ctx, body, first, stream)
            finally:
                await stream.aclose()  # type: ignore[attr-defined]

    async def _audio(
        self,
        ctx: RequestContext,
        body: SpeechRequest,
        first: pb.SynthesizeResponse | None,
        stream: AsyncIterator[pb.SynthesizeResponse],
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={**ctx.response_headers(), "Content-Type": body.content_type}
        )
        response.enable_chunked_encoding()
        await response.prepare(ctx.http)
        message = first
        try:
            while message is not None:
                if message.audio:
                    await response.write(message.audio)
                message = await anext(stream, None)
        except OpenAIError:
            # Headers are sent, so no error response can follow: the connection closes
            # without the final chunk, so no client can take a cut-off file for a whole one.
            if ctx.http.transport is not None:
                ctx.http.transport.close()
            return response
        await response.write_eof()
        return response

    async def _sse(
        self,
        ctx: RequestContext,
        first: pb.SynthesizeResponse | None,
        stream: AsyncIterator[pb.SynthesizeResponse],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={**SSE_HEADERS, **ctx.response_headers()})
        await response.prepare(ctx.http)
        usage = pb.SpeechUsage()
        try:
            message = first
            while message is not None:
                if message.audio:
                    audio = base64.b64encode(message.audio).decode()
                    await response.write(frame({"type": "speech.audio.delta", "audio": audio}))
                if message.HasField("usage"):
                    usage = message.usage
                message = await anext(stream, None)
        except OpenAIError as exc:
            await response.write(frame(exc.body()))
            return response
        await response.write(frame({"type": "speech.audio.done", "usage": _usage(usage)}))
        return response


def _usage(usage: pb.SpeechUsage) -> dict[str, int]:
    output = round(usage.audio_seconds / AUDIO_FRAME_S)
    return {
        "input_tokens": usage.input_characters,
        "output_tokens": output,
        "total_tokens": usage.input_characters + output,
    }
