"""What an emitter needs of garrison.yaml: a small frozen copy, with no pydantic model behind it.

Why a copy: the mesh sidecar never holds the config models (mesh/sidecar/settings.py says why), so it
gets these settings through its validated JSON; the other components build them from the loaded
model with ``emitter_settings``. Both give the same values.

The intake's trust is re-derived here rather than imported from ``pki.tls`` (which imports
``cryptography``, kept out of the sidecar): as ``pki.tls.auto_trust_file`` decides for an ``auto``
certificate, the mesh CA's ``state_dir/ca/bundle.pem`` once the mesh CA exists (it issues the
collector's certificate then), else the collector's own local CA, ``state_dir/audit/tls/ca.pem``.
It is decided again at each connection: the CA may be made after the component started.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["EmitterSettings", "emitter_settings"]

EMIT_TOKEN_FILE = "emit.token"  # noqa: S105 - a file name, not a token


@dataclass(frozen=True)
class EmitterSettings:
    """``audit.url``, ``audit.emitter.*`` and what locates the intake's trust and the emit token."""

    url: str
    state_dir: Path
    trust_domain: str
    mesh: bool  # a `mesh` section: its CA, once made, issues the collector's `auto` certificate
    tls_auto: bool  # audit.tls.cert is `auto` (else the collector's certificate is a public one)
    batch_max: int = 1000
    flush_interval: float = 0.2
    memory_max: int = 20000
    spool_max: int = 64 * 1024 * 1024
    gateway_requests: str = "all"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    @property
    def authority(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def token_path(self) -> Path:
        """The emit token the collector writes at start (0600)."""
        return self.state_dir / "audit" / EMIT_TOKEN_FILE

    @property
    def collector_id(self) -> str:
        """The SPIFFE ID of a collector certificate issued by the mesh CA."""
        return f"spiffe://{self.trust_domain}/audit"

    def mesh_ca_issues(self) -> bool:
        """Whether the mesh CA issues the collector's certificate (``pki.tls.mesh_ca_issues_auto``)."""
        return self.tls_auto and self.mesh and (self.state_dir / "ca" / "issuing.pem").exists()

    def trust_file(self) -> Path | None:
        """The CA file to verify the intake with (None: the system's CAs, for a configured certificate)."""
        if not self.tls_auto:
            return None
        if self.mesh_ca_issues():
            return self.state_dir / "ca" / "bundle.pem"
        return self.state_dir / "audit" / "tls" / "ca.pem"

    def spool_dir(self, component: str, instance: str) -> Path:
        return self.state_dir / "audit" / "spool" / f"{component}-{_safe(instance)}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmitterSettings:
        return cls(**{**data, "state_dir": Path(data["state_dir"])})


def _safe(name: str) -> str:
    """A file-name-safe form of an instance name (``host:1234`` stays readable)."""
    cleaned = "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name)[:100]
    return cleaned.lstrip(".") or "default"


def emitter_settings(config: GarrisonConfig) -> EmitterSettings | None:
    """The emitter settings of a loaded config; None without an ``audit`` section."""
    audit = config.audit
    if audit is None:
        return None
    emitter = audit.emitter
    assert audit.url is not None  # derived by the loader (AuditConfig.with_derived_defaults)
    return EmitterSettings(
        url=audit.url,
        state_dir=Path(config.state_dir),
        trust_domain=config.trust_domain,
        mesh=config.mesh is not None,
        tls_auto=audit.tls.cert == "auto",
        batch_max=emitter.batch_max,
        flush_interval=float(emitter.flush_interval),
        memory_max=emitter.memory_max,
        spool_max=int(emitter.spool_max),
        gateway_requests=emitter.gateway_requests,
    )
