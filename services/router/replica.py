"""One engine replica as the router sees it: channel, health, load and outcome stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_options import CHANNEL_OPTIONS
from services.common.telemetry import grpc_client_interceptors
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from services.router.breaker import CircuitBreaker
from services.router.config import BreakerConfig, HealthConfig

log = logging.getLogger("tera.router.replica")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN

_EWMA_WEIGHT = 0.2


class Replica:
    def __init__(self, address: str, *, health: HealthConfig, breaker: BreakerConfig) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(
            address, options=CHANNEL_OPTIONS, interceptors=grpc_client_interceptors()
        )
        self.stub = pb_grpc.EngineStub(self.channel)
        self.status: int = UNKNOWN
        self.models: dict[str, pb.ModelInfo] = {}
        self.in_flight = 0
        self.reported = pb.LoadReport()
        self.breaker = CircuitBreaker(breaker)
        self.ttft_ewma_s: float | None = None
        self.requests = 0
        self.failures = 0
        self._health_config = health
        self._tasks: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"Replica({self.address}, status={self.status}, in_flight={self.in_flight})"

    # -- selection ------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self.status == SERVING

    @property
    def available(self) -> bool:
        return self.serving and self.breaker.allows()

    @property
    def saturated(self) -> bool:
        limit = self.reported.max_in_flight
        return bool(limit) and self.in_flight >= limit

    def load_score(self) -> float:
        """In-flight calls we know of, plus what the engine says is queued inside it."""
        return self.in_flight + self.reported.waiting + self.reported.kv_cache_usage

    # -- outcomes -------------------------------------------------------------------

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        self.requests += 1
        self.breaker.on_attempt()
        try:
            yield
        finally:
            self.in_flight -= 1

    def record_first_message(self, seconds: float) -> None:
        prev = self.ttft_ewma_s
        self.ttft_ewma_s = seconds if prev is None else prev + _EWMA_WEIGHT * (seconds - prev)

    def record_success(self) -> None:
        self.breaker.on_success()

    def record_failure(self, reason: str) -> None:
        self.failures += 1
        if self.breaker.on_failure():
            log.warning(
                "ejecting %s after %d consecutive failures (%s), for %.1f s",
                self.address,
                self.breaker.consecutive_failures,
                reason,
                self.breaker.ejected_until - time.monotonic(),
            )

    # -- background watchers --------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch_health(), name=f"watch {self.address}"),
            asyncio.create_task(self._check_health(), name=f"check {self.address}"),
            asyncio.create_task(self._poll_load(), name=f"load {self.address}"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.channel.close()

    async def _set_status(self, status: int) -> None:
        if status == self.status:
            return
        log.info(
            "replica %s: %s -> %s",
            self.address,
            health_pb2.HealthCheckResponse.ServingStatus.Name(self.status),
            health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        )
        self.status = status
        if status == SERVING:
            await self._refresh_models()

    async def _refresh_models(self) -> None:
        try:
            response = await self.stub.ListModels(
                pb.ListModelsRequest(), timeout=self._health_config.check_timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("replica %s: ListModels failed: %s", self.address, exc.code())
            return
        self.models = {m.id: m for m in response.models}

    async def _watch_health(self) -> None:
        """Push updates: a draining engine is dropped from selection at once."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        while True:
            try:
                async for update in stub.Watch(health_pb2.HealthCheckRequest()):
                    await self._set_status(update.status)
            except grpc.aio.AioRpcError as exc:
                # A dropped connection means the replica is gone; any other failure of
                # the stream (a server without Watch) leaves the verdict to Check.
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    await self._set_status(UNKNOWN)
            await asyncio.sleep(self._health_config.check_interval_s)

    async def _check_health(self) -> None:
        """Active checks with a timeout: catch a replica that hangs without closing."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        missed = 0
        while True:
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(), timeout=self._health_config.check_timeout_s
                )
                missed = 0
                await self._set_status(reply.status)
            except grpc.aio.AioRpcError as exc:
                # A refused connection is final; a slow answer from a busy engine is not,
                # until it happens unhealthy_threshold times in a row.
                missed += 1
                if (
                    exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED
                    or missed >= self._health_config.unhealthy_threshold
                ):
                    await self._set_status(UNKNOWN)
            await asyncio.sleep(self._health_config.check_interval_s)

    async def _poll_load(self) -> None:
        while True:
            await asyncio.sleep(self._health_config.load_poll_interval_s)
            if not self.serving:
                continue
            with contextlib.suppress(grpc.aio.AioRpcError):
                self.reported = await self.stub.GetLoad(
                    pb.GetLoadRequest(), timeout=self._health_config.check_timeout_s
                )
