"""The mesh CA's metrics, scraped from its admin listener's ``/metrics``.

Labels come from fixed sets (how a certificate was obtained, why a request was refused), so a caller
can make a refusal happen but never mint a new time series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["CaMetrics"]

HOW = frozenset({"join", "renewal"})
# token: refused join token; revoked: a revoked identity; csr: a CSR the CA will not sign;
# certificate: renewal without (a usable) client certificate; malformed: not the API's JSON.
REASONS = frozenset({"token", "revoked", "csr", "certificate", "malformed"})


def _known(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else "other"


class CaMetrics:
    """Counters and gauges for one CA process, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.issued = Counter(
            "garrison_mesh_ca_certificates_issued",
            "Workload certificates issued, by how they were obtained (join, renewal).",
            ["how"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "garrison_mesh_ca_refusals",
            "Join and renewal requests refused, by reason (token, revoked, csr, certificate, malformed).",
            ["how", "reason"],
            registry=self.registry,
        )
        self.revoked = Gauge(
            "garrison_mesh_ca_revoked_identities",
            "Workload identities revoked now.",
            registry=self.registry,
        )
        self.quarantined = Gauge(
            "garrison_mesh_ca_quarantined_services",
            "Services quarantined now.",
            registry=self.registry,
        )
        self.state_version = Gauge(
            "garrison_mesh_ca_state_version",
            "Version of the state published on /v1/state.",
            registry=self.registry,
        )

    def issue(self, how: str) -> None:
        self.issued.labels(_known(how, HOW)).inc()

    def refuse(self, how: str, reason: str) -> None:
        self.refusals.labels(_known(how, HOW), _known(reason, REASONS)).inc()

    def published(self, version: int, revoked: int, quarantined: int) -> None:
        self.state_version.set(version)
        self.revoked.set(revoked)
        self.quarantined.set(quarantined)
