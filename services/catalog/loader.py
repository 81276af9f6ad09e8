"""Loads the catalog; every error names the file, line and field at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.catalog.schema import Catalog


class CatalogError(ValueError):
    pass


def load_catalog(path: Path, *, check_weights: bool = True, check_parsers: bool = False) -> Catalog:
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not valid YAML: {exc}") from exc
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        loc = tuple(first["loc"])
        line = _line(node, loc)
        where = ".".join(str(p) for p in loc) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise CatalogError(f"{path}:{line}: {where}: {message}") from exc
    problems = _check(catalog, path, node, check_weights, check_parsers)
    if problems:
        raise CatalogError("\n".join(problems))
    return catalog


def _check(catalog: Catalog, path: Path, node: Any, weights: bool, parsers: bool) -> list[str]:
    problems = []
    for i, model in enumerate(catalog.models):
        if weights and model.weights is not None and not _resolve(path, model.weights).is_dir():
            line = _line(node, ("models", i, "weights"))
            problems.append(
                f"{path}:{line}: models.{i}.weights: {model.weights} is not a "
                f"folder (model {model.id})"
            )
        if parsers:
            problems += _check_parsers(
                path, node, i, model.tool_call_parser, model.reasoning_parser
            )
    return problems


def _check_parsers(
    path: Path, node: Any, i: int, tool: str | None, reasoning: str | None
) -> list[str]:
    """vLLM's registries know the names (imported only where vLLM is installed)."""
    from vllm.reasoning import ReasoningParserManager
    from vllm.tool_parsers import ToolParserManager

    problems = []
    for field, name, registry in (
        ("tool_call_parser", tool, ToolParserManager),
        ("reasoning_parser", reasoning, ReasoningParserManager),
    ):
        known = set(registry.list_registered())
        if name is not None and name not in known:
            line = _line(node, ("models", i, field))
            problems.append(f"{path}:{line}: models.{i}.{field}: unknown parser {name!r}")
    return problems


def _resolve(catalog_path: Path, target: Path) -> Path:
    return target if target.is_absolute() else (catalog_path.parent / target).resolve()


def _line(node: Any, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest node the location reaches."""
    current = node
    for part in loc:
        nxt = None
        if isinstance(current, yaml.MappingNode):
            nxt = next((v for k, v in current.value if k.value == part), None)
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            nxt = current.value[part] if part < len(current.value) else None
        if nxt is None:
            break
        current = nxt
    return (current.start_mark.line + 1) if current is not None else 1
