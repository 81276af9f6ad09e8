"""The engine's pace as the vs-vLLM bench reads it from the model workers: the hook that
times their calls works on the vLLM installed here, and steps, busy and idle time are
counted within a half's window only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import ROOT
from bench.engine_steps import EngineSteps, read_calls, steps_between, trace_env
from bench.vs_vllm import combine, ratios

# A worker's calls: a warm-up long before the half, then two steps of two calls each.
CALLS = [
    ("compile_or_warm_up_model", 0.0, 5.0),
    ("execute_model", 10.000, 10.040),
    ("sample_tokens", 10.041, 10.045),
    ("execute_model", 10.046, 10.090),
    ("sample_tokens", 10.0905, 10.095),
]


def test_steps_in_a_window_count_their_busy_time_and_the_idle_time_before_each() -> None:
    steps = steps_between([CALLS], start=9.0, end=11.0)
    assert steps.steps == 2
    assert steps.busy_s == pytest.approx(0.045 + 0.049)
    # Only the second step's idle time: the first one's previous call (the warm-up)
    # ended before the window, in the pause between halves.
    assert steps.idle_s == pytest.approx(0.001)


def test_a_step_that_began_before_the_window_is_not_counted() -> None:
    steps = steps_between([CALLS], start=10.02, end=11.0)
    assert steps.steps == 1 and steps.busy_s == pytest.approx(0.049)
    assert steps.idle_s == pytest.approx(0.001)  # the first step's end fell in the window
    assert steps_between([], 0.0, 1.0) == EngineSteps()


def test_the_workers_calls_are_timed_by_the_hook_on_the_installed_vllm(tmp_path: Path) -> None:
    # One real WorkerProc call, run outside a worker: the hook must find vLLM's worker
    # module and method by the names it patches, and write what the bench reads back.
    program = (
        "import types\n"
        "from vllm.v1.executor.multiproc_executor import WorkerProc\n"
        "worker = types.SimpleNamespace(ping=lambda: 'pong')\n"
        "proc = types.SimpleNamespace(worker=worker, rank=0, handle_output=print)\n"
        "WorkerProc._execute_worker_rpc(proc, ('ping', (), {}, 0))\n"
    )
    env = {**os.environ, **trace_env(tmp_path / "steps")}
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "pong" in out.stdout  # the call itself still ran
    ((call,),) = read_calls(tmp_path / "steps")
    method, started, ended = call
    assert method == "ping" and 0 < started <= ended


def _half(steps: int, busy_s: float, idle_s: float) -> dict:
    return {
        "ttfts": [0.1],
        "itls": [[0.01]],
        "errors": [""],
        "duration": 1.0,
        "completed": 1,
        "num_prompts": 1,
        "total_output_tokens": 10,
        "engine_steps": steps,
        "engine_busy_s": busy_s,
        "engine_idle_s": idle_s,
    }


def test_the_engine_step_is_a_ratio_to_vllms_and_its_idle_time_a_delta() -> None:
    vllm = combine([_half(100, 4.0, 0.05), _half(300, 12.0, 0.15)])
    tera = combine([_half(200, 8.4, 0.12), _half(200, 8.4, 0.12)])
    assert vllm["engine_step_ms"] == pytest.approx(40)
    assert vllm["engine_idle_ms_per_step"] == pytest.approx(0.5)
    (ratio,) = ratios(
        [{"target": "vllm", "concurrency": 8, **vllm}, {"target": "tera", "concurrency": 8, **tera}]
    )
    assert ratio["engine_step_ms"] == pytest.approx(42 / 40)
    assert ratio["engine_idle_ms_per_step"] == pytest.approx(0.1)
    # Same throughput on a 5 % slower engine: the serving side gained 5 %.
    assert ratio["throughput_at_equal_engine_pace"] == pytest.approx(1.05)
    untraced = {k: v for k, v in _half(1, 0.04, 0.0).items() if not k.startswith("engine_")}
    assert "engine_step_ms" not in combine([untraced])
