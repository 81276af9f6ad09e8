"""Shared fixtures: real service processes on free loopback ports.

`vllm_stack` starts one real vLLM engine (the default model), a router and an edge once
per session. `scripted_stack` builds stacks of stand-in engines that speak the real
proto, for fast validation, fault and load tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.engine_args import scripted_engine_args, vllm_engine_args
from devstack.processes import free_port, interrupt_on_sigterm
from devstack.stack import Stack, StackPlan
from services.common.tls import sync_channel
from services.engine.model_prep import DEFAULT_MODEL_ID, default_model_dir, prepare_default_model
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache"
SCRIPTED_MODEL = "tera-test/scripted"
# The default model's weights, served a second time with vLLM's hermes tool parser and
# qwen3 reasoning parser: tests force their formats with structured outputs.
PARSERS_MODEL = "tera-test/smollm2-hermes-qwen3"
VARIANTS = [{"model_id": PARSERS_MODEL, "tool_call_parser": "hermes", "reasoning_parser": "qwen3"}]


def pytest_configure(config: pytest.Config) -> None:
    interrupt_on_sigterm()  # a killed run still stops the stacks its fixtures started


@dataclass
class RunningStack:
    stack: Stack

    @property
    def base_url(self) -> str:
        return self.stack.plan.base_url

    @property
    def ops_url(self) -> str:
        return self.stack.plan.ops_url

    @property
    def engine_addresses(self) -> list[str]:
        plan = self.stack.plan
        return [f"{plan.host}:{p}" for p in plan.engine_ports]

    def engine_load(self, index: int = 0) -> pb.LoadReport:
        plan = self.stack.plan
        with sync_channel(self.engine_addresses[index], plan.client_tls("router")) as channel:
            return pb_grpc.EngineStub(channel).GetLoad(pb.GetLoadRequest(), timeout=5)


def _plan(
    log_dir: Path, engines: int, engine_args: list[str], model_ids: list[str], **kwargs: object
) -> StackPlan:
    ports = kwargs.pop("engine_ports", None)  # a test that needs the replicas' order
    return StackPlan(
        edge_port=free_port(),
        edge_ops_port=free_port(),
        router_port=free_port(),
        engine_ports=ports or [free_port() for _ in range(engines)],  # type: ignore[arg-type]
        engine_args=engine_args,
        model_ids=model_ids,
        log_dir=log_dir,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return prepare_default_model(default_model_dir(CACHE_DIR))


@pytest.fixture(scope="session")
def vllm_stack(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    engine_args = [*vllm_engine_args(model_dir, CACHE_DIR), "--variants", json.dumps(VARIANTS)]
    log_dir = tmp_path_factory.mktemp("vllm-stack")
    # Router defaults: a 1,200-token prefill on a loaded 2-core host outlasts the 30 s
    # first-message timeout, and the only replica's call is awaited past it (relay.py).
    plan = _plan(log_dir, 1, engine_args, [DEFAULT_MODEL_ID, PARSERS_MODEL])
    stack = Stack(plan).start(timeout_s=600)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()


def scripted_args(**behaviour: object) -> list[str]:
    return scripted_engine_args(SCRIPTED_MODEL, **behaviour)


@pytest.fixture
def scripted_stack(tmp_path: Path) -> Iterator[Callable[..., RunningStack]]:
    """Factory: scripted_stack(engines=2, behaviour={...}, router_args=[...])."""
    started: list[Stack] = []

    def start(
        engines: int = 1,
        behaviour: dict | None = None,
        model_ids: list[str] | None = None,
        **kwargs: object,
    ) -> RunningStack:
        plan = _plan(
            tmp_path / f"stack{len(started)}",
            engines,
            scripted_args(**(behaviour or {})),
            model_ids or [SCRIPTED_MODEL],
            **kwargs,
        )
        stack = Stack(plan)
        started.append(stack)
        return RunningStack(stack.start(timeout_s=60))

    yield start
    for stack in started:
        stack.stop()


@pytest.fixture(scope="session")
def shared_scripted_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """One scripted stack for the many read-only validation tests."""
    plan = _plan(tmp_path_factory.mktemp("scripted-shared"), 1, scripted_args(), [SCRIPTED_MODEL])
    stack = Stack(plan).start(timeout_s=60)
    try:
        yield RunningStack(stack)
    finally:
        stack.stop()
