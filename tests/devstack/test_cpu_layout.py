"""How `tera run` lays vLLM engines and the relay out on the machine's CPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from devstack import run
from devstack.cpu_layout import OMP_BIND, CpuLayout, machine_cpus, plan_cpus


@pytest.mark.parametrize(
    ("cpus", "engines", "layout"),
    [
        ([0, 1], 1, CpuLayout(["0"], frozenset({1}))),  # as vLLM's server: one core left over
        ([0, 1], 2, CpuLayout(["0", "1"], None)),  # not both on core 0, as vLLM's auto does
        ([0, 1], 3, CpuLayout(["0", "1", "0"], None)),
        ([0, 1, 2, 3, 4, 5, 6, 7], 2, CpuLayout(["0,1,2,3", "4,5,6"], frozenset({7}))),
        ([4, 2, 3], 1, CpuLayout(["2,3"], frozenset({4}))),  # a cpuset, not 0..n-1
        ([0], 1, CpuLayout([None], None)),  # one CPU: nothing to separate
        ([0, 1], 0, CpuLayout([], None)),
    ],
)
def test_engines_get_their_own_cpus_and_the_relay_the_rest(
    cpus: list[int], engines: int, layout: CpuLayout
) -> None:
    assert plan_cpus(cpus, engines) == layout


def _plan(monkeypatch: pytest.MonkeyPatch, cpus: list[int], argv: list[str]):
    monkeypatch.setattr(run, "machine_cpus", lambda: cpus)
    return run.default_plan(run.build_parser().parse_args(argv), Path("/models/x"))


def test_tera_run_pins_vllm_replicas_and_relay_but_not_speech(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plan = _plan(monkeypatch, [0, 1, 2, 3], ["--replicas", "2"])
    speech = plan.engine_ports[-1]
    assert [plan.engine_env(p).get(OMP_BIND) for p in plan.engine_ports] == ["0,1", "2", None]
    assert OMP_BIND not in plan.engine_env(speech)
    assert plan.relay_cpus == frozenset({3})
    # The engines' other threads (serving, vLLM's scheduler) stay off the OpenMP cores.
    serving = [plan.serving_cpus(plan.engine_env(p)) for p in plan.engine_ports]
    assert serving == [frozenset({3}), frozenset({3}), None]


def test_cpu_pinning_off_leaves_vllm_its_own_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(monkeypatch, [0, 1, 2, 3], ["--cpu-pinning", "off", "--no-speech"])
    assert OMP_BIND not in plan.engine_env(plan.engine_ports[0])
    assert plan.relay_cpus is None
    assert plan.serving_cpus(plan.engine_env(plan.engine_ports[0])) is None


def test_catalog_pins_each_chat_replica_and_leaves_speech_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    models = [
        {"id": "speech", "kind": "speech", "serving": {"replicas": 1}},
        {"id": "chat", "weights": str(tmp_path), "serving": {"replicas": 2}},
    ]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"models": models}))
    monkeypatch.setattr(run, "machine_cpus", lambda: [0, 1, 2])
    plan = run.plan_from_catalog(run.build_parser().parse_args(["--catalog", str(catalog)]))
    assert [plan.engine_env(p).get(OMP_BIND) for p in plan.engine_ports] == [None, "0", "1"]
    assert plan.relay_cpus == frozenset({2})


@pytest.mark.skipif(len(machine_cpus()) < 2, reason="needs a CPU to keep the relay on")
def test_an_engine_with_bound_openmp_threads_serves_from_the_relay_cpus(scripted_stack) -> None:
    """Its serving threads and vLLM's scheduler process share the relay's CPU, off the
    OpenMP core, where they would stall a decode step (vLLM's own server keeps its API
    process off it the same way); an engine without a binding runs anywhere."""
    *compute, relay = machine_cpus()
    stack = scripted_stack(
        engines=2,
        per_engine_env=[{OMP_BIND: str(compute[0])}, {}],
        relay_cpus=frozenset({relay}),
    ).stack
    bound, unbound = stack.engines
    assert os.sched_getaffinity(bound.pid) == {relay}
    assert os.sched_getaffinity(unbound.pid) == set(machine_cpus())
    assert os.sched_getaffinity(stack.router.pid) == {relay}
