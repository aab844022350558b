"""The detection metrics (contract names): ``garrison_audit_alerts_total{rule}`` and
``garrison_audit_alerts_suppressed_total{rule,reason}`` (reason: duplicate | rate | suppressed).
Rule labels are bounded: the correlation rules plus the loaded Sigma rules."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from garrison.audit.detect.alerts import Counters

__all__ = ["DetectionMetrics"]


class DetectionMetrics(Collector):
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        raised = CounterMetricFamily("garrison_audit_alerts", "Alerts raised, by rule.", labels=["rule"])
        for rule, count in sorted(self.counters.raised.items()):
            raised.add_metric([rule], count)
        yield raised
        suppressed = CounterMetricFamily(
            "garrison_audit_alerts_suppressed",
            "Alerts not raised: duplicate (an alert for the rule and actor is open), rate (the rule's "
            "per-minute limit), suppressed (an operator's suppression).",
            labels=["rule", "reason"],
        )
        for (rule, reason), count in sorted(self.counters.suppressed.items()):
            suppressed.add_metric([rule, reason], count)
        yield suppressed
