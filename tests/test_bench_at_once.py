"""bench/at_once.py's "before" stack really runs without the at-once writes: a process
started with its environment has `put_at_once` made a plain `put`, and one without it
does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.at_once import batched_env
from bench.common import ROOT

_PROBE = "from services.common.mux import Outbox; print(Outbox.put_at_once is Outbox.put)"


def _probe(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_the_before_stacks_processes_start_without_the_at_once_writes(tmp_path: Path) -> None:
    assert _probe(batched_env(tmp_path)) == "True"
    assert _probe({}) == "False"
