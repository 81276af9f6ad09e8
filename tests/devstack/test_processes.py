"""ManagedProcess: a confined process runs, with every thread it starts, on its CPUs only;
free_port hands out ports no outgoing connection can take before the child binds them; a
SIGTERMed test run still stops the service processes its fixtures started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.processes import (
    ManagedProcess,
    free_port,
    free_ports_in_a_row,
    group_gone,
    wait_until,
)

THREADS_REPORT = (
    "import threading, os, time\n"
    "t = threading.Thread(target=time.sleep, args=(30,)); t.start()\n"
    "print(sorted(os.sched_getaffinity(t.native_id)), flush=True); t.join()\n"
)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to confine to one")
def test_a_confined_process_and_its_threads_stay_on_their_cpus(tmp_path) -> None:
    last = max(os.sched_getaffinity(0))
    log = tmp_path / "out.log"
    process = ManagedProcess("pinned", ["-c", THREADS_REPORT], log_path=log, cpus=frozenset({last}))
    process.start()
    try:
        wait_until(lambda: log.exists() and log.read_text().strip() != "", timeout_s=30)
        assert log.read_text().strip() == str([last])
        assert os.sched_getaffinity(process.pid) == {last}
    finally:
        process.stop(grace_s=0)


def _ephemeral_range() -> range:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return range(int(low), int(high) + 1)


def test_free_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() -> None:
    """An outgoing connection's source port comes from the ephemeral range: a listening
    port picked there can be taken between our check and the child's bind."""
    ephemeral = _ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert not [p for p in ports if p in ephemeral]
    assert len(set(ports)) == len(ports)
    first = free_ports_in_a_row(3)
    assert not {first, first + 1, first + 2} & set(ports)
    assert first not in ephemeral and first + 2 not in ephemeral


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr("random.randrange", lambda start, stop: busy)
        with pytest.raises(RuntimeError, match="no 1 consecutive free ports"):
            free_port()


SPAWNS_A_CHILD = (
    "import subprocess, sys\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print(child.pid, flush=True); child.wait()\n"
)


def _autogroup(pid: int) -> str | None:
    """The task's autogroup ("/autogroup-N nice 0"), or None where the kernel has none or
    the task's CPU cgroup schedules it instead (the file is then empty, as in CI)."""
    path = Path(f"/proc/{pid}/autogroup")
    fields = path.read_text().split() if path.exists() else []
    return fields[0] if fields else None


def test_a_service_is_its_own_process_group_inside_the_launchers_session(tmp_path) -> None:
    """Stopping a service stops what it spawned (its group), and every service shares the
    launcher's session: across sessions the scheduler's autogroups let vLLM's spinning
    EngineCore hold the CPU the gateway shares with it for tens of milliseconds."""
    log = tmp_path / "out.log"
    service = ManagedProcess("spawner", ["-c", SPAWNS_A_CHILD], log_path=log).start()
    try:
        wait_until(lambda: log.exists() and log.read_text().strip() != "", timeout_s=30)
        grandchild = int(log.read_text().split()[0])
        assert os.getpgid(service.pid) == service.pid
        assert os.getpgid(grandchild) == service.pid
        assert os.getsid(service.pid) == os.getsid(0)
        assert os.getsid(grandchild) == os.getsid(0)
        assert _autogroup(service.pid) == _autogroup(os.getpid())
    finally:
        service.stop(grace_s=0)
    assert group_gone(service.pid)


HOLDS_A_SERVICE = """
import time
from pathlib import Path

import pytest

from devstack.processes import ManagedProcess


@pytest.fixture
def service():
    process = ManagedProcess("sleeper", ["-c", "import time; time.sleep(120)"]).start()
    yield process
    process.stop(grace_s=0)


def test_holds_it(service):
    Path({pid_file!r}).write_text(str(service.pid))
    time.sleep(120)
"""


def test_a_sigterm_to_pytest_still_stops_the_services_its_fixtures_started(tmp_path) -> None:
    pid_file = tmp_path / "service.pid"
    (tmp_path / "test_held.py").write_text(HOLDS_A_SERVICE.format(pid_file=str(pid_file)))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini")]
    command += ["-p", "tests.conftest", "-p", "no:cacheprovider", str(tmp_path / "test_held.py")]
    run = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    service = 0
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", timeout_s=60)
        service = int(pid_file.read_text())
        run.send_signal(signal.SIGTERM)
        run.wait(60)
        assert group_gone(service), "the fixture's service outlived the SIGTERMed run"
    finally:
        run.kill()
        if service:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service, signal.SIGKILL)
