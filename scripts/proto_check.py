"""Keeps proto/ safe for callers in every language: lint and backward compatibility.

`breaking_changes` compares the descriptor set of the last release (committed as
proto/tera/v1/engine.descriptor.binpb) with what proto/ compiles to today, with
buf's wire+JSON rules: no removed or renamed message, field, enum value, service or
RPC; no changed field number, type, label or oneof; no changed request/response type
or streaming. `lint` checks naming and that every service, RPC and message is commented.

    python scripts/proto_check.py            # lint + check against the release
    python scripts/proto_check.py --release  # record today's proto as the release
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from google.protobuf import descriptor_pb2 as d
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
RELEASED = PROTO_DIR / "tera" / "v1" / "engine.descriptor.binpb"


def compile_protos(
    proto_dir: Path = PROTO_DIR, *, source_info: bool = False
) -> d.FileDescriptorSet:
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        args = ["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", "--include_imports"]
        args += ["--include_source_info"] if source_info else []
        if protoc.main([*args, *protos]) != 0:
            raise SystemExit("protoc failed")
        return d.FileDescriptorSet.FromString(out.read_bytes())


def released() -> d.FileDescriptorSet:
    return d.FileDescriptorSet.FromString(RELEASED.read_bytes())


def _messages(fds: d.FileDescriptorSet) -> dict[str, d.DescriptorProto]:
    def walk(prefix: str, messages: list[d.DescriptorProto]) -> Iterator[tuple[str, object]]:
        for m in messages:
            yield f"{prefix}.{m.name}", m
            yield from walk(f"{prefix}.{m.name}", list(m.nested_type))

    return {n: m for f in fds.file for n, m in walk(f.package, list(f.message_type))}  # type: ignore[misc]


def _enums(fds: d.FileDescriptorSet) -> dict[str, d.EnumDescriptorProto]:
    enums = {f"{f.package}.{e.name}": e for f in fds.file for e in f.enum_type}
    for name, m in _messages(fds).items():
        enums |= {f"{name}.{e.name}": e for e in m.enum_type}
    return enums


def _field_shape(m: d.DescriptorProto, f: d.FieldDescriptorProto) -> tuple[object, ...]:
    oneof = m.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else ""
    if f.proto3_optional:
        oneof = ""  # synthetic oneof: `optional` is wire-compatible with plain
    return (f.name, f.type, f.label, f.type_name, oneof, f.json_name)


def _message_changes(name: str, old: d.DescriptorProto, new: d.DescriptorProto) -> Iterator[str]:
    new_fields = {f.number: f for f in new.field}
    for f in old.field:
        if f.number not in new_fields:
            yield f"{name}: field {f.number} ({f.name}) removed"
            continue
        before, after = _field_shape(old, f), _field_shape(new, new_fields[f.number])
        aspects = ("name", "type", "label", "message type", "oneof", "json name")
        for what, a, b in zip(aspects, before, after, strict=True):
            if a != b:
                yield f"{name}: field {f.number} ({f.name}) changed {what}: {a!r} -> {b!r}"


def breaking_changes(old: d.FileDescriptorSet, new: d.FileDescriptorSet) -> list[str]:
    problems: list[str] = []
    new_messages, new_enums = _messages(new), _enums(new)
    for name, message in _messages(old).items():
        if name not in new_messages:
            problems.append(f"message {name} removed or renamed")
        else:
            problems += _message_changes(name, message, new_messages[name])
    for name, enum in _enums(old).items():
        values = {v.number: v.name for v in new_enums[name].value} if name in new_enums else None
        if values is None:
            problems.append(f"enum {name} removed or renamed")
            continue
        for v in enum.value:
            if values.get(v.number) != v.name:
                problems.append(f"enum {name}: value {v.number} ({v.name}) removed or renamed")
    problems += _service_changes(old, new)
    return problems


def _methods(fds: d.FileDescriptorSet) -> dict[str, d.MethodDescriptorProto]:
    return {
        f"{f.package}.{s.name}/{m.name}": m for f in fds.file for s in f.service for m in s.method
    }


def _service_changes(old: d.FileDescriptorSet, new: d.FileDescriptorSet) -> Iterator[str]:
    new_methods = _methods(new)
    for name, m in _methods(old).items():
        n = new_methods.get(name)
        if n is None:
            yield f"rpc {name} removed or renamed"
            continue
        shape = ("input_type", "output_type", "client_streaming", "server_streaming")
        for attr in shape:
            if getattr(m, attr) != getattr(n, attr):
                yield f"rpc {name}: {attr} changed {getattr(m, attr)!r} -> {getattr(n, attr)!r}"


# ---------------------------------------------------------------------------------
# Lint

_PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
_UPPER = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Released before the rule; renaming them now would break callers. ModelState's zero is
# READY on purpose: a peer that predates the field reports nothing and is serving.
ZERO_VALUE_EXCEPTIONS = {
    "tera.v1.ToolChoice.Mode",
    "tera.v1.AudioFormat",
    "tera.v1.ModelKind",
    "tera.v1.ModelState",
}
_MESSAGE, _ENUM, _SERVICE, _NESTED_MESSAGE, _NESTED_ENUM, _METHOD = 4, 5, 6, 3, 4, 2


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _commented(f: d.FileDescriptorProto) -> set[tuple[int, ...]]:
    return {tuple(loc.path) for loc in f.source_code_info.location if loc.leading_comments.strip()}


def _declarations(f: d.FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str]]:
    """Path in source info, and full name, of each message, enum, service and RPC."""

    def messages(path: tuple[int, ...], prefix: str, m: d.DescriptorProto) -> Iterator:
        yield path, f"{prefix}.{m.name}"
        for j, nested in enumerate(m.nested_type):
            if not nested.options.map_entry:
                yield from messages((*path, _NESTED_MESSAGE, j), f"{prefix}.{m.name}", nested)
        for j, e in enumerate(m.enum_type):
            yield (*path, _NESTED_ENUM, j), f"{prefix}.{m.name}.{e.name}"

    for i, m in enumerate(f.message_type):
        yield from messages((_MESSAGE, i), f.package, m)
    for i, e in enumerate(f.enum_type):
        yield (_ENUM, i), f"{f.package}.{e.name}"
    for i, s in enumerate(f.service):
        yield (_SERVICE, i), f"{f.package}.{s.name}"
        for j, m in enumerate(s.method):
            yield (_SERVICE, i, _METHOD, j), f"{f.package}.{s.name}/{m.name}"


def lint(fds: d.FileDescriptorSet) -> list[str]:
    problems: list[str] = []
    for f in fds.file:
        commented = _commented(f)
        for path, name in _declarations(f):
            if path not in commented:
                problems.append(f"{name}: no leading comment")
            if not _PASCAL.match(name.rsplit(".", 1)[-1].rsplit("/", 1)[-1]):
                problems.append(f"{name}: not PascalCase")
    for name, m in _messages(fds).items():
        problems += [
            f"{name}.{x.name}: not lower_snake_case" for x in m.field if not _SNAKE.match(x.name)
        ]
    for name, e in _enums(fds).items():
        prefix = _upper_snake(name.rsplit(".", 1)[-1]) + "_"
        for v in e.value:
            if not (_UPPER.match(v.name) and v.name.startswith(prefix)):
                problems.append(f"{name}.{v.name}: not {prefix}UPPER_SNAKE_CASE")
        zero = next((v.name for v in e.value if v.number == 0), "")
        if not zero.endswith("_UNSPECIFIED") and name not in ZERO_VALUE_EXCEPTIONS:
            problems.append(f"{name}: the zero value should be {prefix}UNSPECIFIED")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--release", action="store_true", help="record today's descriptors")
    args = parser.parse_args()
    if args.release:
        RELEASED.write_bytes(compile_protos().SerializeToString(deterministic=True))
        return
    problems = lint(compile_protos(source_info=True)) + breaking_changes(
        released(), compile_protos()
    )
    print("\n".join(problems) or "proto: lint clean, compatible with the release", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
