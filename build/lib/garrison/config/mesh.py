"""The ``mesh`` section: the workload CA (`garrison ca`) and a sidecar per service (`garrison sidecar`).

Who may call whom is not here: it is ``services.<name>.calls`` (and the routes, for the gateway), so
one file decides the edge's and the mesh's authorization. This section says where things listen.

Derived default (``MeshConfig.with_derived_defaults``): the CA's ``url`` from its ``listen``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from pydantic import Field

from garrison.config.common import (
    AdminConfig,
    ComponentConfig,
    ListenAddress,
    Strict,
    is_loopback_host,
    parse_listen,
)
from garrison.config.services import TargetUrl
from garrison.config.units import Duration

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["CaConfig", "MeshAdminConfig", "MeshConfig", "SidecarConfig"]


class MeshAdminConfig(AdminConfig):
    """An admin listener of the mesh (the CA's, a sidecar's): /metrics, /live, /ready, and the
    state-changing calls (revoke, quarantine) behind the admin token, as the gateway's."""

    listen: ListenAddress = Field("127.0.0.1:9903", description="Address of the admin listener.")


class CaConfig(Strict):
    """The workload certificate authority."""

    listen: ListenAddress = Field(
        "127.0.0.1:8700", description="Address of the CA's TLS API (join, renew, trust bundle, state)."
    )
    url: str | None = Field(
        None, description="How workloads reach the CA (default: https:// and `listen`, 0.0.0.0 as 127.0.0.1)."
    )
    database: str | None = Field(
        None, description="SQLAlchemy URL of the CA's tables (default: SQLite under state_dir)."
    )
    workload_ttl: Duration = Field(
        3600.0, ge=60, le=86400, description="Lifetime of a workload certificate (renewed at about half)."
    )
    intermediate_ttl: Duration = Field(
        365 * 86400.0,
        gt=0,
        description="Lifetime of an intermediate made by `garrison ca init` or a rotation.",
    )
    admin: MeshAdminConfig = Field(default_factory=MeshAdminConfig, description="The CA's admin listener.")


class SidecarConfig(Strict):
    """One service's sidecar: mTLS in from its peers, plain HTTP out from its app."""

    inbound: ListenAddress = Field(description="Where peers connect (mutual TLS), e.g. 0.0.0.0:15001.")
    address: str | None = Field(
        None,
        description="host:port peers dial to reach this sidecar (default: `inbound`, 0.0.0.0 as 127.0.0.1).",
    )
    app: TargetUrl | None = Field(
        None,
        description="The local app allowed calls are forwarded to (default: the service's first target).",
    )
    outbound: ListenAddress = Field(
        "127.0.0.1:0",
        description="Plain-HTTP port the app calls its peers through: http://HOST:PORT/<peer>/<path>.",
    )
    admin: MeshAdminConfig = Field(
        default_factory=lambda: MeshAdminConfig(listen="127.0.0.1:0"),
        description="The sidecar's admin listener (metrics per edge, quarantine, liveness).",
    )

    def dial_address(self) -> str:
        """host:port callers dial (the gateway, peer sidecars): ``address``, or ``inbound`` with a
        wildcard host as loopback."""
        if self.address is not None:
            return self.address
        host, port = parse_listen(self.inbound)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class MeshConfig(ComponentConfig):
    """Workload identity and default-deny mTLS between services."""

    ca: CaConfig = Field(default_factory=CaConfig, description="The workload certificate authority.")
    sidecars: dict[str, SidecarConfig] = Field(
        default_factory=dict, description="A sidecar per service name (a key of `services`)."
    )

    def with_derived_defaults(self, config: GarrisonConfig) -> Self:
        """The CA's url from its listen address."""
        del config
        if self.ca.url is not None:
            return self
        host, port = parse_listen(self.ca.listen)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # dial, not bind
        host = f"[{host}]" if ":" in host else host
        return self.model_copy(update={"ca": self.ca.model_copy(update={"url": f"https://{host}:{port}"})})

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        """Admin token files, relative to the config file's directory."""
        ca = self.ca
        if ca.admin.token_file is not None:
            ca = ca.model_copy(
                update={"admin": ca.admin.model_copy(update={"token_file": resolve(ca.admin.token_file)})}
            )
        sidecars = {
            name: sidecar
            if sidecar.admin.token_file is None
            else sidecar.model_copy(
                update={
                    "admin": sidecar.admin.model_copy(
                        update={"token_file": resolve(sidecar.admin.token_file)}
                    )
                }
            )
            for name, sidecar in self.sidecars.items()
        }
        return self.model_copy(update={"ca": ca, "sidecars": sidecars})

    def problems(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        """Sidecars of known services; admin listeners off loopback need TLS."""
        errors: list[tuple[tuple[Any, ...], str]] = []
        known = ", ".join(sorted(config.services)) or "none defined"
        for name in self.sidecars:
            if name not in config.services:
                errors.append((("mesh", "sidecars", name), f"no service {name!r} (known: {known})"))
        admins: list[tuple[tuple[Any, ...], MeshAdminConfig]] = [
            (("mesh", "ca", "admin", "listen"), self.ca.admin)
        ]
        admins += [
            (("mesh", "sidecars", name, "admin", "listen"), s.admin) for name, s in self.sidecars.items()
        ]
        for loc, admin in admins:
            if not is_loopback_host(parse_listen(admin.listen)[0]) and admin.tls is None:
                errors.append(
                    (loc, "an admin listener off loopback needs `tls` (the token must not cross in clear)")
                )
        return errors
