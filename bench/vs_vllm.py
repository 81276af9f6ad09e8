"""Part 1: Tera's full stack versus vLLM's own OpenAI server, same model, same engine
settings, both driven by `vllm bench serve` (openai-chat, random dataset, fixed seed,
streaming), one target at a time so they never compete for the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from bench.common import CACHE_DIR, ROOT
from services.common.processes import ManagedProcess, free_port, wait_until
from services.engine.model_prep import DEFAULT_MODEL_ID
from services.launcher import Stack, StackPlan, vllm_engine_args

INPUT_LEN, OUTPUT_LEN = 128, 64
METRICS = (
    "output_throughput",
    "request_throughput",
    "p50_ttft_ms",
    "p99_ttft_ms",
    "p50_itl_ms",
    "p99_itl_ms",
)
ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_USE_AOT_COMPILE": "0",
    "VLLM_CACHE_ROOT": str(CACHE_DIR / "vllm"),
    "TORCHINDUCTOR_CACHE_DIR": str(CACHE_DIR / "inductor"),
    "HF_HUB_OFFLINE": "1",
}


def prompts_for(concurrency: int) -> int:
    # p99 needs samples: at c=1 a request takes ~3 s here, so 32 is what time allows.
    return max(32, 4 * concurrency)


def _bench(base_url: str, model_dir: Path, concurrency: int, out: Path) -> dict:
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
            str(model_dir),
            "--dataset-name",
            "random",
            "--random-input-len",
            str(INPUT_LEN),
            "--random-output-len",
            str(OUTPUT_LEN),
            "--ignore-eos",
            "--num-prompts",
            str(prompts_for(concurrency)),
            "--max-concurrency",
            str(concurrency),
            "--seed",
            "0",
            "--num-warmups",
            "2",
            "--percentile-metrics",
            "ttft,itl,tpot",
            "--metric-percentiles",
            "50,99",
            "--disable-tqdm",
            "--save-result",
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
    )
    return json.loads(out.read_text())


def _models_listed(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=2) as r:
            return DEFAULT_MODEL_ID in r.read().decode()
    except OSError:
        return False


def _start_vllm(model_dir: Path, results: Path) -> tuple[ManagedProcess, str]:
    port = free_port()
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
        ],
        env=ENGINE_ENV,
        log_path=results / "vllm-server.log",
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


def run(model_dir: Path, results: Path, concurrencies: tuple[int, ...]) -> list[dict]:
    """Both servers stay up (idle while the other is measured) and each concurrency runs
    vLLM then Tera back to back, so the machine's drift lands on both alike."""
    rows: list[dict] = []
    plan = StackPlan(
        edge_port=free_port(),
        router_port=free_port(),
        engine_ports=[free_port()],
        engine_args=vllm_engine_args(model_dir, CACHE_DIR),
        log_dir=results,
    )
    vllm, vllm_base = _start_vllm(model_dir, results)
    try:
        stack = Stack(plan).start(timeout_s=600)
        try:
            targets = {"vllm": vllm_base, "tera": plan.base_url.removesuffix("/v1")}
            for c in concurrencies:
                for name, base in targets.items():
                    result = _bench(base, model_dir, c, results / f"{name}-c{c}.json")
                    rows.append({"target": name, "concurrency": c, **_pick(result)})
        finally:
            stack.stop()
    finally:
        vllm.stop()
    return rows + ratios(rows)


def _pick(result: dict) -> dict:
    return {m: result[m] for m in METRICS} | {"completed": result.get("completed")}


def ratios(rows: list[dict]) -> list[dict]:
    """Tera / vLLM per concurrency (throughput: higher is better; latency: delta in ms)."""
    out = []
    for c in sorted({r["concurrency"] for r in rows}):
        v = next(r for r in rows if r["target"] == "vllm" and r["concurrency"] == c)
        t = next(r for r in rows if r["target"] == "tera" and r["concurrency"] == c)
        out.append(
            {
                "target": "tera/vllm",
                "concurrency": c,
                "output_throughput": t["output_throughput"] / v["output_throughput"],
                "request_throughput": t["request_throughput"] / v["request_throughput"],
                "p50_ttft_ms": t["p50_ttft_ms"] - v["p50_ttft_ms"],
                "p99_ttft_ms": t["p99_ttft_ms"] - v["p99_ttft_ms"],
                "p50_itl_ms": t["p50_itl_ms"] - v["p50_itl_ms"],
                "p99_itl_ms": t["p99_itl_ms"] - v["p99_itl_ms"],
            }
        )
    return out
