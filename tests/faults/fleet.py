"""What the fault tests share: the router settings that make faults show quickly,
probes of a running router's metrics and an engine's counters, and an engine restart."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.prefix_client import engine_totals
from devstack.processes import wait_until
from devstack.readiness import grpc_serving
from devstack.stack import StackPlan
from tests.conftest import RunningStack

# Fast health checks, a 1 s first-message deadline and a quick breaker: a fault shows in
# about a second.
ROUTER_SETTINGS = {
    "policy": "round_robin",
    "health": {"check_interval_s": 0.2, "check_timeout_s": 0.5, "load_poll_interval_s": 0.2},
    "retry": {"first_message_timeout_s": 1.0, "backoff_base_s": 0.01, "max_attempts": 3},
    "breaker": {"consecutive_failures": 3, "base_ejection_s": 0.5, "max_ejection_s": 2.0},
}

# A test marked with this runs twice: streams to the engines as plain calls, and
# multiplexed on stream links (the router's engine_transport: stream, the default).
BOTH_TRANSPORTS = pytest.mark.parametrize("engine_transport", ["per_call", "stream"])
# ... and a third time multiplexed on GenerateMux calls (engine_transport: mux).
EVERY_TRANSPORT = pytest.mark.parametrize("engine_transport", ["per_call", "mux", "stream"])

# Sent / succeeded / failed / silently truncated per scenario, printed as one table at
# the end of the fault suite.
RESULTS: dict[str, dict[str, int]] = {}


def record(name: str, summary: dict[str, int]) -> None:
    RESULTS[name] = summary
    print(f"\n[fault] {name}: {summary}")


def router_metric(stack: RunningStack, name: str, **labels: str) -> float:
    """The stack's router metric (its --metrics-port), summed over the series that match
    the labels given; 0 when absent."""
    return plan_router_metric(stack.stack.plan, name, **labels)


def plan_router_metric(plan: StackPlan, name: str, **labels: str) -> float:
    """router_metric for a plan's router (a bench's Stack as well as a test's)."""
    return scraped_metric(router_metrics_url(plan), name, **labels)


def router_metrics_url(plan: StackPlan) -> str:
    """Where the plan's router serves its metrics (its --metrics-port)."""
    args = plan.router_args
    return f"http://127.0.0.1:{args[args.index('--metrics-port') + 1]}/metrics"


def scraped_metric(url: str, name: str, **labels: str) -> float:
    """A Prometheus endpoint's metric, summed over the series that match the labels."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def engine_total(address: str) -> int:
    """Requests an engine has admitted since it started."""
    (total,) = engine_totals([address])
    return total


def restart_engine(stack: RunningStack, i: int = 0, timeout_s: float = 300) -> None:
    """Stops engine i (if still running) and starts it again on its port, with its own
    arguments; returns once it serves."""
    plan, engines = stack.stack.plan, stack.stack.engines
    engines.pop(i).stop(grace_s=1)
    extra = plan.per_engine_args[i] if i < len(plan.per_engine_args) else []
    stack.stack.start_engine(plan.engine_ports[i], extra)
    engines.insert(i, engines.pop())  # back at its index
    wait_until(
        lambda: grpc_serving(stack.engine_addresses[i]),
        timeout_s=timeout_s,
        interval_s=1,
        watch=engines,
        what=f"engine {i} to serve again",
    )
