"""Gateway metrics, counted in plain Python structures and exposed through prometheus-client.

prometheus-client's own Counter/Histogram take a lock and resolve label values on every call
(about 2 µs per observation); on a path with a budget of ~30 µs per request that is too much. So
the gateway counts into dicts and lists it owns, and a custom ``Collector`` turns them into metric
families only when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mypy_extensions import mypyc_attr
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class RouteStats:
    """Counters for one route; the hot path only touches this object."""

    route: str
    service: str
    by_status: dict[int, int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0

    def observe(self, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        by_status = self.by_status
        by_status[status] = by_status.get(status, 0) + 1
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out


# Not a mypyc native class: its base (prometheus-client's Collector) is a Python class with a __dict__.
@mypyc_attr(native_class=False)
class GatewayMetrics(Collector):
    """Every gateway metric. Gauges are read from callbacks at scrape time."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], RouteStats] = {}
        self.upstream_errors: dict[tuple[str, str, str], int] = {}
        self.rejected: dict[str, int] = {}
        self.reloads: dict[str, int] = {"success": 0, "failure": 0}
        self.rate_limit_outcomes: dict[tuple[str, str], int] = {}
        self.cache_lookups: dict[tuple[str, str], int] = {}
        self.cache_bytes: Callable[[], int] = lambda: 0
        self.open_connections: Callable[[], int] = lambda: 0
        self.heap_trims: Callable[[], int] = lambda: 0
        self.heap_trim_pending: Callable[[], int] = lambda: 0
        self.circuit_states: Callable[[], Iterable[tuple[str, str, str]]] = lambda: ()
        self.admin_refused: dict[tuple[str, str], int] = {}  # (set, reason) -> count (admin.py)
        # reason -> count of admin requests the guard refused; None where no guard runs (a worker
        # under `workers: N`, whose supervisor guards the listener and reports these itself).
        self.admin_denied: Mapping[str, int] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def route(self, route: str, service: str) -> RouteStats:
        """The stats object for a route; the same object survives config reloads."""
        stats = self.routes.get((route, service))
        if stats is None:
            stats = self.routes[(route, service)] = RouteStats(route, service)
        return stats

    def upstream_error(self, service: str, target: str, reason: str) -> None:
        key = (service, target, reason)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def rate_limited(self, route: str, outcome: str) -> None:
        key = (route, outcome)
        self.rate_limit_outcomes[key] = self.rate_limit_outcomes.get(key, 0) + 1

    def cache_lookup(self, route: str, result: str) -> None:
        key = (route, result)
        self.cache_lookups[key] = self.cache_lookups.get(key, 0) + 1

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield from self._request_families()
        errors = CounterMetricFamily(
            "garrison_gateway_upstream_errors",
            "Failed upstream attempts.",
            labels=["service", "target", "reason"],
        )
        for (service, target, reason), count in self.upstream_errors.items():
            errors.add_metric([service, target, reason], count)
        yield errors
        rejected = CounterMetricFamily(
            "garrison_gateway_rejected_requests", "Requests refused before routing.", labels=["reason"]
        )
        for reason, count in self.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        limited = CounterMetricFamily(
            "garrison_gateway_rate_limit_decisions",
            "Rate-limit decisions (allowed, limited, failed_open, failed_closed).",
            labels=["route", "outcome"],
        )
        for (route, outcome), count in self.rate_limit_outcomes.items():
            limited.add_metric([route, outcome], count)
        yield limited
        lookups = CounterMetricFamily(
            "garrison_gateway_cache_lookups",
            "Response-cache lookups (hit, miss).",
            labels=["route", "result"],
        )
        for (route, result), count in self.cache_lookups.items():
            lookups.add_metric([route, result], count)
        yield lookups
        yield GaugeMetricFamily(
            "garrison_gateway_cache_bytes", "Bytes held by the response cache.", value=self.cache_bytes()
        )
        reloads = CounterMetricFamily("garrison_gateway_config_reloads", "Config reloads.", labels=["result"])
        for result, count in self.reloads.items():
            reloads.add_metric([result], count)
        yield reloads
        circuit = GaugeMetricFamily(
            "garrison_gateway_circuit_state",
            "Circuit breaker state per target (1 for the current state).",
            labels=["service", "target", "state"],
        )
        for service, target, state in self.circuit_states():
            for candidate in ("closed", "open", "half_open"):
                circuit.add_metric([service, target, candidate], 1.0 if candidate == state else 0.0)
        yield circuit
        yield GaugeMetricFamily(
            "garrison_gateway_open_connections", "Open client connections.", value=self.open_connections()
        )
        yield admin_refused_family(self.admin_refused)
        if self.admin_denied is not None:
            yield admin_denied_family(self.admin_denied)
        yield from self._heap_families()

    def _heap_families(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        """What the heap trimmer did (gateway/heap.py); both stay 0 where malloc_trim does not exist."""
        yield CounterMetricFamily(
            "garrison_gateway_heap_trims",
            "Times freed heap memory was handed back to the operating system (malloc_trim).",
            value=self.heap_trims(),
        )
        yield GaugeMetricFamily(
            "garrison_gateway_heap_trim_pending_connections",
            "Client connections closed since the last heap trim.",
            value=self.heap_trim_pending(),
        )

    def _request_families(self) -> Iterable[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "garrison_gateway_requests",
            "Requests by route and status.",
            labels=["route", "service", "status"],
        )
        latency = HistogramMetricFamily(
            "garrison_gateway_request_duration_seconds",
            "Time from request head to the last response byte.",
            labels=["route", "service"],
        )
        bytes_in = CounterMetricFamily(
            "garrison_gateway_request_bytes", "Request body bytes.", labels=["route"]
        )
        bytes_out = CounterMetricFamily(
            "garrison_gateway_response_bytes", "Response bytes.", labels=["route"]
        )
        for stats in list(self.routes.values()):
            for status, count in list(stats.by_status.items()):
                requests.add_metric([stats.route, stats.service, str(status)], count)
            cumulative = cumulative_buckets(LATENCY_BUCKETS, stats.buckets)
            latency.add_metric([stats.route, stats.service], cumulative, stats.latency_sum)
            bytes_in.add_metric([stats.route], stats.bytes_in)
            bytes_out.add_metric([stats.route], stats.bytes_out)
        yield from (requests, latency, bytes_in, bytes_out)


def admin_refused_family(refused: Mapping[tuple[str, str], int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "garrison_gateway_admin_refused",
        "Admin changes refused by a set's own limits (reason `full`: max_entries in force).",
        labels=["set", "reason"],
    )
    for (name, reason), count in refused.items():
        family.add_metric([name, reason], count)
    return family


def admin_denied_family(denied: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(
        "garrison_gateway_admin_denied",
        "Admin requests refused before they ran (reason: host, origin, credential).",
        labels=["reason"],
    )
    for reason, count in denied.items():
        family.add_metric([reason], count)
    return family


def cumulative_buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """A histogram's buckets as exposed: ``counts`` per bucket (the last is +Inf), made cumulative."""
    cumulative, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        cumulative.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return cumulative
