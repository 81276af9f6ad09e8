"""Helpers for the client tests: the router's address of a running stack."""

from __future__ import annotations

from tests.conftest import RunningStack


def router_address(stack: RunningStack) -> str:
    plan = stack.stack.plan
    return f"{plan.host}:{plan.router_port}"
