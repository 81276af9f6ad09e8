"""The set of known replicas, fed by discovery sources, and candidate lookup by model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from services.common.tls import allowed_without_tls
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.config import RouterConfig
from services.router.probes import ReplicaProbes
from services.router.replica import NOT_SERVING, Replica

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
        # Models of removed replicas, with when they are forgotten (monotonic seconds).
        self._remembered: dict[str, tuple[pb.ModelInfo, float]] = {}

    def reconfigure(self, config: RouterConfig) -> None:
        """New health and breaker settings apply to replicas added from now on, a new
        engine transport to every replica's new calls."""
        self._config = config
        for replica in self.replicas.values():
            replica.transport = config.engine_transport

    def set_source(self, source: str, addresses: set[str]) -> None:
        self._sources[source] = set(addresses)
        wanted = set().union(*self._sources.values())
        for address in sorted(wanted - self.replicas.keys()):
            if not allowed_without_tls(self._config.tls, address):
                log.error("not adding replica %s: plaintext gRPC off loopback (set tls)", address)
                continue
            log.info("adding replica %s (from %s)", address, source)
            replica = Replica(
                address,
                health=self._config.health,
                breaker=self._config.breaker,
                tls=self._config.tls,
                transport=self._config.engine_transport,
            )
            self.replicas[address] = replica
            self._probes[address] = ReplicaProbes(replica, self._config.health)
        for address in sorted(self.replicas.keys() - wanted):
            log.info("removing replica %s", address)
            self._remember(self.replicas[address])
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

    def candidates(self, model: str, *, past_trials: bool = False) -> list[Replica]:
        """Available replicas of the model; `past_trials`: those awaiting the end of a
        half-open trial too."""
        return [
            r
            for r in self.replicas.values()
            if (r.available or (past_trials and r.awaiting_trial)) and model in r.models
        ]

    def _remember(self, replica: Replica) -> None:
        until = time.monotonic() + self._config.known_model_ttl_s
        for model_id, info in replica.models.items():
            self._remembered[model_id] = (info, until)

    def _known(self) -> dict[str, pb.ModelInfo]:
        """Every model configured as known, that a replica has named (loading, ready or
        gone away), or that a removed replica named within known_model_ttl_s."""
        now = time.monotonic()
        self._remembered = {m: v for m, v in self._remembered.items() if v[1] > now}
        known = {m: pb.ModelInfo(id=m) for m in self._config.known_models}
        known.update({m: info for m, (info, _) in self._remembered.items()})
        for replica in self.replicas.values():
            known.update(replica.models)
        return known

    def knows_model(self, model: str) -> bool:
        return model in self._known()

    def knows_any(self) -> bool:
        """Whether the pool has heard of any model at all (else it cannot tell a
        model that does not exist from one whose replicas have not answered yet)."""
        return bool(self._known())

    def models(self) -> list[pb.ModelInfo]:
        """Every known model, with its state: READY with a serving replica, LOADING with
        one up but not serving yet, UNAVAILABLE with none up."""
        listed = []
        for model_id, info in sorted(self._known().items()):
            holders = [r for r in self.replicas.values() if model_id in r.models]
            entry = pb.ModelInfo()
            entry.CopyFrom(next((r.models[model_id] for r in holders if r.serving), info))
            entry.state = _state(model_id, holders)
            listed.append(entry)
        return listed

    async def close(self) -> None:
        await asyncio.gather(
            *(_close(r, self._probes[a]) for a, r in self.replicas.items()),
            *self._closing,
            return_exceptions=True,
        )
        self.replicas.clear()
        self._probes.clear()


def _state(model_id: str, holders: list[Replica]) -> pb.ModelState:
    if any(r.serving for r in holders):
        return pb.MODEL_STATE_READY
    # Up but not serving: loading, unless the engine says otherwise (draining).
    if any(
        r.status == NOT_SERVING and r.models[model_id].state != pb.MODEL_STATE_UNAVAILABLE
        for r in holders
    ):
        return pb.MODEL_STATE_LOADING
    return pb.MODEL_STATE_UNAVAILABLE


async def _close(replica: Replica, probes: ReplicaProbes) -> None:
    await probes.close()
    await replica.close()
