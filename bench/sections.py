"""One function a `make bench` part: runs it, stores its figures in the report, and
returns its markdown. bench/run.py lists them in PARTS, in the order they run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from bench import (
    at_once,
    cache_routing,
    cache_routing_vllm,
    fairness,
    fairness_vllm,
    gc_pauses,
    hedging,
    profile,
    recovery,
    relay,
    relay_mux,
    resume,
    resume_cost,
    router_hop,
    speech,
    stored_responses,
    transport_floor,
    vs_vllm,
    waterfall,
)
from bench.common import CACHE_DIR, table
from services.engine.model_prep import default_model_dir, prepare_default_model

Part = Callable[[argparse.Namespace, Path, dict], list[str]]


def vs_vllm_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    return _vs_vllm(args, results, report, control=False)


def vs_vllm_control_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    return _vs_vllm(args, results, report, control=True)


def _vs_vllm(args: argparse.Namespace, results: Path, report: dict, *, control: bool) -> list[str]:
    model_dir = prepare_default_model(default_model_dir(CACHE_DIR))
    concurrencies = tuple(map(int, args.concurrency.split(",")))
    colocated = not args.split
    rows = vs_vllm.run(
        model_dir,
        results,
        concurrencies,
        control=control,
        colocated=colocated,
        rounds=args.rounds,
        pin_client=not args.client_anywhere,
    )
    report["vs_vllm"] = rows
    columns = ["target", "concurrency", "output_throughput", "request_throughput"]
    columns += [*vs_vllm.LATENCY_COLUMNS, *vs_vllm.CPU_COLUMNS, *vs_vllm.ENGINE_COLUMNS]
    columns += (*vs_vllm.FIRST_TOKEN_COLUMNS, vs_vllm.SERVER_OUT)
    columns.append(vs_vllm.HALVES_APART)
    one_round = vs_vllm.order(1, control=control)
    order = (
        f"{args.rounds} round(s) of {', '.join(name for name, _ in one_round)}, "
        f"seeds {', '.join(str(seed) for _, seed in one_round)} in the first and 2 more "
        "in each next"
        + (f" ({vs_vllm.CONTROL}: a second vLLM server, the control)" if control else "")
        + ("; Tera's edge and router as two processes (--split)" if args.split else "")
        + ("; the client on any CPU (--client-anywhere)" if args.client_anywhere else "")
    )
    return [
        "## Tera vs vLLM's own server (vllm bench serve, openai-chat, random "
        f"{vs_vllm.INPUT_LEN} in / {vs_vllm.OUTPUT_LEN} out, streaming; per concurrency "
        f"{order}, each target's halves pooled)\n",
        "Ratio rows: throughput and CPU as target/vLLM, latencies as target minus vLLM "
        "(ms); mean_ttft_ms beside the median because at high concurrency first tokens "
        "come in waves (prefill steps), and a median can cross a wave where a mean barely "
        "moves. CPU is milliseconds per 1,000 output tokens over each half (its two warm-up "
        "requests included): serving = vLLM's API server, or Tera's edge, router and engine "
        "front; model = vLLM's EngineCore and workers below them. engine_core_cpus: the "
        "CPUs vLLM's EngineCore process kept busy over the halves' wall time (1.0: a whole "
        "one), on the serving processes' CPU: it waits for each step by spinning. "
        "serving_wait_ms_per_req: how long the serving processes' threads waited, "
        "runnable, for a CPU, per request (the scheduler's run delay). "
        f"{vs_vllm.ENGINE_STEP}: the model worker's mean time per engine step, from the "
        "batch's arrival to its last call's end (the same engine under both servers: a "
        "ratio away from 1 is the engine's own draw, its start or the host's drift); "
        f"{vs_vllm.ENGINE_IDLE}: the worker's mean idle time before a step, from its "
        "previous call's end (the scheduler between steps, and between requests the "
        "round trip through the serving side): what the server costs the engine's "
        "cadence, a delta. "
        f"{vs_vllm.PACE_ADJUSTED}: the throughput ratio times the engine-step ratio, "
        "what is left of the ratio once the engine's own pace is taken out. "
        f"{', '.join(vs_vllm.FIRST_TOKEN_COLUMNS)} (concurrency 1): "
        "each first token's time split at the worker, from the client's send to the "
        "worker's first step for it, that step (the prefill), and from its end to the "
        "client's first token, means; "
        f"{vs_vllm.SERVER_OUT}: of that way out, the server's own part, from its process "
        "(vLLM's API server, Tera's engine) taking the step's outputs from the engine "
        "core to the client's first token (before it, the engine core's own code, the "
        "same in both). "
        f"{vs_vllm.HALVES_APART}: a target's own last half over its first, the spread a "
        "ratio between two servers has to clear (`python -m bench.pooled` reads several "
        "runs together).\n",
        table(rows, columns),
        "",
    ]


def relay_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    streams = tuple(map(int, args.streams.split(",")))
    rates = tuple(map(float, args.rates.split(",")))
    md: list[str] = []
    for window in sorted({0, args.coalesce_window_ms}):
        result = relay.run(
            results, streams, rates, window, args.engine_transport, args.router_transport
        )
        report[f"relay_coalesce_{window}ms"] = result
        md += _relay_section(result, window)
    report["relay_gpu_shaped"] = shaped = relay.run_gpu_shaped(
        results, streams, args.engine_transport, args.router_transport
    )
    return md + _gpu_shaped_section(shaped)


def relay_mux_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["relay_mux"] = result = relay_mux.run(results)
    return [
        "## What multiplexing would save the relay (the transport alone: a gRPC hop "
        f"forwarding opaque bytes, a call per stream vs one call for all; an aiohttp SSE "
        f"server, the edge's per-token floor; {relay_mux.RATE:.0f} tok/s a stream, one "
        "token a message)\n",
        table(result["rows"], list(result["rows"][0])),
        "",
        table(result["projection"], list(result["projection"][0])),
        "",
    ]


def at_once_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["at_once"] = rows = at_once.run(results)
    return [
        "## A stream's open and first message written at once (two stand-in stacks side by "
        "side, one with the writes left for the end of each turn as before; streamed chat "
        f"at concurrency 1, requests alternating in pairs, {rows[0]['requests']} a stack a "
        "round; client first-token time, ms)\n",
        _side_by_side_table(rows, (at_once.SHIPPED, at_once.BATCHED)),
        "",
    ]


def router_hop_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["router_hop"] = rows = router_hop.run(results)
    return [
        "## What the router's hop costs a first token (three stand-in stacks side by side: "
        "one whose edge calls the engine directly, its router idle, the upper bound on "
        "taking the hop off the path; one with the router in the edge's process "
        "(services/gateway); and the shipped two processes. Streamed chat at concurrency 1, "
        f"requests alternating in pairs, {rows[0]['requests']} a stack a round; client "
        "first-token time, ms; saved: against the two processes)\n",
        _side_by_side_table(rows, router_hop.ARMS),
        "",
    ]


def _side_by_side_table(rows: list[dict], arms: tuple[str, ...]) -> str:
    """`arms` as bench.side_by_side.compare started them: the last is the baseline."""
    flat = [
        {
            "round": i + 1,
            **{f"{arm} {q}": row[arm][f"{q}_ms"] for arm in arms for q in ("p50", "p90")},
            **{
                f"saved {q}" + (f" ({arm})" if len(arms) > 2 else ""): row[arm][f"saved_{q}_ms"]
                for arm in arms[:-1]
                for q in ("p50", "p90")
            },
        }
        for i, row in enumerate(rows)
    ]
    return table(flat, list(flat[0]))


def gc_pauses_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["gc_pauses"] = result = gc_pauses.run(results)
    return [
        "## The start-up heap frozen or not (two GPU-shaped relays at once, TERA_GC_FREEZE "
        f"0 and as shipped, steps of {result['streams']} streams x "
        f"{relay.GPU_SHAPED_RATE:.0f} tok/s in turn, {result['rounds']} rounds; full "
        "collections during the steps and how long each stopped the process)\n",
        table(result["arms"], list(result["arms"][0])),
        "",
    ]


def resume_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["resume"] = result = resume.run(results)
    return [
        "## Mid-stream resume (3 stand-in replicas, every call cut after 20 tokens)\n",
        # The raw gaps go to report.json and the plot, not into the table.
        table([result], [k for k in result if k != "resume_gaps_ms"]),
        "",
    ]


def resume_cost_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["resume_cost"] = result = resume_cost.run(results)
    summary = {k: v for k, v in result.items() if k not in ("blocks", "ratios")}
    return [
        "## What resume costs the relay when nothing fails (resume on / off / before the "
        f"proto change, three stacks at once, the arms rotated over them; "
        f"{result['streams']} streams x {result['rate_per_stream']:.0f} tok/s each, one "
        "token a message; CPU per 1,000 tokens as ratios, median over blocks with "
        "bootstrap 95 % CI and IQR)\n",
        table(result["ratios"], list(result["ratios"][0])),
        "",
        # Wide: one figure a row.
        table([{"figure": k, "value": v} for k, v in summary.items()], ["figure", "value"]),
        "",
        table(result["blocks"], list(result["blocks"][0])),
        "",
    ]


def waterfall_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    model_dir = prepare_default_model(default_model_dir(CACHE_DIR))
    report["waterfall"] = runs = waterfall.run(results, model_dir)
    md = [
        "## First-token waterfall (traced streamed chat requests, ~64-token prompt; "
        "ms per segment, from the request's trace marks and the client's clock)\n"
    ]
    for r in runs:
        parts = r["segments"] or r["side_by_side"]  # vLLM's own server has only its parts
        rows = [{"segment": name, **figures} for name, figures in parts.items()]
        md += [
            f"### {r['engine']}, concurrency {r['concurrency']}: {r['requests']} requests, "
            f"client TTFT p50 {r['ttft_p50_ms']:.1f} / p99 {r['ttft_p99_ms']:.1f} ms\n",
            table(rows, ["segment", "p50_ms", "p99_ms"]),
            "",
        ]
    return md + _side_by_side(runs)


def _side_by_side(runs: list[dict]) -> list[str]:
    """Tera in `tera run`'s layout against vLLM's own server in the same layout, cut alike
    at vLLM's arrival and first output (vLLM's request span, in both)."""
    md = []
    for c in sorted({r["concurrency"] for r in runs}):
        tera, own = (
            next((r for r in runs if r["engine"] == e and r["concurrency"] == c), None)
            for e in (waterfall.TERA_LAID_OUT, waterfall.OWN_SERVER)
        )
        if tera is None or own is None or not tera["side_by_side"]:
            continue
        rows = [
            {
                "part": name,
                "tera_p50_ms": t["p50_ms"],
                "vllm_server_p50_ms": own["side_by_side"][name]["p50_ms"],
                "tera_minus_vllm_p50_ms": t["p50_ms"] - own["side_by_side"][name]["p50_ms"],
                "tera_p99_ms": t["p99_ms"],
                "vllm_server_p99_ms": own["side_by_side"][name]["p99_ms"],
            }
            for name, t in tera["side_by_side"].items()
            if name in own["side_by_side"]
        ]
        columns = ["part", "tera_p50_ms", "vllm_server_p50_ms", "tera_minus_vllm_p50_ms"]
        md += [
            f"### Tera against vLLM's own server, concurrency {c} (both in `tera run`'s CPU "
            "layout, cut at vLLM's arrival and first output)\n",
            table(rows, [*columns, "tera_p99_ms", "vllm_server_p99_ms"]),
            "",
        ]
    return md


def profile_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["profile"] = result = profile.run(results)
    md: list[str] = []
    for name, top in result.items():
        md += [
            f"## Profile: {name} (py-spy, self time, {profile.STREAMS} streams x "
            f"{profile.RATE:g} tok/s, window {profile.WINDOW_MS} ms)\n",
            table([{"function": f, "share": s} for f, s in top], ["function", "share"]),
            "",
        ]
    return md


def speech_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["speech"] = result = speech.run(results)
    return [
        "## Speech (Piper, mp3, full stack)\n",
        f"{result['characters']} characters: time to first audio byte "
        f"{result['ttfb_ms_p50']:.0f} ms (p50), real-time factor {result['rtf_p50']:.3f}"
        " (synthesis time / audio duration, p50)\n",
    ]


def hedging_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["hedging"] = rows = hedging.run(results)
    return [
        f"## Hedged first tokens (2 stand-in replicas, one {hedging.SLOW_FIRST_TOKEN_S:g} s "
        f"late with its first token; {hedging.REQUESTS} requests, "
        f"{hedging.CONCURRENCY} concurrent, {hedging.POLICY})\n",
        table(rows, ["setting", "p50_ttft_ms", "p99_ttft_ms", "hedges_per_request", "hedge_wins"]),
        "",
    ]


def fairness_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["fairness"] = rows = fairness.run(results)
    ratios = fairness.preemption_ratios(rows)
    ratios += fairness.preemption_ratios(rows, fairness.CLASS_PREEMPTION)
    return [
        "## Fair sharing under overload (2 stand-in replicas x 2 slots, 20 tok/s; the "
        "protected tenant steady at 1 request / 0.3 s, the other steady, then flooding 10x; "
        "utilisation: output tok/s in the flood over the flooder's alone)\n",
        table(rows, FAIRNESS_COLUMNS),
        "",
        "Preemption, off (or across classes only) vs on with fair share (the protected "
        "tenant's TTFT in the flood; targets: on_p99_over_ref <= 1.5, on_utilisation >= "
        "0.95):\n",
        table(ratios, PREEMPTION_COLUMNS),
        "",
    ]


FAIRNESS_COLUMNS = ["setting", "tenants", "ref_p50_ttft_ms", "ref_p99_ttft_ms"]
FAIRNESS_COLUMNS += ["flood_p50_ttft_ms", "flood_p99_ttft_ms", "p99_ratio", "protected_refused"]
FAIRNESS_COLUMNS += ["flooder_req_per_s", "flooder_shed", "flood_tok_per_s"]
FAIRNESS_COLUMNS += ["flood_only_tok_per_s", "utilisation"]


def fairness_vllm_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    model_dir = prepare_default_model(default_model_dir(CACHE_DIR))
    report["fairness_vllm"] = rows = fairness_vllm.run(results, model_dir)
    load = fairness_vllm.LOAD
    return [
        f"## Fair sharing on vLLM (2 vLLM replicas of {load.model}, max_num_seqs "
        f"{fairness_vllm.MAX_NUM_SEQS}; {load.tokens}-token answers; the protected tenant "
        f"steady at 1 request / {load.every_s:g} s, the other steady, then {load.workers} "
        f"closed loops for {load.seconds:g} s; same engines, a fresh router per setting; "
        "tok/s counts each answer as max_tokens; no target)\n",
        table(rows, [*FAIRNESS_COLUMNS, "preemptions"]),
        "",
    ]


PREEMPTION_COLUMNS = ["tenants", "off", "off_p50_ms", "on_p50_ms", "p50_off_over_on"]
PREEMPTION_COLUMNS += ["off_p99_ms", "on_p99_ms", "p99_off_over_on", "on_p99_over_ref"]
PREEMPTION_COLUMNS += ["on_utilisation"]


def recovery_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    return _recovery_section(results, report, vllm=False)


def recovery_vllm_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    return _recovery_section(results, report, vllm=True)


def _recovery_section(results: Path, report: dict, *, vllm: bool) -> list[str]:
    model_dir = prepare_default_model(default_model_dir(CACHE_DIR)) if vllm else None
    engine_args = ["--model-dir", str(model_dir)] if model_dir else None
    result = recovery.run(results, crashes=2 if vllm else 3, engine_args=engine_args)
    report[f"recovery_{result['engine']}"] = result
    seconds = ", ".join(f"{s:.2f}" for s in result["back_in_rotation_s"])
    return [
        f"## Crash recovery under tera run ({result['engine']} engine, 2 replicas)\n",
        f"SIGKILL of one engine to its return to rotation, successive crashes (the restart "
        f"backoff doubles per crash within a minute: 1 s, 2 s, 4 s): {seconds} s\n",
    ]


def cache_routing_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["cache_routing"] = result = cache_routing.run(results)
    w = cache_routing.Workload()
    md = [
        f"## Cache-aware routing ({w.engines} stand-in replicas, {w.groups} prefix groups x "
        f"{w.sessions_per_group} multi-turn sessions, {w.system_words}-token system prompts, "
        f"prefix cache of {w.cache_chunks * 16} tokens per replica, serialised prefill "
        f"{w.prefill_ms_per_token} ms/uncached token, Poisson {w.rate_per_s:g} req/s for "
        f"{w.duration_s:g} s; oracle: each group pinned to one replica by hand)\n"
    ]
    return md + _cache_tables(result)


def cache_routing_vllm_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    model_dir = prepare_default_model(default_model_dir(CACHE_DIR))
    report["cache_routing_vllm"] = result = cache_routing_vllm.run(results, model_dir)
    w = cache_routing_vllm.WORKLOAD
    md = [
        f"## Cache-aware routing on vLLM ({w.engines} vLLM replicas of {w.model}, KV cache "
        f"{cache_routing_vllm.KV_BLOCKS} blocks of 128 tokens each, prefix caching on; "
        f"{w.groups} prefix groups x {w.sessions_per_group} sessions, {w.system_words}-word "
        f"system prompts, {w.history_turns} turns of history, {w.max_tokens} output tokens, "
        f"Poisson {w.rate_per_s:g} req/s for {w.duration_s:g} s; same engines for every "
        "policy, fresh router and new prompts each; oracle: each group pinned by hand; "
        f"{', '.join(cache_routing_vllm.POOLED)} pooled over {cache_routing_vllm.SEEDS} "
        "arrival seeds, alternated, the others one)\n"
    ]
    return md + _cache_tables(result)


def _cache_tables(result: dict) -> list[str]:
    md = []
    for variant, rows in result.items():
        md += [f"### {variant}\n", table(rows, cache_routing.COLUMNS), ""]
    return md


def stored_responses_part(args: argparse.Namespace, results: Path, report: dict) -> list[str]:
    report["stored_responses"] = rows = stored_responses.run(results)
    columns = ["store", "requests_each", "stored_p50_ms", "stateless_p50_ms", "added_p50_ms"]
    columns += ["p50_ratio", "stored_p99_ms", "stateless_p99_ms", "p99_ratio"]
    return [
        "## Stored vs stateless responses (POST /v1/responses, store:true vs store:false, "
        f"non-streaming, {stored_responses.MAX_OUTPUT_TOKENS} stand-in tokens, sequential, "
        "ABBA-alternated; ratios stored/stateless)\n",
        table(rows, columns),
        "",
    ]


def _gpu_shaped_section(result: dict) -> list[str]:
    return [
        f"## Relay cost at GPU-shaped steps ({relay.GPU_SHAPED_RATE:.0f} tok/s a stream, "
        f"one {result['step_ms']:g} ms step per token: every stream has a token in each "
        "step, as in a GPU's decode batch; coalescing off; layout: `tera run`'s gateway, "
        "edge and router in one process with its CPU under edge, or the two apart)\n",
        table(
            [{"layout": "gateway"} | s for s in result.get("gateway_steps", [])]
            + [{"layout": "split"} | s for s in result["steps"]],
            [
                "layout",
                "streams",
                "tokens_per_s",
                "tokens_per_chunk",
                "edge_cpu_per_1k",
                "router_cpu_per_1k",
                "relay_cores_per_10k",
                "added_itl_p99_ms",
                "errors",
                "host_reference_ms",
            ],
        ),
        f"Host reference: CPU ms for {relay.REFERENCE_ROUNDS} rounds of protobuf, JSON "
        "and a loopback send, around each step: runs compare at equal reference.\n",
        *_cost_split_lines(result),
    ]


def _cost_split_lines(result: dict) -> list[str]:
    """Where the GPU-shaped steps' CPU goes: a cost a decode step (one message a hop) and
    a cost a token, and what gRPC alone costs a message against a plain socket."""
    split, floor = result.get("split"), result.get("transport_floor")
    if not split or not floor:
        return []
    rows = [{"process": name} | costs for name, costs in split.items()]
    excess_read = floor["grpc_read_us"] - floor["socket_read_us"]
    excess_write = floor["grpc_write_us"] - floor["socket_write_us"]
    return [
        "Split (least squares over the steps: cores = steps/s x per step + tokens/s x per "
        "token; the router reads one message a step and writes one, the edge reads one):\n",
        table(rows, ["process", "per_step_us", "per_token_us"]),
        "",
        f"Transport floor at {relay.GPU_SHAPED_RATE:.0f} messages/s, CPU µs a message "
        "(bench/transport_floor.py): gRPC aio read "
        f"{floor['grpc_read_us']:.0f} against a plain asyncio socket's "
        f"{floor['socket_read_us']:.0f} (+{excess_read:.0f}); the paced writer "
        f"{floor['grpc_write_us']:.0f} against {floor['socket_write_us']:.0f} "
        f"(+{excess_write:.0f}).\n",
        *_fanout_lines(split["edge"], floor),
    ]


def _fanout_lines(edge: dict[str, float], floor: dict[str, float]) -> list[str]:
    """The edge's cost a step at the fan-out's batch, by the split, against its floor
    there: the same read and writes with no code of Tera's between them."""
    fanout = floor.get("fanout_read_us")
    if fanout is None:  # results from before the fan-out was measured
        return []
    streams = transport_floor.FANOUT_STREAMS
    edge_step = edge["per_step_us"] + streams * edge["per_token_us"]
    return [
        f"The edge's floor a step at {streams} streams (a socket read, then a "
        f"{len(transport_floor.CHUNK)}-byte write to each of {streams} clients' sockets, "
        f"on uvloop): {fanout:.0f} µs; the edge's own there, by the split: "
        f"{edge_step:.0f} µs ({edge_step / fanout:.1f}x the floor).\n"
    ]


def _relay_section(result: dict, window: int) -> list[str]:
    rows = [
        step | {f"{name} cores": cores for name, cores in step["cores"].items()}
        for step in result["steps"]
    ]
    best = ", ".join(
        f"{n} streams: {b['tokens_per_s']:.0f} tok/s (p99 added ITL {b['added_itl_p99_ms']:.1f} ms)"
        for n, b in result["best"].items()
    )
    return [
        f"## Relay capacity (stand-in engine, {relay.STEP_MS:g} ms decode step, "
        f"coalescing window {window} ms, transports: edge-router "
        f"{result.get('router_transport', 'per_call')}, router-engine "
        f"{result['engine_transport']})\n",
        "Added ITL: gap between SSE chunks at the client minus the gap between the "
        "emissions of their newest tokens. Added latency: arrival minus emission, per "
        "token. CPU per 1k tokens in seconds.\n",
        table(
            rows,
            [
                "streams",
                "rate_per_stream",
                "tokens_per_s",
                "added_itl_p50_ms",
                "added_itl_p99_ms",
                "added_latency_p50_ms",
                "added_latency_p99_ms",
                "tokens_per_chunk",
                "edge_cpu_per_1k",
                "router_cpu_per_1k",
                "relay_cores_per_10k",
                "edge cores",
                "router cores",
                "engine cores",
                "load generator cores",
                "errors",
                "host_reference_ms",
            ],
        ),
        f"\nBest passing step (p99 added ITL <= {relay.ADDED_ITL_LIMIT_MS:g} ms, no errors): "
        + (best or "none"),
        f"\nShort requests (1 token, not streamed, 64 concurrent): "
        f"{result['short_requests_per_s']:.0f} req/s\n",
    ]
