"""One engine replica as the router sees it: channel, health, load and outcome stats.

The background loops that keep health and load current are in services.router.probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2

from services.common.arrivals import ArrivalRate
from services.common.grpc_options import CHANNEL_OPTIONS
from services.common.mux import GENERATE
from services.common.mux_client import MuxCall, MuxChannel, StreamTransport
from services.common.prefix_hash import CHUNK_TOKENS
from services.common.telemetry import grpc_client_interceptors
from services.common.tls import RotatingChannel, TLSConfig
from services.proto_gen.tera.v1 import engine_pb2 as pb
from services.proto_gen.tera.v1 import engine_pb2_grpc as pb_grpc
from services.router.breaker import CircuitBreaker
from services.router.cache_index import PrefixIndex
from services.router.config import BreakerConfig, HealthConfig

log = logging.getLogger("tera.router.replica")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNKNOWN = health_pb2.HealthCheckResponse.UNKNOWN

_EWMA_WEIGHT = 0.2


class Replica:
    def __init__(
        self,
        address: str,
        *,
        health: HealthConfig,
        breaker: BreakerConfig,
        tls: TLSConfig | None = None,
        transport: str,
    ) -> None:
        self.address = address
        self._tls = tls
        # Generation, health and load all use one channel: the same credentials. A renewed
        # client certificate is picked up by new calls; streams on the old channel get
        # the longest request's time to finish.
        self._channel = RotatingChannel(
            address, tls, options=CHANNEL_OPTIONS, interceptors=grpc_client_interceptors()
        )
        self._mux = MuxChannel(self._channel.current, address)
        self.transport = transport  # RouterConfig.engine_transport
        self.status: int = UNKNOWN
        self.models: dict[str, pb.ModelInfo] = {}
        self.in_flight = 0
        self.reported = pb.LoadReport()
        self.arrivals = ArrivalRate()  # calls its engine admitted recently, per second
        self.breaker = CircuitBreaker(breaker)
        self.prefix_index = PrefixIndex()  # what the engine's prefix cache holds
        # Prompt tokens this router sent here that the engine has still to prefill (calls
        # with no first message yet, each counted by what the index said was uncached).
        self.prefill_tokens = 0
        self.ttft_ewma_s: float | None = None
        self.requests = 0
        self.failures = 0
        self._health_config = health
        # Set while no call is in flight: a retired replica closes once this is set.
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def transport(self) -> str:
        return self._transport

    @transport.setter
    def transport(self, transport: str) -> None:
        """Applies to links opened from now on (and at once to `per_call`): a link already
        open keeps carrying new streams until it breaks."""
        self._transport = transport
        self._mux.stream = StreamTransport(self._tls) if transport == "stream" else None

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
    def awaiting_trial(self) -> bool:
        """Serving, and out of selection only while its breaker's trial call runs."""
        return self.serving and self.breaker.awaiting_trial

    @property
    def saturated(self) -> bool:
        limit = self.reported.max_in_flight
        return bool(limit) and self.in_flight >= limit

    def load_score(self) -> float:
        """In-flight calls we know of, plus what the engine says is queued inside it."""
        return self.in_flight + self.reported.waiting + self.reported.kv_cache_usage

    def uncached_tokens(self, names: Sequence[int]) -> int:
        """The prompt tokens, in whole chunks, of prefix `names` that the cache lacks."""
        return (len(names) - self.prefix_index.match(names)) * CHUNK_TOKENS

    @contextlib.contextmanager
    def prefilling(self, tokens: int) -> Iterator[None]:
        """Counts a call's uncached prompt as queued prefill until its first message."""
        self.prefill_tokens += tokens
        try:
            yield
        finally:
            self.prefill_tokens -= tokens

    # -- outcomes -------------------------------------------------------------------

    @contextlib.contextmanager
    def track(self) -> Iterator[float]:
        """Counts an attempt in flight; yields its start, for record_failure."""
        self.in_flight += 1
        self.requests += 1
        self.idle.clear()
        self.breaker.on_attempt()
        try:
            yield self.breaker.now()
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def record_first_message(self, seconds: float) -> None:
        prev = self.ttft_ewma_s
        self.ttft_ewma_s = seconds if prev is None else prev + _EWMA_WEIGHT * (seconds - prev)

    def record_success(self) -> None:
        self.breaker.on_success()

    def record_failure(self, reason: str, *, started: float) -> None:
        """`started`: what track() yielded for the attempt that failed."""
        self.failures += 1
        if self.breaker.on_failure(started=started):
            log.warning(
                "ejecting %s after %d consecutive failures (%s), for %.1f s",
                self.address,
                self.breaker.consecutive_failures,
                reason,
                self.breaker.ejected_until - time.monotonic(),
            )

    # -- state the probes (services.router.probes) report ---------------------------

    def record_load(self, report: pb.LoadReport) -> None:
        self.reported = report
        self.arrivals.observe(report.total_requests)

    @property
    def arrivals_per_s(self) -> float:
        """Calls its engine admitted per second recently: the engine's own figure when it
        reports one (every router reads the same), else this router's estimate, which is
        kept warm meanwhile for an engine rolled back to a build without the field."""
        report = self.reported
        return report.arrivals_per_s if report.HasField("arrivals_per_s") else self.arrivals.per_s

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel new calls use (it follows the client certificate's files)."""
        return self._channel.current()

    @property
    def stub(self) -> pb_grpc.EngineStub:
        return pb_grpc.EngineStub(self.channel)

    def unary_stream(self, method: str) -> Callable[..., grpc.aio.UnaryStreamCall | MuxCall]:
        """A streaming call to the engine: a plain call, or under the `mux` and `stream`
        transports a Generate stream on the replica's multiplexed call or link."""
        if self.transport != "per_call" and method == GENERATE:
            return self._mux.unary_stream(method)
        return self.channel.unary_stream(method)

    async def close(self) -> None:
        self._mux.close()
        await self._channel.close()

    async def set_status(self, status: int) -> None:
        if status == self.status:
            return
        log.info(
            "replica %s: %s -> %s",
            self.address,
            health_pb2.HealthCheckResponse.ServingStatus.Name(self.status),
            health_pb2.HealthCheckResponse.ServingStatus.Name(status),
        )
        self.status = status
        # A loading engine (NOT_SERVING) already names its models: they exist, not ready.
        # A replica that went away (UNKNOWN) keeps the last list it gave.
        if status in (SERVING, NOT_SERVING):
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
