"""Catalog files: the example loads; errors refuse to start and name the line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack.processes import free_port
from services.catalog import CatalogError, load_catalog

ROOT = Path(__file__).resolve().parents[2]
GOOD = """\
models:
  - id: org/model-a
    aliases: [gpt-4o-mini]
    weights: {weights}
    tool_call_parser: {parser}
  - id: org/model-b
    aliases: [{alias_b}]
keys:
  - name: team-a
    key: sk-a
"""


def _write(tmp_path: Path, **fields: str) -> Path:
    values = {"weights": str(tmp_path), "parser": "hermes", "alias_b": "other"} | fields
    path = tmp_path / "catalog.yaml"
    path.write_text(GOOD.format(**values))
    return path


def test_the_documented_example_loads() -> None:
    catalog = load_catalog(
        ROOT / "deploy" / "catalog.example.yaml", check_weights=False, check_parsers=True
    )
    assert catalog.names()["gpt-4o-mini"].id == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"parser": "hermess"},
            "catalog.yaml:5: models.0.tool_call_parser: unknown parser 'hermess'",
        ),
        ({"alias_b": "gpt-4o-mini"}, "the name 'gpt-4o-mini' is used twice"),
        (
            {"weights": "/nonexistent/weights"},
            "catalog.yaml:4: models.0.weights: /nonexistent/weights is not a folder",
        ),
    ],
)
def test_errors_name_the_problem_and_line(tmp_path: Path, fields: dict, expected: str) -> None:
    with pytest.raises(CatalogError) as err:
        load_catalog(_write(tmp_path, **fields), check_parsers=True)
    assert expected in str(err.value)


def test_typos_are_errors_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "catalog.yaml"
    path.write_text("models:\n  - id: org/a\n    alias: [x]\n")
    with pytest.raises(CatalogError, match=r"catalog.yaml:3: models.0.alias: Extra inputs"):
        load_catalog(path)


@pytest.mark.parametrize("command", [["devstack.run"], ["services.edge"]])
def test_processes_refuse_to_start_on_a_bad_catalog(tmp_path: Path, command: list[str]) -> None:
    path = _write(tmp_path, alias_b="gpt-4o-mini")
    result = subprocess.run(
        [sys.executable, "-m", *command, "--catalog", str(path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode != 0
    assert "gpt-4o-mini" in result.stderr and "used twice" in result.stderr


def test_router_reads_serving_addresses_from_the_catalog(tmp_path: Path) -> None:
    from services.router.cli import build_parser, config_from_args

    path = tmp_path / "catalog.yaml"
    path.write_text(
        "models:\n"
        "  - id: org/a\n    serving: {addresses: ['10.0.0.1:50061', '10.0.0.2:50061']}\n"
        "  - id: org/b\n    serving: {dns: 'b-engines.tera.svc.cluster.local:50061'}\n"
    )
    with pytest.raises(ValueError, match="refusing plaintext gRPC"):
        config_from_args(build_parser().parse_args(["--catalog", str(path)]))
    args = ["--catalog", str(path), "--tls-dir", str(tmp_path / "tls")]  # engines off loopback
    config = config_from_args(build_parser().parse_args(args))
    assert config.replicas == ["10.0.0.1:50061", "10.0.0.2:50061"]
    assert config.dns == ["b-engines.tera.svc.cluster.local:50061"]
