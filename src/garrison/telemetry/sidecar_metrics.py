"""The mesh sidecar's metrics per edge (caller -> callee), scraped from its admin listener's /metrics.

Counted in plain Python structures the sidecar owns and turned into metric families only when
Prometheus scrapes, as the gateway does (telemetry/metrics.py says why: prometheus-client's own
Counter and Histogram take a lock per observation, which a sidecar pays twice per call, once on each
side of a hop).

Labels take values from bounded sets: the caller is a service name from a verified certificate of
the trust domain (or ``gateway``/``unknown``), the callee a configured service, the status a class
(``2xx``..``5xx``), the decision ``allowed``/``denied``/``refused``, an upstream error's reason an
exception class name or a fixed word.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from garrison.telemetry.metrics import cumulative_buckets

__all__ = ["EdgeStats", "SidecarMetrics"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
DECISIONS = ("allowed", "denied", "refused")


class EdgeStats:
    """The counts of one (direction, caller, callee) edge: the only object a request touches."""

    __slots__ = ("buckets", "counts", "latency_sum")

    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], int] = {}  # (status class index, decision) -> requests
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0

    def observe(self, status: int, decision: str, seconds: float) -> None:
        key = (min(max(status // 100, 1), 5) - 1, decision)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class SidecarMetrics(Collector):
    """Requests and a latency histogram per edge, upstream errors per callee, on a registry of their own."""

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str, str], EdgeStats] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}  # (callee, reason) -> failed attempts
        # The sidecar's service and when its workload certificate expires (epoch seconds; None unknown).
        self.service = ""
        self.certificate_expiry: Callable[[], float | None] = lambda: None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def edge(self, direction: str, caller: str, callee: str) -> EdgeStats:
        key = (direction, caller, callee)
        stats = self.edges.get(key)
        if stats is None:
            stats = self.edges[key] = EdgeStats()
        return stats

    def upstream_error(self, callee: str, reason: str) -> None:
        key = (callee, reason)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        labels = ["direction", "caller", "callee"]
        requests = CounterMetricFamily(
            "garrison_mesh_requests",
            "Calls through the sidecar by direction (inbound, outbound), caller and callee service, "
            "status class and decision (allowed, denied by policy or state, refused as malformed).",
            labels=[*labels, "status", "decision"],
        )
        latency = HistogramMetricFamily(
            "garrison_mesh_request_duration_seconds",
            "Time from the request's head to the end of its answer, per edge.",
            labels=labels,
        )
        for edge, stats in list(self.edges.items()):
            for (status, decision), count in list(stats.counts.items()):
                requests.add_metric([*edge, STATUS_CLASSES[status], decision], count)
            latency.add_metric(list(edge), cumulative_buckets(BUCKETS, stats.buckets), stats.latency_sum)
        yield requests
        yield latency
        errors = CounterMetricFamily(
            "garrison_mesh_upstream_errors",
            "Failed upstream attempts by callee and reason (connect error, identity mismatch).",
            labels=["callee", "reason"],
        )
        for (callee, reason), count in list(self.upstream_errors.items()):
            errors.add_metric([callee, reason], count)
        yield errors
        expiry = GaugeMetricFamily(
            "garrison_mesh_certificate_expiry_timestamp_seconds",
            "When the sidecar's current workload certificate expires (Unix time); renewal moves it on.",
            labels=["service"],
        )
        not_after = self.certificate_expiry()
        if not_after is not None:
            expiry.add_metric([self.service], not_after)
        yield expiry
