"""A stand-in model with scripted behaviour, for fault tests and the relay benchmark.

It speaks the real engine contract through the real servicer; only the tokens are fake:
every choice emits "tok0 tok1 ..." (see scripted_text.py) at a configured rate, can
continue a cut stream token-exactly, and can fail, hang or start slowly on cue, as a
real replica might.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator

import grpc

from services.common.priority import DEFAULT_RANK
from services.common.word_tokens import prompt_token_ids
from services.engine.backends.base import Backend, BackendLoad
from services.engine.backends.scripted_cache import SimulatedPrefixCache
from services.engine.backends.scripted_markup import MarkupParser, Parsed
from services.engine.backends.scripted_text import ChoiceText, TokenTape
from services.engine.config import EngineConfig
from services.engine.errors import EngineError, invalid_argument
from services.engine.prefix_cache import PrefixCacheFeed
from services.engine.truncation import drop_oldest_turn, fits
from services.proto_gen.tera.v1 import engine_pb2 as pb

# Float error allowed when a time is turned into a tick number (ticks are step_ms apart).
_TICK_SLACK = 1e-6


def shared_tick(now: float, next_due: float, step_s: float) -> float:
    """When a stream on the shared clock wakes next: the clock's next tick, or a later one
    if its next token is due after that. Not now + step rounded up: a wake-up a moment late
    would skip a tick, and a stream whose rate matches the step (a GPU step gives every
    running stream a token) would get two tokens every other step. Counted in tick numbers:
    a tick's time over the step is not always whole in floats (0.07 / 0.01 > 7), and
    rounding that up skipped the tick in one message of four."""
    tick = math.floor(now / step_s + _TICK_SLACK) + 1
    due = math.ceil(next_due / step_s - _TICK_SLACK)
    return max(tick, due) * step_s


class ScriptedBackend(Backend):
    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self._script = config.scripted
        self._running = 0
        self._requests_seen = 0
        self._created = int(time.time())
        self._cache = (
            SimulatedPrefixCache(
                capacity_chunks=self._script.prefix_cache_chunks,
                prefill_s_per_token=self._script.prefill_ms_per_token / 1000,
            )
            if self._script.prefix_cache_chunks
            else None
        )

    def prefix_cache(self) -> PrefixCacheFeed | None:
        return self._cache.feed if self._cache else None

    async def start(self) -> None:
        await asyncio.sleep(self._script.startup_delay_s)

    async def stop(self) -> None:
        pass

    def models(self) -> list[pb.ModelInfo]:
        return [
            pb.ModelInfo(
                id=self._config.model_id,
                kind=pb.MODEL_KIND_CHAT,
                max_context_length=self._config.max_context_length,
                created=self._created,
                owned_by="tera",
            )
        ]

    def load(self) -> BackendLoad:
        return BackendLoad(running=self._running)

    async def generate(
        self, request: pb.GenerateRequest, *, priority: int = DEFAULT_RANK
    ) -> AsyncIterator[pb.GenerateResponse]:
        # The stand-in streams every call at once: a class changes nothing here.
        if self._script.exit_on_request:
            os._exit(3)  # a crash on cue, for the supervisor's tests
        self._requests_seen += 1
        self._running += 1
        try:
            async for response in self._script_stream(request):
                yield response
        finally:
            self._running -= 1

    async def _script_stream(
        self, request: pb.GenerateRequest
    ) -> AsyncIterator[pb.GenerateResponse]:
        script = self._script
        if script.hang:
            await asyncio.Event().wait()
        await asyncio.sleep(script.first_token_delay_s)
        s = request.sampling
        max_tokens = s.max_tokens if s.HasField("max_tokens") else script.default_max_tokens
        self._truncate(request, max_tokens)
        cached = await self._cache.prefill(prompt_token_ids(request)) if self._cache else 0
        if script.fail_before_first or self._requests_seen <= script.fail_first_requests:
            raise EngineError(grpc.StatusCode.INTERNAL, "scripted failure before first token")
        if _prompt_tokens(request) + max_tokens > self._config.max_context_length:
            raise invalid_argument(
                f"This model's maximum context length is {self._config.max_context_length} tokens.",
                param="max_tokens",
            )
        tape = TokenTape(script.token_text, script.bytes_per_token, script.pieces)
        gen = _Generation(
            request, tape, script.reasoning_tokens, markup=script.markup, ids=script.token_ids
        )
        gen.cached_tokens = cached
        start = gen.resume(request.continuation)
        if gen.done(max_tokens):
            if start:  # the cut came after the last token: only usage is due
                yield gen.message(start, start, max_tokens, last=True)
            return  # nothing asked for (max_tokens 0): an empty, complete stream
        rate, step_s = script.tokens_per_second, script.step_ms / 1000
        loop = asyncio.get_running_loop()
        started = loop.time()
        if script.shared_steps:
            # The stream joins the step under way, as a request joins a GPU's running
            # batch: its tokens fall due on ticks. Counted from its own start instead, a
            # stream started just after a tick had its token due a moment after each
            # tick, and a wake-up later than that moment sent two.
            started = math.floor(started / step_s + _TICK_SLACK) * step_s
        i = start
        while not gen.done(max_tokens):
            # Everything due by now goes in one message (at most one wake-up per step),
            # so the stand-in keeps its rate without a timer per token.
            due = max_tokens if rate <= 0 else start + int((loop.time() - started) * rate) + 1
            end = min(max(due, i + 1), max_tokens)
            fail = script.fail_after_tokens is not None and end - start > script.fail_after_tokens
            if fail:
                end = start + script.fail_after_tokens  # type: ignore[operator]
            if i < script.reasoning_tokens:  # no message mixes reasoning and answer
                end = min(end, script.reasoning_tokens)
            end = gen.advance(i, end)
            if end > i:
                yield gen.message(i, end, max_tokens, last=gen.done(max_tokens))
            if fail and not gen.done(max_tokens):
                raise EngineError(
                    grpc.StatusCode.INTERNAL,
                    f"scripted failure after {script.fail_after_tokens} tokens",
                )
            i = end
            if rate > 0 and not gen.done(max_tokens):
                now = loop.time()
                if script.shared_steps:
                    wake = shared_tick(now, started + (i - start) / rate, step_s)
                else:
                    wake = max(started + (i - start) / rate, now + step_s)
                await asyncio.sleep(wake - loop.time())
            elif rate <= 0:
                await asyncio.sleep(0)

    def _truncate(self, request: pb.GenerateRequest, max_tokens: int) -> None:
        """truncation "auto": drops the oldest turns until the request fits, as vLLM's
        backend does with real token counts."""
        if request.WhichOneof("input") != "chat" or not request.chat.drop_oldest_to_fit:
            return
        context = self._config.max_context_length
        while not fits(_prompt_tokens(request), max_tokens, context):
            if not drop_oldest_turn(request.chat):
                return  # cannot be shortened: refused below as too long


class _Generation:
    """Every choice of one request: the same text, so they advance together."""

    def __init__(
        self,
        request: pb.GenerateRequest,
        tape: TokenTape,
        reasoning: int,
        *,
        markup: bool,
        ids: bool,
    ) -> None:
        self._request = request
        self._tape = tape
        self._reasoning = reasoning  # the first tokens that are reasoning
        self._ids = ids
        self.cached_tokens = 0  # prompt tokens the (simulated) prefix cache held
        n = request.sampling.n or 1
        self._choices = [ChoiceText(tape, request.sampling.stop) for _ in range(n)]
        self._parsers = [MarkupParser() for _ in range(n)] if markup else None

    def resume(self, continuation: pb.Continuation) -> int:
        """Replays what the caller already has; returns the position to go on from."""
        done = {p.index: len(p.token_ids) for p in continuation.choices}
        if not done:
            return 0
        m = done.get(0, 0)
        for p in continuation.choices:
            if list(p.token_ids) != list(range(m)) or p.index >= len(self._choices):
                raise EngineError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"continuation of choice {p.index} is not this model's output",
                )
        self.advance(0, m)
        for c in range(len(self._choices)):
            self._take(c, final=False)  # replayed through the parsers; the caller has it
        return m

    def advance(self, i: int, end: int) -> int:
        """Generates tokens i..end-1, or up to a stop string; returns the new position."""
        while i < end and not self._choices[0].stopped:
            for choice in self._choices:
                choice.step()
            i += 1
        return i

    def done(self, max_tokens: int) -> bool:
        first = self._choices[0]
        return first.stopped or first.position >= max_tokens

    def message(self, i: int, end: int, max_tokens: int, *, last: bool) -> pb.GenerateResponse:
        flush = last or end == self._reasoning  # held-back bytes go out at the boundary
        parsed_all = [self._take(c, flush=flush, final=last) for c in range(len(self._choices))]
        stopped = self._choices[0].stopped
        finish = pb.FINISH_REASON_STOP if stopped else pb.FINISH_REASON_LENGTH
        if stopped and self._parsers and self._parsers[0].calls:
            finish = pb.FINISH_REASON_TOOL_CALLS  # as vLLM's, when the answer made calls
        thinking = i < self._reasoning  # the loop never lets a message straddle the end
        output = self._request.output
        response = pb.GenerateResponse()
        for c, parsed in enumerate(parsed_all):
            reasoning, content = parsed.reasoning, parsed.content
            if thinking:  # the first reasoning_tokens are reasoning, whatever their text
                reasoning, content = reasoning + content, ""
            delta = response.choices.add(
                index=c,
                text=content,
                reasoning_text=reasoning,
                tool_calls=parsed.calls,
                num_tokens=end - i,
                token_ids=range(i, end) if self._ids else (),
                finish_reason=finish if last else 0,
            )
            if output.logprobs:
                delta.logprobs.extend(self._logprob(j, output.top_logprobs) for j in range(i, end))
        if last:
            position = self._choices[0].position
            response.usage.CopyFrom(
                pb.Usage(
                    prompt_tokens=_prompt_tokens(self._request),
                    completion_tokens=len(self._choices) * position,
                    cached_tokens=self.cached_tokens,
                    reasoning_tokens=len(self._choices) * min(position, self._reasoning),
                )
            )
        return response

    def _take(self, c: int, *, final: bool, flush: bool = False) -> Parsed:
        text = self._choices[c].take(final=final or flush)
        return self._parsers[c].feed(text, final=final) if self._parsers else Parsed(text)

    def _logprob(self, j: int, top: int) -> pb.TokenLogprob:
        """Token j's made-up log-probability (it cycles 0, -0.25, -0.5, -0.75), with `top`
        alternatives: itself first, then lower-ranked "alt" tokens, as a real engine
        lists them."""
        raw = self._tape.token(j)
        token, logprob = raw.decode(errors="replace"), -0.25 * (j % 4)
        alternatives = [pb.TopLogprob(token=token, logprob=logprob, bytes=raw)]
        for k in range(1, top):
            alt = f"alt{k}"
            alternatives.append(pb.TopLogprob(token=alt, logprob=logprob - k, bytes=alt.encode()))
        return pb.TokenLogprob(token=token, logprob=logprob, bytes=raw, top=alternatives[:top])


def _prompt_tokens(request: pb.GenerateRequest) -> int:
    if request.WhichOneof("input") == "chat":
        return sum(len((m.content or "").split()) + 4 for m in request.chat.messages)
    return len(request.prompt.text.split()) or len(request.prompt.token_ids.ids)
