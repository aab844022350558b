"""The ``services`` section: the services behind the gateway and their upstream targets.

Targets are checked with ``garrison.uri.origin``, the parser the proxy builds its targets with, so
``garrison check`` accepts exactly the targets the gateway can start with (see ``garrison.uri`` for
why that grammar sits below the config rather than behind a registered hook).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from garrison.config.common import Strict
from garrison.config.secrets import SecretItem
from garrison.config.units import Duration
from garrison.uri.normalize import TargetRejected, normalize_path
from garrison.uri.origin import parse_origin

__all__ = [
    "CallConfig",
    "CircuitBreakerConfig",
    "HealthCheckConfig",
    "PoolConfig",
    "RetryConfig",
    "ServiceConfig",
    "TargetUrl",
]


class PoolConfig(Strict):
    """Keep-alive connections to each target."""

    max_idle: int = Field(64, ge=0, description="Idle connections kept per target.")
    idle_timeout: Duration = Field(30.0, description="Idle upstream connections close after this.")


class RetryConfig(Strict):
    """Retries of idempotent requests that failed before any response byte arrived."""

    attempts: int = Field(1, ge=0, le=5, description="Extra attempts after the first (0 disables).")
    budget_ratio: float = Field(0.2, ge=0, le=1, description="Retries may add at most this share of load.")
    min_per_second: float = Field(3.0, ge=0, description="Retries always allowed per second.")


class CircuitBreakerConfig(Strict):
    """Passive outlier detection: a target that keeps failing is taken out for a while."""

    consecutive_failures: int = Field(
        5,
        ge=1,
        description="Failures in a row (connect errors, resets, "
        "timeouts, 502/503/504) that open the circuit.",
    )
    open_for: Duration = Field(10.0, gt=0, description="How long an open circuit refuses before a probe.")
    half_open_probes: int = Field(1, ge=1, description="Concurrent probe requests when half-open.")


class HealthCheckConfig(Strict):
    """Optional active health checks: GET `path` on every target each `interval`."""

    path: str = Field("/health", pattern=r"^/[\x21-\x7e]*$", description="Path probed on each target.")
    interval: Duration = Field(5.0, gt=0, description="Time between probes.")
    timeout: Duration = Field(1.0, gt=0, description="A probe slower than this fails.")
    healthy_threshold: int = Field(2, ge=1, description="Successes in a row that mark a target healthy.")
    unhealthy_threshold: int = Field(3, ge=1, description="Failures in a row that mark it unhealthy.")


def _check_call_path(value: str) -> str:
    base = value[:-3] if value.endswith("/**") else value
    try:
        normalized = normalize_path((base or "/").encode("ascii")).decode("ascii")
    except (TargetRejected, UnicodeEncodeError) as exc:
        raise ValueError(f"not a valid path: {value!r}") from exc
    if normalized != (base or "/"):
        raise ValueError(f"paths must be in normalized form: write {normalized!r}, not {base!r}")
    return value


CallPath = Annotated[str, AfterValidator(_check_call_path)]


class CallConfig(Strict):
    """One allowed service-to-service call: this service may call `service` with these methods on
    these paths. `/x/**` is /x and everything below it (at a segment boundary)."""

    service: str = Field(description="The service called (a key of `services`).")
    methods: list[Annotated[str, Field(pattern=r"^[A-Z]{1,20}$")]] | None = Field(
        None, min_length=1, description="Methods allowed (any if unset)."
    )
    paths: list[CallPath] | None = Field(
        None, min_length=1, description="Normalized paths allowed, `/x/**` for a subtree (any if unset)."
    )


def _check_target(value: str) -> str:
    # The proxy's own parser decides, so `check` accepts exactly what the gateway can start with.
    parse_origin(value)
    return value


TargetUrl = Annotated[str, AfterValidator(_check_target)]


class ServiceConfig(Strict):
    """A service behind the gateway and its upstream targets."""

    targets: list[TargetUrl] = Field(min_length=1, description="Upstream addresses (http:// or https://).")
    balancer: Literal["round_robin", "least_requests"] = Field(
        "round_robin", description="How requests are spread over targets."
    )
    connect_timeout: Duration = Field(
        2.0, gt=0, description="Time to open a connection to a target (then 502)."
    )
    read_timeout: Duration = Field(
        30.0, gt=0, description="Longest wait for response headers or between body reads (then 504)."
    )
    pool: PoolConfig = Field(default_factory=PoolConfig, description="Keep-alive pool.")
    retries: RetryConfig = Field(default_factory=RetryConfig, description="Retry policy.")
    circuit_breaker: CircuitBreakerConfig = Field(
        default_factory=CircuitBreakerConfig, description="Circuit breaker per target."
    )
    health_check: HealthCheckConfig | None = Field(None, description="Active health checks (off if unset).")
    calls: list[CallConfig] = Field(
        default_factory=list,
        description="The services this one may call through the mesh; every other call is denied.",
    )
    secrets: list[SecretItem] = Field(
        default_factory=list,
        description="Vault paths this service may use (its policy `svc-<name>`, bound to its workload "
        "certificate): `secret/orders/*` (read-only) or `{path, capabilities}`.",
    )
