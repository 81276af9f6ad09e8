"""Process entry helpers: uvloop and graceful shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop


def run(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Runs main(stop) on uvloop; stop is set by the first SIGINT or SIGTERM."""

    async def _wrapper() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await main(stop)

    uvloop.run(_wrapper())
