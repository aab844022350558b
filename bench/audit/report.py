"""The audit benchmark's figures: medians over the rounds, ratios to rsyslog, the targets, the table.

Plain data and plain functions: no processes.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from statistics import median
from typing import Any

from common import machine
from common.render import target_line
from common.results import Target

TARGET_RATE = 50_000.0  # events/s end to end on one core
TARGET_LATENCY = 1.0  # seconds from an event to its alert
COLUMNS = {
    "garrison": "garrison (Sigma on)",
    "garrison-nosigma": "garrison (no Sigma)",
    "rsyslog": "rsyslog (buffered)",
    "rsyslog-fsync": "rsyslog (fsync/batch)",
}
PEER = "rsyslog"


def progress(name: str, found: dict[str, Any]) -> str:
    per_cpu = found["per_cpu_second"]
    return (
        f"{COLUMNS.get(name, name):<22} {found['events_per_s']:>9,.0f} events/s  {found['seconds']:6.2f} s  "
        f"CPU {found['cpu_seconds']:6.2f} s  {per_cpu or 0:>9,.0f} events/CPU-s  dropped {found['dropped']}"
    ) + (f"  load core {found['load_cpu_share']:.0%}" if "load_cpu_share" in found else "")


def latency_line(latency: dict[str, Any]) -> str:
    if not latency.get("latencies_s"):
        return "alert latency: no alert matched a burst"
    each = " ".join(f"{value:.3f}" for value in latency["latencies_s"])
    return f"alert latency (s): {each}; {latency['alerts']} of {latency['bursts']} bursts alerted"


def summarize(rounds: dict[str, list[dict[str, Any]]], latency: dict[str, Any]) -> dict[str, Any]:
    columns = {}
    for name, found in rounds.items():
        per_cpu = [f["per_cpu_second"] for f in found if f["per_cpu_second"]]
        columns[name] = {
            "events_per_s": median(f["events_per_s"] for f in found),
            "rounds": [f["events_per_s"] for f in found],
            "cpu_share": median(f["cpu_seconds"] / f["seconds"] for f in found),
            "per_cpu_second": median(per_cpu) if per_cpu else None,
            "dropped": sum(f["dropped"] for f in found),
        }
    peer = columns.get(PEER)
    for column in columns.values():
        column["times_rsyslog"] = column["events_per_s"] / peer["events_per_s"] if peer else None
        both = peer and peer["per_cpu_second"] and column["per_cpu_second"]
        column["per_cpu_times_rsyslog"] = column["per_cpu_second"] / peer["per_cpu_second"] if both else None
    return {"columns": columns, "alert_p50_s": latency.get("p50_s"), "alert_max_s": latency.get("max_s")}


def targets(summary: dict[str, Any]) -> list[Target]:
    garrison = summary["columns"].get("garrison")
    rate = garrison["events_per_s"] if garrison else None
    worst = summary["alert_max_s"]
    return [
        Target(
            f"≥ {TARGET_RATE:,.0f} events/s end to end (Sigma on)",
            None if rate is None else rate >= TARGET_RATE,
            "not measured" if rate is None else f"{rate:,.0f} events/s",
        ),
        Target(
            f"alert latency ≤ {TARGET_LATENCY:.0f} s",
            None if worst is None else worst <= TARGET_LATENCY,
            "not measured" if worst is None else f"max {worst:.3f} s, p50 {summary['alert_p50_s']:.3f} s",
        ),
    ]


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| column | events/s | rounds | CPU | events/CPU-s | x rsyslog | x rsyslog per CPU-s | dropped |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, c in summary["columns"].items():
        rounds = " ".join(f"{r:,.0f}" for r in c["rounds"])
        per_cpu = "—" if c["per_cpu_second"] is None else f"{c['per_cpu_second']:,.0f}"
        lines.append(
            f"| {COLUMNS.get(name, name)} | {c['events_per_s']:,.0f} | {rounds} | {c['cpu_share']:.0%} "
            f"| {per_cpu} "
            f"| {_ratio(c['times_rsyslog'])} | {_ratio(c['per_cpu_times_rsyslog'])} | {c['dropped']} |"
        )
    return lines


def render(
    summary: dict[str, Any],
    now: datetime,
    info: dict[str, str],
    args: argparse.Namespace,
    pinning: str,
    load: tuple[tuple[float, ...], tuple[float, ...]],
    failures: dict[str, str],
) -> list[str]:
    tools = f"rsyslog {info['rsyslog']}; commit {info['commit']}"
    before, after = (" ".join(f"{v:.2f}" for v in avg) for avg in load)
    header = machine.header(
        "Audit",
        now.strftime("%Y-%m-%d %H:%M UTC"),
        info,
        tools,
        f"command: .venv/bin/python bench/audit/run.py --events {args.events} --rounds {args.rounds} "
        f"--emitters {args.emitters} --rate {args.rate} --bursts {args.bursts}",
        f"load average (1, 5, 15 min) before: {before}; after: {after}",
        "end to end: first emit -> log durable (fsync'd, chained) -> index written and detection run "
        f"(/metrics: staged = log entries); {args.emitters} AuditEmitters (TLS, emit token, batches of "
        "1,000) from one load process; the mix: 88 % gateway http.request, then sign-ins, tokens, mesh, "
        "vault",
        "peer: Vector and Fluent Bit do not install here (not in Debian's packages on this machine, not "
        "on PyPI or npm): rsyslog instead, imptcp on loopback (no TLS, no auth, no parsing: %rawmsg% "
        f"written as received), {args.emitters} TCP connections; buffered (asyncWriting, no fsync) and "
        "fsync'd per batch (flushOnTXEnd + sync)",
        "alert latency: alert's time (collector clock when raised) minus its latest triggering event's "
        f"(emit time); bursts of 25 failed sign-ins from a fresh address under {args.rate:,} events/s; "
        "includes the emitter's 0.2 s flush interval",
        pinning + " (and the run's /metrics polling, every 50 ms)",
    )
    lines = [*header, "", *table(summary), ""]
    lines += [target_line(t) for t in targets(summary)]
    lines += [f"{name}: {why}" for name, why in failures.items()]
    return lines


def markdown(lines: list[str]) -> list[str]:
    """The rendered lines as a RESULTS.md section: a heading, the rest a list, the table as is."""
    body = [line if not line or line.startswith("|") else f"- {line}" for line in lines[1:]]
    return [f"### {lines[0]}", "", *body]
