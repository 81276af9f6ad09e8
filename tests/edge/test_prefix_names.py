"""The edge names prompt prefixes per model with the configured tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devstack.processes import free_port
from services.common import prefix_hash
from services.common.word_tokens import prompt_token_ids
from services.edge.cli import build_parser, config_from_args
from services.edge.prefix import PrefixNamer
from services.proto_gen.tera.v1 import engine_pb2 as pb


def _chat(model: str, words: int) -> pb.GenerateRequest:
    text = " ".join(f"w{i}" for i in range(words))
    return pb.GenerateRequest(
        model=model, chat=pb.ChatInput(messages=[pb.ChatMessage(role="system", content=text)])
    )


def test_words_tokenizer_names_what_the_stand_in_caches() -> None:
    namer = PrefixNamer({"stand-in": "words"})
    request = _chat("stand-in", 40)
    names = prefix_hash.decode(namer.names(request) or b"")
    assert names == tuple(prefix_hash.chunk_hashes(prompt_token_ids(request)))
    assert len(names) == 2


def test_no_names_for_unlisted_models_or_short_prompts() -> None:
    namer = PrefixNamer({"stand-in": "words"})
    assert namer.names(_chat("other", 40)) is None
    assert namer.names(_chat("stand-in", 3)) is None


def test_prefix_tokenizer_flags_merge_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(yaml.safe_dump({"prefix_tokenizers": {"a": "words", "b": "words"}}))
    flags = ["--config", str(config), "--prefix-tokenizer", "b=/models/b"]
    edge = config_from_args(build_parser().parse_args([*flags, "--prefix-tokenizer", "c=x=y"]))
    assert edge.prefix_tokenizers == {"a": "words", "b": "/models/b", "c": "x=y"}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--prefix-tokenizer", "no-source"])


def test_edge_loads_its_tokenizers_at_startup_and_refuses_a_bad_one(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-tokenizer"
    edge = [sys.executable, "-m", "services.edge", "--port", str(free_port())]
    edge += ["--router", "127.0.0.1:1", "--prefix-tokenizer", f"m={missing}"]
    done = subprocess.run(
        edge, capture_output=True, text=True, timeout=60
    )  # a healthy edge would run on
    assert done.returncode != 0
    assert str(missing) in done.stderr
