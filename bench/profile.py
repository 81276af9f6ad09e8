"""py-spy on edge and router while the relay streams: the hottest functions (self time)."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import uvloop

from bench import relay


def _top(raw: Path, n: int = 12) -> list[tuple[str, float]]:
    """Self-time share per function from py-spy's collapsed stacks."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        counts[leaf] += int(samples)
        total += int(samples)
    return [(name, count / total) for name, count in counts.most_common(n)] if total else []


STREAMS, RATE, WINDOW_MS = 64, 800.0, 10


def run(results: Path, seconds: int = 5) -> dict:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    stack = relay.relay_stack(results, RATE, WINDOW_MS)
    out: dict[str, list[tuple[str, float]]] = {}
    try:
        recorders = {
            name: (
                results / f"profile-{name}.txt",
                subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(pid),
                        "--duration",
                        str(seconds),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--output",
                        str(results / f"profile-{name}.txt"),
                        "--nonblocking",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
            for name, pid in (("edge", stack.edge.pid), ("router", stack.router.pid))  # type: ignore[union-attr]
        }
        uvloop.run(relay._step(stack, STREAMS, RATE))
        for name, (path, proc) in recorders.items():
            proc.wait(timeout=seconds + 30)
            out[name] = _top(path) if path.exists() else []
    finally:
        stack.stop()
    return out
