"""The `tera` command: one entry point per service, plus `run` for the whole stack.

Images run `tera engine` and `tera prepare-model`, so the command lives with the services.
`run` is the local-stack harness (devstack/), named here only as a module to load on
demand: no service module imports devstack.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run": ("devstack.run", "start engine(s), router and edge on this machine"),
    "engine": ("services.engine.cli", "run one engine process"),
    "router": ("services.router.cli", "run the router"),
    "edge": ("services.edge.cli", "run the OpenAI-compatible HTTP edge"),
    "gateway": ("services.gateway.cli", "run the edge and the router in one process"),
    "prepare-model": ("services.engine.model_prep", "build the default model folder"),
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        lines = "\n".join(f"  {name:<14} {help_}" for name, (_, help_) in COMMANDS.items())
        print(f"usage: tera COMMAND [ARGS]\n\ncommands:\n{lines}", file=sys.stderr)
        raise SystemExit(2)
    module, _ = COMMANDS[sys.argv[1]]
    importlib.import_module(module).main(sys.argv[2:])


if __name__ == "__main__":
    main()
