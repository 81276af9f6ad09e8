"""The committed gRPC code must be what proto/ generates today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "services" / "proto_gen"


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in {".py", ".pyi"}}


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    out = tmp_path / "proto_gen"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    assert _files(out) == _files(COMMITTED), "run `make proto` and commit the result"
    stale = [f for f in _files(out) if not filecmp.cmp(out / f, COMMITTED / f, shallow=False)]
    assert not stale, f"out of date with proto/: {stale}; run `make proto` and commit"
