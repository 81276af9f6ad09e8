"""Router settings."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, PositiveFloat, model_validator

from services.catalog.schema import Redis as RedisSettings
from services.common.priority import PRIORITIES
from services.common.tls import TLSConfig, require_tls_off_loopback
from services.router.auth import AuthConfig
from services.router.policies import check_policy_name, create_policy


class RetryConfig(BaseModel):
    max_attempts: int = Field(3, ge=1)
    backoff_base_s: float = Field(0.02, ge=0)
    backoff_max_s: float = Field(0.5, ge=0)
    # Retries may add at most this fraction of the primary traffic (plus a floor of
    # min_retries_per_s), so a failing fleet is not stampeded.
    budget_ratio: float = Field(0.2, ge=0)
    min_retries_per_s: float = Field(10.0, ge=0)
    # Most retries that may be saved up: enough for every stream on a replica that
    # dies under load to be retried at once.
    budget_burst: float = Field(200.0, ge=1)
    # An attempt that has sent nothing after this long is given up for another replica
    # when one has room (and an attempt and retry budget are left); otherwise awaited,
    # bounded by the caller's deadline. Per model: RouterConfig.model_first_message_timeout_s.
    first_message_timeout_s: float = Field(30.0, gt=0)


class ResumeConfig(BaseModel):
    # Times one stream may be continued on another replica after a cut (0: never).
    max_resumes: int = Field(2, ge=0)
    # Response bytes kept per stream to build a continuation from (about 10-20 bytes a
    # token); a stream past it is no longer resumable, so memory stays bounded.
    max_kept_bytes: int = Field(4 << 20, ge=0)
    # While a cut stream waits for its new replica's first message (a re-prefill of the
    # prompt and the answer so far) or a preempted one for a slot, a multiplexed caller
    # hears a keepalive this often: the edge's stream_idle_timeout_s (60 s) must not
    # count the router's wait as a silent model. Keep it well under that limit.
    keepalive_s: float = Field(10.0, gt=0)


class BreakerConfig(BaseModel):
    consecutive_failures: int = Field(5, ge=1)
    base_ejection_s: float = Field(1.0, gt=0)
    max_ejection_s: float = Field(30.0, gt=0)


class HealthConfig(BaseModel):
    check_interval_s: float = Field(1.0, gt=0)
    check_timeout_s: float = Field(1.0, gt=0)
    # Consecutive timed-out checks before a replica counts as down.
    unhealthy_threshold: int = Field(3, ge=1)
    load_poll_interval_s: float = Field(1.0, gt=0)


class HedgeConfig(BaseModel):
    """A call with no first message after the hedge delay is also sent to a second
    replica; the first to answer is kept and the other cancelled."""

    enabled: bool = True
    # A fixed delay; None: adaptive, the model's recent time to first message at
    # `percentile`, clamped to [floor_s, ceiling_s] (ceiling_s until min_samples).
    delay_s: float | None = Field(None, gt=0)
    percentile: float = Field(95.0, gt=0, le=100)
    floor_s: float = Field(0.25, gt=0)
    ceiling_s: float = Field(5.0, gt=0)
    window: int = Field(200, ge=1)
    min_samples: int = Field(20, ge=1)
    # Hedges may add at most this fraction of the model's requests (token bucket that
    # starts with budget_burst), so an all-slow fleet sees no hedge storm.
    budget_ratio: float = Field(0.05, ge=0)
    budget_burst: float = Field(10.0, ge=1)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> HedgeConfig:
        if self.floor_s > self.ceiling_s:
            raise ValueError(f"hedge floor_s {self.floor_s} is above ceiling_s {self.ceiling_s}")
        return self


class FairConfig(BaseModel):
    """The fair queue in front of each model's replicas (services/router/queue.py)."""

    # Requests that may wait per model; 0: no queue, a saturated fleet answers 429 at once.
    queue_size: int = Field(0, ge=0)
    # The longest a request of each class may wait; one that would wait longer (by the
    # queue's drain rate) is refused at once with a Retry-After.
    max_wait_s: dict[str, float] = Field(
        default_factory=lambda: {"interactive": 5.0, "standard": 10.0, "batch": 30.0}
    )
    # Slots per model that only `interactive` requests may take, so they need not wait
    # for a lower class's stream to end (costs that much capacity under overload).
    interactive_headroom: int = Field(0, ge=0)
    # A waiting lower class gets at least one dispatch in this many.
    starvation_every: int = Field(10, ge=2)
    # Tokens a request is charged when the caller sends no `tera-cost` estimate.
    default_cost: int = Field(256, ge=1)
    # A request that must wait takes the slot of a running, resumable stream of a lower
    # class, which waits in the queue and is continued token-exactly (preempt.py). On by
    # default: it acts only when the queue is on and keys have classes, which is an
    # operator saying the higher class must not wait for the lower; its cost is the
    # victim's replay (prompt + emitted tokens as prompt, which a prefix cache mostly
    # holds) and the victim's pause, both bounded by max_preemptions.
    preempt: bool = True
    # Times one stream may be preempted; then it runs to its end, so it does finish.
    max_preemptions: int = Field(2, ge=0)
    # With the router's `redis` set, the tenants' counters are the fleet's: every router
    # pushes what it charged and reads the others' back this often (fair_share.py).
    share_interval_s: float = Field(0.1, gt=0)
    # A tenant no router charged for this long is forgotten there (it returns lifted).
    share_idle_s: float = Field(60.0, gt=0)
    # Within a class: a request that waits while its tenant holds fewer slots than its
    # weighted share (among the class's active tenants) takes the slot of the latest
    # stream of a tenant over its share, if that tenant keeps its share (share_preempt.py).
    # Without it a same-class request waits for a whole stream to end. Needs `preempt`.
    preempt_for_share: bool = True
    # A stream runs at least this long before it yields for fair share, so its prefill
    # is not thrown away at once; a request arriving meanwhile waits up to that long.
    # 0 by default: on the stand-in bench 0.2 s put quiet's TTFT p99 at ~190 ms against
    # ~29 ms with 0, for the same fleet output, and the replay a preemption costs is
    # bounded by max_preemptions and mostly prefix-cache hits. Raise it where prefill
    # is dear (long prompts, no prefix cache).
    share_min_run_s: float = Field(0.0, ge=0.0)

    @model_validator(mode="after")
    def _classes_known(self) -> FairConfig:
        unknown = set(self.max_wait_s) - set(PRIORITIES)
        if unknown:
            raise ValueError(f"max_wait_s: unknown classes {sorted(unknown)}; use {PRIORITIES}")
        return self

    def max_wait_for(self, rank: int) -> float:
        return self.max_wait_s.get(PRIORITIES[rank], 10.0)


class RouterConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 50051
    # Static replica addresses ("host:port"); each replica reports the models it serves.
    replicas: list[str] = Field(default_factory=list)
    # DNS names ("name:port") resolving to one address per replica (a headless Service).
    dns: list[str] = Field(default_factory=list)
    dns_refresh_s: float = Field(5.0, gt=0)
    # Query this DNS server ("host:port") instead of the system resolver.
    dns_server: str | None = None
    # A model whose last replica went away (a fleet scaled to zero) is still known this
    # long: requests for it get 503 + Retry-After, not 404.
    known_model_ttl_s: float = Field(600.0, ge=0)
    # Models that exist before any replica names them (the catalog's, those tera run
    # starts): while none is ready they get 503 + Retry-After too, never 404.
    known_models: list[str] = Field(default_factory=list)
    # cache_aware: the prefix cache's residency first, within a load band; a call that
    # carries no prefix names is routed by routing key and load (README, Cache-aware
    # routing, for the benchmark that made it the default).
    policy: str = "cache_aware"
    # Per-model policy overrides: {"model id": "round_robin"}.
    model_policies: dict[str, str] = Field(default_factory=dict)
    # Knobs per policy name, e.g. {"cache_aware": {"load_margin": 8}}.
    policy_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # How Generate streams reach the engines: stream (the default), all of a replica's
    # streams over one multiplexed link to its stream listener (its mux_stream_port,
    # services/common/mux_stream.py), or over one GenerateMux call where it offers
    # none; mux, always the GenerateMux call. Either way a message carries every
    # stream's deltas queued since the last one (services/common/mux_client.py): at one
    # token per message it costs the router a fraction of per_call's CPU per token, and
    # the link saves gRPC's cost a message as well. per_call: one gRPC call per stream.
    engine_transport: Literal["per_call", "mux", "stream"] = "stream"
    retry: RetryConfig = Field(default_factory=RetryConfig)
    resume: ResumeConfig = Field(default_factory=ResumeConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    hedge: HedgeConfig = Field(default_factory=HedgeConfig)
    # Per-model hedge settings over `hedge`: {"model id": {"enabled": false}}.
    model_hedges: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Per-model retry.first_message_timeout_s: {"model id": 120.0} for a model whose
    # prefills run long (a large model, long prompts), so its calls are not moved for
    # being slow while a stalled replica of a quick model is still left early.
    model_first_message_timeout_s: dict[str, PositiveFloat] = Field(default_factory=dict)
    health: HealthConfig = Field(default_factory=HealthConfig)
    fair: FairConfig = Field(default_factory=FairConfig)
    # Retry-After (seconds) suggested to callers when no replica can take a request.
    retry_after_s: int = 1
    # Prometheus /metrics on this port (None: off).
    metrics_port: int | None = None
    # Mutual TLS, both ways: callers must present a certificate from tls.ca, and the
    # router presents its own to the engines (tls.server_name: the engines' name).
    tls: TLSConfig | None = None
    # grpc.health.v1 alone, in plaintext, for Kubernetes' probes (None: off).
    health_port: int | None = None
    # GenerateMux frames on a TCP listener of their own, on `host`, under `tls`, for
    # edges on router_transport: stream (services/common/mux_stream.py); None: off.
    mux_stream_port: int | None = Field(None, ge=0, le=65535)
    # Callers as tenants (services/router/auth.py); keys come from --catalog.
    auth: AuthConfig = Field(default_factory=AuthConfig)
    # Shared state with the other routers (the fair queue's counters); the catalog's
    # `redis` when --catalog names one. None: each router schedules on its own counters.
    redis: RedisSettings | None = None

    @model_validator(mode="after")
    def _policies_exist(self) -> RouterConfig:
        for name in [self.policy, *self.model_policies.values()]:
            create_policy(name, self.policy_options)
        for name in self.policy_options:
            check_policy_name(name)
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @model_validator(mode="after")
    def _plaintext_on_loopback_only(self) -> RouterConfig:
        # DNS names are checked per resolved address (pool.py): a name may mean loopback.
        require_tls_off_loopback(self.tls, [self.address, *self.replicas], "to")
        return self

    @model_validator(mode="after")
    def _model_hedges_valid(self) -> RouterConfig:
        for model in self.model_hedges:
            self.hedge_for(model)
        return self

    def first_message_timeout_s(self, model: str) -> float:
        default = self.retry.first_message_timeout_s
        return self.model_first_message_timeout_s.get(model, default)

    def hedge_for(self, model: str) -> HedgeConfig:
        override = self.model_hedges.get(model)
        if not override:
            return self.hedge
        return HedgeConfig.model_validate({**self.hedge.model_dump(), **override})
