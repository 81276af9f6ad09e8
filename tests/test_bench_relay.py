"""The relay part's GPU-shaped figures: every stream's tokens arrive, and each step is
reported beside the host reference measured around it (the host's speed drifts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import relay, sections, transport_floor
from devstack.stack import Stack


def test_each_gpu_shaped_step_carries_the_host_speed_it_ran_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "STREAM_SECONDS", 0.5)
    monkeypatch.setattr(relay, "TRANSPORT_FLOOR_SECONDS", 0.5)
    monkeypatch.setattr(relay, "SPLIT_STREAMS", (1,))
    references = iter([20.0, 30.0, 40.0, 60.0, 100.0, 120.0, 1.0, 3.0, 5.0, 7.0])
    monkeypatch.setattr(relay, "host_reference_ms", lambda: next(references))
    started: list[Stack] = []
    relay_stack = relay.relay_stack

    def recorded(*args: Any, **kwargs: Any) -> Stack:
        started.append(stack := relay_stack(*args, **kwargs))
        return stack

    monkeypatch.setattr(relay, "relay_stack", recorded)

    result = relay.run_gpu_shaped(tmp_path, (2, 4))

    steps = result["steps"]
    assert [s["streams"] for s in steps] == [1, 2, 4]
    assert [s["errors"] for s in steps] == [0, 0, 0]
    assert [s["host_reference_ms"] for s in steps] == [25.0, 50.0, 110.0]
    # Then tera run's default: edge and router in one process, the router's CPU in it.
    assert [s.router is None for s in started] == [False, True]
    gateway = result["gateway_steps"]
    assert [(s["streams"], s["errors"]) for s in gateway] == [(2, 0), (4, 0)]
    assert all(s["router_cpu_per_1k"] == 0 for s in gateway)
    table = "\n".join(sections._gpu_shaped_section(result))
    assert "host_reference_ms" in table and "110" in table
    assert table.count("| gateway |") == 2 and table.count("| split |") == 3
    assert set(result["split"]) == {"edge", "router"}
    assert "Transport floor" in table and "gRPC aio read" in table
    assert "The edge's floor a step at 32 streams" in table


def test_the_split_recovers_a_cost_a_step_and_a_cost_a_token() -> None:
    # 300 µs a step at 100 steps/s plus 20 µs a token, for the edge; the router half that.
    def step(streams: int) -> relay.StepResult:
        tokens_per_s = streams * relay.GPU_SHAPED_RATE
        edge_cores = 100 * 300e-6 + tokens_per_s * 20e-6
        return relay.StepResult(
            streams=streams,
            rate_per_stream=relay.GPU_SHAPED_RATE,
            tokens_per_s=tokens_per_s,
            added_itl_p50_ms=0,
            added_itl_p99_ms=0,
            added_latency_p50_ms=0,
            added_latency_p99_ms=0,
            tokens_per_chunk=1.0,
            edge_cpu_per_1k=edge_cores / tokens_per_s * 1000,
            router_cpu_per_1k=edge_cores / 2 / tokens_per_s * 1000,
            relay_cores_per_10k=0,
            cores={},
            errors=0,
        )

    split = relay.cost_split([step(1), step(8), step(32)])

    assert split["edge"] == pytest.approx({"per_step_us": 300, "per_token_us": 20})
    assert split["router"] == pytest.approx({"per_step_us": 150, "per_token_us": 10})


def test_the_transport_floor_reads_every_message_and_its_fanout_delivers_every_write() -> None:
    # measure raises (in its own process) for a message not read or a byte not delivered.
    floor = transport_floor.measure(rate=200, seconds=0.25)

    kinds = {"grpc_read_us", "grpc_write_us", "socket_read_us", "socket_write_us"}
    assert set(floor) == kinds | {"fanout_read_us"}
    assert all(0 < us < 1_000_000 for us in floor.values())


def test_the_host_reference_runs_its_work_over_real_sockets() -> None:
    assert 0 < relay.host_reference_ms() < 10_000
