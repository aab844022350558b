"""What a run measured, and the figures derived from it (medians, ratios, added latency, targets).

Plain data and plain functions: no processes, no output. run.py fills a Run; report.py renders a
Summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from common.loadgen import WrkResult
from common.results import CPU_BOUND, Target, Timing, add_ratios, median_or_none, throughput_figures

DIRECT = "direct"
# "bare": the least a Python proxy can do (bare_proxy.py), the floor Garrison is measured from.
# The main section: each proxy pinned alone on core 0, one worker, plaintext, throughput and latency.
PROXIES = ("nginx", "bare", "aiohttp", "garrison", "garrison-chain", "garrison-redis", "garrison-pure")
# Sections of their own (throughput only, shorter rounds): two workers on both cores, unpinned ...
SCALING = ("nginx-w2", "garrison-w2")
# ... and TLS termination, pinned as the main section: keep-alive; a new connection per request whose
# handshake resumes the session (wrk); a new connection per request with a full handshake (hey).
TLS_KEEPALIVE = ("nginx-tls", "garrison-tls")
TLS_NEW = ("nginx-tls-new", "garrison-tls-new")
TLS_FULL = ("nginx-tls-full", "garrison-tls-full")
SECTIONS = {"tls": TLS_KEEPALIVE + TLS_NEW + TLS_FULL, "scaling": SCALING}
COLUMNS = PROXIES + TLS_KEEPALIVE + TLS_NEW + TLS_FULL + SCALING  # the default selection, in round order
# Another checkout's Garrison (`--baseline DIR`), run in the same interleaved rounds: before/after a change.
BASELINES = ("garrison@base", "garrison-chain@base")
RATE_FRACTION = 0.25  # the fixed-rate latency test runs at a quarter of saturation
RATE_REACHED = 0.95  # below this share of the asked rate, hey could not keep up: say so

# The targets for Garrison's gateway (issues 3 and 12), each per CPU-second of the proxy under test:
# the ratio of capacities, which holds even when a column could not fill its core.
MIN_X_BARE = 0.7  # the plain proxy against the bare uvloop + httptools proxy
MIN_X_NGINX = 0.6
MIN_X_AIOHTTP = 4.0
MAX_ADDED_P99_MS = 0.5
MIN_CHAIN_X_NGINX = 0.4  # the full security chain (IP rules, JWT, rate limit) against plain nginx
MIN_REDIS_X_PLAIN = 0.75  # Redis-backed limits cost at most 25% of Garrison's throughput
SCALING_HOLDS = 0.9  # garrison-w2/nginx-w2 at least this share of garrison/nginx ("the ratio must hold")
# (numerator, denominator) of each ratio reported; Garrison's per-CPU-second ratios only for its plain column.
RATIO_PAIRS = (
    ("garrison", "nginx"),
    ("garrison", "bare"),
    ("bare", "nginx"),
    ("garrison", "aiohttp"),
    ("garrison-chain", "nginx"),
    ("garrison-redis", "garrison"),
    ("garrison-pure", "garrison"),
    ("garrison-w2", "nginx-w2"),
    ("nginx-w2", "nginx"),
    ("garrison-w2", "garrison"),
    ("garrison-tls", "nginx-tls"),
    ("garrison-tls-new", "nginx-tls-new"),
    ("garrison-tls-full", "nginx-tls-full"),
    ("nginx-tls", "nginx"),
    ("garrison-tls", "garrison"),
    ("garrison", "garrison@base"),
    ("garrison-chain", "garrison-chain@base"),
)


@dataclass
class Column:
    """One thing wrk and hey are pointed at: the upstream itself ("direct") or a proxy in front of it."""

    name: str
    throughput: list[WrkResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # per throughput round: share of a core the server used
    latency: list[WrkResult] = field(default_factory=list)  # paced wrk at the fixed rate
    failure: str | None = None  # why it did not start, or stopped answering
    # per throughput round: TCP connections accepted on the machine per request served (about 1 when
    # every request comes on a new connection, about 0 with keep-alive)
    connections: list[float] = field(default_factory=list)


@dataclass
class Run:
    columns: dict[str, Column]
    target_rps: float | None = None  # the fixed rate of the latency test
    rate_basis: str | None = None  # whose saturation rate target_rps is a quarter of
    tls: dict[str, str] = field(default_factory=dict)  # per TLS column: what its handshakes negotiate


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
class Summary:
    columns: list[ColumnSummary]
    ratios: dict[str, float]
    targets: list[Target]
    target_rps: float | None
    rate_basis: str | None
    notes: list[str]
    tls: dict[str, str] = field(default_factory=dict)  # per TLS column: what its handshakes negotiate
    connections: dict[str, float] = field(default_factory=dict)  # median new connections per request

    def column(self, name: str) -> ColumnSummary | None:
        return next((c for c in self.columns if c.name == name), None)


def nginx_of(name: str) -> str:
    """The nginx column a column is compared with: the one of its own section."""
    for section in (SCALING, TLS_KEEPALIVE, TLS_NEW, TLS_FULL):
        if name in section:
            return section[0]
    return "nginx"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarize_column(column: Column, direct: Column) -> ColumnSummary:
    p50 = median_or_none([h.p50_ms for h in column.latency])
    p99 = median_or_none([h.p99_ms for h in column.latency])
    direct_p50 = median_or_none([h.p50_ms for h in direct.latency])
    direct_p99 = median_or_none([h.p99_ms for h in direct.latency])
    return ColumnSummary(
        name=column.name,
        **throughput_figures(column.throughput, column.cpu),
        fixed_p50_ms=p50,
        fixed_p99_ms=p99,
        fixed_rps=median_or_none([h.rps for h in column.latency]),
        fixed_errors=sum(h.errors for h in column.latency),  # socket errors and non-2xx
        added_p50_ms=None if column is direct else _minus(p50, direct_p50),
        added_p99_ms=None if column is direct else _minus(p99, direct_p99),
        failure=column.failure,
    )


def ratios(columns: list[ColumnSummary]) -> dict[str, float]:
    """Each RATIO_PAIRS column's median req/s over its peer's, and requests per CPU-second over theirs."""
    found: dict[str, float] = {}
    by_name = {c.name: c for c in columns}
    for name, peer in RATIO_PAIRS:
        mine, other = by_name.get(name), by_name.get(peer)
        if mine is not None and other is not None:
            add_ratios(found, f"{name}/{peer}", mine, other)
    return found


def _ratio_target(
    found: dict[str, float],
    by_name: dict[str, ColumnSummary],
    name: str,
    peer: str,
    minimum: float,
    label: str,
    per_cpu: bool = False,
) -> Target:
    mine, other = by_name.get(name), by_name.get(peer)
    key = f"{name}/{peer}" + (" per CPU-second" if per_cpu else "")
    for column in (mine, other):
        if column is not None and column.failure:
            return Target(
                label, None, f"{column.name} did not complete the run: {column.failure.splitlines()[0]}"
            )
    if mine is None or key not in found:
        return Target(label, None, f"not measured ({name} and {peer} both needed)")
    detail = f"{found[key]:.2f}x"
    if mine.errors:
        return Target(label, False, f"{detail}, but with {mine.errors} errors")
    return Target(label, found[key] >= minimum, detail)


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
    by_name = {c.name: c for c in columns}
    targets = [
        _ratio_target(
            found,
            by_name,
            "garrison",
            "bare",
            MIN_X_BARE,
            f"Garrison ≥ {MIN_X_BARE:g}x the bare Python proxy per CPU-second",
            per_cpu=True,
        ),
        _ratio_target(
            found,
            by_name,
            "garrison",
            "nginx",
            MIN_X_NGINX,
            f"Garrison ≥ {MIN_X_NGINX:g}x nginx per CPU-second",
            per_cpu=True,
        ),
        _ratio_target(
            found,
            by_name,
            "garrison",
            "aiohttp",
            MIN_X_AIOHTTP,
            f"Garrison ≥ {MIN_X_AIOHTTP:g}x aiohttp throughput",
        ),
        _latency_target(by_name.get("garrison"), run.target_rps),
        _ratio_target(
            found,
            by_name,
            "garrison-chain",
            "nginx",
            MIN_CHAIN_X_NGINX,
            f"Garrison with the full chain ≥ {MIN_CHAIN_X_NGINX:g}x nginx per CPU-second",
            per_cpu=True,
        ),
        _ratio_target(
            found,
            by_name,
            "garrison-redis",
            "garrison",
            MIN_REDIS_X_PLAIN,
            f"Redis-backed limits cost ≤ {1 - MIN_REDIS_X_PLAIN:.0%} of throughput (garrison-redis ≥ "
            f"{MIN_REDIS_X_PLAIN:g}x garrison)",
        ),
        scaling_target(found, by_name),
    ]
    connections = {
        name: median(column.connections) for name, column in run.columns.items() if column.connections
    }
    return Summary(
        columns, found, targets, run.target_rps, run.rate_basis, notes(columns), dict(run.tls), connections
    )


def scaling_target(found: dict[str, float], by_name: dict[str, ColumnSummary]) -> Target:
    """ "scaling holds": garrison-w2/nginx-w2 ≥ SCALING_HOLDS times garrison/nginx, per CPU-second.

    Per CPU-second because the two-worker columns share both cores with wrk and the upstream: their
    req/s depends on what the others leave them, their requests per CPU-second of all their processes
    does not (much).
    """
    label = (
        f"scaling holds with workers: 2 (garrison-w2/nginx-w2 ≥ {SCALING_HOLDS:g} times garrison/nginx, "
        "per CPU-second)"
    )
    for name in ("garrison-w2", "nginx-w2", "garrison", "nginx"):
        column = by_name.get(name)
        if column is not None and column.failure:
            return Target(label, None, f"{name} did not complete the run: {column.failure.splitlines()[0]}")
    two, one = found.get("garrison-w2/nginx-w2 per CPU-second"), found.get("garrison/nginx per CPU-second")
    if two is None or one is None:
        return Target(label, None, "not measured (garrison-w2, nginx-w2, garrison and nginx all needed)")
    detail = f"{two:.2f}x against {one:.2f}x ({two / one:.2f} of it)"
    errors = by_name["garrison-w2"].errors
    if errors:
        return Target(label, False, f"{detail}, but with {errors} errors")
    return Target(label, two >= SCALING_HOLDS * one, detail)


def notes(columns: list[ColumnSummary]) -> list[str]:
    """Warnings for a proxy whose req/s is set by the client-and-upstream core rather than by itself."""
    direct = columns[0]
    found = []
    if any(c.name in SCALING and c.rps is not None for c in columns):
        found.append(
            "nginx-w2 and garrison-w2 are not pinned: each shares both cores with wrk (-t2) and a "
            "two-worker upstream, so their CPU can exceed 100% (all of their processes, summed) and their "
            "req/s depends on what the others leave them; compare them per CPU-second"
        )
    for c in columns[1:]:
        if c.name in SCALING or c.failure or c.rps is None or c.cpu is None or c.cpu >= CPU_BOUND:
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
class Settings(Timing):
    latency_seconds: int  # seconds per paced wrk run
    columns: list[str]  # "direct" first, then the selected proxies in round order
    pinning: str  # how processes were placed on cores, in words
    aiohttp_loop: str
    baseline: str | None = None  # the checkout whose Garrison runs the `@base` columns
    section_duration: int = 4  # seconds per wrk run in the scaling and TLS sections
