"""The ``audit`` section: the audit collector (`garrison audit serve`) and how components reach it.

Secure by default: the intake is TLS (``auto`` certificate), emitters authenticate with their mesh
workload certificate or, without a mesh, the emit token (``state_dir/audit/emit.token``, 0600);
acknowledged events are on disk (fsync per batch); every set an emitter can grow is bounded.
Derived default (``with_derived_defaults``): ``url`` from ``listen``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import Field

from garrison.config.audit_detection import DetectionConfig
from garrison.config.audit_responses import ResponsesConfig
from garrison.config.audit_shipping import ShippingConfig
from garrison.config.common import (
    AdminConfig,
    ComponentConfig,
    ListenAddress,
    Strict,
    TlsConfig,
    is_loopback_host,
    parse_listen,
)
from garrison.config.units import Duration, Size

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["AuditAdminConfig", "AuditConfig", "EmitterConfig"]


class AuditAdminConfig(AdminConfig):
    """The collector's admin listener: /metrics, /live, /ready, and alert suppression behind the
    admin token."""

    listen: ListenAddress = Field("127.0.0.1:9904", description="Address of the admin listener.")


class EmitterConfig(Strict):
    """How every component sends its events: batched, never blocking a request, spooled to disk while
    the collector is unreachable."""

    batch_max: int = Field(1000, ge=1, le=10000, description="Most events in one delivery.")
    flush_interval: Duration = Field(0.2, gt=0, le=10, description="Longest an event waits for its batch.")
    memory_max: int = Field(
        20000, ge=100, le=1_000_000, description="Events held in memory before they spill to the spool."
    )
    spool_max: Size = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of spool per component process; events beyond it are dropped and counted.",
    )
    gateway_requests: Literal["all", "refused", "none"] = Field(
        "all",
        description="Which gateway requests become `http.request` events: all (Sigma web rules see "
        "every request), refused (status >= 400 only), none.",
    )


class AuditConfig(ComponentConfig):
    """The audit collector and the events every component sends it."""

    listen: ListenAddress = Field("127.0.0.1:7400", description="Address of the collector's event intake.")
    url: str | None = Field(
        None, description="How components reach the intake (default: https:// and `listen`)."
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="TLS of the intake.")
    admin: AuditAdminConfig = Field(default_factory=AuditAdminConfig, description="The admin listener.")
    database: str | None = Field(
        None,
        pattern=r"^(postgres(ql)?(\+asyncpg)?|sqlite(\+aiosqlite)?)://",
        description="A PostgreSQL URL for the search index; unset: SQLite at state_dir/audit/index.db.",
    )
    checkpoint_interval: Duration = Field(
        10.0, gt=0, le=3600, description="Longest time between two signed checkpoints while events arrive."
    )
    emitter: EmitterConfig = Field(default_factory=EmitterConfig, description="How components send events.")
    detection: DetectionConfig = Field(default_factory=DetectionConfig, description="Detection rules.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="Automated responses.")
    shipping: ShippingConfig = Field(default_factory=ShippingConfig, description="Where the log is shipped.")

    def with_derived_defaults(self, config: GarrisonConfig) -> Self:
        """The intake's url from its listen address."""
        del config
        if self.url is not None:
            return self
        host, port = parse_listen(self.listen)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        return self.model_copy(update={"url": f"https://{host}:{port}"})

    def with_paths_resolved(self, resolve: Callable[[str], str]) -> Self:
        """Admin token file, Sigma rule directories and the shippers' credential and CA files, relative
        to the config file's directory."""
        updates: dict[str, Any] = {"shipping": self.shipping.with_paths_resolved(resolve)}
        if self.admin.token_file is not None:
            updates["admin"] = self.admin.model_copy(update={"token_file": resolve(self.admin.token_file)})
        if self.detection.sigma_dirs:
            dirs = [resolve(d) for d in self.detection.sigma_dirs]
            updates["detection"] = self.detection.model_copy(update={"sigma_dirs": dirs})
        return self.model_copy(update=updates)

    def problems(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        """Off loopback, the intake and the admin listener must not take their credentials in clear."""
        del config
        errors: list[tuple[tuple[Any, ...], str]] = []
        if self.tls.insecure_disable and not is_loopback_host(parse_listen(self.listen)[0]):
            errors.append(
                (
                    ("audit", "tls", "insecure_disable"),
                    "the intake is not on loopback: it needs TLS (the emit token and the events must not "
                    "cross a network in clear)",
                )
            )
        if not is_loopback_host(parse_listen(self.admin.listen)[0]) and self.admin.tls is None:
            errors.append(
                (
                    ("audit", "admin", "listen"),
                    "an admin listener off loopback needs `tls` (the token must not cross in clear)",
                )
            )
        return errors

    def warnings(self, config: GarrisonConfig) -> list[tuple[tuple[Any, ...], str]]:
        del config
        found = self.shipping.warnings()
        if self.tls.insecure_disable:
            found.append(
                (
                    ("audit", "tls", "insecure_disable"),
                    "TLS is off: the emit token and every event cross in clear, and workload certificates "
                    "cannot authenticate emitters",
                )
            )
        return found
