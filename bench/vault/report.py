"""The vault benchmark's figures: medians per workload and vault, Garrison/OpenBao ratios, the issue's
targets, text and markdown. Plain data and functions: no processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from statistics import median

from common.loadgen import WrkResult
from common.machine import header
from common.render import target_line
from common.results import CPU_BOUND, Target

MINE, PEER, BASE = "garrison", "openbao", "garrison@base"
# Issue 10: KV reads >= 1.0x OpenBao, KV writes >= 0.5x, transit >= 0.5x (req/s, one core each).
TARGETS = {"kv-read": 1.0, "kv-write": 0.5, "transit-encrypt": 0.5}
HEADINGS = (
    "workload",
    "vault",
    "req/s",
    "rounds",
    "x OpenBao",
    "p50",
    "p99",
    "CPU",
    "rate",
    "p50 @rate",
    "p99 @rate",
    "CPU per 1k req/s",
    "errors",
)

Run = tuple[WrkResult, float]  # wrk's figures, and the share of a core the vault used meanwhile


def _median(values: list[float]) -> float | None:
    return median(values) if values else None


@dataclass
class Figures:
    """Everything measured: per workload, per vault, saturation and fixed-rate runs; memory per vault."""

    saturation: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    paced: dict[str, dict[str, list[Run]]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # the fixed rate asked of each workload
    memory: dict[str, tuple[float, float]] = field(default_factory=dict)  # vault: (RSS, peak) MB
    skipped: dict[str, str] = field(default_factory=dict)  # workload: why it was not measured
    failures: dict[str, str] = field(default_factory=dict)  # vault: why it dropped out

    def add(self, phase: str, workload: str, vault: str, result: WrkResult, cpu: float) -> None:
        runs = self.saturation if phase == "saturation" else self.paced
        runs.setdefault(workload, {}).setdefault(vault, []).append((result, cpu))

    def rps(self, workload: str, vault: str) -> float | None:
        return _median([r.rps for r, _ in self.saturation.get(workload, {}).get(vault, [])])

    def cpu(self, workload: str, vault: str) -> float | None:
        return _median([c for _, c in self.saturation.get(workload, {}).get(vault, [])])

    def rps_per_cpu(self, workload: str, vault: str) -> float | None:
        runs = self.saturation.get(workload, {}).get(vault, [])
        return _median([r.rps / c for r, c in runs if c])

    def saturation_latency(self, workload: str, vault: str) -> tuple[float | None, float | None]:
        runs = self.saturation.get(workload, {}).get(vault, [])
        return _median([r.p50_ms for r, _ in runs]), _median([r.p99_ms for r, _ in runs])

    def paced_latency(self, workload: str, vault: str) -> tuple[float | None, float | None]:
        runs = self.paced.get(workload, {}).get(vault, [])
        return _median([r.p50_ms for r, _ in runs]), _median([r.p99_ms for r, _ in runs])

    def cpu_per_thousand(self, workload: str, vault: str) -> float | None:
        """Share of one core per 1,000 req/s served at the fixed rate."""
        runs = self.paced.get(workload, {}).get(vault, [])
        return _median([c * 1000 / r.rps for r, c in runs if r.rps])

    def errors(self, workload: str, vault: str) -> int:
        runs = self.saturation.get(workload, {}).get(vault, []) + self.paced.get(workload, {}).get(vault, [])
        return sum(r.errors for r, _ in runs)

    def ratio(self, workload: str, mine: str = MINE, other: str = PEER) -> float | None:
        a, b = self.rps(workload, mine), self.rps(workload, other)
        return a / b if a and b else None

    def ratios(self) -> dict[str, float]:
        """garrison/openbao per workload (req/s, then per CPU-second), and garrison/garrison@base."""
        found: dict[str, float] = {}
        for other in (PEER, BASE):
            for workload in self.saturation:
                if (ratio := self.ratio(workload, MINE, other)) is not None:
                    found[f"{MINE}/{other} {workload}"] = ratio
                mine, peer = self.rps_per_cpu(workload, MINE), self.rps_per_cpu(workload, other)
                if mine and peer:
                    found[f"{MINE}/{other} {workload} per CPU-second"] = mine / peer
        return found

    def to_json(self, info: dict[str, str], settings: dict[str, object]) -> dict[str, object]:
        def runs(phase: dict[str, dict[str, list[Run]]]) -> object:
            return {
                w: {v: [{**vars(r), "cpu": c} for r, c in rs] for v, rs in by.items()}
                for w, by in phase.items()
            }

        return {
            "machine": info,
            "settings": settings,
            "saturation": runs(self.saturation),
            "paced": runs(self.paced),
            "rates": self.rates,
            "memory_mb": self.memory,
            "ratios": self.ratios(),
            "targets": [vars(t) for t in targets(self)],
            "skipped": self.skipped,
            "failures": self.failures,
        }


def targets(f: Figures) -> list[Target]:
    """The issue's targets (PASS / FAIL / n/a, never asserted); errors in Garrison's runs fail them."""
    found = []
    for workload, least in TARGETS.items():
        label = f"{workload} >= {least:.1f}x OpenBao (req/s)"
        ratio = f.ratio(workload)
        if ratio is None:
            why = f.skipped.get(workload) or "not measured (both vaults needed)"
            found.append(Target(label, None, why))
            continue
        errors = f.errors(workload, MINE)
        detail = f"{ratio:.2f}x" + (f" ({errors} errors)" if errors else "")
        found.append(Target(label, ratio >= least and not errors, detail))
    return found


def notes(f: Figures) -> list[str]:
    """A vault below CPU_BOUND of its core at saturation was held back by something else (the disk's
    syncs, wrk's core, other processes on core 0): its req/s is not its CPU's capacity."""
    found = []
    for workload, by in f.saturation.items():
        for vault in by:
            cpu = f.cpu(workload, vault)
            if cpu is not None and cpu < CPU_BOUND:
                found.append(
                    f"{vault} {workload} used {cpu:.0%} of its core at saturation: held back by something "
                    "else (the disk's syncs, wrk's core, other work on the machine): read its req/CPU-s"
                )
    return found


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f} ms"


def _row(f: Figures, workload: str, vault: str) -> list[str]:
    rps = f.rps(workload, vault)
    rounds = " ".join(f"{r.rps:,.0f}" for r, _ in f.saturation.get(workload, {}).get(vault, []))
    ratio = f.ratio(workload, vault, PEER)
    p50, p99 = f.saturation_latency(workload, vault)
    r50, r99 = f.paced_latency(workload, vault)
    cpu, per_k = f.cpu(workload, vault), f.cpu_per_thousand(workload, vault)
    rate = f.rates.get(workload)
    return [
        workload,
        vault,
        "—" if rps is None else f"{rps:,.0f}",
        rounds or "—",
        "—" if ratio is None else f"{ratio:.2f}x",
        _ms(p50),
        _ms(p99),
        "—" if cpu is None else f"{cpu:.0%}",
        "—" if rate is None else f"{rate:,.0f}/s",
        _ms(r50),
        _ms(r99),
        "—" if per_k is None else f"{per_k:.0%} of a core",
        str(f.errors(workload, vault)),
    ]


def table(f: Figures, workloads: tuple[str, ...]) -> list[str]:
    lines = ["| " + " | ".join(HEADINGS) + " |", "|---|---" + "|---:" * (len(HEADINGS) - 2) + "|"]
    for workload in workloads:
        if workload in f.skipped:
            lines.append(
                f"| {workload} | — | not measured: {f.skipped[workload]} |" + " |" * (len(HEADINGS) - 3)
            )
            continue
        for vault in (MINE, BASE, PEER):
            if vault in f.saturation.get(workload, {}):
                lines.append("| " + " | ".join(_row(f, workload, vault)) + " |")
    return lines


def render(
    f: Figures, now: datetime, info: dict[str, str], method: list[str], workloads: tuple[str, ...]
) -> list[str]:
    """The header (date, machine, tools, method, pinning), the table, memory, ratios, targets, failures."""
    tools = f"tools: OpenBao {info['openbao']}, wrk {info['wrk']}, garrison commit {info['commit']}"
    lines = header("Vault benchmark", f"{now:%Y-%m-%d %H:%M} UTC", info, tools, *method)
    lines += ["", *table(f, workloads), ""]
    memory = ", ".join(
        f"{vault} {now_mb:.1f} MB (peak {peak:.1f})" for vault, (now_mb, peak) in f.memory.items()
    )
    if memory:
        lines.append(f"RSS after the load: {memory}")
    lines += [f"ratio {name}: {value:.2f}x" for name, value in f.ratios().items()]
    lines += [f"note: {note}" for note in notes(f)]
    lines += [target_line(t) for t in targets(f)]
    return lines + [f"{name}: {failure}" for name, failure in f.failures.items()]


def markdown(lines: list[str]) -> list[str]:
    """The rendered lines as a RESULTS.md section: a heading, the rest a list, the table as is."""
    body = [line if not line or line.startswith("|") else f"- {line}" for line in lines[1:]]
    return [f"### {lines[0]}", "", *body]
