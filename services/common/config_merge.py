"""The one way every process reads its settings: a YAML file, then flags on top."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

import yaml


def merge_config(
    args: argparse.Namespace, *, skip: Iterable[str] = (), sections: Iterable[str] = ()
) -> dict[str, Any]:
    """Fields from `--config` (YAML), overridden by every flag that was given.

    `skip` names flags that are not config fields; a flag named in `sections` carries a
    nested dict whose keys override the file's section key by key, not as a whole.
    """
    data: dict[str, Any] = yaml.safe_load(args.config.read_text()) if args.config else {}
    ignored = {"config", *skip}
    overrides = {k: v for k, v in vars(args).items() if k not in ignored and v is not None}
    for section in sections:
        if section in overrides:
            data[section] = {**data.get(section, {}), **overrides.pop(section)}
    return {**data, **overrides}
