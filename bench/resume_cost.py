"""Part: what being resumable costs the relay when nothing fails (issue 13 allows <= 3 %).

Three stacks (edge + router + one stand-in engine) run side by side, alike but for:
- "on": resume on (the default: every relayed message is kept, as bytes, for a
  continuation), deltas with token ids;
- "off": `resume.max_resumes: 0`, deltas with token ids (the proto change alone);
- "before": resume off and deltas without token ids, as before issue 13.
Windows of the same load (streams x per-stream rate, set above what the relay carries on
this machine, so tokens/s is the whole stack's capacity) run in blocks of on, off,
before, before, off, on, so drift on the machine falls on all alike; the stacks' start
order is rotated over the blocks (the stack started first ran ~4 % faster here,
whatever its setting). Reported per block and as the median over blocks: the ratios
on/off (keeping messages), off/before (the token ids) and on/before (the whole change)
of streamed tokens/s and of the router's CPU seconds per 1,000 tokens.

The ratios carry the machine's noise (a few % per window on a shared 2-core box), so
the part also times what resume adds to the happy path, `Journal.keep` on every relayed
message, in process over messages shaped like the load's, beside the router's measured
CPU per 1,000 tokens with resume off; and gives the bytes the token ids add to a message.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import uvloop

from bench.common import STAND_IN_MODEL
from bench.relay import STEP_MS, StepResult, _short_requests, _step
from devstack.engine_args import scripted_engine_args
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.resume import Journal

STREAMS = 64
RATE = 800.0  # tokens/s per stream: 51,200 offered, above what the relay carries here
BLOCKS = 6  # blocks of 6 windows of relay.STREAM_SECONDS; a multiple of 3 (start orders)
# Arm -> (router resume settings, whether the engine's deltas carry token ids).
ARMS = {"on": ({}, True), "off": ({"max_resumes": 0}, True), "before": ({"max_resumes": 0}, False)}
WINDOWS = ("on", "off", "before", "before", "off", "on")
RATIOS = (("on", "off"), ("off", "before"), ("on", "before"))


def _stack(results: Path, name: str, arm: str) -> Stack:
    resume, ids = ARMS[arm]
    logs = results / f"resume-cost-{name}"
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / "router.yaml"
    config.write_text(json.dumps({"resume": resume}))
    behaviour = {
        "tokens_per_second": RATE,
        "step_ms": STEP_MS,
        "token_text": "t{i}@{t} ",
        "token_ids": ids,
    }
    plan = StackPlan(
        router_args=["--config", str(config)],
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=[
            *scripted_engine_args(STAND_IN_MODEL, **behaviour),
            *("--coalesce-window-ms", "0", "--max-in-flight", "4096"),
            *("--max-context-length", "1000000"),
        ],
        model_ids=[STAND_IN_MODEL],
        log_dir=logs,
    )
    return Stack(plan).start(timeout_s=60)


def run(results: Path, streams: int = STREAMS, rate: float = RATE, blocks: int = BLOCKS) -> dict:
    windows: list[tuple[str, StepResult]] = []
    block_rows: list[dict] = []
    arms = list(ARMS)
    for shift in range(3):  # each arm's stack started first for a third of the blocks
        order = arms[shift:] + arms[:shift]
        part = _run_blocks(results, order, streams, rate, blocks // 3)
        size = len(WINDOWS)
        block_rows += [
            {"started_first": order[0], **_block(part[size * b : size * (b + 1)])}
            for b in range(blocks // 3)
        ]
        windows += part
    router_off_ms = statistics.median(w.router_cpu_per_1k for n, w in windows if n == "off")
    tokens_per_message = max(1, round(rate * STEP_MS / 1000))
    keep_ms = _keep_ms_per_1k_tokens(tokens_per_message)
    summary: dict = {
        "streams": streams,
        "rate_per_stream": rate,
        "windows": len(windows),
        "errors": sum(w.errors for _, w in windows),
    }
    for a, b in RATIOS:
        for figure in ("tokens_per_s", "router_cpu_per_1k"):
            key = f"{figure}_{a}_{b}"
            summary[key] = round(statistics.median(r[key] for r in block_rows), 4)
            summary[f"{key}_pooled"] = round(
                _pooled(windows, a, figure) / _pooled(windows, b, figure), 4
            )
    return {
        **summary,
        "router_cpu_ms_per_1k_off": round(1000 * router_off_ms, 3),
        "journal_keep_ms_per_1k": round(keep_ms, 4),
        "journal_keep_share_of_router_cpu": round(keep_ms / (1000 * router_off_ms), 4),
        # The bytes the token ids add: the load's messages, and a real model's (4 tokens
        # of ~4 bytes, ids from a 150k vocabulary, 3 bytes each on the wire).
        "token_ids_bytes_added": round(_ids_bytes_added(tokens_per_message, 3000), 4),
        "token_ids_bytes_added_real_text": round(
            _ids_bytes_added(4, 150_000, text=" the cat sat down"), 4
        ),
        "blocks": block_rows,
    }


def _run_blocks(
    results: Path, order: list[str], streams: int, rate: float, blocks: int
) -> list[tuple[str, StepResult]]:
    """The three stacks, started in `order`; `blocks` blocks of WINDOWS."""
    stacks: dict[str, Stack] = {}
    try:
        for arm in order:
            stacks[arm] = _stack(results, f"{arm}-{order[0]}-first", arm)
        for stack in stacks.values():
            uvloop.run(_short_requests(stack, 16, 0.5))  # warm: connections, first calls
        return [
            (arm, uvloop.run(_step(stacks[arm], streams, rate)))
            for _ in range(blocks)
            for arm in WINDOWS
        ]
    finally:
        for stack in stacks.values():
            stack.stop()


def _message(tokens: int, first_id: int, ids: bool, text: str | None = None) -> bytes:
    """A message of `tokens` tokens, serialised: by default the relay load's (stamped
    stand-in tokens, ~18 bytes each), or with the given text."""
    if text is None:
        text = "".join(f"t{i}@{1_000_000_000_000 + i} " for i in range(tokens))
    delta = pb.ChoiceDelta(text=text, num_tokens=tokens)
    if ids:
        delta.token_ids.extend(range(first_id, first_id + tokens))
    return pb.GenerateResponse(choices=[delta]).SerializeToString()


def _ids_bytes_added(tokens_per_message: int, first_id: int, text: str | None = None) -> float:
    with_ids = _message(tokens_per_message, first_id, ids=True, text=text)
    return len(with_ids) / len(_message(tokens_per_message, first_id, ids=False, text=text)) - 1


def _keep_ms_per_1k_tokens(tokens_per_message: int, messages: int = 200_000) -> float:
    """CPU ms that Journal.keep spends per 1,000 tokens, on messages like the load's (a
    stand-in message of tokens_per_message stamped tokens, serialised), cap as deployed."""
    chunk = _message(tokens_per_message, 1000, ids=True)
    per_stream = 1000  # messages per journal: a new stream every 1,000 messages
    started = time.process_time()
    for _ in range(messages // per_stream):
        journal = Journal(b"", 4 << 20)
        for _ in range(per_stream):
            journal.keep(chunk)
    seconds = time.process_time() - started
    return 1000 * seconds / (messages * tokens_per_message / 1000)


def _pooled(windows: list[tuple[str, StepResult]], arm: str, field: str) -> float:
    """The arm's median window over the whole run: one noisy block weighs as one window."""
    return statistics.median(getattr(w, field) for n, w in windows if n == arm)


def _block(windows: list[tuple[str, StepResult]]) -> dict:
    """One block: each arm's two windows pooled, then the ratios."""

    def mean(arm: str, field: str) -> float:
        return statistics.fmean(getattr(w, field) for n, w in windows if n == arm)

    row: dict = {}
    for arm in ARMS:
        row[f"tokens_per_s_{arm}"] = round(mean(arm, "tokens_per_s"))
        row[f"router_cpu_ms_per_1k_{arm}"] = round(1000 * mean(arm, "router_cpu_per_1k"), 3)
    for a, b in RATIOS:
        for figure in ("tokens_per_s", "router_cpu_per_1k"):
            row[f"{figure}_{a}_{b}"] = round(mean(a, figure) / mean(b, figure), 4)
    return row
