"""`tera run`'s plan for the default model: what its edge is told."""

from __future__ import annotations

from pathlib import Path

from devstack.run import build_parser, default_plan
from services.edge.cli import build_parser as edge_parser
from services.edge.cli import config_from_args
from services.engine.model_prep import DEFAULT_MODEL_ID


def test_edge_names_prefixes_with_the_engines_tokenizer(tmp_path: Path) -> None:
    """The router's default policy is cache_aware: the edge must send it names."""
    model_dir = tmp_path / "model"
    args = build_parser().parse_args(["--cache-dir", str(tmp_path), "--no-speech"])
    plan = default_plan(args, model_dir)
    edge = config_from_args(edge_parser().parse_args(plan.edge_args))
    assert edge.prefix_tokenizers == {DEFAULT_MODEL_ID: str(model_dir)}
