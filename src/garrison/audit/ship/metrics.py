"""The shippers' metrics (docs/audit.md, "Metrics and dashboard"), exposed on the collector's /metrics.

- ``garrison_audit_shipped_total{shipper}``: events the receiver stored.
- ``garrison_audit_ship_failures_total{shipper}``: requests that failed, wholly or for some items,
  and are tried again (an outage makes this climb while the lag grows).
- ``garrison_audit_ship_skipped_total{shipper,reason}``: events the receiver refused for good
  (reason ``refused``: a 400 or a refused bulk item; ``too_large``: one event over the receiver's
  size limit); an addition to the contract's names, so that skipping is never silent.
- ``garrison_audit_ship_lag_seconds{shipper}``: now minus the time of the oldest event not yet
  shipped; 0 when caught up.
- ``garrison_audit_ship_lag_entries{shipper}``: log size minus the shipper's position.

Counted in plain attributes and turned into families at scrape time, as the gateway does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ShipperStats", "ShippingMetrics"]


@dataclass(slots=True)
class ShipperStats:
    shipped: int = 0
    failures: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    position: int = 0  # the cursor: seq of the next entry to ship
    oldest_pending: float | None = None  # event time of the first entry of the batch in flight

    def skip(self, reason: str, count: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count


class ShippingMetrics(Collector):
    def __init__(self, log_size: Callable[[], int], clock: Callable[[], float] = time.time) -> None:
        self.shippers: dict[str, ShipperStats] = {}
        self.log_size = log_size  # the LogReader's size, once the shippers start
        self._clock = clock

    def stats(self, shipper: str) -> ShipperStats:
        return self.shippers.setdefault(shipper, ShipperStats())

    def lag_seconds(self, stats: ShipperStats, size: int) -> float:
        if stats.position >= size or stats.oldest_pending is None:
            return 0.0
        return max(0.0, self._clock() - stats.oldest_pending)

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        size = self.log_size()
        shipped = CounterMetricFamily(
            "garrison_audit_shipped", "Audit events the receiver stored.", labels=["shipper"]
        )
        failures = CounterMetricFamily(
            "garrison_audit_ship_failures",
            "Shipping requests that failed and are retried.",
            labels=["shipper"],
        )
        skipped = CounterMetricFamily(
            "garrison_audit_ship_skipped",
            "Audit events the receiver refused for good (not retried).",
            labels=["shipper", "reason"],
        )
        lag_seconds = GaugeMetricFamily(
            "garrison_audit_ship_lag_seconds",
            "Age of the oldest audit event not yet shipped (0 when caught up).",
            labels=["shipper"],
        )
        lag_entries = GaugeMetricFamily(
            "garrison_audit_ship_lag_entries", "Audit log entries not yet shipped.", labels=["shipper"]
        )
        for name, stats in list(self.shippers.items()):
            shipped.add_metric([name], stats.shipped)
            failures.add_metric([name], stats.failures)
            for reason, count in list(stats.skipped.items()):
                skipped.add_metric([name, reason], count)
            lag_seconds.add_metric([name], self.lag_seconds(stats, size))
            lag_entries.add_metric([name], max(0, size - stats.position))
        yield from (shipped, failures, skipped, lag_seconds, lag_entries)
