"""The garrison.yaml model.

Every section forbids unknown keys: a misspelt key (``rate_limt``) must be an error, never a security
control silently switched off. Each field carries a description; docs/config.md is generated from
this model (``garrison schema --markdown``) and a test keeps the two in step.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from garrison.config.store import StoreConfig
from garrison.config.units import Duration, Size

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_HOSTNAME_RE = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_METHOD_RE = re.compile(r"^[A-Z]{1,20}$")


class Strict(BaseModel):
    """Base for every section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    parse_listen(value)
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:8443`` / ``[::1]:8443`` / ``0.0.0.0:0`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8443, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"listen host must be an IP address or localhost, got {host!r}") from None
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal: the one test of "on this machine only" (admin
    listener, JWKS URLs over http)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ListenAddress = Annotated[str, AfterValidator(_check_listen)]


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {value!r}") from None
    return value


Cidr = Annotated[str, AfterValidator(_check_cidr)]


class HstsConfig(Strict):
    """Strict-Transport-Security sent on every response served over TLS."""

    enabled: bool = Field(True, description="Send Strict-Transport-Security on TLS responses.")
    max_age: Duration = Field(31536000, description="How long browsers remember to use HTTPS only.")
    include_subdomains: bool = Field(True, description="Apply the policy to every subdomain too.")
    preload: bool = Field(False, description="Add `preload` (only if you have submitted the domain).")


class TlsConfig(Strict):
    """TLS termination at the gateway. TLS 1.2+ only, AEAD ciphers with forward secrecy, ALPN http/1.1."""

    cert: str = Field(
        "auto",
        description="`auto` creates a local CA and a server certificate under state_dir/tls; "
        "otherwise the path of a PEM certificate chain.",
    )
    key: str | None = Field(None, description="Path of the PEM private key; required when `cert` is a path.")
    server_names: list[str] = Field(
        default_factory=lambda: ["localhost"],
        description="DNS names put in the `auto` certificate (127.0.0.1 and ::1 are always included).",
    )

    @field_validator("server_names")
    @classmethod
    def _server_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HOSTNAME_RE.match(name):
                raise ValueError(f"server names are lower-case DNS names, got {name!r}")
        return value

    min_version: Literal["1.2", "1.3"] = Field("1.2", description="Lowest TLS version accepted.")
    insecure_disable: bool = Field(
        False,
        description="INSECURE: serve plaintext HTTP. For benchmarks and local experiments only; "
        "`garrison check` warns and the gateway logs a warning at every start.",
    )

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if self.cert != "auto" and not self.key:
            raise ValueError("`key` is required when `cert` is a file path")
        if self.cert == "auto" and self.key:
            raise ValueError("`key` must not be set when `cert` is `auto`")
        return self


class LimitsConfig(Strict):
    """Per-request and per-connection limits of the gateway."""

    max_body: Size = Field(1024 * 1024, description="Largest request body (413), counted while streaming.")
    max_header_bytes: Size = Field(16 * 1024, description="Largest request line plus header block (431).")
    max_headers: int = Field(100, ge=1, le=1000, description="Most header fields in one request (431).")
    header_timeout: Duration = Field(
        10.0, gt=0, description="Time a client has to send a complete request head (408, then close)."
    )
    body_timeout: Duration = Field(30.0, gt=0, description="Longest pause while a client sends a body (408).")
    keepalive_timeout: Duration = Field(
        60.0, gt=0, description="Idle keep-alive connections close after this."
    )
    max_connections: int = Field(10000, ge=1, description="Open client connections per worker; more get 503.")


class IpRulesConfig(Strict):
    """Allow and deny lists applied to the client address resolved through `trusted_proxies`."""

    allow: list[Cidr] = Field(
        default_factory=list, description="If set, only these CIDRs may call (IPv4 and IPv6)."
    )
    deny: list[Cidr] = Field(
        default_factory=list, description="These CIDRs may not call; deny wins over allow."
    )


class RedisConfig(Strict):
    """The Redis that gateway workers and replicas share (blocklist, revocations, rate-limit counters)."""

    url: str | None = Field(None, pattern=r"^rediss?://", description="redis://host:port/db, or unset.")


class BlocklistConfig(Strict):
    """The dynamic blocklist (admin API `/blocklist`, `garrison block IP --for 15m`)."""

    storage: Literal["memory", "redis"] = Field(
        "memory",
        description="`redis` shares blocks with every worker and replica through `gateway.redis`; "
        "`memory` keeps them per gateway (with `workers: N` the supervisor applies each change to "
        "every worker).",
    )
    prefix: str = Field(
        "garrison:blocklist", pattern=r"^[A-Za-z0-9:_-]{1,64}$", description="Redis key prefix."
    )
    max_entries: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Most addresses blocked at once; a block beyond it is refused (507, counted in "
        "`garrison_gateway_admin_refused_total`) until blocks expire or are lifted. Renewing a "
        "block already in force is always allowed.",
    )
    max_duration: Duration = Field(
        7 * 24 * 3600.0,
        gt=0,
        le=365 * 24 * 3600.0,
        description="Longest block the admin API accepts (at most 365d). Lasting bans belong in "
        "`ip_rules.deny`, where they are reviewed with the config.",
    )


class RevocationsConfig(Strict):
    """Revoked access tokens by `jti` (admin API `/revocations`, `garrison revoke JTI --for 10m`)."""

    storage: Literal["memory", "redis"] = Field(
        "memory",
        description="`redis` follows the revocations that any gateway or the identity provider writes "
        "to `gateway.redis` (see gateway.md, Token revocation); `memory` keeps them per gateway "
        "(with `workers: N` the supervisor applies each one to every worker).",
    )
    prefix: str = Field(
        "garrison:revoked", pattern=r"^[A-Za-z0-9:_-]{1,64}$", description="Redis key prefix."
    )
    max_entries: int = Field(
        100_000,
        ge=1,
        le=10_000_000,
        description="Most token revocations in force at once; a new one beyond it is refused (507, "
        "counted in `garrison_gateway_admin_refused_total`). Revocations last at most a day (or "
        "until the token's `exp`), so the set drains by itself.",
    )


class AccessLogConfig(Strict):
    """One JSON line per request."""

    enabled: bool = Field(True, description="Write the access log.")
    path: str = Field("-", description="File to append to; `-` is standard output.")


class AdminTlsConfig(Strict):
    """TLS for the admin listener (required when it is not on loopback)."""

    cert: str = Field(description="Path of the PEM certificate chain the admin listener serves.")
    key: str = Field(description="Path of its PEM private key.")
    client_ca: str | None = Field(
        None,
        description="PEM CA file: a client certificate that chains to it is an admin credential "
        "(as the admin token is). Use a CA of its own for administrators.",
    )


class AdminConfig(Strict):
    """The admin listener: /metrics, /live, /ready and the blocklist and revocation APIs.

    Changes need the admin token (or a client certificate); reads are open on loopback only."""

    listen: ListenAddress = Field("127.0.0.1:9901", description="Address of the admin listener.")
    token_file: str | None = Field(
        None,
        description="File holding the admin token (`Authorization: Bearer`), created 0600 with 256 "
        "random bits when missing. Unset: state_dir/admin.token. The CLI reads it from here.",
    )
    tls: AdminTlsConfig | None = Field(
        None,
        description="Serve the admin listener over TLS. Required when `listen` is not on loopback, "
        "so the credential never crosses a network in clear.",
    )
    hosts: list[str] = Field(
        default_factory=list,
        description="DNS names the admin listener answers to in `Host` (IP literals of the listener, "
        "and localhost on loopback, always work). Any other Host is refused (DNS rebinding).",
    )

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HOSTNAME_RE.match(name) or name.startswith("*"):
                raise ValueError(f"admin hosts are lower-case DNS names without wildcards, got {name!r}")
        return value


class ApiKeysConfig(Strict):
    """Where API keys live (`garrison apikey create|list|revoke|expire`)."""

    database: str | None = Field(
        None,
        pattern=r"^(postgres(ql)?(\+asyncpg)?|sqlite(\+aiosqlite)?)://",
        description="A PostgreSQL URL; unset: SQLite at state_dir/garrison.db. Only SHA-256 digests "
        "are stored.",
    )
    refresh_interval: Duration = Field(
        1.0, gt=0, description="How often each gateway re-reads the keys (revocation delay)."
    )


class ResponseCacheConfig(Strict):
    """The memory shared by every route's response cache (`routes[].cache`), per worker."""

    max_size: Size = Field(64 * 1024 * 1024, description="Memory for cached responses; LRU beyond it.")
    max_entry_size: Size = Field(1024 * 1024, description="Largest response (headers + body) cached.")


class MtlsClientConfig(Strict):
    """One client certificate identity: which certificate it is, and the scopes it carries."""

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
        description="Client id: sent upstream as X-Garrison-Client, subject `mtls:<id>`.",
    )
    uri: str | None = Field(None, description="Matches a certificate with this URI SAN (e.g. SPIFFE ID).")
    dns: str | None = Field(None, description="Matches a certificate with this DNS SAN.")
    email: str | None = Field(None, description="Matches a certificate with this e-mail SAN.")
    common_name: str | None = Field(None, description="Matches a certificate whose subject CN is this.")
    scopes: list[str] = Field(default_factory=list, description="Scopes this client is granted.")

    @model_validator(mode="after")
    def _one_selector(self) -> MtlsClientConfig:
        chosen = [v for v in (self.uri, self.dns, self.email, self.common_name) if v is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of uri, dns, email, common_name")
        return self


class MtlsConfig(Strict):
    """Client certificates at the edge (routes with `auth: {require: mtls}`). The gateway asks every
    TLS client for a certificate; one that is sent must chain to `ca` or the handshake fails."""

    ca: str = Field(description="PEM bundle of the CA(s) that issue client certificates.")
    clients: list[MtlsClientConfig] = Field(
        min_length=1, description="Known client certificates; a valid one not listed here is refused."
    )

    @model_validator(mode="after")
    def _unique(self) -> MtlsConfig:
        ids = [c.id for c in self.clients]
        selectors = [(c.uri, c.dns, c.email, c.common_name) for c in self.clients]
        if len(set(ids)) != len(ids):
            raise ValueError("client ids must be unique")
        if len(set(selectors)) != len(selectors):
            raise ValueError("two clients match the same certificate name")
        return self


class GatewayConfig(Strict):
    """The edge gateway: the single entry point of every external request."""

    listen: ListenAddress = Field("0.0.0.0:8443", description="Address of the main (TLS) listener.")
    workers: int = Field(1, ge=1, le=64, description="Processes serving the same port (SO_REUSEPORT).")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS termination.")
    redirect_http: ListenAddress | None = Field(
        None, description="Optional plaintext listener that only redirects to HTTPS (308)."
    )
    public_host: str | None = Field(
        None,
        description="Host name used in every HTTPS redirect. If unset, the request's host is used "
        "only when a route's `match.hosts` or `tls.server_names` names it; any other gets 400.",
    )
    hsts: HstsConfig = Field(default_factory=HstsConfig, description="Strict-Transport-Security.")
    referrer_policy: Literal[
        "no-referrer",
        "no-referrer-when-downgrade",
        "origin",
        "origin-when-cross-origin",
        "same-origin",
        "strict-origin",
        "strict-origin-when-cross-origin",
    ] = Field("no-referrer", description="Referrer-Policy added to responses that do not set one.")
    trusted_proxies: list[Cidr] = Field(
        default_factory=list,
        description="Proxies (CIDRs) whose X-Forwarded-For / Forwarded entries are believed, walking "
        "the list from the right. Empty: the TCP peer is the client.",
    )
    preserve_host: bool = Field(
        True, description="Send the client's Host upstream (else the target's host:port)."
    )
    allow_underscores_in_headers: bool = Field(
        False,
        description="Forward client header names containing `_` (dropped by default, as nginx does, "
        "because `X_Forwarded_For` and `X-Forwarded-For` collide in CGI-style frameworks).",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    ip_rules: IpRulesConfig = Field(
        default_factory=IpRulesConfig, description="Global IP allow/deny lists (403), checked before routing."
    )
    blocklist: BlocklistConfig = Field(
        default_factory=BlocklistConfig, description="Dynamic blocklist (403)."
    )
    revocations: RevocationsConfig = Field(
        default_factory=RevocationsConfig, description="Access-token revocation (401)."
    )
    redis: RedisConfig = Field(
        default_factory=RedisConfig, description="Shared state for workers and replicas."
    )
    jwt: JwtConfig | None = Field(
        None, description="JWT access-token verification (routes with `require: jwt`)."
    )
    api_keys: ApiKeysConfig = Field(default_factory=ApiKeysConfig, description="API-key storage.")
    cache: ResponseCacheConfig = Field(
        default_factory=ResponseCacheConfig, description="Response cache memory (routes with `cache`)."
    )
    mtls: MtlsConfig | None = Field(
        None, description="Client certificates at the edge (routes with `require: mtls`)."
    )
    access_log: AccessLogConfig = Field(default_factory=AccessLogConfig, description="Access log.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="Admin listener.")
    drain_timeout: Duration = Field(30.0, description="On SIGTERM, how long in-flight requests may finish.")
    watch_config: bool = Field(True, description="Reload when the config file changes (SIGHUP always does).")

    @field_validator("public_host")
    @classmethod
    def _valid_public_host(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTNAME_RE.match(value.lower()):
            raise ValueError(f"not a host name: {value!r}")
        return value


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


def _check_target(value: str) -> str:
    # The gateway's own parser decides, so `check` accepts exactly what the gateway can start with.
    from garrison.proxy.upstream.circuit import CircuitBreaker
    from garrison.proxy.upstream.target import Target

    Target.from_url(value, CircuitBreaker())
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


def _check_path(value: str) -> str:
    from garrison.proxy.normalize import TargetRejected, normalize_path

    try:
        normalized = normalize_path(value.encode("ascii")).decode("ascii")
    except (TargetRejected, UnicodeEncodeError) as exc:
        raise ValueError(f"not a valid route path: {value!r}") from exc
    if normalized != value:
        raise ValueError(f"route paths must be in normalized form: write {normalized!r}, not {value!r}")
    return value


class RouteMatch(Strict):
    """What a request must look like to take this route. Longest matching path wins."""

    path: Annotated[str, AfterValidator(_check_path)] = Field(
        description="Normalized path, case-sensitive, e.g. /api/orders."
    )
    prefix: bool = Field(
        False,
        description="Also match everything below `path` at a segment boundary "
        "(/api matches /api and /api/x, never /apix).",
    )
    methods: list[str] | None = Field(None, description="Allowed methods (any if unset); others get 405.")
    hosts: list[str] | None = Field(
        None, description="Host names this route serves (any if unset); `*.example.com` allowed."
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for method in value:
                if not _METHOD_RE.match(method):
                    raise ValueError(f"methods are upper-case tokens such as GET, got {method!r}")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for host in value:
                if not _HOSTNAME_RE.match(host):
                    raise ValueError(f"hosts are lower-case DNS names, got {host!r}")
        return value


class JwtConfig(Strict):
    """How the gateway verifies JWT access tokens (RFC 9068) for routes with `auth: {require: jwt}`."""

    issuer: str = Field(
        pattern=r"^https?://", description="The issuer (`iss`); its OIDC discovery document names the JWKS."
    )
    jwks_url: str | None = Field(
        None, pattern=r"^https?://", description="The JWKS URL, if not found through discovery."
    )
    audiences: list[str] = Field(min_length=1, description="Accepted `aud` values (at least one).")
    leeway: Duration = Field(30.0, description="Clock skew allowed for `exp`, `nbf` and `iat`.")
    require_typ: str | None = Field(
        "at+jwt", description="Required `typ` header (refuses ID tokens); null accepts any."
    )
    refresh_interval: Duration = Field(300.0, gt=0, description="How often the JWKS is fetched again.")
    min_refetch_interval: Duration = Field(
        10.0, gt=0, description="Least time between fetches triggered by unknown `kid`s."
    )
    ca: str | None = Field(
        None,
        description="PEM bundle that verifies the issuer's TLS certificate (a private CA); unset: the "
        "system's trust store.",
    )


class AuthConfig(Strict):
    """How a route is authenticated and authorized. Every route must say it."""

    require: Literal["jwt", "api_key", "mtls", "none"] = Field(
        description="`jwt`: a valid access token (gateway.jwt); `api_key`: a Garrison API key in "
        "`Authorization: ApiKey ...` or `X-API-Key`; `mtls`: a client certificate listed in "
        "gateway.mtls; `none`: anyone (`garrison check` warns)."
    )
    scopes: list[str] = Field(default_factory=list, description="Scopes the token must all have.")
    scopes_any: list[str] = Field(default_factory=list, description="Scopes of which it needs one.")
    roles: list[str] = Field(default_factory=list, description="Roles of which it needs one.")
    claims: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Claims that must equal (one of) these values."
    )
    allow_query_token: bool = Field(
        False, description="Accept `?access_token=` (RFC 6750 §2.3); leaks into logs, avoid."
    )

    @model_validator(mode="after")
    def _requirements_need_a_token(self) -> AuthConfig:
        if self.require == "none" and (self.scopes or self.scopes_any or self.roles or self.claims):
            raise ValueError("scopes, roles and claims need `require: jwt` (scopes also `api_key`)")
        if self.require in ("api_key", "mtls") and (self.roles or self.claims):
            raise ValueError(f"`{self.require}` carries scopes only: roles and claims need `require: jwt`")
        return self


class CorsConfig(Strict):
    """Cross-origin access from browsers. Preflights are answered by the gateway; real requests
    still pass the route's authentication."""

    allow_origins: list[str] = Field(
        min_length=1,
        description="Exact origins (`https://app.example.com`), or `*` (not with credentials).",
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST"], description="Methods a page may use."
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type"],
        description="Request headers a page may send.",
    )
    expose_headers: list[str] = Field(default_factory=list, description="Response headers a page may read.")
    allow_credentials: bool = Field(False, description="Let pages send cookies / credentials.")
    max_age: Duration = Field(600.0, description="How long a browser may cache a preflight answer.")

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[a-z0-9.-]+(:\d{1,5})?", origin.lower()):
                raise ValueError(f"an origin is scheme://host[:port] or *, got {origin!r}")
        return value

    @field_validator("allow_methods")
    @classmethod
    def _cors_methods(cls, value: list[str]) -> list[str]:
        for method in value:
            if not _METHOD_RE.match(method):
                raise ValueError(f"methods are upper-case tokens such as GET, got {method!r}")
        return value

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsConfig:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("`*` cannot be combined with allow_credentials (browsers refuse it)")
        return self


def _check_rate(value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError(f"not a rate: {value!r} (use e.g. 100/second, 10/minute, 1000/hour)") from None
    return value


class RateLimitConfig(Strict):
    """A rate limit on a route (429 with Retry-After and RateLimit-* headers)."""

    rate: Annotated[str, AfterValidator(_check_rate)] = Field(description="e.g. 100/second, 10/minute.")
    key: Literal["client", "api_key", "ip", "route"] = Field(
        "ip",
        description="What is counted: the client address (`ip`) or the whole route (`route`), both "
        "before authentication; or, after it, the authenticated client (`client`: the token's "
        "client_id, else its subject; the API key; the certificate's id) or the API key (`api_key`).",
    )
    strategy: Literal["fixed_window", "moving_window", "sliding_window_counter"] = Field(
        "sliding_window_counter", description="Counting algorithm (the `limits` library's)."
    )
    storage: Literal["memory", "redis"] = Field(
        "memory", description="`memory`: per worker; `redis`: shared by all workers and replicas."
    )
    on_redis_error: Literal["open", "closed"] = Field(
        "closed",
        description="When Redis is unreachable: `open` lets requests through (logged and counted), "
        "`closed` answers 503.",
    )


class RouteCacheConfig(Strict):
    """Cache GET/HEAD responses of this route in the gateway. Keyed by host, path, query, the headers
    the response's Vary names, and the authenticated subject: one caller never gets another's answer.
    `Cache-Control: no-store`, `private`, `no-cache` and `Set-Cookie` responses are never stored."""

    ttl: Duration = Field(
        gt=0, description="How long a response is served from the cache (an upstream max-age can shorten it)."
    )


class RouteConfig(Strict):
    """A route: a match, the service it goes to, and (in later sections) its security chain."""

    name: str | None = Field(None, description="Name in logs and metrics (default: the path).")
    match: RouteMatch = Field(description="Which requests take this route.")
    service: str = Field(description="Name of the service in `services`.")
    ip_rules: IpRulesConfig | None = Field(
        None, description="IP allow/deny lists for this route only, on top of the global ones (403)."
    )
    auth: AuthConfig = Field(description="Authentication and authorization; required on every route.")
    rate_limit: list[RateLimitConfig] | None = Field(
        None,
        description="Rate limits for this route (429): one mapping, or a list of them, all of which "
        "apply. `ip`/`route` limits count before the credentials are checked (a flood of bad tokens "
        "costs no signature checks); `client`/`api_key` limits count after.",
    )

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, dict) else value

    cors: CorsConfig | None = Field(None, description="CORS for browsers (unset: no CORS headers).")
    cache: RouteCacheConfig | None = Field(None, description="Response caching (unset: none).")


class IdentityKeysConfig(Strict):
    """ES256 signing keys: encrypted at rest, rotated on a schedule, announced before use."""

    rotation_interval: Duration = Field(
        30 * 86400.0,
        gt=0,
        description="A new signing key takes over this often (`garrison identity rotate-keys` too).",
    )
    publish_ahead: Duration = Field(
        900.0,
        gt=0,
        description="How long a new key is in the JWKS before it signs anything (longer than every "
        "relying party's JWKS cache).",
    )


class LockoutConfig(Strict):
    """Brute-force protection for passwords, one-time codes and client credentials."""

    max_failures: int = Field(
        5, ge=1, le=100, description="Failed attempts per account, or per client, before it locks."
    )
    ip_max_failures: int = Field(50, ge=1, le=10000, description="Failed attempts per client address.")
    window: Duration = Field(900.0, gt=0, description="Failures older than this are forgotten.")
    lock_for: Duration = Field(
        900.0, gt=0, description="How long a locked account, client or address stays locked."
    )


class IdentityConfig(Strict):
    """The OAuth 2.0 / OpenID Connect identity provider (`garrison identity`)."""

    listen: ListenAddress = Field("127.0.0.1:9443", description="Address of the identity provider.")
    issuer: str = Field(
        "https://localhost:9443",
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="The issuer URL: what `iss` says and where clients reach the provider.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS of the identity listener.")
    database: str | None = Field(
        None,
        pattern=r"^(postgres(ql)?(\+asyncpg)?|sqlite(\+aiosqlite)?)://",
        description="A PostgreSQL URL; unset: SQLite at state_dir/garrison.db.",
    )
    access_token_audience: str = Field(
        "garrison", min_length=1, description="`aud` of access tokens (what gateway.jwt.audiences accepts)."
    )
    access_token_ttl: Duration = Field(300.0, gt=0, le=86400, description="Access-token lifetime.")
    id_token_ttl: Duration = Field(300.0, gt=0, le=86400, description="ID-token lifetime.")
    refresh_token_ttl: Duration = Field(
        30 * 86400.0, gt=0, description="Refresh-token family lifetime (rotation does not extend it)."
    )
    code_ttl: Duration = Field(60.0, gt=0, le=600, description="Authorization-code lifetime.")
    session_ttl: Duration = Field(8 * 3600.0, gt=0, description="Single sign-on session lifetime.")
    keys: IdentityKeysConfig = Field(default_factory=IdentityKeysConfig, description="Signing keys.")
    lockout: LockoutConfig = Field(default_factory=LockoutConfig, description="Brute-force protection.")
    mfa_roles: list[str] = Field(
        default_factory=list, description="Users with any of these roles must use a one-time code."
    )
    trusted_proxies: list[Cidr] = Field(
        default_factory=list,
        description="Proxies (CIDRs, e.g. the gateway) whose X-Forwarded-For the provider believes for "
        "the client address (throttling, audit). Empty: the TCP peer is the client.",
    )
    revocation_push: list[Annotated[str, Field(pattern=r"^https?://")]] | None = Field(
        None,
        description="Gateway admin URLs told about each revoked token (without Redis). Unset: this "
        "file's gateway admin listener when it has routes and `gateway.revocations.storage: memory`.",
    )
    revocation_push_token_file: str | None = Field(
        None,
        description="The admin token file of the gateways in `revocation_push`. Unset: this file's "
        "gateway admin token (`gateway.admin.token_file`).",
    )


class GarrisonConfig(Strict):
    """The whole of garrison.yaml."""

    trust_domain: str = Field("garrison.local", description="The SPIFFE trust domain of this deployment.")
    state_dir: Path = Field(Path(".garrison"), description="Where keys and SQLite files live.")
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The edge gateway.")
    services: dict[str, ServiceConfig] = Field(default_factory=dict, description="Services by name.")
    routes: list[RouteConfig] = Field(default_factory=list, description="Routes, in any order.")
    identity: IdentityConfig | None = Field(
        None, description="The identity provider; when set, gateway.jwt defaults to trusting it."
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Schema migrations and start-up waits for SQL databases."
    )

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if not _HOSTNAME_RE.match(value) or value.startswith("*"):
            raise ValueError(f"trust_domain is a lower-case DNS name such as shop.local, got {value!r}")
        return value

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        for name in value:
            if not _NAME_RE.match(name):
                raise ValueError(f"service names are lower-case identifiers, got {name!r}")
        return value


def with_derived_defaults(config: GarrisonConfig) -> GarrisonConfig:
    """Defaults that depend on other sections: with an `identity` section and no `gateway.jwt`, the
    gateway verifies this provider's access tokens (and trusts its `auto` CA for the JWKS fetch)."""
    identity = config.identity
    if identity is None:
        return config
    if identity.revocation_push is None:
        admin = config.gateway.admin.listen
        local = (
            bool(config.routes)
            and config.gateway.revocations.storage == "memory"
            and not admin.endswith(":0")
            and config.gateway.admin.tls is None  # TLS admin listeners are off loopback: configure the URL
        )
        identity = identity.model_copy(update={"revocation_push": [f"http://{admin}"] if local else []})
        config = config.model_copy(update={"identity": identity})
    if config.gateway.jwt is not None:
        return config
    auto_ca = identity.tls.cert == "auto" and not identity.tls.insecure_disable
    jwt = JwtConfig(
        issuer=identity.issuer,
        jwks_url=identity.issuer + "/jwks",
        audiences=[identity.access_token_audience],
        ca=str(config.state_dir / "identity" / "tls" / "ca.pem") if auto_ca else None,
    )
    return config.model_copy(update={"gateway": config.gateway.model_copy(update={"jwt": jwt})})
