"""The engine's pace as the vs-vLLM bench reads it from the model workers: the hook that
times their calls works on the vLLM installed here, and steps, busy and idle time are
counted within a half's window only."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import ROOT
from bench.engine_steps import (
    EngineSteps,
    FirstTokenSplit,
    first_token_split,
    read_calls,
    read_outputs,
    steps_between,
    trace_env,
)
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


# Two requests sent one at a time: each one's prefill step, then (the first's) a decode.
ONE_AT_A_TIME = [
    ("execute_model", 1.005, 1.080),
    ("sample_tokens", 1.081, 1.085),
    ("execute_model", 1.086, 1.120),
    ("sample_tokens", 1.1205, 1.125),
    ("execute_model", 2.006, 2.090),
    ("sample_tokens", 2.091, 2.095),
]


def test_a_first_token_splits_into_the_way_in_the_first_step_and_the_way_out() -> None:
    requests = [(1.000, 1.087), (2.000, 2.097), (3.000, 3.1)]  # the last: no step after it
    split = first_token_split([ONE_AT_A_TIME], requests)
    assert split.requests == 2
    assert split.way_in_s == pytest.approx(0.005 + 0.006)
    assert split.first_step_s == pytest.approx(0.080 + 0.089)
    assert split.way_out_s == pytest.approx(0.002 + 0.002)
    assert first_token_split([], requests) == FirstTokenSplit()
    assert split.server_out_requests == 0  # no outputs traced: the server's part unknown


def test_the_way_out_splits_where_the_server_takes_the_steps_outputs() -> None:
    requests = [(1.000, 1.087), (2.000, 2.097)]
    outputs = [
        (1.0400, 1.0410),  # an earlier step's, stamped before the prefill step ended
        (1.0853, 1.0861),  # the prefill's: taken 0.9 ms before the first token
        (2.0952, 2.0958),
    ]
    split = first_token_split([ONE_AT_A_TIME], requests, outputs)
    assert split.requests == split.server_out_requests == 2
    assert split.way_out_s == pytest.approx(0.002 + 0.002)
    assert split.server_out_s == pytest.approx(0.0009 + 0.0012)
    # A request whose step's outputs were not traced is not counted: the next batch, taken
    # after its first token, is not the one that carried it.
    partial = first_token_split([ONE_AT_A_TIME], requests, [*outputs[:2], (2.1200, 2.1205)])
    assert partial.server_out_requests == 1
    assert partial.server_out_s == pytest.approx(0.0009)


def _run_hooked(program: str, trace_dir: Path) -> str:
    """Runs `program` in a process that loads the step-trace hook; its standard output."""
    env = {**os.environ, **trace_env(trace_dir)}
    out = subprocess.run(
        [sys.executable, "-c", program], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


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
    assert "pong" in _run_hooked(program, tmp_path / "steps")  # the call itself still ran
    ((call,),) = read_calls(tmp_path / "steps")
    method, started, ended = call
    assert method == "ping" and 0 < started <= ended


def test_the_outputs_the_server_takes_are_timed_by_the_hook_on_the_installed_vllm(
    tmp_path: Path,
) -> None:
    # vLLM's own AsyncMPClient.get_output_async on a stand-in client holding one batch of
    # outputs, stamped by EngineCoreOutputs itself as the engine core does, and one of
    # scheduler statistics alone, which is no step's output and is not written.
    program = (
        "import asyncio, types\n"
        "from vllm.v1.engine import EngineCoreOutputs\n"
        "from vllm.v1.engine.core_client import AsyncMPClient\n"
        "async def main():\n"
        "    queue = asyncio.Queue()\n"
        "    queue.put_nowait(EngineCoreOutputs(outputs=[None]))\n"
        "    queue.put_nowait(EngineCoreOutputs(outputs=[]))\n"
        "    client = types.SimpleNamespace(_ensure_output_queue_task=lambda: None,\n"
        "                                   outputs_queue=queue)\n"
        "    for _ in range(2):\n"
        "        print(len((await AsyncMPClient.get_output_async(client)).outputs))\n"
        "asyncio.run(main())\n"
    )
    # Both batches still reached the caller.
    assert _run_hooked(program, tmp_path / "steps").split() == ["1", "0"]
    ((stamped, taken),) = read_outputs(tmp_path / "steps")
    assert 0 < stamped <= taken


def test_first_token_splits_pool_per_request_and_are_deltas_against_vllm() -> None:
    def half(
        way_in_s: float, step_s: float, way_out_s: float, requests: int, server_s: float = 0.0
    ) -> dict:
        split = FirstTokenSplit(way_in_s, step_s, way_out_s, requests, server_s, requests)
        return _half(10, 0.4, 0.004) | {"first_token_split": dataclasses.asdict(split)}

    vllm = combine([half(0.010, 0.170, 0.003, 2, 0.002), half(0.015, 0.255, 0.0045, 3, 0.003)])
    tera = combine([half(0.025, 0.425, 0.0125, 5, 0.0075)])
    assert vllm["first_token_in_ms"] == pytest.approx(5.0)
    assert vllm["first_token_step_ms"] == pytest.approx(85.0)
    assert vllm["first_token_out_ms"] == pytest.approx(1.5)
    assert vllm["first_token_out_server_ms"] == pytest.approx(1.0)
    (ratio,) = ratios(
        [{"target": "vllm", "concurrency": 1, **vllm}, {"target": "tera", "concurrency": 1, **tera}]
    )
    assert ratio["first_token_out_ms"] == pytest.approx(1.0)
    assert ratio["first_token_in_ms"] == pytest.approx(0.0)
    assert ratio["first_token_out_server_ms"] == pytest.approx(0.5)
    # Halves whose outputs were not traced (results from before the hook read them) give
    # no server part rather than a mean over fewer requests.
    untraced = half(0.010, 0.170, 0.003, 2)
    untraced["first_token_split"]["server_out_requests"] = 0
    assert "first_token_out_server_ms" not in combine([half(0.01, 0.17, 0.003, 2, 0.002), untraced])
    # A half that did not split its first tokens (not concurrency 1) leaves them out.
    assert "first_token_in_ms" not in combine([half(0.01, 0.17, 0.003, 2), _half(1, 0.04, 0)])


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
