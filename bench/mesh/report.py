"""The mesh benchmark's figures: medians per column, what each hop adds, targets, text and markdown."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from datetime import datetime
from statistics import median

from common.loadgen import WrkResult
from common.machine import header
from common.render import target_line
from common.results import Target

COLUMNS = ("direct", "nginx-pair", "sidecar-pair")
SIDECAR = "sidecar-pair"
ADDED_P50_MS, ADDED_P99_MS, TIMES_NGINX, SIDECAR_RSS_MB = 0.5, 2.0, 0.5, 40.0
HEADINGS = (
    "column",
    "req/s at saturation",
    "pair CPU at saturation",
    "p50 @rate",
    "p99 @rate",
    "added p50",
    "added p99",
    "CPU per 1k req/s",
    "RSS MB per process (peak)",
    "errors",
)


def _median(values: list[float]) -> float | None:
    return median(values) if values else None


@dataclass
class Figures:
    """Everything measured, per column: saturation and fixed-rate runs (wrk) with the proxies' CPU share,
    and memory."""

    rate: int
    wrk: dict[str, list[tuple[WrkResult, float | None]]] = field(default_factory=dict)
    paced: dict[str, list[tuple[WrkResult, float | None]]] = field(default_factory=dict)
    memory: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # (RSS, peak) MB
    failures: dict[str, str] = field(default_factory=dict)

    def add_wrk(self, name: str, result: WrkResult, cpu: float | None) -> None:
        self.wrk.setdefault(name, []).append((result, cpu))

    def add_paced(self, name: str, result: WrkResult, cpu: float | None) -> None:
        self.paced.setdefault(name, []).append((result, cpu))

    def rps(self, name: str) -> float | None:
        return _median([r.rps for r, _ in self.wrk.get(name, [])])

    def saturation_cpu(self, name: str) -> float | None:
        return _median([c for _, c in self.wrk.get(name, []) if c is not None])

    def latency(self, name: str) -> tuple[float | None, float | None]:
        runs = self.paced.get(name, [])
        return _median([r.p50_ms for r, _ in runs]), _median([r.p99_ms for r, _ in runs])

    def added(self, name: str) -> tuple[float | None, float | None]:
        """The column's median p50 and p99 at the fixed rate minus the direct column's."""
        (p50, p99), (d50, d99) = self.latency(name), self.latency("direct")
        return (
            None if p50 is None or d50 is None else p50 - d50,
            None if p99 is None or d99 is None else p99 - d99,
        )

    def cpu_per_thousand(self, name: str) -> float | None:
        """Share of one core the pair used per 1,000 req/s served at the fixed rate."""
        runs = self.paced.get(name, [])
        return _median([c * 1000 / r.rps for r, c in runs if c is not None and r.rps])

    def errors(self, name: str) -> int:
        wrk = sum(r.errors for r, _ in self.wrk.get(name, []))
        return wrk + sum(r.errors for r, _ in self.paced.get(name, []))

    def to_json(self, info: dict[str, str], settings: dict[str, object]) -> dict[str, object]:
        return {
            "machine": info,
            "settings": settings,
            "wrk": {n: [{**vars(r), "cpu": c} for r, c in runs] for n, runs in self.wrk.items()},
            "paced": {n: [{**vars(r), "cpu": c} for r, c in runs] for n, runs in self.paced.items()},
            "memory_mb": self.memory,
            "failures": self.failures,
        }


def _ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+.2f} ms" if signed else f"{value:.2f} ms"


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%} of a core"


def _at_most(label: str, value: float | None, limit: float, errors: int, unit: str = " ms") -> Target:
    """value <= limit, and no errors in the column; n/a when not measured."""
    if value is None:
        return Target(label, None, "not measured")
    detail = f"{value:.2f}{unit}" + (f" ({errors} errors)" if errors else "")
    return Target(label, value <= limit and not errors, detail)


def targets(f: Figures) -> list[Target]:
    """The issue's targets for the sidecar pair (PASS/FAIL printed, never asserted)."""
    errors = f.errors(SIDECAR)
    added50, added99 = f.added(SIDECAR)
    mine, nginx = f.rps(SIDECAR), f.rps("nginx-pair")
    found = [
        _at_most(f"added p50 <= {ADDED_P50_MS} ms at {f.rate} req/s", added50, ADDED_P50_MS, errors),
        _at_most(f"added p99 <= {ADDED_P99_MS} ms at {f.rate} req/s", added99, ADDED_P99_MS, errors),
    ]
    label = f"throughput >= {TIMES_NGINX}x the nginx pair"
    if mine and nginx:
        found.append(Target(label, mine / nginx >= TIMES_NGINX and not errors, f"{mine / nginx:.2f}x"))
    else:
        found.append(Target(label, None, "not measured"))
    rss = [current for current, _ in f.memory.get(SIDECAR, {}).values()]
    label = f"<= {SIDECAR_RSS_MB:.0f} MB RSS per sidecar"
    found.append(_at_most(label, max(rss) if rss else None, SIDECAR_RSS_MB, 0, " MB (the larger)"))
    return found


def _row(f: Figures, name: str) -> list[str]:
    if name not in f.wrk and name not in f.paced:
        return [name, f.failures.get(name, "not measured"), *[""] * (len(HEADINGS) - 2)]
    rps = f.rps(name)
    p50, p99 = f.latency(name)
    a50, a99 = f.added(name) if name != "direct" else (None, None)
    memory = ", ".join(f"{server} {now:.1f} ({peak:.1f})" for server, (now, peak) in f.memory[name].items())
    return [
        name,
        "—" if rps is None else f"{rps:,.0f}",
        _share(f.saturation_cpu(name)),
        _ms(p50),
        _ms(p99),
        _ms(a50, True),
        _ms(a99, True),
        _share(f.cpu_per_thousand(name)),
        memory or "—",
        str(f.errors(name)),
    ]


def table(f: Figures) -> list[str]:
    """The columns as a markdown table (readable as text too)."""
    lines = ["| " + " | ".join(HEADINGS) + " |", "|---" + "|---:" * (len(HEADINGS) - 3) + "|---|---:|"]
    return lines + ["| " + " | ".join(_row(f, name)) + " |" for name in COLUMNS]


def render(
    f: Figures, now: datetime, info: dict[str, str], args: argparse.Namespace, pinning: str
) -> list[str]:
    """The header (date, machine, tools, method, pinning), the table, the targets and any failure."""
    method = (
        f"method: {args.rounds} interleaved round(s) per phase; saturation: wrk -t1 -c50 for "
        f"{args.duration} s per column; latency: wrk -t1 -c50 with independent "
        f"(exponential) waits, about {f.rate} req/s, {args.duration} s per column; "
        f"{args.warmup} s of wrk per column to warm up"
    )
    tools = f"tools: {info['nginx']}, wrk {info['wrk']}, commit {info['commit']}"
    lines = header("Mesh benchmark", f"{now:%Y-%m-%d %H:%M} UTC", info, tools, method, pinning)
    lines += ["", *table(f), ""]
    lines += [target_line(t) for t in targets(f)]
    return lines + [f"{name}: {failure}" for name, failure in f.failures.items()]


def markdown(lines: list[str]) -> list[str]:
    """The rendered lines as a RESULTS.md section: a heading, the header as a list, the table as is."""
    body = [line if not line or line.startswith("|") else f"- {line}" for line in lines[1:]]
    return [f"### {lines[0]}", "", *body]
