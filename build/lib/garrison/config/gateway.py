"""The ``gateway`` section: the edge gateway's listener, TLS, limits, authentication sources,
blocklist, cache, access log and admin listener. Its routes and services are in ``routes`` and
``services``.

Derived default (``GatewayConfig.with_derived_defaults``): with an ``identity`` section and no
``gateway.jwt``, the gateway verifies that provider's access tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from garrison.config.common import (
    HOSTNAME_RE,
    AdminConfig,
    Cidr,
    ComponentConfig,
    HstsConfig,
    ListenAddress,
    Strict,
    TlsConfig,
    refuse_moved_keys,
)
from garrison.config.gateway_checks import gateway_problems, gateway_warnings
from garrison.config.units import Duration, Size

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = [
    "AccessLogConfig",
    "ApiKeysConfig",
    "BlocklistConfig",
    "GatewayConfig",
    "IpRulesConfig",
    "JwtConfig",
    "LimitsConfig",
    "MtlsClientConfig",
    "MtlsConfig",
    "ResponseCacheConfig",
]

# Keys that were the gateway's and are now shared by every component (issue 8).
MOVED_KEYS = {
    "redis": "`gateway.redis` moved to the top level: write `redis:` next to `trust_domain:`",
    "revocations": "`gateway.revocations` moved to the top level: write `revocations:` next to "
    "`trust_domain:`",
}


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


class BlocklistConfig(Strict):
    """The dynamic blocklist (admin API `/blocklist`, `garrison block IP --for 15m`)."""

    storage: Literal["memory", "redis"] = Field(
        "memory",
        description="`redis` shares blocks with every worker and replica through `redis` (top level); "
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


class AccessLogConfig(Strict):
    """One JSON line per request."""

    enabled: bool = Field(True, description="Write the access log.")
    path: str = Field("-", description="File to append to; `-` is standard output.")


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


class GatewayConfig(ComponentConfig):
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

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        return refuse_moved_keys(data, MOVED_KEYS)

    @field_validator("public_host")
    @classmethod
    def _valid_public_host(cls, value: str | None) -> str | None:
        if value is not None and not HOSTNAME_RE.match(value.lower()):
            raise ValueError(f"not a host name: {value!r}")
        return value

    def with_derived_defaults(self, config: GarrisonConfig) -> Self:
        """With an `identity` section and no `gateway.jwt`, verify that provider's access tokens
        (and trust its `auto` certificate's CA for the JWKS fetch: the mesh CA's bundle with a mesh)."""
        identity = config.identity
        if identity is None or self.jwt is not None:
            return self
        auto_ca = identity.tls.cert == "auto" and not identity.tls.insecure_disable
        # With a mesh, the provider's `auto` certificate comes from the mesh CA (pki/tls.CaIssuer), whose
        # roots are state_dir/ca/bundle.pem; without one, from its own local CA.
        ca_file = (
            config.state_dir / "ca" / "bundle.pem"
            if config.mesh is not None
            else config.state_dir / "identity" / "tls" / "ca.pem"
        )
        jwt = JwtConfig(
            issuer=identity.issuer,
            jwks_url=identity.issuer + "/jwks",
            audiences=[identity.access_token_audience],
            ca=str(ca_file) if auto_ca else None,
        )
        return self.model_copy(update={"jwt": jwt})

    def problems(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        """Routes against services and auth sources, Redis users, the admin listener's TLS."""
        return gateway_problems(config)

    def warnings(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        return gateway_warnings(config)

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        """The admin token file, relative to the config file's directory."""
        if self.admin.token_file is None:
            return self
        admin = self.admin.model_copy(update={"token_file": resolve(self.admin.token_file)})
        return self.model_copy(update={"admin": admin})
