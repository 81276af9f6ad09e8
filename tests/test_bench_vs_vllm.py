"""The vs-vLLM table pools both halves of a target's run, as vLLM computes its figures;
the `vllm bench serve` it runs starts on this host."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import runnable_wait_seconds, total_cpu_seconds
from bench.vs_vllm import (
    ENGINE_CORE_NAME,
    Load,
    Target,
    combine,
    half_path,
    order,
    prompts_per_half,
    ratios,
    read_halves,
)
from devstack.processes import group_members


def _half(ttfts: list[float], itls: list[list[float]], duration: float, tokens: int) -> dict:
    return {
        "ttfts": ttfts,
        "itls": itls,
        "errors": [""] * len(ttfts),
        "duration": duration,
        "completed": len(ttfts),
        "num_prompts": len(ttfts),
        "total_output_tokens": tokens,
    }


def test_each_round_is_abba_with_fresh_seeds_shared_by_both_servers() -> None:
    assert order(2) == (
        ("vllm", 0), ("tera", 0), ("tera", 1), ("vllm", 1),
        ("vllm", 2), ("tera", 2), ("tera", 3), ("vllm", 3),
    )  # fmt: skip
    assert order(1, control=True) == (
        ("vllm", 0), ("tera", 0), ("vllm-b", 0), ("vllm-b", 1), ("tera", 1), ("vllm", 1)
    )  # fmt: skip


def test_more_rounds_split_concurrency_1_but_keep_four_waves_a_half_above_it() -> None:
    assert [prompts_per_half(1, rounds) for rounds in (1, 2)] == [16, 8]
    assert [prompts_per_half(32, rounds) for rounds in (1, 2)] == [128, 128]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: nothing to confine to")
def test_a_pinned_client_runs_only_on_the_cpus_it_is_given() -> None:
    last = max(os.sched_getaffinity(0))
    load = Load(Path(), 1, 8, frozenset({last}))
    shown = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        preexec_fn=load.pin_client,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == f"[{last}]"


def test_halves_are_read_back_in_the_order_they_ran_and_a_target_that_did_not_run_has_none(
    tmp_path: Path,
) -> None:
    for seed in (1, 10, 0, 2):  # written out of order: the reader orders them, not the folder
        half_path(tmp_path, "tera", 8, seed).write_text(json.dumps({"seed": seed}))
    half_path(tmp_path, "tera", 1, 0).write_text("{}")  # another concurrency: not read
    assert [h["seed"] for h in read_halves(tmp_path, "tera", 8)] == [0, 1, 2, 10]
    assert read_halves(tmp_path, "tera", 32) == []
    assert read_halves(tmp_path, "vllm-b", 8) == []  # the control, not run by default


def test_combine_pools_requests_and_time() -> None:
    row = combine(
        [
            _half([0.1, 0.3], [[0.01, 0.01], [0.02]], duration=2.0, tokens=40),
            _half([0.2, 0.4], [[0.03], [0.04]], duration=3.0, tokens=60),
        ]
    )
    assert row["output_throughput"] == pytest.approx(100 / 5)
    assert row["request_throughput"] == pytest.approx(4 / 5)
    assert row["p50_ttft_ms"] == pytest.approx(250)
    assert row["mean_ttft_ms"] == pytest.approx(250)
    assert row["p99_ttft_ms"] == pytest.approx(397, abs=1)
    assert row["p50_itl_ms"] == pytest.approx(20)
    assert row["completed"] == 4 and row["failed"] == 0


def test_failed_requests_do_not_count_towards_latency() -> None:
    half = _half([0.1, 0.0], [[0.01], []], duration=1.0, tokens=10)
    half["errors"] = ["", "connection reset"]
    half["completed"] = 1
    row = combine([half])
    assert row["p99_ttft_ms"] == pytest.approx(100)
    assert row["mean_ttft_ms"] == pytest.approx(100)
    assert row["failed"] == 1


def test_ratios_are_tera_over_vllm_and_latency_deltas() -> None:
    base = {"p50_ttft_ms": 10.0, "p99_ttft_ms": 20.0, "p50_itl_ms": 5.0, "p99_itl_ms": 9.0}
    rows = [
        {"target": "vllm", "concurrency": 1, "output_throughput": 100.0,
         "request_throughput": 2.0, **base, "mean_ttft_ms": 12.0},
        {"target": "tera", "concurrency": 1, "output_throughput": 103.0,
         "request_throughput": 2.06, **base, "p99_ttft_ms": 22.0, "mean_ttft_ms": 11.5},
    ]  # fmt: skip
    (ratio,) = ratios(rows)
    assert ratio["output_throughput"] == pytest.approx(1.03)
    assert ratio["p99_ttft_ms"] == pytest.approx(2.0)
    assert ratio["p50_ttft_ms"] == 0
    assert ratio["mean_ttft_ms"] == pytest.approx(-0.5)


def test_the_control_server_gets_its_own_ratio_to_vllm() -> None:
    base = {"p99_ttft_ms": 20.0, "p50_itl_ms": 5.0, "p99_itl_ms": 9.0, "request_throughput": 2.0}
    rows = [
        {"target": "vllm", "concurrency": 8, "output_throughput": 100.0, "p50_ttft_ms": 10.0},
        {"target": "tera", "concurrency": 8, "output_throughput": 98.0, "p50_ttft_ms": 11.0},
        {"target": "vllm-b", "concurrency": 8, "output_throughput": 97.0, "p50_ttft_ms": 12.0},
    ]
    by_target = {r["target"]: r for r in ratios([row | base for row in rows])}
    assert set(by_target) == {"tera/vllm", "vllm-b/vllm"}
    assert by_target["vllm-b/vllm"]["output_throughput"] == pytest.approx(0.97)
    assert by_target["vllm-b/vllm"]["p50_ttft_ms"] == pytest.approx(2.0)
    assert by_target["tera/vllm"]["p50_ttft_ms"] == pytest.approx(1.0)


def test_cpu_per_token_pools_both_halves_and_is_a_ratio_against_vllm() -> None:
    def half(tokens: int, serving_s: float, model_s: float) -> dict:
        result = _half([0.1], [[0.01]], duration=1.0, tokens=tokens)
        return result | {"serving_cpu_s": serving_s, "model_cpu_s": model_s}

    vllm = combine([half(1000, 0.1, 2.0), half(3000, 0.3, 6.0)])
    tera = combine([half(2000, 0.3, 4.0), half(2000, 0.5, 4.0)])
    assert vllm["serving_cpu_ms_per_ktok"] == pytest.approx(100)
    assert tera["serving_cpu_ms_per_ktok"] == pytest.approx(200)
    assert tera["model_cpu_ms_per_ktok"] == pytest.approx(2000)
    rows = [
        {"target": "vllm", "concurrency": 8, **vllm},
        {"target": "tera", "concurrency": 8, **tera},
    ]
    (ratio,) = ratios(rows)
    assert ratio["serving_cpu_ms_per_ktok"] == pytest.approx(2.0)
    assert ratio["model_cpu_ms_per_ktok"] == pytest.approx(1.0)
    assert "serving_cpu_ms_per_ktok" not in combine([_half([0.1], [[0.01]], 1.0, 10)])


def test_the_engine_cores_cpus_are_its_cpu_time_over_the_halves_wall_time() -> None:
    def half(engine_core_s: float, wall_s: float) -> dict:
        result = _half([0.1], [[0.01]], duration=1.0, tokens=100)
        cpu = {"serving_cpu_s": 0.1, "model_cpu_s": 2.0, "engine_core_cpu_s": engine_core_s}
        return result | cpu | {"wall_s": wall_s}

    vllm = combine([half(9.0, 10.0), half(27.0, 30.0)])
    tera = combine([half(4.5, 10.0), half(13.5, 30.0)])
    assert vllm["engine_core_cpus"] == pytest.approx(0.9)
    (ratio,) = ratios([{"target": "vllm", "concurrency": 1, **vllm},
                       {"target": "tera", "concurrency": 1, **tera}])  # fmt: skip
    assert ratio["engine_core_cpus"] == pytest.approx(0.5)


def test_the_serving_threads_wait_is_pooled_per_request_and_a_ratio_against_vllm() -> None:
    def half(requests: int, wait_s: float) -> dict:
        result = _half([0.1] * requests, [[0.01]] * requests, duration=1.0, tokens=100)
        return result | {"serving_cpu_s": 0.1, "model_cpu_s": 2.0, "serving_wait_s": wait_s}

    vllm = combine([half(10, 0.001), half(30, 0.003)])
    tera = combine([half(20, 0.008), half(20, 0.004)])
    assert vllm["serving_wait_ms_per_req"] == pytest.approx(0.1)
    assert tera["serving_wait_ms_per_req"] == pytest.approx(0.3)
    (ratio,) = ratios([{"target": "vllm", "concurrency": 1, **vllm},
                       {"target": "tera", "concurrency": 1, **tera}])  # fmt: skip
    assert ratio["serving_wait_ms_per_req"] == pytest.approx(3.0)


# Each burns its share, says so on the server's stdout (the child inherits it), then idles
# until killed: a process that had exited would take its CPU out of the group's figures.
BURN = (
    "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"
    "print('burnt', flush=True)\ntime.sleep(600)\n"
)


def test_a_targets_cpu_counts_its_serving_process_apart_from_those_below_it(
    tmp_path: Path,
) -> None:
    # A "server" that burns 0.3 s itself and starts an "EngineCore" burning 0.6 s and a
    # "worker" burning 0.4 s, as vLLM's API server starts them: each lands in its column.
    engine_core = f"open('/proc/self/comm', 'w').write({ENGINE_CORE_NAME!r})\n" + BURN.format(s=0.6)
    children = (engine_core, BURN.format(s=0.4))
    with _burnt_group(tmp_path, BURN.format(s=0.3), children) as server:
        cpu = Target("http://127.0.0.1:1", (server.pid,)).cpu_seconds()
        assert 0.3 <= cpu.serving < 0.55
        assert 0.6 <= cpu.engine_core < 0.85
        assert 0.4 <= cpu.workers < 0.65
        assert cpu.model == pytest.approx(cpu.engine_core + cpu.workers)


@contextlib.contextmanager
def _burnt_group(
    tmp_path: Path, burn: str, children: tuple[str, ...], cpu: int | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A "server" in a group of its own, as ManagedProcess starts one, running `burn`
    after starting each of `children` (on `cpu` alone if given), once all have burnt
    their share; the whole group is killed after."""
    start = "import subprocess, sys\n" + "".join(
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n" for child in children
    )
    errors = tmp_path / "stderr"  # the children's too
    with errors.open("wb") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-c", start + burn],
            stdout=subprocess.PIPE,
            stderr=stderr,
            process_group=0,
            preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
        )
    try:
        _until_burnt(server, count=len(children) + 1, errors=errors)
        yield server
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.communicate()  # reaps it and closes its stdout


def _until_burnt(server: subprocess.Popen[bytes], count: int, errors: Path) -> None:
    """Until `count` processes of the server's group have burnt their share (however
    long a loaded host makes that take) and the group's CPU figure has caught up."""
    assert server.stdout is not None
    said, deadline = b"", time.monotonic() + 120
    while said.count(b"burnt\n") < count:
        ready, _, _ = select.select([server.stdout], [], [], deadline - time.monotonic())
        assert ready, f"not all {count} burnt their share in 120 s: {errors.read_text()}"
        said += os.read(server.stdout.fileno(), 64)  # unbuffered: select sees the rest
    last, deadline = -1.0, time.monotonic() + 30
    while (total := total_cpu_seconds(group_members(server.pid))) - last >= 0.005:
        assert time.monotonic() < deadline, f"the group's CPU still grows: {total} s"
        last = total
        time.sleep(0.3)


def test_the_vllm_command_line_runs_as_the_cpu_build() -> None:
    # vLLM picks its CPU platform by "+cpu" in its version; the wrapper's answer lacked it,
    # and on an AVX2-only host the default AVX-512 kernels died with SIGILL (exit -4).
    probe = (
        "import importlib.metadata as m; from bench import vllm_cli;"
        "m.version = vllm_cli._patched_version;"
        "from vllm.platforms import current_platform; print(current_platform.device_type)"
    )
    root = Path(__file__).resolve().parent.parent
    platform = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert platform.returncode == 0, f"exit {platform.returncode}: {platform.stderr[-2000:]}"
    assert platform.stdout.split()[-1:] == ["cpu"]
    flag = [sys.executable, "-m", "bench.vllm_cli", "bench", "serve", "--help=max-concurrency"]
    cli = subprocess.run(flag, capture_output=True, text=True, timeout=300, cwd=root)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "max-concurrency" in cli.stdout


def test_runnable_wait_is_the_time_threads_queued_for_a_cpu_not_the_time_they_ran(
    tmp_path: Path,
) -> None:
    # Two processes on one CPU, one burning 0.6 s and the other 0.1 s: they take turns,
    # so each queues while the other runs (about 0.1 s each), far less than they ran.
    cpu = max(os.sched_getaffinity(0))
    with _burnt_group(tmp_path, BURN.format(s=0.6), (BURN.format(s=0.1),), cpu) as server:
        group = group_members(server.pid)
        waited, ran = runnable_wait_seconds(group), total_cpu_seconds(group)
        assert ran >= 0.7
        assert 0.05 <= waited < 0.6 * ran, (waited, ran)
