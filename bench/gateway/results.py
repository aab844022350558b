"""What a run measured, and the figures derived from it (medians, ratios, added latency, targets).

Plain data and plain functions: no processes, no output. run.py fills a Run; report.py renders a
Summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from loadgen import HeyResult, WrkResult

DIRECT = "direct"
PROXIES = ("nginx", "aiohttp", "garrison")
RATE_FRACTION = 0.25  # the fixed-rate latency test runs at a quarter of saturation
RATE_REACHED = 0.95  # below this share of the asked rate, hey could not keep up: say so
CPU_BOUND = 0.9  # a proxy using less of its core than this under saturation was held back by the client

# The targets for Garrison's gateway.
MIN_X_NGINX = 0.5
MIN_X_AIOHTTP = 4.0
MAX_ADDED_P99_MS = 1.0


@dataclass
class Column:
    """One thing wrk and hey are pointed at: the upstream itself ("direct") or a proxy in front of it."""

    name: str
    throughput: list[WrkResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # per throughput round: share of a core the server used
    latency: list[HeyResult] = field(default_factory=list)
    failure: str | None = None  # why it did not start, or stopped answering


@dataclass
class Run:
    columns: dict[str, Column]
    target_rps: float | None = None  # the fixed rate of the latency test
    rate_basis: str | None = None  # whose saturation rate target_rps is a quarter of


@dataclass(frozen=True)
class ColumnSummary:
    name: str
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    rounds: list[float]
    cpu: float | None  # median share of one core the server's own processes used under saturation
    rps_per_cpu: float | None  # median req/s per CPU-second of the server: its capacity if it had a core
    fixed_p50_ms: float | None
    fixed_p99_ms: float | None
    fixed_rps: float | None
    fixed_errors: int
    added_p50_ms: float | None
    added_p99_ms: float | None
    failure: str | None


@dataclass(frozen=True)
class Target:
    label: str
    passed: bool | None  # None: could not be evaluated in this run
    detail: str


@dataclass(frozen=True)
class Summary:
    columns: list[ColumnSummary]
    ratios: dict[str, float]
    targets: list[Target]
    target_rps: float | None
    rate_basis: str | None
    notes: list[str]

    def column(self, name: str) -> ColumnSummary | None:
        return next((c for c in self.columns if c.name == name), None)


def _median(values: list[float]) -> float | None:
    return median(values) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize_column(column: Column, direct: Column) -> ColumnSummary:
    p50 = _median([h.p50_ms for h in column.latency])
    p99 = _median([h.p99_ms for h in column.latency])
    return ColumnSummary(
        name=column.name,
        rps=_median([w.rps for w in column.throughput]),
        p50_ms=_median([w.p50_ms for w in column.throughput]),
        p99_ms=_median([w.p99_ms for w in column.throughput]),
        errors=sum(w.errors for w in column.throughput),
        rounds=[w.rps for w in column.throughput],
        cpu=_median(column.cpu),
        rps_per_cpu=_median([w.rps / c for w, c in zip(column.throughput, column.cpu, strict=True) if c]),
        fixed_p50_ms=p50,
        fixed_p99_ms=p99,
        fixed_rps=_median([h.rps for h in column.latency]),
        fixed_errors=sum(h.errors + h.non_2xx for h in column.latency),
        added_p50_ms=None if column is direct else _minus(p50, _median([h.p50_ms for h in direct.latency])),
        added_p99_ms=None if column is direct else _minus(p99, _median([h.p99_ms for h in direct.latency])),
        failure=column.failure,
    )


def ratios(columns: list[ColumnSummary]) -> dict[str, float]:
    """Garrison's median req/s over each peer's, and its requests per CPU-second over theirs."""
    found = {}
    by_name = {c.name: c for c in columns}
    garrison = by_name.get("garrison")
    for peer in ("nginx", "aiohttp"):
        other = by_name.get(peer)
        if garrison is None or other is None:
            continue
        if garrison.rps and other.rps:
            found[f"garrison/{peer}"] = garrison.rps / other.rps
        if garrison.rps_per_cpu and other.rps_per_cpu:
            found[f"garrison/{peer} per CPU-second"] = garrison.rps_per_cpu / other.rps_per_cpu
    return found


def _ratio_target(
    found: dict[str, float], garrison: ColumnSummary | None, peer: str, minimum: float
) -> Target:
    label = f"Garrison ≥ {minimum:g}x {peer} throughput"
    key = f"garrison/{peer}"
    if garrison is not None and garrison.failure:
        return Target(label, None, "garrison did not complete the run")
    if garrison is None or key not in found:
        return Target(label, None, f"not measured (garrison and {peer} both needed)")
    if garrison.errors:
        return Target(label, False, f"{found[key]:.2f}x, but with {garrison.errors} errors")
    return Target(label, found[key] >= minimum, f"{found[key]:.2f}x")


def _latency_target(garrison: ColumnSummary | None, target_rps: float | None) -> Target:
    label = f"Garrison added p99 ≤ {MAX_ADDED_P99_MS:g} ms at a quarter of saturation"
    if garrison is not None and garrison.failure:
        return Target(label, None, "garrison did not complete the run")
    if garrison is None or garrison.added_p99_ms is None or target_rps is None:
        return Target(label, None, "not measured")
    detail = f"{garrison.added_p99_ms:+.2f} ms at {target_rps:,.0f} req/s"
    if garrison.fixed_errors:
        return Target(label, False, f"{detail}, but with {garrison.fixed_errors} errors")
    return Target(label, garrison.added_p99_ms <= MAX_ADDED_P99_MS, detail)


def summarize(run: Run) -> Summary:
    direct = run.columns[DIRECT]
    columns = [summarize_column(c, direct) for c in run.columns.values()]
    found = ratios(columns)
    garrison = next((c for c in columns if c.name == "garrison"), None)
    targets = [
        _ratio_target(found, garrison, "nginx", MIN_X_NGINX),
        _ratio_target(found, garrison, "aiohttp", MIN_X_AIOHTTP),
        _latency_target(garrison, run.target_rps),
    ]
    return Summary(columns, found, targets, run.target_rps, run.rate_basis, notes(columns))


def notes(columns: list[ColumnSummary]) -> list[str]:
    """Warnings for a proxy whose req/s is set by the client-and-upstream core rather than by itself."""
    direct = columns[0]
    found = []
    for c in columns[1:]:
        if c.failure or c.rps is None or c.cpu is None or c.cpu >= CPU_BOUND:
            continue
        found.append(
            f"{c.name} used only {c.cpu:.0%} of its core: its req/s is bounded by the core that wrk and the "
            f"upstream share (direct: {direct.rps or 0:,.0f} req/s), so read it as a floor; per CPU-second "
            f"it served {c.rps_per_cpu or 0:,.0f} requests"
        )
    return found


def fixed_rate_basis(run: Run) -> tuple[str, float] | None:
    """The latency test's rate: a quarter of Garrison's saturation, else aiohttp's, else nginx's."""
    for name in ("garrison", "aiohttp", "nginx"):
        column = run.columns.get(name)
        if column is not None and column.failure is None and column.throughput:
            return name, RATE_FRACTION * median(w.rps for w in column.throughput)
    return None


@dataclass(frozen=True)
class Settings:
    duration: int  # seconds per wrk run
    rounds: int
    warmup: int  # seconds of wrk against each column before the measured rounds
    latency_seconds: int  # seconds per hey run
    columns: list[str]  # "direct" first, then the selected proxies in round order
    pinning: str  # how processes were placed on cores, in words
    aiohttp_loop: str
