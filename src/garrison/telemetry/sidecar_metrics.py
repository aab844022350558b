"""The mesh sidecar's metrics per edge (caller -> callee), scraped from its admin listener's /metrics.

Labels take values from bounded sets: the caller is a service name from a verified certificate of
the trust domain (or ``gateway``/``unknown``), the callee a configured service, the status a class
(``2xx``..``5xx``), the decision ``allowed``/``denied``/``refused``. The children for an edge are
bound once and kept, so a request costs a dictionary lookup, not a label resolution.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["EdgeStats", "SidecarMetrics"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
DECISIONS = ("allowed", "denied", "refused")


class EdgeStats:
    """The pre-bound children of one (direction, caller, callee) edge."""

    __slots__ = ("_counts", "latency")

    def __init__(self, requests: Any, latency: Any, labels: tuple[str, str, str]) -> None:
        self._counts = {
            (status, decision): requests.labels(*labels, status, decision)
            for status in STATUS_CLASSES
            for decision in DECISIONS
        }
        self.latency = latency.labels(*labels)

    def observe(self, status: int, decision: str, seconds: float) -> None:
        index = min(max(status // 100, 1), 5) - 1
        self._counts[(STATUS_CLASSES[index], decision)].inc()
        self.latency.observe(seconds)


class SidecarMetrics:
    """Counters and a latency histogram per edge, on a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["direction", "caller", "callee"]
        self.requests = Counter(
            "garrison_mesh_requests",
            "Calls through the sidecar by direction (inbound, outbound), caller and callee service, "
            "status class and decision (allowed, denied by policy or state, refused as malformed).",
            [*labels, "status", "decision"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "garrison_mesh_request_duration_seconds",
            "Time from the request's head to the end of its answer, per edge.",
            labels,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "garrison_mesh_upstream_errors",
            "Failed upstream attempts by callee and reason (connect error, identity mismatch).",
            ["callee", "reason"],
            registry=self.registry,
        )
        self._edges: dict[tuple[str, str, str], EdgeStats] = {}

    def edge(self, direction: str, caller: str, callee: str) -> EdgeStats:
        key = (direction, caller, callee)
        stats = self._edges.get(key)
        if stats is None:
            stats = self._edges[key] = EdgeStats(self.requests, self.latency, key)
        return stats
