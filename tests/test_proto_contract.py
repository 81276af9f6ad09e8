"""The proto is the product for callers in other languages: lint-clean, and never
changed incompatibly against the last release's descriptor set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from scripts.proto_check import PROTO_DIR, breaking_changes, compile_protos, lint, released

ENGINE = Path("tera/v1/engine.proto")


def test_proto_is_lint_clean() -> None:
    assert lint(compile_protos(source_info=True)) == []


def test_proto_is_compatible_with_the_release() -> None:
    assert breaking_changes(released(), compile_protos()) == []


def _edited(tmp_path: Path, old: str, new: str) -> list[str]:
    """Breaking changes of a scratch copy of proto/ with one edit."""
    scratch = tmp_path / "proto"
    shutil.copytree(PROTO_DIR, scratch)
    text = (scratch / ENGINE).read_text()
    assert old in text, old
    (scratch / ENGINE).write_text(text.replace(old, new))  # every occurrence
    return breaking_changes(released(), compile_protos(scratch))


BREAKING = {
    "renamed field": ("  string model = 2;\n  oneof", "  string model_id = 2;\n  oneof", "name"),
    "renumbered field": ("string tool_call_id = 5;", "string tool_call_id = 25;", "removed"),
    "retyped field": ("uint32 num_tokens = 7;", "uint64 num_tokens = 7;", "type"),
    "repeated field": (
        "string name = 4;\n  string tool_call_id",
        "repeated string name = 4;\n  string tool_call_id",
        "label",
    ),
    "field moved into a oneof": (
        "  StructuredOutput structured = 8;",
        "  oneof extra { StructuredOutput structured = 8; }",
        "oneof",
    ),
    "removed enum value": ("  FINISH_REASON_ABORT = 5;\n", "", "FINISH_REASON_ABORT"),
    "removed rpc": ("  rpc GetLoad(GetLoadRequest) returns (LoadReport);\n", "", "GetLoad"),
    "unstreamed rpc": (
        "returns (stream SynthesizeResponse)",
        "returns (SynthesizeResponse)",
        "server_streaming",
    ),
    "renamed message": ("EngineTimings", "Timings", "message tera.v1.EngineTimings"),
}


@pytest.mark.parametrize("change", sorted(BREAKING))
def test_breaking_change_is_caught(tmp_path: Path, change: str) -> None:
    old, new, expected = BREAKING[change]
    problems = _edited(tmp_path, old, new)
    assert any(expected in p for p in problems), problems


def test_a_new_field_at_a_high_number_is_compatible(tmp_path: Path) -> None:
    problems = _edited(
        tmp_path,
        "  uint32 coalesce_window_ms = 9;",
        "  uint32 coalesce_window_ms = 9;\n  string x = 100;",
    )
    assert problems == []
