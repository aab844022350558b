"""Figures both benchmarks derive from wrk rounds: medians, requests per CPU-second, ratios, targets.

Plain data and plain functions: no processes, no output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import median
from typing import Protocol, TypedDict

from common.loadgen import WrkResult

CPU_BOUND = 0.9  # a server using less of its core than this under saturation was held back by the client


@dataclass(frozen=True)
class Timing:
    """How long a run measures: the first fields of either benchmark's Settings."""

    duration: int  # seconds per wrk run
    rounds: int
    warmup: int  # seconds of wrk per column (or provider and workload) before the measured rounds


@dataclass(frozen=True)
class Target:
    label: str
    passed: bool | None  # None: could not be evaluated in this run
    detail: str


class ThroughputFigures(TypedDict):
    """One server's saturation figures over the rounds, spread into a column's or a cell's summary.

    The summaries declare these fields again, among their own, so that the JSON keeps its key order.
    """

    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    rounds: list[float]
    cpu: float | None  # median share of one core the server's processes used under saturation
    rps_per_cpu: float | None  # median req/s per CPU-second of the server: its capacity if it had a core


class Throughput(Protocol):
    """A summary that carries ThroughputFigures as attributes."""

    @property
    def rps(self) -> float | None: ...
    @property
    def p50_ms(self) -> float | None: ...
    @property
    def p99_ms(self) -> float | None: ...
    @property
    def errors(self) -> int: ...
    @property
    def rounds(self) -> list[float]: ...
    @property
    def cpu(self) -> float | None: ...
    @property
    def rps_per_cpu(self) -> float | None: ...


def median_or_none(values: list[float]) -> float | None:
    return median(values) if values else None


def throughput_figures(results: Sequence[WrkResult], cpu: list[float]) -> ThroughputFigures:
    """Medians over the rounds, errors summed; cpu holds each round's share of a core."""
    return ThroughputFigures(
        rps=median_or_none([w.rps for w in results]),
        p50_ms=median_or_none([w.p50_ms for w in results]),
        p99_ms=median_or_none([w.p99_ms for w in results]),
        errors=sum(w.errors for w in results),
        rounds=[w.rps for w in results],
        cpu=median_or_none(cpu),
        rps_per_cpu=median_or_none([w.rps / c for w, c in zip(results, cpu, strict=True) if c]),
    )


def add_ratios(found: dict[str, float], key: str, mine: Throughput, other: Throughput) -> None:
    """found[key] = mine's median req/s over other's, and the same per CPU-second, where both are known."""
    if mine.rps and other.rps:
        found[key] = mine.rps / other.rps
    if mine.rps_per_cpu and other.rps_per_cpu:
        found[f"{key} per CPU-second"] = mine.rps_per_cpu / other.rps_per_cpu
