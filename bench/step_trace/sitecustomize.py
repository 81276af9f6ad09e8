"""Times what the vs-vLLM bench reads of vLLM's engine under each server
(bench/engine_steps.py reads the result). Python imports this module at start-up when
this folder is on PYTHONPATH; it does nothing unless TERA_BENCH_STEP_TRACE names a folder.

- Each model worker process appends one line per call the engine core makes into it to
  `worker-<pid>.txt` there: the method's name and its start and end.
- The process hosting vLLM's AsyncLLM (vLLM's API server; Tera's engine) appends one
  line per batch of the engine core's outputs it takes to `outputs-<pid>.txt`: when the
  engine core stamped the batch and when the process's output handler took it.

All times are CLOCK_MONOTONIC, one clock for every process on the host. Both servers
under test get it alike, so what it costs (a line written per call or batch) costs both
the same.

Standalone (no Tera imports): the worker is a process vLLM spawns, with vLLM's sys.path.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import IO, Any

TRACE_DIR_ENV = "TERA_BENCH_STEP_TRACE"
# Where vLLM's worker runs each call the engine core broadcasts to it.
WORKER_MODULE = "vllm.v1.executor.multiproc_executor"
# Where AsyncLLM's output handler takes each batch of the engine core's outputs.
CLIENT_MODULE = "vllm.v1.engine.core_client"


class _Log:
    """A trace file opened on first use, in the process that writes it (not in the one
    that imported the module and spawned it)."""

    def __init__(self, trace_dir: str, kind: str) -> None:
        self._name = f"{trace_dir}/{kind}-{{pid}}.txt"
        self._file: IO[str] | None = None

    def write(self, line: str) -> None:
        if self._file is None:
            self._file = open(self._name.format(pid=os.getpid()), "a", buffering=1)  # noqa: SIM115
        self._file.write(line)


def _timed(run_call: Any, log: _Log) -> Any:
    def run_timed(self: Any, rpc_request: tuple[Any, ...]) -> None:
        started = time.monotonic()
        try:
            run_call(self, rpc_request)
        finally:
            ended = time.monotonic()
            method = rpc_request[0] if isinstance(rpc_request[0], str) else "function"
            log.write(f"{method} {started:.6f} {ended:.6f}\n")

    return run_timed


def _taken(get_output: Any, log: _Log) -> Any:
    async def get_output_taken(self: Any) -> Any:
        outputs = await get_output(self)
        if outputs.outputs:  # not a batch of scheduler statistics alone
            log.write(f"outputs {outputs.timestamp:.6f} {time.monotonic():.6f}\n")
        return outputs

    return get_output_taken


def instrument_worker(module: ModuleType, trace_dir: str) -> None:
    worker = module.WorkerProc
    worker._execute_worker_rpc = _timed(worker._execute_worker_rpc, _Log(trace_dir, "worker"))


def instrument_client(module: ModuleType, trace_dir: str) -> None:
    client = module.AsyncMPClient
    client.get_output_async = _taken(client.get_output_async, _Log(trace_dir, "outputs"))


INSTRUMENTS: dict[str, Callable[[ModuleType, str], None]] = {
    WORKER_MODULE: instrument_worker,
    CLIENT_MODULE: instrument_client,
}


class _InstrumentOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, trace_dir: str) -> None:
        self._trace_dir = trace_dir

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        instrument = INSTRUMENTS.get(name)
        if instrument is None:
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
