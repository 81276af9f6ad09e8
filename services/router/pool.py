"""The set of known replicas, fed by discovery sources, and candidate lookup by model."""

from __future__ import annotations

import asyncio
import logging

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.config import RouterConfig
from services.router.replica import Replica

log = logging.getLogger("tera.router.pool")


class ReplicaPool:
    def __init__(self, config: RouterConfig) -> None:
        self._config = config
        self.replicas: dict[str, Replica] = {}
        # Addresses per discovery source; a replica lives while any source names it.
        self._sources: dict[str, set[str]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def reconfigure(self, config: RouterConfig) -> None:
        """New health and breaker settings apply to replicas added from now on."""
        self._config = config

    def set_source(self, source: str, addresses: set[str]) -> None:
        self._sources[source] = set(addresses)
        wanted = set().union(*self._sources.values())
        for address in sorted(wanted - self.replicas.keys()):
            log.info("adding replica %s (from %s)", address, source)
            replica = Replica(address, health=self._config.health, breaker=self._config.breaker)
            self.replicas[address] = replica
            replica.start()
        for address in sorted(self.replicas.keys() - wanted):
            log.info("removing replica %s", address)
            self._retire(self.replicas.pop(address))

    def _retire(self, replica: Replica) -> None:
        """Stops routing to it at once; closes it once its in-flight calls are done."""

        async def close_when_idle() -> None:
            for _ in range(600):
                if replica.in_flight == 0:
                    break
                await asyncio.sleep(0.1)
            await replica.close()

        task = asyncio.create_task(close_when_idle())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def candidates(self, model: str) -> list[Replica]:
        return [r for r in self.replicas.values() if r.available and model in r.models]

    def knows_model(self, model: str) -> bool:
        return any(model in r.models for r in self.replicas.values())

    def models(self) -> list[pb.ModelInfo]:
        """Models with at least one serving replica."""
        seen: dict[str, pb.ModelInfo] = {}
        for replica in self.replicas.values():
            if replica.serving:
                for model_id, info in replica.models.items():
                    seen.setdefault(model_id, info)
        return sorted(seen.values(), key=lambda m: m.id)

    async def close(self) -> None:
        await asyncio.gather(
            *(r.close() for r in self.replicas.values()), *self._closing, return_exceptions=True
        )
        self.replicas.clear()
