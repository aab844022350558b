"""What a run measured, and the figures derived from it (medians, ratios, targets).

Plain data and plain functions: no processes, no output. run.py fills a Run; report.py renders a
Summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.results import CPU_BOUND, Target, Timing, add_ratios, throughput_figures
from loadgen import PostResult

GARRISON = "garrison"
PEER = "oidc-provider"
PROVIDERS = (PEER, GARRISON)
TOKEN = "token"
INTROSPECT_SAME = "introspect-same"
INTROSPECT_ROTATING = "introspect-rotating"
WORKLOADS = (TOKEN, INTROSPECT_SAME, INTROSPECT_ROTATING)
INTROSPECTION = (INTROSPECT_SAME, INTROSPECT_ROTATING)

# The targets for Garrison's identity provider, on one core.
MIN_TOKENS_PER_S = 1500.0
MIN_INTROSPECTIONS_PER_S = 5000.0
MIN_X_PEER = 1.0  # "ahead of oidc-provider": strictly more requests per second


def workload_label(workload: str, rotating: int) -> str:
    return {
        TOKEN: "POST /token (client_credentials)",
        INTROSPECT_SAME: "POST /introspect, 1 token",
        INTROSPECT_ROTATING: f"POST /introspect, {rotating} tokens",
    }[workload]


@dataclass
class Cell:
    """One provider under one workload: a wrk result and the server's CPU share per round."""

    throughput: list[PostResult] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


@dataclass
class ProviderRun:
    name: str
    failure: str | None = None  # why it did not start, or stopped answering
    checks: list[str] = field(default_factory=list)  # what the start-up checks saw


@dataclass
class Run:
    providers: dict[str, ProviderRun]
    cells: dict[str, dict[str, Cell]]  # workload -> provider -> cell


@dataclass(frozen=True)
class CellSummary:
    workload: str
    provider: str
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    rounds: list[float]
    cpu: float | None  # median share of one core the server's processes used under saturation
    rps_per_cpu: float | None  # median req/s per CPU-second of the server
    failure: str | None


@dataclass(frozen=True)
class Summary:
    cells: list[CellSummary]
    ratios: dict[str, float]
    targets: list[Target]
    notes: list[str]

    def cell(self, workload: str, provider: str) -> CellSummary | None:
        return next((c for c in self.cells if c.workload == workload and c.provider == provider), None)


def summarize_cell(workload: str, provider: ProviderRun, cell: Cell) -> CellSummary:
    figures = throughput_figures(cell.throughput, cell.cpu)
    return CellSummary(workload=workload, provider=provider.name, **figures, failure=provider.failure)


def ratios(summary_cells: list[CellSummary]) -> dict[str, float]:
    """Per workload: Garrison's median req/s over oidc-provider's, and the same per CPU-second."""
    found: dict[str, float] = {}
    for workload in WORKLOADS:
        mine = next((c for c in summary_cells if (c.workload, c.provider) == (workload, GARRISON)), None)
        peer = next((c for c in summary_cells if (c.workload, c.provider) == (workload, PEER)), None)
        if mine is not None and peer is not None:
            add_ratios(found, f"{workload} {GARRISON}/{PEER}", mine, peer)
    return found


def _unusable(cell: CellSummary | None, name: str) -> str | None:
    """Why a cell cannot back a target, or None if it can."""
    if cell is not None and cell.failure:
        return f"{name} did not complete the run: {cell.failure.splitlines()[0]}"
    if cell is None or cell.rps is None:
        return f"{name} not measured"
    return None


def rate_target(
    summary_cells: list[CellSummary], workloads: tuple[str, ...], minimum: float, label: str
) -> Target:
    """Garrison's req/s on the slowest of `workloads` against an absolute minimum."""
    cells = [
        next((c for c in summary_cells if (c.workload, c.provider) == (w, GARRISON)), None) for w in workloads
    ]
    for cell in cells:
        why = _unusable(cell, GARRISON)
        if why:
            return Target(label, None, why)
    measured = [c for c in cells if c is not None and c.rps is not None]
    slowest = min(measured, key=lambda c: c.rps or 0.0)
    detail = f"{slowest.rps:,.0f} req/s" + (f" ({slowest.workload})" if len(workloads) > 1 else "")
    detail += f" at {slowest.cpu:.0%} CPU" if slowest.cpu is not None else ""
    errors = sum(c.errors for c in measured)
    if errors:
        return Target(label, False, f"{detail}, but with {errors} errors")
    return Target(label, (slowest.rps or 0.0) >= minimum, detail)


def ahead_target(summary_cells: list[CellSummary], workloads: tuple[str, ...], label: str) -> Target:
    """Garrison's req/s over oidc-provider's, on the least favourable of `workloads`, above MIN_X_PEER."""
    pairs = []
    for workload in workloads:
        mine = next((c for c in summary_cells if (c.workload, c.provider) == (workload, GARRISON)), None)
        peer = next((c for c in summary_cells if (c.workload, c.provider) == (workload, PEER)), None)
        for cell, name in ((mine, GARRISON), (peer, PEER)):
            why = _unusable(cell, name)
            if why:
                return Target(label, None, why)
        assert mine is not None and peer is not None and mine.rps and peer.rps
        if peer.errors:
            return Target(label, None, f"{PEER} had {peer.errors} errors on {workload}: no fair comparison")
        pairs.append((mine.rps / peer.rps, workload, mine))
    ratio, workload, mine = min(pairs)
    detail = f"{ratio:.2f}x" + (f" ({workload})" if len(workloads) > 1 else "")
    errors = sum(p[2].errors for p in pairs)
    if errors:
        return Target(label, False, f"{detail}, but with {errors} errors")
    return Target(label, ratio > MIN_X_PEER, detail)


def summarize(run: Run, pinned: bool) -> Summary:
    summary_cells = [
        summarize_cell(workload, run.providers[name], cell)
        for workload, by_provider in run.cells.items()
        for name, cell in by_provider.items()
    ]
    one_core = "on one core" if pinned else "(unpinned: not a one-core figure)"
    targets = [
        rate_target(
            summary_cells,
            (TOKEN,),
            MIN_TOKENS_PER_S,
            f"Garrison ≥ {MIN_TOKENS_PER_S:,.0f} tokens/s {one_core}",
        ),
        rate_target(
            summary_cells,
            INTROSPECTION,
            MIN_INTROSPECTIONS_PER_S,
            f"Garrison ≥ {MIN_INTROSPECTIONS_PER_S:,.0f} introspections/s {one_core} (1 token and rotating)",
        ),
        ahead_target(summary_cells, (TOKEN,), f"Garrison ahead of {PEER} on token issuance"),
        ahead_target(summary_cells, INTROSPECTION, f"Garrison ahead of {PEER} on introspection"),
    ]
    return Summary(summary_cells, ratios(summary_cells), targets, notes(summary_cells))


def notes(summary_cells: list[CellSummary]) -> list[str]:
    """Warnings for a provider whose req/s was set by the load generator rather than by itself."""
    found = []
    for c in summary_cells:
        if c.failure or c.rps is None or c.cpu is None or c.cpu >= CPU_BOUND:
            continue
        found.append(
            f"{c.provider} used only {c.cpu:.0%} of its core on {c.workload}: something else held it back "
            "(wrk's core, or other load on the machine), so read its req/s as a floor; per CPU-second it "
            f"served {c.rps_per_cpu or 0:,.0f} requests"
        )
    return found


@dataclass(frozen=True)
class Settings(Timing):
    rotating: int  # how many tokens the rotating introspection cycles through
    providers: list[str]  # in round order
    pinned: bool
    pinning: str  # how processes were placed on cores, in words
