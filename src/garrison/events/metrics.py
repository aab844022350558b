"""The emitter's Prometheus metrics, read from its counters at scrape time (no work per event).

A component adds ``EmitterCollector(emitter.stats)`` to the registry its /metrics serves:
``garrison_audit_emitted_total``, ``garrison_audit_delivered_total``,
``garrison_audit_dropped_total{reason}`` (spool_full, memory_full, rejected),
``garrison_audit_spool_bytes`` and ``garrison_audit_spool_events``.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DROP_REASONS", "EmitterCollector", "EmitterStats"]

DROP_REASONS = ("spool_full", "memory_full", "rejected")


class EmitterStats:
    """Plain counters the emitter bumps; the spool's size is read from the spool when scraped."""

    __slots__ = ("delivered", "dropped", "emitted", "spool_bytes", "spool_events")

    def __init__(self) -> None:
        self.emitted = 0
        self.delivered = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.spool_bytes = 0
        self.spool_events = 0


class EmitterCollector(Collector):
    """Exposes one emitter's ``EmitterStats``."""

    def __init__(self, stats: EmitterStats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        emitted = CounterMetricFamily("garrison_audit_emitted", "Audit events handed to the emitter.")
        emitted.add_metric([], stats.emitted)
        delivered = CounterMetricFamily(
            "garrison_audit_delivered", "Audit events the collector acknowledged (durable or duplicate)."
        )
        delivered.add_metric([], stats.delivered)
        dropped = CounterMetricFamily(
            "garrison_audit_dropped", "Audit events lost, by reason.", labels=["reason"]
        )
        for reason in DROP_REASONS:
            dropped.add_metric([reason], stats.dropped[reason])
        spool_bytes = GaugeMetricFamily("garrison_audit_spool_bytes", "Bytes of audit events spooled.")
        spool_bytes.add_metric([], stats.spool_bytes)
        spool_events = GaugeMetricFamily("garrison_audit_spool_events", "Audit events spooled on disk.")
        spool_events.add_metric([], stats.spool_events)
        return [emitted, delivered, dropped, spool_bytes, spool_events]
