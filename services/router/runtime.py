"""The router's live state, and applying a (re-read) config to it without a restart."""

from __future__ import annotations

import asyncio
import logging

from services.router.config import RouterConfig
from services.router.discovery import Resolver, watch_dns
from services.router.metrics import RouterMetrics
from services.router.pool import ReplicaPool
from services.router.relay import Relay

log = logging.getLogger("tera.router")


class RouterRuntime:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.pool = ReplicaPool(config)
        self.metrics.watch(self.pool)
        self.relay = Relay(self.pool, config, self.metrics)
        self.metrics.watch_policies(self.relay.policies)
        self._dns_tasks: dict[str, asyncio.Task[None]] = {}
        self._apply_discovery(config)

    def reload(self, config: RouterConfig) -> None:
        """Applies a new config: replicas, DNS names, policies, retry and health settings.
        The listening address and metrics port keep their first values."""
        self.config = config
        self.pool.reconfigure(config)
        self.relay.reconfigure(config)
        self._apply_discovery(config)
        log.info(
            "configuration reloaded: replicas=%s dns=%s policy=%s",
            config.replicas,
            config.dns,
            config.policy,
        )

    def _apply_discovery(self, config: RouterConfig) -> None:
        self.pool.set_source("static", set(config.replicas))
        for target in set(self._dns_tasks) - set(config.dns):
            self._dns_tasks.pop(target).cancel()
            self.pool.set_source(f"dns:{target}", set())
        resolver = Resolver(config.dns_server)
        for target in config.dns:
            if target in self._dns_tasks:
                self._dns_tasks[target].cancel()
            self._dns_tasks[target] = asyncio.create_task(
                watch_dns(self.pool, target, config.dns_refresh_s, resolver),
                name=f"dns {target}",
            )

    async def close(self) -> None:
        for task in self._dns_tasks.values():
            task.cancel()
        await asyncio.gather(*self._dns_tasks.values(), return_exceptions=True)
        await self.relay.close()
        await self.pool.close()
