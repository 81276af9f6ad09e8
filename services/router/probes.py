"""The background loops that keep one replica's health and load current.

Health comes two ways: pushed updates (Watch) drop a draining engine at once, and active
checks with a timeout catch one that hangs without closing. Load is polled while serving.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.router.cache_index import follow_prefix_cache
from services.router.config import HealthConfig
from services.router.replica import UNKNOWN, Replica


class ReplicaProbes:
    """Started on creation; close() stops the loops (the replica's channel stays open)."""

    def __init__(self, replica: Replica, config: HealthConfig) -> None:
        self._replica = replica
        self._config = config
        address = replica.address
        self._tasks = [
            asyncio.create_task(self._watch_health(), name=f"watch {address}"),
            asyncio.create_task(self._check_health(), name=f"check {address}"),
            asyncio.create_task(self._poll_load(), name=f"load {address}"),
            asyncio.create_task(
                follow_prefix_cache(
                    lambda: replica.stub, replica.prefix_index, address, config.check_interval_s
                ),
                name=f"prefix cache {address}",
            ),
        ]

    def _health(self) -> health_pb2_grpc.HealthStub:
        """On the replica's current channel: a renewed certificate reaches the probes too."""
        return health_pb2_grpc.HealthStub(self._replica.channel)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _watch_health(self) -> None:
        """Push updates: a draining engine is dropped from selection at once."""
        while True:
            try:
                async for update in self._health().Watch(health_pb2.HealthCheckRequest()):
                    await self._replica.set_status(update.status)
            except grpc.aio.AioRpcError as exc:
                # A dropped connection means the replica is gone; any other failure of
                # the stream (a server without Watch) leaves the verdict to Check.
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await self._replica.set_status(UNKNOWN)
            await asyncio.sleep(self._config.check_interval_s)

    async def _check_health(self) -> None:
        """Active checks with a timeout: catch a replica that hangs without closing."""
        missed = 0
        while True:
            try:
                reply = await self._health().Check(
                    health_pb2.HealthCheckRequest(), timeout=self._config.check_timeout_s
                )
                missed = 0
                await self._replica.set_status(reply.status)
            except grpc.aio.AioRpcError as exc:
                # A refused connection is final; a slow answer from a busy engine is not,
                # until it happens unhealthy_threshold times in a row.
                missed += 1
                if (
                    exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                    or missed >= self._config.unhealthy_threshold
                ):
                    await self._replica.set_status(UNKNOWN)
            await asyncio.sleep(self._config.check_interval_s)

    async def _poll_load(self) -> None:
        replica = self._replica
        while True:
            await asyncio.sleep(self._config.load_poll_interval_s)
            if not replica.serving:
                continue
            with contextlib.suppress(grpc.aio.AioRpcError):
                replica.record_load(
                    await replica.stub.GetLoad(
                        pb.GetLoadRequest(), timeout=self._config.check_timeout_s
                    )
                )
