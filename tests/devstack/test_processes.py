"""ManagedProcess: a confined process runs, with every thread it starts, on its CPUs only."""

from __future__ import annotations

import os

import pytest

from devstack.processes import ManagedProcess, wait_until

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
