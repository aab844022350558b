"""The garrison.yaml model, by its old name: every name this module had, re-exported.

The model is split by owner (issue 8): ``common`` (types several sections use: the strict base,
addresses, TLS, Redis, revocations, the admin listener), one module per component (``gateway`` with
``routes`` and ``services``; ``identity``), and ``assembly`` (``GarrisonConfig``, the whole file, and
``with_derived_defaults``, which runs each component's own hook). New code imports from those
modules; this one stays so that code written against the old layout keeps working.
"""

from __future__ import annotations

from garrison.config.assembly import GarrisonConfig, with_derived_defaults
from garrison.config.common import (
    AdminConfig,
    AdminTlsConfig,
    Cidr,
    HstsConfig,
    ListenAddress,
    RedisConfig,
    RevocationsConfig,
    Strict,
    TlsConfig,
    is_loopback_host,
    parse_listen,
)
from garrison.config.gateway import (
    AccessLogConfig,
    ApiKeysConfig,
    BlocklistConfig,
    GatewayConfig,
    IpRulesConfig,
    JwtConfig,
    LimitsConfig,
    MtlsClientConfig,
    MtlsConfig,
    ResponseCacheConfig,
)
from garrison.config.identity import IdentityConfig, IdentityKeysConfig, LockoutConfig
from garrison.config.routes import (
    AuthConfig,
    CorsConfig,
    RateLimitConfig,
    RouteCacheConfig,
    RouteConfig,
    RouteMatch,
)
from garrison.config.services import (
    CircuitBreakerConfig,
    HealthCheckConfig,
    PoolConfig,
    RetryConfig,
    ServiceConfig,
    TargetUrl,
)
from garrison.config.store import StoreConfig

__all__ = [
    "AccessLogConfig",
    "AdminConfig",
    "AdminTlsConfig",
    "ApiKeysConfig",
    "AuthConfig",
    "BlocklistConfig",
    "Cidr",
    "CircuitBreakerConfig",
    "CorsConfig",
    "GarrisonConfig",
    "GatewayConfig",
    "HealthCheckConfig",
    "HstsConfig",
    "IdentityConfig",
    "IdentityKeysConfig",
    "IpRulesConfig",
    "JwtConfig",
    "LimitsConfig",
    "ListenAddress",
    "LockoutConfig",
    "MtlsClientConfig",
    "MtlsConfig",
    "PoolConfig",
    "RateLimitConfig",
    "RedisConfig",
    "ResponseCacheConfig",
    "RetryConfig",
    "RevocationsConfig",
    "RouteCacheConfig",
    "RouteConfig",
    "RouteMatch",
    "ServiceConfig",
    "StoreConfig",
    "Strict",
    "TargetUrl",
    "TlsConfig",
    "is_loopback_host",
    "parse_listen",
    "with_derived_defaults",
]
