"""Load for fault scenarios: every request is classified, none is left unaccounted.

The stand-in engine's answer is known exactly ("tok0 tok1 ..."), so a stream that ends
as if complete but with missing tokens is caught as silently truncated.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conftest import SCRIPTED_MODEL


def expected_text(max_tokens: int) -> str:
    return "".join(f"tok{i} " for i in range(max_tokens))


@dataclass
class Outcome:
    kind: str  # ok | error | truncated
    status: int
    seconds: float
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Tally:
    outcomes: list[Outcome] = field(default_factory=list)
    streams_with_tokens: int = 0  # requests that have received their first token

    @property
    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    def summary(self) -> dict[str, int]:
        c = self.counts
        return {
            "sent": len(self.outcomes),
            "succeeded": c["ok"],
            "failed_with_error": c["error"],
            "silently_truncated": c["truncated"],
        }


async def stream_once(
    session: aiohttp.ClientSession,
    base_url: str,
    max_tokens: int,
    model: str = SCRIPTED_MODEL,
    tally: Tally | None = None,
) -> Outcome:
    """model=SCRIPTED_MODEL checks the exact text; any other model checks completeness
    by finish_reason and [DONE]."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.monotonic()
    try:
        async with session.post(f"{base_url}/chat/completions", json=body) as response:
            headers = dict(response.headers)
            if response.status != 200:
                return Outcome(
                    "error",
                    response.status,
                    time.monotonic() - started,
                    await response.text(),
                    headers,
                )
            lines = []
            async for line in response.content:
                lines.append(line)
                if tally is not None and b'"content":"' in line and b'"content":""' not in line:
                    tally.streams_with_tokens += 1
                    tally = None  # count each request once
            raw = b"".join(lines).decode()
    except aiohttp.ClientError as exc:
        # The connection broke without an error event: a client cannot tell why.
        return Outcome("truncated", 0, time.monotonic() - started, repr(exc))
    expected = expected_text(max_tokens) if model == SCRIPTED_MODEL else None
    return _classify(raw, expected, time.monotonic() - started)


def _classify(raw: str, expected: str | None, seconds: float) -> Outcome:
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    payloads = [json.loads(e) for e in events if e != "[DONE]"]
    if any("error" in p for p in payloads):
        finish = [
            c["finish_reason"]
            for p in payloads
            for c in p.get("choices", [])
            if c.get("finish_reason")
        ]
        # An error must be explicit: the failed choice never reports "stop"/"length".
        kind = "error" if finish and finish[-1] == "error" else "truncated"
        return Outcome(kind, 200, seconds, json.dumps(payloads[-1]))
    text = "".join(c["delta"].get("content") or "" for p in payloads for c in p["choices"])
    finished = [c["finish_reason"] for p in payloads for c in p["choices"] if c["finish_reason"]]
    complete = text == expected if expected is not None else finished in (["stop"], ["length"])
    if events and events[-1] == "[DONE]" and complete:
        return Outcome("ok", 200, seconds)
    return Outcome("truncated", 200, seconds, f"{len(text)} chars, done={events[-1:]}")


async def run_load(
    base_url: str,
    *,
    requests: int,
    concurrency: int,
    max_tokens: int,
    spacing_s: float = 0.0,
    model: str = SCRIPTED_MODEL,
    tally: Tally | None = None,
) -> Tally:
    tally = tally if tally is not None else Tally()
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(i: int) -> None:
            await asyncio.sleep(i * spacing_s)
            async with gate:
                tally.outcomes.append(
                    await stream_once(session, base_url, max_tokens, model, tally)
                )

        await asyncio.gather(*(one(i) for i in range(requests)))
    return tally


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
