"""vLLM's per-step statistics are recorded after the streams the step woke have run, not
before them (services/engine/backends/vllm/engine.py, record_after_streams)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from services.engine.backends.vllm.engine import record_after_streams


class _Manager:
    def __init__(self, seen: list[str]) -> None:
        self._seen = seen
        self.recorded: list[dict[str, Any]] = []

    def record(self, **stats: Any) -> None:
        self._seen.append("recorded")
        self.recorded.append(stats)


async def test_a_steps_statistics_are_recorded_after_the_streams_it_woke_have_sent() -> None:
    seen: list[str] = []
    manager = _Manager(seen)
    engine = types.SimpleNamespace(logger_manager=manager)
    record_after_streams(engine, asyncio.get_running_loop())  # type: ignore[arg-type]

    token = asyncio.Event()

    async def stream() -> None:
        await token.wait()
        seen.append("sent")

    task = asyncio.create_task(stream())
    await asyncio.sleep(0)  # the stream waits for its token
    # As vLLM's output handler does: the step's token to its request, then the stats.
    token.set()
    engine.logger_manager.record(scheduler_stats="s", iteration_stats="i", engine_idx=0)
    assert seen == []  # nothing recorded within the handler's own turn
    await task
    await asyncio.sleep(0)
    assert seen == ["sent", "recorded"]
    assert manager.recorded == [{"scheduler_stats": "s", "iteration_stats": "i", "engine_idx": 0}]


async def test_an_engine_without_statistics_is_left_alone() -> None:
    engine = types.SimpleNamespace(logger_manager=None)
    record_after_streams(engine, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert engine.logger_manager is None
