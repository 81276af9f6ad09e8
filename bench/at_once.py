"""Part: what writing a stream's open and first message at once saves (services/common/mux.py,
`Outbox.put_at_once`), against leaving them for the end of the sender's event-loop turn.

Two stand-in stacks side by side (bench/side_by_side.py), one as shipped and one whose
processes start with `put_at_once` made a plain `put` (a sitecustomize on their
PYTHONPATH; the serving code has no switch for it).

    python -m bench.run --parts at_once
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import ROOT, stand_in_stack
from bench.side_by_side import BEHAVIOUR, compare

# Imported by each process of the "batched" stack at start-up (before services are).
BATCHED_SHIM = """\
from services.common.mux import Outbox

Outbox.put_at_once = Outbox.put  # bench/at_once.py: the behaviour before it
"""
SHIPPED, BATCHED = "at once (shipped)", "end of turn (before)"


def batched_env(shim_dir: Path) -> dict[str, str]:
    """The environment that starts a process with `put_at_once` undone."""
    (shim_dir / "sitecustomize.py").write_text(BATCHED_SHIM)
    return {"PYTHONPATH": f"{shim_dir}:{ROOT}"}


def run(results: Path, rounds: int = 3, requests: int = 300, gap_s: float = 0.01) -> list[dict]:
    """One row a round: each stack's client first-token p50/p90 (ms), and the difference."""
    with tempfile.TemporaryDirectory() as shim:
        env = batched_env(Path(shim))
        start = {
            SHIPPED: lambda: stand_in_stack(results, BEHAVIOUR),
            BATCHED: lambda: stand_in_stack(results, BEHAVIOUR, env=env),
        }
        return compare(start, rounds=rounds, requests=requests, gap_s=gap_s)
