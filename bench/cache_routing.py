"""Part: cache-aware routing. Stand-in engines with a simulated prefix cache (LRU of
chunk names, too small for every prefix group on one replica) and a serialised prefill
cost per uncached prompt token; multi-turn sessions in prefix groups, Poisson arrivals
sent to the router over gRPC with their prefix names. The same workload per policy, on
fresh engines, plus an oracle (each group pinned by hand to one engine, no router).

Reported per policy: output tok/s, TTFT p50/p90/p99, cached-token ratio (cached prompt
tokens / prompt tokens, from usage) and the busiest replica's share of requests over
the mean share; then ratios against p2c and round_robin from the same run.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.common import STAND_IN_MODEL, percentile
from devstack.engine_args import scripted_engine_args
from devstack.prefix_client import Outcome, call_metadata, chat, engine_totals, generate
from devstack.processes import free_port
from devstack.stack import Stack, StackPlan
from services.common import metadata
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

POLICIES = ("round_robin", "p2c", "affinity", "cache_aware", "oracle")
# A request's metadata: tera-model and its prefix names (how the caller tokenizes).
Namer = Callable[[pb.GenerateRequest], list]


@dataclass(frozen=True)
class Workload:
    engines: int = 3
    groups: int = 12
    sessions_per_group: int = 4
    system_words: int = 400
    user_words: int = 24
    max_tokens: int = 32
    rate_per_s: float = 40.0
    duration_s: float = 12.0
    # One group takes this share of the requests (0: uniform).
    hot_share: float = 0.0
    seed: int = 0
    model: str = STAND_IN_MODEL
    # Turns of history a session's next prompt keeps (as a client trims it).
    history_turns: int = 6
    # Put before every system prompt: new prompts for a run on engines already warm.
    prefix_salt: str = ""
    # Per engine: chunks of 16 tokens (about 5 groups' prompts) and prefill cost.
    cache_chunks: int = 160
    prefill_ms_per_token: float = 0.2
    tokens_per_second: float = 200.0


@dataclass
class Session:
    group: int
    turns: list[tuple[str, str]] = field(default_factory=list)


def run(results: Path, workload: Workload | None = None) -> dict:
    """Uniform and skewed (one group half the traffic) variants, every policy."""
    base = workload or Workload()
    report = {}
    for name, w in (("uniform", base), ("skewed", _replace(base, hot_share=0.5))):
        rows = [_one(results / f"cache-{name}-{p}", p, w) for p in POLICIES]
        report[name] = with_ratios(rows)
    return report


def _replace(w: Workload, **changes: object) -> Workload:
    return Workload(**{**w.__dict__, **changes})


def _one(logs: Path, policy: str, w: Workload, options: dict | None = None) -> dict:
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / "router.yaml"
    write_router_config(config, policy, options)
    behaviour = {
        "prefix_cache_chunks": w.cache_chunks,
        "prefill_ms_per_token": w.prefill_ms_per_token,
        "tokens_per_second": w.tokens_per_second,
    }
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port() for _ in range(w.engines)],
        engine_args=scripted_engine_args(STAND_IN_MODEL, **behaviour),
        model_ids=[STAND_IN_MODEL],
        router_args=["--config", str(config)],
        log_dir=logs,
    )
    stack = Stack(plan).start(timeout_s=60)
    try:
        return measure(stack, policy, w, call_metadata)
    finally:
        stack.stop()


def write_router_config(path: Path, policy: str, options: dict | None = None) -> None:
    """The router's config for one policy (the oracle bypasses the router)."""
    router = {"policy": "p2c" if policy == "oracle" else policy, "hedge": {"enabled": False}}
    router["policy_options"] = {policy: options} if options else {}
    path.write_text(json.dumps(router | {"health": {"load_poll_interval_s": 0.2}}))


@dataclass
class Run:
    """One policy's calls on one workload: what a row is summarised from."""

    outcomes: list[Outcome]
    errors: int
    wall_s: float
    shares: list[int]  # calls each engine admitted

    def __add__(self, other: Run) -> Run:
        shares = [a + b for a, b in zip(self.shares, other.shares, strict=True)]
        return Run(
            self.outcomes + other.outcomes,
            self.errors + other.errors,
            self.wall_s + other.wall_s,
            shares,
        )


def measure(stack: Stack, policy: str, w: Workload, namer: Namer) -> dict:
    """The workload through the stack's router (or pinned, for the oracle): one row."""
    return summary(policy, measure_run(stack, policy, w, namer))


def measure_run(stack: Stack, policy: str, w: Workload, namer: Namer) -> Run:
    plan = stack.plan
    engines = [f"{plan.host}:{p}" for p in plan.engine_ports]
    before = engine_totals(engines)
    router = f"{plan.host}:{plan.router_port}"
    results, wall = asyncio.run(_drive(router, engines, policy, w, namer))
    shares = [b - a for a, b in zip(before, engine_totals(engines), strict=True)]
    # An overloaded policy shows as failed calls (e.g. no first message in time), not as
    # a crashed part.
    outcomes = [r for r in results if isinstance(r, Outcome)]
    return Run(outcomes, len(results) - len(outcomes), wall, shares)


async def _drive(
    router: str, engines: list[str], policy: str, w: Workload, namer: Namer
) -> tuple[list[Outcome | BaseException], float]:
    rng = random.Random(w.seed)
    sessions = [Session(g) for g in range(w.groups) for _ in range(w.sessions_per_group)]
    channels = [grpc.aio.insecure_channel(a) for a in [router, *engines]]
    stubs = [pb_grpc.EngineStub(c) for c in channels]
    loop = asyncio.get_running_loop()
    started = loop.time()
    calls = []
    while loop.time() - started < w.duration_s:
        session = _pick(rng, sessions, w)
        request = chat(w.model, _next_turn(rng, session, w), w.max_tokens)
        # The oracle: each group on its own engine, chosen by hand.
        stub = stubs[1 + session.group % len(engines)] if policy == "oracle" else stubs[0]
        # The routing key an edge derives from the prompt's start: affinity's input.
        md = [*namer(request), (metadata.ROUTING_KEY, f"group-{session.group}")]
        calls.append(asyncio.create_task(generate(stub, request, md)))
        await asyncio.sleep(rng.expovariate(w.rate_per_s))
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    wall = loop.time() - started
    for channel in channels:
        await channel.close()
    return list(outcomes), wall


def _pick(rng: random.Random, sessions: list[Session], w: Workload) -> Session:
    if w.hot_share and rng.random() < w.hot_share:
        return rng.choice([s for s in sessions if s.group == 0])
    return rng.choice(sessions)


def _next_turn(rng: random.Random, session: Session, w: Workload) -> list[tuple[str, str]]:
    """The session's prompt for its next turn: the group's system prompt, the history
    (capped at w.history_turns, as a client trims it), a new user turn."""
    words = (f"g{session.group}w{i}" for i in range(w.system_words))
    system = ("system", w.prefix_salt + " ".join(words))
    user = " ".join(f"u{rng.randrange(10_000)}" for _ in range(w.user_words))
    history = session.turns[len(session.turns) - 2 * w.history_turns :]
    session.turns = [*history, ("user", user), ("assistant", "ok " * 8)]
    return [system, *history, ("user", user)]


def summary(policy: str, run: Run) -> dict:
    ttfts = [o.ttft_s for o in run.outcomes]
    prompt = sum(o.prompt_tokens for o in run.outcomes)
    mean_share = sum(run.shares) / len(run.shares)
    return {
        "policy": policy,
        "requests": len(run.outcomes),
        "errors": run.errors,
        "output_tok_s": sum(o.completion_tokens for o in run.outcomes) / run.wall_s,
        "ttft_p50_ms": percentile(ttfts, 50) * 1000,
        "ttft_p90_ms": percentile(ttfts, 90) * 1000,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000,
        "cached_ratio": sum(o.cached_tokens for o in run.outcomes) / max(prompt, 1),
        "max_share_over_mean": max(run.shares) / mean_share if mean_share else 0.0,
        "shares": run.shares,
    }


def with_ratios(rows: list[dict]) -> list[dict]:
    by = {r["policy"]: r for r in rows}
    for row in rows:
        for ref in ("p2c", "round_robin"):
            base = by[ref]
            row[f"tok_s_vs_{ref}"] = row["output_tok_s"] / base["output_tok_s"]
            row[f"ttft_p50_vs_{ref}"] = row["ttft_p50_ms"] / base["ttft_p50_ms"]
            row[f"ttft_p90_vs_{ref}"] = row["ttft_p90_ms"] / base["ttft_p90_ms"]
        row["ttft_p99_vs_p2c"] = row["ttft_p99_ms"] / by["p2c"]["ttft_p99_ms"]
        row["cached_vs_oracle"] = row["cached_ratio"] / max(by["oracle"]["cached_ratio"], 1e-9)
    return rows


COLUMNS = [
    "policy",
    "requests",
    "errors",
    "output_tok_s",
    "ttft_p50_ms",
    "ttft_p90_ms",
    "ttft_p99_ms",
    "cached_ratio",
    "max_share_over_mean",
    "tok_s_vs_p2c",
    "ttft_p50_vs_p2c",
    "ttft_p90_vs_p2c",
    "ttft_p99_vs_p2c",
    "cached_vs_oracle",
    "tok_s_vs_round_robin",
    "ttft_p50_vs_round_robin",
    "ttft_p90_vs_round_robin",
]
