"""Router settings."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


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
    # An attempt that has sent nothing after this long is abandoned and retried.
    first_message_timeout_s: float = Field(30.0, gt=0)


class ResumeConfig(BaseModel):
    # Times one stream may be continued on another replica after a cut (0: never).
    max_resumes: int = Field(2, ge=0)
    # Response bytes kept per stream to build a continuation from (about 10-20 bytes a
    # token); a stream past it is no longer resumable, so memory stays bounded.
    max_kept_bytes: int = Field(4 << 20, ge=0)


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
    policy: str = "p2c"
    # Per-model policy overrides: {"model id": "round_robin"}.
    model_policies: dict[str, str] = Field(default_factory=dict)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    resume: ResumeConfig = Field(default_factory=ResumeConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    # Retry-After (seconds) suggested to callers when no replica can take a request.
    retry_after_s: int = 1
    # Prometheus /metrics on this port (None: off).
    metrics_port: int | None = None

    @model_validator(mode="after")
    def _policies_exist(self) -> RouterConfig:
        from services.router.policies import POLICIES

        for name in [self.policy, *self.model_policies.values()]:
            if name not in POLICIES:
                raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}")
        return self

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"
