"""The ``identity`` section: the OAuth 2.0 / OpenID Connect provider (`garrison identity`).

Derived default (``IdentityConfig.with_derived_defaults``): without Redis revocations, the provider
pushes each revocation to this file's gateway admin listener (``identity.revocation_push``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import Field

from garrison.config.common import (
    AdminConfig,
    Cidr,
    ComponentConfig,
    ListenAddress,
    Strict,
    TlsConfig,
    is_loopback_host,
    parse_listen,
)
from garrison.config.units import Duration

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["IdentityAdminConfig", "IdentityConfig", "IdentityKeysConfig", "LockoutConfig"]


class IdentityAdminConfig(AdminConfig):
    """The identity provider's admin listener: /metrics, /live, /ready.

    Guarded like the gateway's (admin/auth.py): changes need the admin token or a client
    certificate, reads are open on loopback only, Host and Origin are checked."""

    listen: ListenAddress = Field("127.0.0.1:9902", description="Address of the admin listener.")
    token_file: str | None = Field(
        None,
        description="File holding the admin token (`Authorization: Bearer`). Unset: the gateway's "
        "(`gateway.admin.token_file`, else state_dir/admin.token), so one token opens both.",
    )


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


class IdentityConfig(ComponentConfig):
    """The OAuth 2.0 / OpenID Connect identity provider (`garrison identity`)."""

    listen: ListenAddress = Field("127.0.0.1:9443", description="Address of the identity provider.")
    issuer: str = Field(
        "https://localhost:9443",
        pattern=r"^https?://[^/?#]+(/[^?#]*)?$",
        description="The issuer URL: what `iss` says and where clients reach the provider.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS of the identity listener.")
    admin: IdentityAdminConfig = Field(
        default_factory=IdentityAdminConfig,
        description="The provider's admin listener (metrics, liveness, readiness).",
    )
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
        "file's gateway admin listener when it has routes and `revocations.storage: memory`.",
    )
    revocation_push_token_file: str | None = Field(
        None,
        description="The admin token file of the gateways in `revocation_push`. Unset: this file's "
        "gateway admin token (`gateway.admin.token_file`).",
    )

    def with_derived_defaults(self, config: GarrisonConfig) -> Self:
        """Unset `revocation_push`: push to this file's gateway admin listener when the gateway has
        routes, revocations are kept in memory (with Redis they travel through Redis), and the
        listener has a fixed port and no TLS (a TLS one is off loopback: its URL is the operator's
        to write); otherwise push nowhere."""
        if self.revocation_push is not None:
            return self
        admin = config.gateway.admin
        local = (
            bool(config.routes)
            and config.revocations.storage == "memory"
            and not admin.listen.endswith(":0")
            and admin.tls is None
        )
        return self.model_copy(update={"revocation_push": [f"http://{admin.listen}"] if local else []})

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        """The revocation-push and admin token files, relative to the config file's directory."""
        updates: dict[str, object] = {}
        if self.revocation_push_token_file is not None:
            updates["revocation_push_token_file"] = resolve(self.revocation_push_token_file)
        if self.admin.token_file is not None:
            updates["admin"] = self.admin.model_copy(update={"token_file": resolve(self.admin.token_file)})
        return self.model_copy(update=updates) if updates else self

    def problems(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        """The admin listener off loopback must not take its credential in clear (admin/auth.py)."""
        del config
        if is_loopback_host(parse_listen(self.admin.listen)[0]) or self.admin.tls is not None:
            return []
        return [
            (
                ("identity", "admin", "listen"),
                "the admin listener is not on loopback: add identity.admin.tls (cert, key, and "
                "optionally client_ca) so the admin credential never crosses the network in clear, or "
                "listen on 127.0.0.1",
            )
        ]
