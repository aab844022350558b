"""Audit benchmark: events/s end to end through `garrison audit serve`, and the time from an event to its
alert; rsyslog forwarding the same JSON lines to a file in the same run.

End to end: from the first emit until the collector's log holds all N events (durable: fsync'd,
hash-chained) and the index and detection have been handed every entry (its /metrics:
``garrison_audit_staged_entries`` = ``garrison_audit_log_entries``). The load is load.py on the load
core: ``--emitters`` real AuditEmitters (TLS, emit token, batches of 1,000) delivering the mix of
mix.py (88 % gateway ``http.request``). Two Garrison columns: the default detection with the shipped
Sigma rules, and without them (``detection.sigma_builtin: false``). Events per collector CPU-second
is what one core would do if the collector had it alone.

Alert latency: on the Sigma collector, a background of ``--rate`` events/s while bursts of 25 failed
sign-ins from one fresh address each (over brute_force_ip's threshold of 20) go through an emitter;
the latency is the ``audit.alert``'s time (the collector's clock when raised) minus the time of the
latest triggering event (stamped when emitted): it includes the emitter's batching wait (flush_interval
0.2 s).

The peer: Vector and Fluent Bit do not install here (neither Debian's packages on this machine nor PyPI
or npm carry them), so rsyslog does (Debian): imptcp on loopback (no TLS), each line written as
received to one file; buffered (asyncWriting), and fsync'd per batch (flushOnTXEnd + sync).

    .venv/bin/python bench/audit/run.py [--quick] [--events 100000] [--rounds 2] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import servers
from common import cli, machine
from common.processes import Pinning, StartError, still_alive
from common.render import say
from servers import Collector, Rsyslog

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
TIMEOUT = 150.0  # seconds for one load to get through
POLL = 0.05  # seconds between two reads of the collector's /metrics
APT_COMMAND = "apt-get install -y rsyslog"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events per round (default 100,000)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument("--emitters", type=int, default=4, help="emitters (connections) of the load")
    parser.add_argument("--rate", type=int, default=2000, help="background events/s under the bursts")
    parser.add_argument("--bursts", type=int, default=5, help="bursts of failed sign-ins (0: no alerts)")
    parser.add_argument("--quick", action="store_true", help="20,000 events, 1 round, 3 bursts")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    cli.add_output_arguments(parser, "audit")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.rounds, args.bursts = 20_000, 1, 3
    if min(args.events, args.rounds, args.emitters, args.rate) < 1 or args.bursts < 0:
        parser.error("--events, --rounds, --emitters and --rate must be at least 1, --bursts at least 0")
    return args


def load(pin: Pinning, *argv: str) -> subprocess.Popen[bytes]:
    """load.py on the load core; its one line of JSON comes on stdout (``finish``)."""
    return subprocess.Popen([*pin.client(), PYTHON, str(HERE / "load.py"), *argv], stdout=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Wait for a load process and read what it reports."""
    out, _ = proc.communicate(timeout=TIMEOUT)
    if proc.returncode != 0:
        raise StartError(f"load exited with status {proc.returncode}")
    result: dict[str, Any] = json.loads(out)
    return result


def through_collector(
    collector: Collector, args: argparse.Namespace, pin: Pinning, seed: int
) -> dict[str, Any]:
    """One round: N events from the first emit until logged and through the stages."""
    before = collector.metrics()
    cpu = collector.server.cpu_seconds()
    proc = load(
        pin,
        "emit",
        "--config",
        str(collector.emitter_config),
        "--events",
        str(args.events),
        "--emitters",
        str(args.emitters),
        "--seed",
        str(seed),
    )
    deadline = time.monotonic() + TIMEOUT
    while True:
        still_alive(collector.server)
        now = collector.metrics()
        if now["emitted"] - before["emitted"] >= args.events and now["staged"] >= now["entries"]:
            done = time.time()
            break
        if time.monotonic() > deadline or proc.poll() not in (None, 0):
            proc.kill()
            raise StartError(
                f"{collector.name}: {now['emitted'] - before['emitted']:.0f} of {args.events} logged"
            )
        time.sleep(POLL)
    cpu = collector.server.cpu_seconds() - cpu
    sent = finish(proc)
    seconds = done - sent["start"]
    return {
        "events_per_s": args.events / seconds,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "per_cpu_second": args.events / cpu if cpu else None,
        "dropped": sent["dropped"],
        "load_cpu_share": sent["load_cpu_seconds"] / (sent["delivered_at"] - sent["start"]),
        "alerts": now["alerts"] - before["alerts"],
    }


def through_rsyslog(peer: Rsyslog, args: argparse.Namespace, pin: Pinning, seed: int) -> dict[str, Any]:
    """One round: the same lines over TCP until the file holds every byte."""
    before, cpu = peer.bytes_written(), peer.server.cpu_seconds()
    proc = load(
        pin,
        "tcp",
        "--port",
        str(peer.port),
        "--events",
        str(args.events),
        "--connections",
        str(args.emitters),
        "--seed",
        str(seed),
    )
    sent = finish(proc)
    deadline = time.monotonic() + TIMEOUT
    while peer.bytes_written() - before < sent["bytes"]:
        still_alive(peer.server)
        if time.monotonic() > deadline:
            raise StartError(f"{peer.name}: {peer.bytes_written() - before} of {sent['bytes']} bytes written")
        time.sleep(0.005)
    done = time.time()
    cpu = peer.server.cpu_seconds() - cpu
    seconds = done - sent["start"]
    return {
        "events_per_s": args.events / seconds,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "per_cpu_second": args.events / cpu if cpu else None,
        "dropped": 0,
        "alerts": 0,
    }


def alert_latency(collector: Collector, args: argparse.Namespace, pin: Pinning) -> dict[str, Any]:
    """Bursts of failed sign-ins under a background load; each burst's alert time minus its trigger's."""
    every = 3.0
    proc = load(
        pin,
        "alerts",
        "--config",
        str(collector.emitter_config),
        "--rate",
        str(args.rate),
        "--seconds",
        str(every * args.bursts),
        "--every",
        str(every),
        "--seed",
        "99",
    )
    sent = finish(proc)
    deadline = time.monotonic() + 10
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = collector.alerts("brute_force_ip")
        if len(alerts) >= len(sent["bursts"]):
            break
        time.sleep(0.2)
    latencies = []
    for burst in sent["bursts"]:
        for alert in alerts:
            ids = [i for i in alert["details"]["event_ids"] if i in burst["times"]]
            if ids:
                raised = datetime.fromisoformat(alert["time"]).timestamp()
                latencies.append(raised - max(burst["times"][i] for i in ids))
                break
    return {
        "bursts": len(sent["bursts"]),
        "alerts": len(latencies),
        "latencies_s": latencies,
        "p50_s": median(latencies) if latencies else None,
        "max_s": max(latencies) if latencies else None,
    }


def start_all(
    stack: ExitStack, tmp: Path, pin: Pinning, failures: dict[str, str]
) -> list[Collector | Rsyslog]:
    starters = [
        ("garrison", lambda: servers.start_collector(stack, tmp, pin.server(), "garrison", True)),
        (
            "garrison-nosigma",
            lambda: servers.start_collector(stack, tmp, pin.server(), "garrison-nosigma", False),
        ),
        ("rsyslog", lambda: servers.start_rsyslog(stack, tmp, pin.server(), "rsyslog", False)),
        ("rsyslog-fsync", lambda: servers.start_rsyslog(stack, tmp, pin.server(), "rsyslog-fsync", True)),
    ]
    started: list[Collector | Rsyslog] = []
    for name, start in starters:
        try:
            started.append(start())
        except (StartError, OSError) as exc:
            failures[name] = f"failed to start: {exc}"
    return started


def measure(
    args: argparse.Namespace, pin: Pinning, out: Any
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any], dict[str, str]]:
    failures: dict[str, str] = {}
    rounds: dict[str, list[dict[str, Any]]] = {}
    latency: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="garrison-bench-audit-") as tmp, ExitStack() as stack:
        live = start_all(stack, Path(tmp), pin, failures)
        for number in range(1, args.rounds + 1):
            say(out, f"-- round {number}/{args.rounds} ({args.events:,} events each)")
            for target in list(live):
                try:
                    if isinstance(target, Collector):
                        found = through_collector(target, args, pin, number)
                    else:
                        found = through_rsyslog(target, args, pin, number)
                except (StartError, subprocess.TimeoutExpired) as exc:
                    failures[target.name] = str(exc)
                    live.remove(target)
                    continue
                rounds.setdefault(target.name, []).append(found)
                say(out, report.progress(target.name, found))
        sigma = next((t for t in live if isinstance(t, Collector) and t.name == "garrison"), None)
        if args.bursts and sigma is not None:
            say(out, f"-- alert latency: {args.bursts} bursts under {args.rate:,} events/s")
            try:
                latency = alert_latency(sigma, args, pin)
            except (StartError, subprocess.TimeoutExpired) as exc:
                failures["alert latency"] = str(exc)
            say(out, report.latency_line(latency))
    return rounds, latency, failures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(("rsyslogd",), APT_COMMAND):
        return 2
    cli.exit_on_sigterm()
    out = cli.console(160)
    pin = Pinning.if_possible(args.pin)
    now = datetime.now(UTC)
    load_before = os.getloadavg()
    info = machine.info({"rsyslog": servers.rsyslog_version()})
    rounds, latency, failures = measure(args, pin, out)
    load_after = os.getloadavg()
    summary = report.summarize(rounds, latency)
    lines = report.render(
        summary, now, info, args, pin.describe(args.pin), (load_before, load_after), failures
    )
    out.file.flush()
    print("\n".join(lines), flush=True)
    if args.markdown:
        print("\n" + "\n".join(report.markdown(lines)), flush=True)
    document = {
        "date": now.isoformat(),
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "load_average": {"before": load_before, "after": load_after},
        "summary": summary,
        "raw": {"rounds": rounds, "latency": latency},
        "failures": failures,
    }
    cli.write_results(out, args.json, "audit", now, document)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
