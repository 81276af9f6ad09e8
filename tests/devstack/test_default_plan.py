"""`tera run`'s plan for the default model: what its edge is told."""

from __future__ import annotations

from pathlib import Path

from devstack.run import build_parser, default_plan
from services.edge.cli import build_parser as edge_parser
from services.edge.cli import config_from_args
from services.engine.model_prep import DEFAULT_MODEL_ID


def test_edge_names_prefixes_with_the_engines_tokenizer_when_asked(tmp_path: Path) -> None:
    """For the router's default policy, cache_aware: opt-in, as the edge then loads
    transformers (and torch)."""
    model_dir = tmp_path / "model"
    common = ["--cache-dir", str(tmp_path), "--no-speech"]
    for flags, expected in (([], {}), (["--prefix-names"], {DEFAULT_MODEL_ID: str(model_dir)})):
        plan = default_plan(build_parser().parse_args([*common, *flags]), model_dir)
        edge = config_from_args(edge_parser().parse_args(plan.edge_args))
        assert edge.prefix_tokenizers == expected
