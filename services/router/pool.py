"""The set of known replicas, fed by discovery sources, and candidate lookup by model."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.config import RouterConfig
from services.router.probes import ReplicaProbes
from services.router.replica import Replica

log = logging.getLogger("tera.router.pool")

# The longest a removed replica may finish its in-flight calls before its channel closes.
RETIRE_WAIT_S = 60.0


class ReplicaPool:
    def __init__(self, config: RouterConfig) -> None:
        self._config = config
        self.replicas: dict[str, Replica] = {}
        self._probes: dict[str, ReplicaProbes] = {}
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
            self._probes[address] = ReplicaProbes(replica, self._config.health)
        for address in sorted(self.replicas.keys() - wanted):
            log.info("removing replica %s", address)
            self._retire(self.replicas.pop(address), self._probes.pop(address))

    def _retire(self, replica: Replica, probes: ReplicaProbes) -> None:
        """Stops routing to it at once; closes it once its in-flight calls are done
        (or after a minute, whichever comes first)."""

        async def close_when_idle() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replica.idle.wait(), RETIRE_WAIT_S)
            await _close(replica, probes)

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
            *(_close(r, self._probes[a]) for a, r in self.replicas.items()),
            *self._closing,
            return_exceptions=True,
        )
        self.replicas.clear()
        self._probes.clear()


async def _close(replica: Replica, probes: ReplicaProbes) -> None:
    await probes.close()
    await replica.close()
