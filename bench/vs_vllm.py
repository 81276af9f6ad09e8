"""Part 1: Tera's full stack versus vLLM's own OpenAI server, same model, same engine
settings, both driven by `vllm bench serve` (openai-chat, random dataset, fixed seed,
streaming), one target at a time so they never compete for the CPU."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import CACHE_DIR, ROOT, runnable_wait_seconds, total_cpu_seconds, vllm_plan
from bench.engine_steps import (
    FirstTokenSplit,
    first_token_split,
    read_calls,
    read_outputs,
    steps_between,
    trace_env,
)
from devstack.cpu_layout import OMP_BIND, machine_cpus, plan_cpus
from devstack.processes import ManagedProcess, free_port, group_members, wait_until
from devstack.stack import Stack
from services.engine.model_prep import DEFAULT_MODEL_ID

INPUT_LEN, OUTPUT_LEN = 128, 64
# The mean beside the median: at high concurrency first tokens come in waves (prefill
# steps), and a few milliseconds move a median across a wave where they barely move a mean.
LATENCY_COLUMNS = ("p50_ttft_ms", "mean_ttft_ms", "p99_ttft_ms", "p50_itl_ms", "p99_itl_ms")
CPU_COLUMNS = (
    "serving_cpu_ms_per_ktok",
    "model_cpu_ms_per_ktok",
    "engine_core_cpus",
    "serving_wait_ms_per_req",
)
# The engine's pace (bench.engine_steps): its mean step, a ratio to vLLM's (the engine's
# own draw: the same engine either way), and its idle time between steps, a delta (what
# the serving side costs the engine's cadence).
ENGINE_STEP, ENGINE_IDLE = "engine_step_ms", "engine_idle_ms_per_step"
PACE_ADJUSTED = "throughput_at_equal_engine_pace"
ENGINE_COLUMNS = (ENGINE_STEP, ENGINE_IDLE, PACE_ADJUSTED)
# At concurrency 1, each first token's time split at the worker (bench.engine_steps): the
# request's way in, its first step (the prefill) and its way out, means in ms, as deltas;
# and of the way out, the server's own part (from its process taking the engine core's
# outputs).
FIRST_TOKEN_COLUMNS = ("first_token_in_ms", "first_token_step_ms", "first_token_out_ms")
SERVER_OUT = "first_token_out_server_ms"
HALVES_APART = "throughput_last_half_over_first"
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_USE_AOT_COMPILE": "0",
    "VLLM_CACHE_ROOT": str(CACHE_DIR / "vllm"),
    "TORCHINDUCTOR_CACHE_DIR": str(CACHE_DIR / "inductor"),
    "HF_HUB_OFFLINE": "1",
}


# The control: a second vLLM server of the same settings (order).
CONTROL = "vllm-b"
C1_PROMPTS = 32  # per target at concurrency 1, over all its halves


def prompts_per_half(concurrency: int, rounds: int) -> int:
    """Per target, concurrency and half (two halves a round). p99 needs samples: at c=1 a
    request takes ~3 s here, so 32 over all halves is what time allows. At higher
    concurrency each half runs 4 waves of requests: with 1 or 2, the TTFT median falls
    between the first wave (no queue) and the next (a whole wave's queue) and swings by a
    second."""
    return max(4 * concurrency, C1_PROMPTS // (2 * rounds))


def order(rounds: int, *, control: bool = False) -> tuple[tuple[str, int], ...]:
    """Each round runs vLLM, Tera, Tera, vLLM (a different seed per half, the same seeds for
    both), so a drift of the shared machine during the round weighs on both alike; more,
    shorter rounds share out a drift that an ABBA of two long halves does not (the
    host's pace moves by up to 30 % within minutes). With the control: a second vLLM
    server of the same settings, centred on the same moment. Its ratio to the first is
    what this measurement says of two identical servers: the spread any target on Tera's
    ratios has to clear."""
    middle = ("tera", CONTROL) if control else ("tera",)
    names = ("vllm", *middle, *reversed(middle), "vllm")
    half = len(names) // 2
    return tuple((name, 2 * r + i // half) for r in range(rounds) for i, name in enumerate(names))


# vLLM names its engine-core process "VLLM::EngineCore"; /proc keeps 15 characters.
ENGINE_CORE_NAME = "VLLM::EngineCor"


@dataclass(frozen=True)
class CpuReading:
    """CPU seconds used so far by a target's processes, in three parts."""

    serving: float  # vLLM's API server, or Tera's edge, router and engine front
    engine_core: float  # vLLM's EngineCore: schedules, and waits for each step
    workers: float  # the rest below: vLLM's model workers
    # Not CPU: how long the serving processes' threads waited, runnable, for one (beside
    # the EngineCore's spin, a session of their own made it tens of milliseconds).
    serving_wait: float = 0.0

    @property
    def model(self) -> float:
        return self.engine_core + self.workers


@dataclass(frozen=True)
class Target:
    """A server under test. Its serving processes (vLLM's API server; Tera's edge, router
    and engine front) are what differ between the two: the processes below them (vLLM's
    EngineCore and workers) are the same model either way, so their CPU is counted apart."""

    base_url: str
    serving_pids: tuple[int, ...]
    # Where its model workers time their calls (bench.engine_steps); None: not traced.
    step_trace: Path | None = None

    def cpu_seconds(self) -> CpuReading:
        """CPU used so far. Each serving process leads a process group of its own
        (ManagedProcess), which vLLM's EngineCore and workers join."""
        serving = set(self.serving_pids)
        below = [p for pid in serving for p in group_members(pid) if p not in serving]
        core = [p for p in below if process_name(p) == ENGINE_CORE_NAME]
        engine_core = total_cpu_seconds(core)
        return CpuReading(
            serving=total_cpu_seconds(self.serving_pids),
            engine_core=engine_core,
            workers=total_cpu_seconds(below) - engine_core,
            serving_wait=runnable_wait_seconds(self.serving_pids),
        )


def process_name(pid: int) -> str:
    """A process's name as /proc shows it ("" once it has exited)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Load:
    """What one half's `vllm bench serve` sends, and where it runs."""

    model_dir: Path  # the tokenizer's
    concurrency: int
    prompts: int
    # None: wherever the OS puts it, the engine's cores included, where each of its wake-ups
    # stalls a decode step.
    client_cpus: frozenset[int] | None

    def pin_client(self) -> None:
        """Run in the client's process before it starts."""
        os.sched_setaffinity(0, self.client_cpus or ())


def _bench(target: Target, load: Load, out: Path) -> dict:
    """One half: `vllm bench serve`'s result, plus the CPU the target used meanwhile (its
    two warm-up requests included, on both targets alike) and the wall time it took."""
    before, started = target.cpu_seconds(), time.monotonic()
    result = _vllm_bench_serve(target.base_url, load, out)
    after, ended = target.cpu_seconds(), time.monotonic()
    result["wall_s"] = ended - started
    result["serving_cpu_s"] = after.serving - before.serving
    result["model_cpu_s"] = after.model - before.model
    result["engine_core_cpu_s"] = after.engine_core - before.engine_core
    result["serving_wait_s"] = after.serving_wait - before.serving_wait
    if target.step_trace:
        result |= _engine_pace(target.step_trace, result, started, ended)
    return result


def _engine_pace(trace: Path, result: dict, started: float, ended: float) -> dict:
    """A half's engine steps, and at concurrency 1 its first tokens split at the worker."""
    workers = read_calls(trace)
    steps = steps_between(workers, started, ended)
    pace = {"engine_steps": steps.steps, "engine_busy_s": steps.busy_s}
    pace["engine_idle_s"] = steps.idle_s
    if result["max_concurrency"] == 1:
        served = zip(result["start_times"], result["ttfts"], result["errors"], strict=True)
        requests = [(sent, sent + ttft) for sent, ttft, error in served if not error]
        split = first_token_split(workers, requests, read_outputs(trace))
        pace["first_token_split"] = dataclasses.asdict(split)
    return pace


def _vllm_bench_serve(base_url: str, load: Load, out: Path) -> dict:
    # Over 50 lines only because `vllm bench serve`'s arguments stand one per line.
    name = out.name
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.vllm_cli",
            "bench",
            "serve",
            "--backend",
            "openai-chat",
            "--base-url",
            base_url,
            "--endpoint",
            "/v1/chat/completions",
            "--model",
            DEFAULT_MODEL_ID,
            "--tokenizer",
            str(load.model_dir),
            "--dataset-name",
            "random",
            "--random-input-len",
            str(INPUT_LEN),
            "--random-output-len",
            str(OUTPUT_LEN),
            "--ignore-eos",
            "--num-prompts",
            str(load.prompts),
            "--max-concurrency",
            str(load.concurrency),
            "--seed",
            str(half_seed(out)),
            "--num-warmups",
            "2",
            "--percentile-metrics",
            "ttft,itl,tpot",
            "--metric-percentiles",
            "50,99",
            "--disable-tqdm",
            "--save-result",
            "--save-detailed",
            "--result-dir",
            str(out.parent),
            "--result-filename",
            name,
        ],
        check=True,
        cwd=ROOT,
        env={**os.environ, **ENGINE_ENV},
        capture_output=True,
        text=True,
        preexec_fn=load.pin_client if load.client_cpus else None,
    )
    return json.loads(out.read_text())


def _models_listed(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as r:
            return DEFAULT_MODEL_ID in r.read().decode()
    except OSError:
        return False


def start_vllm_server(
    model_dir: Path,
    results: Path,
    log: str = "vllm-server.log",
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> tuple[ManagedProcess, str]:
    """vLLM's server laid out as Tera's stack is (bench.common.vllm_plan): its OpenMP
    threads on the engine's cores, its API process on the relay's CPU."""
    port = free_port()
    layout = plan_cpus(machine_cpus(), 1)
    bind = {OMP_BIND: layout.engine_binds[0]} if layout.engine_binds[0] else {}
    vllm = ManagedProcess(
        "vllm api_server",
        [
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            DEFAULT_MODEL_ID,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-model-len",
            "2048",
            "--dtype",
            "bfloat16",
            "--enforce-eager",
            *extra_args,
        ],
        env={**ENGINE_ENV, **bind, **(env or {})},
        log_path=results / log,
        cpus=layout.relay,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: _models_listed(base),
            timeout_s=600,
            interval_s=1,
            watch=[vllm],
            what="vLLM's server",
        )
    except BaseException:
        vllm.stop()
        raise
    return vllm, base


def run(
    model_dir: Path,
    results: Path,
    concurrencies: tuple[int, ...],
    *,
    control: bool = False,
    colocated: bool = False,
    rounds: int = 2,
    pin_client: bool = True,
) -> list[dict]:
    """Every server stays up (idle while another is measured) and each concurrency runs
    them back to back, in `rounds` ABBA rounds (order), so the machine's drift lands on
    all alike. `colocated`: Tera's edge and router in one process (services/gateway).
    `pin_client`: the load generator on the serving processes' CPU (both servers'), off
    the engine's, as a remote client would be. Left to the OS, it lands on the engine's
    CPU the more often the busier the serving CPU is, and stalls that server's decode
    steps: Tera's, whose serving side is two processes to vLLM's one (README)."""
    client_cpus = plan_cpus(machine_cpus(), 1).relay if pin_client else None
    traces = {name: results / f"steps-{name}" for name in ("vllm", CONTROL, "tera")}
    with contextlib.ExitStack() as servers:
        vllm, vllm_base = start_vllm_server(model_dir, results, env=trace_env(traces["vllm"]))
        servers.callback(vllm.stop)
        targets = {"vllm": Target(vllm_base, (vllm.pid,), traces["vllm"])}
        if control:
            other, other_base = start_vllm_server(
                model_dir, results, log=f"{CONTROL}.log", env=trace_env(traces[CONTROL])
            )
            servers.callback(other.stop)
            targets[CONTROL] = Target(other_base, (other.pid,), traces[CONTROL])
        plan = vllm_plan(model_dir, results, colocated=colocated, env=trace_env(traces["tera"]))
        stack = Stack(plan).start(timeout_s=600)
        servers.callback(stack.stop)
        serving = tuple(p.pid for p in stack.processes)  # engine front, router, edge
        targets["tera"] = Target(stack.plan.base_url.removesuffix("/v1"), serving, traces["tera"])
        rows = [
            row
            for c in concurrencies
            for row in _concurrency(
                targets,
                results,
                Load(model_dir, c, prompts_per_half(c, rounds), client_cpus),
                order(rounds, control=control),
            )
        ]
    return rows + ratios(rows)


def _concurrency(
    targets: dict[str, Target],
    results: Path,
    load: Load,
    halves_order: tuple[tuple[str, int], ...],
) -> list[dict]:
    c = load.concurrency
    halves: dict[str, list[dict]] = {name: [] for name in targets}
    for name, seed in halves_order:
        halves[name].append(_bench(targets[name], load, half_path(results, name, c, seed)))
    return [{"target": name, "concurrency": c, **combine(halves[name])} for name in targets]


def half_path(results: Path, target: str, concurrency: int, seed: int | str) -> Path:
    """Where one half's `vllm bench serve` result lies (bench.pooled reads it back)."""
    return results / f"{target}-c{concurrency}-seed{seed}.json"


def half_seed(path: Path) -> int:
    """The seed a half ran with, from its path (half_path)."""
    return int(path.stem.rpartition("-seed")[2])


def read_halves(results: Path, target: str, concurrency: int) -> list[dict]:
    """A target's `vllm bench serve` results at one concurrency, in the order they ran,
    as `run` left them: what bench.pooled and the plots read back. A target that did not
    run (the control, by default) has none."""
    paths = sorted(results.glob(half_path(Path(), target, concurrency, "*").name), key=half_seed)
    return [json.loads(path.read_text()) for path in paths]


def served_ttfts(halves: list[dict]) -> list[float]:
    """The first-token times (s) of the requests that did not fail, over all halves."""
    return [t for h in halves for t, e in zip(h["ttfts"], h["errors"], strict=True) if not e]


def combine(halves: list[dict]) -> dict:
    """One row from several `vllm bench serve` results, computed as vLLM computes it
    (numpy percentiles, ms) over all their requests."""
    ttfts = served_ttfts(halves)
    itls = [i for h in halves for req in h["itls"] for i in req]
    duration = sum(h["duration"] for h in halves)
    completed = sum(h["completed"] for h in halves)
    tokens = sum(h["total_output_tokens"] for h in halves)
    return {
        "output_throughput": tokens / duration,
        "request_throughput": completed / duration,
        "p50_ttft_ms": float(np.percentile(ttfts, 50)) * 1000,
        "mean_ttft_ms": float(np.mean(ttfts)) * 1000,
        "p99_ttft_ms": float(np.percentile(ttfts, 99)) * 1000,
        "p50_itl_ms": float(np.percentile(itls, 50)) * 1000,
        "p99_itl_ms": float(np.percentile(itls, 99)) * 1000,
        "completed": completed,
        "failed": sum(h["num_prompts"] - h["completed"] for h in halves),
        **_halves_apart(halves),
        **_cpu_figures(halves, tokens),
        **_engine_figures(halves),
    }


def half_throughput(half: dict) -> float:
    """Output tokens a second of one `vllm bench serve` result (0 for an empty one)."""
    return half["total_output_tokens"] / half["duration"] if half["duration"] else 0.0


def _halves_apart(halves: list[dict]) -> dict:
    """The last half's output throughput over the first's: how far one server's two
    halves of the same run land apart, the noise any ratio between two servers carries."""
    first, last = half_throughput(halves[0]), half_throughput(halves[-1])
    return {HALVES_APART: last / first} if len(halves) > 1 and first else {}


def _cpu_figures(halves: list[dict], tokens: int) -> dict:
    """CPU milliseconds per 1,000 output tokens, serving processes and model apart, the
    CPUs the EngineCore kept busy over the halves' wall time, and the serving threads'
    runnable wait per request (each absent from results that did not count it)."""
    if tokens == 0 or not all("serving_cpu_s" in h for h in halves):
        return {}
    figures = {
        "serving_cpu_ms_per_ktok": sum(h["serving_cpu_s"] for h in halves) / tokens * 1e6,
        "model_cpu_ms_per_ktok": sum(h["model_cpu_s"] for h in halves) / tokens * 1e6,
    }
    if all("engine_core_cpu_s" in h for h in halves):
        wall = sum(h["wall_s"] for h in halves)
        figures["engine_core_cpus"] = sum(h["engine_core_cpu_s"] for h in halves) / wall
    requests = sum(h["completed"] for h in halves)
    if requests and all("serving_wait_s" in h for h in halves):
        waited = sum(h["serving_wait_s"] for h in halves)
        figures["serving_wait_ms_per_req"] = waited / requests * 1000
    return figures


def _engine_figures(halves: list[dict]) -> dict:
    """The engine's mean step and its idle time between steps, in ms (bench.engine_steps;
    absent from results whose workers were not traced)."""
    steps = sum(h.get("engine_steps", 0) for h in halves)
    if not steps or not all("engine_steps" in h for h in halves):
        return {}
    figures = {
        ENGINE_STEP: sum(h["engine_busy_s"] for h in halves) / steps * 1000,
        ENGINE_IDLE: sum(h["engine_idle_s"] for h in halves) / steps * 1000,
    }
    splits = [FirstTokenSplit(**h["first_token_split"]) for h in halves if "first_token_split" in h]
    requests = sum(split.requests for split in splits)
    if len(splits) == len(halves) and requests:
        totals = (sum(split.parts_s[i] for split in splits) for i in range(3))
        for column, total in zip(FIRST_TOKEN_COLUMNS, totals, strict=True):
            figures[column] = total / requests * 1000
        if sum(split.server_out_requests for split in splits) == requests:
            figures[SERVER_OUT] = sum(split.server_out_s for split in splits) / requests * 1000
    return figures


def _pace_adjusted(target: dict, vllm: dict) -> dict:
    """The throughput ratio with the engine's own pace taken out (times the ratio of
    their engine steps): what the serving side leaves of it, the engine's draw at each
    start (a few % between two starts of one server) aside."""
    if not (target.get(ENGINE_STEP) and vllm.get(ENGINE_STEP)):
        return {}
    ratio = target["output_throughput"] / vllm["output_throughput"]
    return {PACE_ADJUSTED: ratio * target[ENGINE_STEP] / vllm[ENGINE_STEP]}


def ratios(rows: list[dict]) -> list[dict]:
    """Each other target (Tera, the control) over vLLM, per concurrency (throughput and CPU
    per token as ratios, latency as a delta in ms)."""
    out = []
    others = [name for name in dict.fromkeys(r["target"] for r in rows) if name != "vllm"]
    for name, c in itertools.product(others, sorted({r["concurrency"] for r in rows})):
        v = next(r for r in rows if r["target"] == "vllm" and r["concurrency"] == c)
        t = next(r for r in rows if r["target"] == name and r["concurrency"] == c)
        out.append(
            {
                "target": f"{name}/vllm",
                "concurrency": c,
                "output_throughput": t["output_throughput"] / v["output_throughput"],
                **_pace_adjusted(t, v),
                "request_throughput": t["request_throughput"] / v["request_throughput"],
                **{
                    k: t[k] - v[k]
                    for k in (*LATENCY_COLUMNS, ENGINE_IDLE, *FIRST_TOKEN_COLUMNS, SERVER_OUT)
                    if k in t and k in v
                },
                **{k: t[k] / v[k] for k in (*CPU_COLUMNS, ENGINE_STEP) if t.get(k) and v.get(k)},
            }
        )
    return out
