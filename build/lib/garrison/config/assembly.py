"""The whole of garrison.yaml: the shared top-level keys and one section per component.

``redis`` and ``revocations`` sit here, next to ``trust_domain``, because they are not one
component's: the identity provider writes revocations, the gateway reads them, and more components
will share the Redis. After validation, ``with_derived_defaults`` runs every component section's own
hook (``ComponentConfig.with_derived_defaults``); this module knows no component's defaults.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from garrison.config.audit import AuditConfig
from garrison.config.common import HOSTNAME_RE, ComponentConfig, RedisConfig, RevocationsConfig, Strict
from garrison.config.gateway import GatewayConfig
from garrison.config.identity import IdentityConfig
from garrison.config.mesh import MeshConfig
from garrison.config.routes import RouteConfig
from garrison.config.services import ServiceConfig
from garrison.config.store import StoreConfig
from garrison.config.vault import VaultConfig

__all__ = ["GarrisonConfig", "with_derived_defaults"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class GarrisonConfig(Strict):
    """The whole of garrison.yaml."""

    trust_domain: str = Field("garrison.local", description="The SPIFFE trust domain of this deployment.")
    state_dir: Path = Field(Path(".garrison"), description="Where keys and SQLite files live.")
    redis: RedisConfig = Field(
        default_factory=RedisConfig, description="Shared state for workers, replicas and components."
    )
    revocations: RevocationsConfig = Field(
        default_factory=RevocationsConfig,
        description="Access-token revocation (401 at the gateway; written by the identity provider too).",
    )
    gateway: GatewayConfig = Field(default_factory=GatewayConfig, description="The edge gateway.")
    services: dict[str, ServiceConfig] = Field(default_factory=dict, description="Services by name.")
    routes: list[RouteConfig] = Field(default_factory=list, description="Routes, in any order.")
    identity: IdentityConfig | None = Field(
        None, description="The identity provider; when set, gateway.jwt defaults to trusting it."
    )
    mesh: MeshConfig | None = Field(
        None,
        description="Workload certificates and mTLS sidecars; who calls whom is `services.<name>.calls`.",
    )
    vault: VaultConfig | None = Field(
        None, description="The secrets vault (`garrison vault`): Vault's HTTP API, encrypted storage, audit."
    )
    audit: AuditConfig | None = Field(
        None,
        description="The audit collector (`garrison audit serve`): every component's events, tamper-evident, "
        "searched, detected on, shipped.",
    )
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Schema migrations and start-up waits for SQL databases."
    )

    @field_validator("trust_domain")
    @classmethod
    def _trust_domain(cls, value: str) -> str:
        if not HOSTNAME_RE.match(value) or value.startswith("*"):
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
    """``config`` with every component's derived defaults filled in (see ``ComponentConfig``).

    Each hook reads the file as validated and returns its own section; the sections are replaced
    together at the end, so no hook sees another's result and their order cannot matter. An absent
    optional component (``identity: null``) has no section and so no hook."""
    updates: dict[str, BaseModel] = {}
    for name in type(config).model_fields:
        section = getattr(config, name)
        if isinstance(section, ComponentConfig):
            derived = section.with_derived_defaults(config)
            if derived is not section:
                updates[name] = derived
    return config.model_copy(update=updates) if updates else config
