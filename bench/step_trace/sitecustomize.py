"""Times each call vLLM's engine core makes into its model workers, for the vs-vLLM bench
(bench/engine_steps.py reads the result). Python imports this module at start-up when
this folder is on PYTHONPATH; it does nothing unless TERA_BENCH_STEP_TRACE names a folder.

Each worker process appends one line per call to `worker-<pid>.txt` there: the method's
name and its start and end (CLOCK_MONOTONIC, one clock for every process on the host).
Both servers under test get it alike, so what it costs (a line written per call, on the
worker's own CPU) costs both the same.

Standalone (no Tera imports): the worker is a process vLLM spawns, with vLLM's sys.path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from types import ModuleType
from typing import Any

TRACE_DIR_ENV = "TERA_BENCH_STEP_TRACE"
# Where vLLM's worker runs each call the engine core broadcasts to it.
WORKER_MODULE = "vllm.v1.executor.multiproc_executor"


def _timed(run_call: Any, trace_dir: str) -> Any:
    log = None

    def run_timed(self: Any, rpc_request: tuple[Any, ...]) -> None:
        nonlocal log
        started = time.monotonic()
        try:
            run_call(self, rpc_request)
        finally:
            ended = time.monotonic()
            if log is None:  # opened in the worker, not in the process that spawns it
                log = open(f"{trace_dir}/worker-{os.getpid()}.txt", "a", buffering=1)  # noqa: SIM115
            method = rpc_request[0] if isinstance(rpc_request[0], str) else "function"
            log.write(f"{method} {started:.6f} {ended:.6f}\n")

    return run_timed


def instrument(module: ModuleType, trace_dir: str) -> None:
    worker = module.WorkerProc
    worker._execute_worker_rpc = _timed(worker._execute_worker_rpc, trace_dir)


class _InstrumentOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, trace_dir: str) -> None:
        self._trace_dir = trace_dir

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != WORKER_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            load(module)
            instrument(module, self._trace_dir)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get(TRACE_DIR_ENV):
    sys.meta_path.insert(0, _InstrumentOnImport(os.environ[TRACE_DIR_ENV]))
