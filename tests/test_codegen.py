"""The committed gRPC code (services' and the client package's) must be what proto/
generates today."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = {
    "services.proto_gen": ROOT / "services" / "proto_gen",
    "tera_client._gen": ROOT / "clients" / "python" / "tera_client" / "_gen",
}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in {".py", ".pyi"}}


@pytest.mark.parametrize("package", sorted(COMMITTED))
def test_generated_code_matches_proto(tmp_path: Path, package: str) -> None:
    committed = COMMITTED[package]
    out = tmp_path / "gen"
    script = str(ROOT / "scripts" / "gen_proto.py")
    subprocess.run(
        [sys.executable, script, "--out", str(out), "--package", package],
        check=True,
        capture_output=True,
    )
    assert _files(out) == _files(committed), "run `make proto` and commit the result"
    stale = [f for f in _files(out) if not filecmp.cmp(out / f, committed / f, shallow=False)]
    assert not stale, f"out of date with proto/: {stale}; run `make proto` and commit"
