"""Fixtures of the fault tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from devstack.processes import free_port
from services.edge.config import EdgeConfig
from services.router.config import RouterConfig
from tests.conftest import RunningStack
from tests.faults.fleet import ROUTER_SETTINGS


@pytest.fixture
def engine_transport() -> str:
    """The router's engine_transport in the fleets below: the shipped default; a test
    module parametrizes it to run its tests over both."""
    return RouterConfig().engine_transport


@pytest.fixture
def router_transport() -> str:
    """The edge's router_transport in the fleets below, as engine_transport is the router's."""
    return EdgeConfig().router_transport


@pytest.fixture
def resuming_fleet(
    scripted_stack: Callable[..., RunningStack],
    tmp_path: Path,
    engine_transport: str,
    router_transport: str,
):
    """resuming_fleet(replicas, behaviour, resume={...}, engine_extra=[...]): stand-in
    replicas that all behave alike, behind a router with these resume settings."""

    def start(
        replicas: int,
        behaviour: dict,
        resume: dict | None = None,
        engine_extra: list[str] | None = None,
    ) -> RunningStack:
        config = tmp_path / f"router-{replicas}.yaml"
        settings = {**ROUTER_SETTINGS, "engine_transport": engine_transport}
        config.write_text(yaml.safe_dump({**settings, "resume": resume or {}}))
        engine_args = ["--scripted", json.dumps(behaviour), *(engine_extra or [])]
        return scripted_stack(
            engines=replicas,
            per_engine_args=[engine_args] * replicas,
            router_args=["--config", str(config), "--metrics-port", str(free_port())],
            edge_args=["--router-transport", router_transport],
        )

    return start


@pytest.fixture
def fleet(
    scripted_stack: Callable[..., RunningStack],
    tmp_path: Path,
    engine_transport: str,
    router_transport: str,
) -> Callable[..., RunningStack]:
    """fleet([behaviour_a, behaviour_b], router={...}) -> a stack with those replicas.
    edge_extra: edge flags, after (so over) the fixtures' own."""

    def start(
        behaviours: list[dict],
        router: dict | None = None,
        engine_extra: list[str] | None = None,
        edge_extra: list[str] | None = None,
    ) -> RunningStack:
        config = tmp_path / "router.yaml"
        settings = {**ROUTER_SETTINGS, "engine_transport": engine_transport}
        config.write_text(yaml.safe_dump({**settings, **(router or {})}))
        return scripted_stack(
            engines=len(behaviours),
            per_engine_args=[
                ["--scripted", json.dumps(b), *(engine_extra or [])] for b in behaviours
            ],
            router_args=["--config", str(config), "--metrics-port", str(free_port())],
            edge_args=["--router-transport", router_transport, *(edge_extra or [])],
        )

    return start
