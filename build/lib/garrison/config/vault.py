"""The ``vault`` section: the secrets vault (`garrison vault`), which speaks the HashiCorp Vault HTTP API.

Secure by default: TLS (`auto` certificate), an audit file written before every answer and requests
refused when it cannot be (fail closed), bounded request bodies. ``dev: true`` auto-unseals from a key
file under state_dir: convenient, and for development only (the vault says so loudly at every start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from pydantic import Field

from garrison.config.common import ComponentConfig, ListenAddress, Strict, TlsConfig
from garrison.config.units import Duration, Size

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["VaultAuditConfig", "VaultConfig", "VaultTokenConfig"]


class VaultAuditConfig(Strict):
    """The audit file: one JSON line per request and per response, secrets HMAC'd (as Vault's audit
    devices do), written before the answer goes out."""

    file: str | None = Field(
        None, description="Path of the audit file (JSON lines). Unset: state_dir/vault/audit.log."
    )
    fail_closed: bool = Field(
        True,
        description="Refuse requests (500) when the audit file cannot be written. false: answer anyway "
        "and log the failure (an unaudited vault).",
    )


class VaultTokenConfig(Strict):
    """Token lifetimes (`auth/token/create`); the root token from `sys/init` does not expire."""

    default_ttl: Duration = Field(768 * 3600.0, gt=0, description="TTL of a token created without `ttl`.")
    max_ttl: Duration = Field(
        768 * 3600.0,
        gt=0,
        description="No token lives longer than this from its creation, renewals included.",
    )


class VaultConfig(ComponentConfig):
    """The secrets vault (`garrison vault`): Vault's HTTP API under /v1/."""

    listen: ListenAddress = Field("127.0.0.1:8200", description="Address of the vault's API.")
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS of the vault's listener.")
    database: str | None = Field(
        None,
        pattern=r"^(postgres(ql)?(\+asyncpg)?|sqlite(\+aiosqlite)?)://",
        description="A PostgreSQL URL for the vault's (encrypted) storage; unset: SQLite at "
        "state_dir/garrison.db.",
    )
    dev: bool = Field(
        False,
        description="DEVELOPMENT ONLY: initialise with one key share and unseal at every start from "
        "state_dir/vault/dev-unseal.key (0600), the root token in state_dir/vault/dev-root.token. "
        "Whoever reads the state directory holds every secret.",
    )
    audit: VaultAuditConfig = Field(default_factory=VaultAuditConfig, description="The audit file.")
    max_request_body: Size = Field(
        1024 * 1024, gt=0, description="Largest request body (413); Vault's default is 32 MiB."
    )
    token: VaultTokenConfig = Field(default_factory=VaultTokenConfig, description="Token lifetimes.")
    cert_token_ttl: Duration = Field(
        3600.0,
        gt=0,
        description="Lifetime of a token from `auth/cert/login` (a workload certificate), cut to the "
        "certificate's expiry and never renewable past it.",
    )

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        """The audit file, relative to the config file's directory."""
        if self.audit.file is None:
            return self
        return self.model_copy(
            update={"audit": self.audit.model_copy(update={"file": resolve(self.audit.file)})}
        )

    def warnings(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        del config
        found: list[tuple[tuple[Any, ...], str]] = []
        if self.dev:
            found.append(
                (("vault", "dev"), "dev mode: the unseal key sits next to the data; never in production")
            )
        if self.tls.insecure_disable:
            found.append((("vault", "tls"), "TLS is off: tokens and secrets cross the network in clear"))
        if not self.audit.fail_closed:
            found.append((("vault", "audit", "fail_closed"), "requests are answered even when not audited"))
        return found
