"""The engine's own pace, read from its model workers: how long each step computed and
how long the worker waited between steps. Both servers run the same engine, so a
difference in the first is the engine's (its start, the host's drift), and a difference
in the second is what the serving side costs the engine's cadence.

Each worker's calls are timed by bench/step_trace/sitecustomize.py, which a server's
processes load when `trace_env` is in their environment; so is the moment the process
hosting vLLM's AsyncLLM (vLLM's API server, Tera's engine) takes each batch of the
engine core's outputs, where a first token's way out leaves the engine's code, the same
in both servers, and enters the server's own.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT

TRACE_HOOK_DIR = ROOT / "bench" / "step_trace"
TRACE_DIR_ENV = "TERA_BENCH_STEP_TRACE"  # the hook keeps its own copy: it imports no Tera
# A step starts when the engine core sends the batch; the calls up to the next one (the
# sampling, on vLLM versions that split it out) are the rest of that step.
STEP_START = "execute_model"

# One worker's timed calls, in order: (method, start, end), CLOCK_MONOTONIC seconds.
Calls = list[tuple[str, float, float]]
# A batch of the engine core's outputs: (stamped by the core, taken by the serving
# process), CLOCK_MONOTONIC seconds.
Output = tuple[float, float]


@dataclass(frozen=True)
class EngineSteps:
    """The steps that started in a time window: the workers' busy time for them and the
    time they waited, idle, between one step's end and the next one's start."""

    steps: int = 0
    busy_s: float = 0.0
    idle_s: float = 0.0


def trace_env(trace_dir: Path) -> dict[str, str]:
    """Environment for a server whose workers should time their calls into trace_dir."""
    trace_dir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(TRACE_HOOK_DIR), os.environ.get("PYTHONPATH")) if p)
    return {TRACE_DIR_ENV: str(trace_dir), "PYTHONPATH": path}


def read_calls(trace_dir: Path) -> list[Calls]:
    """Each worker's timed calls (method, start, end), in order, one list per worker."""
    workers = []
    for path in sorted(trace_dir.glob("worker-*.txt")):
        calls: Calls = []
        for line in path.read_text().splitlines():
            method, start, end = line.split()
            calls.append((method, float(start), float(end)))
        workers.append(calls)
    return workers


def read_outputs(trace_dir: Path) -> list[Output]:
    """When each batch of the engine core's outputs was stamped and when it was taken, over
    the serving processes that traced them (vLLM's API server; Tera's engine), in the
    order they were stamped."""
    outputs = []
    for path in trace_dir.glob("outputs-*.txt"):
        for line in path.read_text().splitlines():
            _, stamped, taken = line.split()
            outputs.append((float(stamped), float(taken)))
    return sorted(outputs)


def _steps(calls: Calls) -> list[tuple[int, int]]:
    """Each step's first and last call (indexes into calls): from its batch's arrival
    to the call before the next step's."""
    starts = [i for i, (method, _, _) in enumerate(calls) if method == STEP_START]
    return [(i, after - 1) for i, after in zip(starts, [*starts[1:], len(calls)], strict=True)]


def steps_between(workers: list[Calls], start: float, end: float) -> EngineSteps:
    """The steps whose batch reached the first worker within [start, end] (each worker
    runs every step), and the idle time before each, back to the worker's previous call
    when that too fell within the window (not the pause between two halves)."""
    if not workers:
        return EngineSteps()
    calls = workers[0]
    steps, busy, idle = 0, 0.0, 0.0
    for first, last in _steps(calls):
        began = calls[first][1]
        if not start <= began <= end:
            continue
        steps += 1
        busy += calls[last][2] - began
        if first > 0 and calls[first - 1][2] >= start:
            idle += began - calls[first - 1][2]
    return EngineSteps(steps, busy, idle)


@dataclass(frozen=True)
class FirstTokenSplit:
    """Summed over requests, in seconds: the way in (the client's send to the worker's
    first step for it), that step (the prefill), and the way out (the step's end to the
    client's first token)."""

    way_in_s: float = 0.0
    first_step_s: float = 0.0
    way_out_s: float = 0.0
    requests: int = 0
    # Of the way out, the server's own part: from its process taking the step's outputs
    # from the engine core to the client's first token, over the requests whose outputs
    # were traced (the rest, the engine core's, is the same code in both servers).
    server_out_s: float = 0.0
    server_out_requests: int = 0

    @property
    def parts_s(self) -> tuple[float, float, float]:
        return (self.way_in_s, self.first_step_s, self.way_out_s)


def first_token_split(
    workers: list[Calls], requests: list[tuple[float, float]], outputs: Sequence[Output] = ()
) -> FirstTokenSplit:
    """Requests sent one at a time (concurrency 1), each as (sent, first token) on the
    workers' clock (CLOCK_MONOTONIC: `vllm bench serve`'s perf_counter): each one's first
    step is the first the worker began after it was sent, as none other is running, and
    its outputs the first batch the engine core stamped after that step ended."""
    if not workers:
        return FirstTokenSplit()
    calls = workers[0]
    steps = _steps(calls)
    began = [calls[first][1] for first, _ in steps]
    stamped = [stamp for stamp, _ in outputs]
    way_in = step = way_out = server_out = 0.0
    counted = served = 0
    for sent, first_token in requests:
        k = bisect.bisect_left(began, sent)
        if k >= len(steps):
            continue
        ended = calls[steps[k][1]][2]
        way_in += began[k] - sent
        step += ended - began[k]
        way_out += first_token - ended
        counted += 1
        o = bisect.bisect_left(stamped, ended)
        if o < len(outputs) and outputs[o][1] <= first_token:
            server_out += first_token - outputs[o][1]
            served += 1
    return FirstTokenSplit(way_in, step, way_out, counted, server_out, served)
