"""Mesh benchmark: one service-to-service hop through a Garrison sidecar pair and through an nginx mTLS pair.

Three columns end at the same app (nginx, ``return 200``), measured in ONE invocation in interleaved
rounds (direct, nginx-pair, sidecar-pair, direct, ...), so machine noise hits every column alike:

- `direct`: the app itself;
- `nginx-pair`: client -> nginx -> mTLS -> nginx -> app;
- `sidecar-pair`: client -> orders' sidecar outbound -> mTLS -> payments' sidecar inbound -> app.

Certificates are made at run time with garrison.pki.authority. See bench/README.md ("Mesh").

    .venv/bin/python bench/mesh/run.py [--quick] [--rate 1000] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

# Run as a script, Python puts bench/mesh/ on sys.path, not bench/: add bench/ so that the shared code
# imports as `common` and the gateway benchmark's load generators as `gateway.loadgen`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import servers
from certs import make_certificates
from common import cli, machine
from common.loadgen import LoadError, WrkResult, run_paced
from common.memory import group_memory_mb
from common.processes import ServerDied, StartError, still_alive
from common.render import say
from gateway.loadgen import run_wrk
from report import Figures
from rich.console import Console
from servers import Column, Pinning

T = TypeVar("T")

TOOLS = ("wrk", "nginx")
APT_COMMAND = "apt-get install -y wrk nginx-light"

Measure = Callable[[Column], str]  # runs one measurement of a column, stores it, returns a progress line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    cli.add_timing_arguments(parser, "seconds of wrk per column before round 1")
    parser.set_defaults(duration=8)
    parser.add_argument("--rate", type=int, default=1000, help="req/s of the latency runs (default 1000)")
    parser.add_argument("--quick", action="store_true", help="3 s x 1 round, 1 s warm-up")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    cli.add_output_arguments(parser, "mesh")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 3, 1, 1
    if min(args.duration, args.rounds, args.rate) < 1 or args.warmup < 0:
        parser.error(cli.LIMITS + ", --rate at least 1")
    return args


def cpu_seconds(column: Column) -> float:
    """CPU time used so far by every process serving the column's hop (both proxies of a pair)."""
    return sum(server.cpu_seconds() for server in column.servers)


def with_pair_cpu(column: Column, load: Callable[[], T]) -> tuple[T, float | None]:
    """load()'s result and the share of one core the column's proxies used meanwhile (None: direct)."""
    before, started = cpu_seconds(column), time.monotonic()
    result = load()
    for server in column.servers:
        still_alive(server)  # figures measured against a dying process are not kept
    if not column.servers:
        return result, None
    return result, (cpu_seconds(column) - before) / (time.monotonic() - started)


def start_columns(stack: ExitStack, tmp: Path, pin: Pinning, figures: Figures) -> list[Column]:
    """The app (`direct`) and both pairs in front of it; a pair that does not start is a failure."""
    make_certificates(tmp / "certs")
    direct = servers.start_app(stack, tmp, pin)
    app = servers.app_port(direct)
    starters: dict[str, Callable[[], Column]] = {
        "nginx-pair": lambda: servers.start_nginx_pair(stack, tmp, tmp / "certs", pin, app),
        "sidecar-pair": lambda: servers.start_sidecar_pair(stack, tmp, pin, app),
    }
    columns = [direct]
    for name, start in starters.items():
        try:
            columns.append(start())
        except StartError as exc:
            figures.failures[name] = f"failed to start: {exc}"
    return columns


def measurements(args: argparse.Namespace, pin: Pinning, figures: Figures) -> list[tuple[str, int, Measure]]:
    """(phase, rounds, measure) in order: warm-up, saturation throughput, latency at the fixed rate."""

    def warm_up(column: Column) -> str:
        run_wrk(column.target, args.warmup, pin.client())
        return ""

    def saturate(column: Column) -> str:
        result, cpu = with_pair_cpu(column, lambda: run_wrk(column.target, args.duration, pin.client()))
        figures.add_wrk(column.name, result, cpu)
        return f"{column.name:<13} wrk {result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms"

    def at_rate(column: Column) -> str:
        def paced() -> WrkResult:
            return run_paced(column.address, column.path, args.duration, args.rate, pin.client())

        result, cpu = with_pair_cpu(column, paced)
        figures.add_paced(column.name, result, cpu)
        return (
            f"{column.name:<13} paced {result.rps:>7,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"p99 {result.p99_ms:6.2f} ms"
        )

    warm = [("warm-up", 1, warm_up)] if args.warmup else []
    return [*warm, ("throughput", args.rounds, saturate), ("latency", args.rounds, at_rate)]


def measure(
    columns: list[Column], phases: list[tuple[str, int, Measure]], figures: Figures, out: Console
) -> None:
    """Every phase in interleaved rounds; a column whose load or process fails drops out of the run."""
    live = list(columns)
    for phase, rounds, run in phases:
        for number in range(1, rounds + 1):
            say(out, f"-- {phase} round {number}/{rounds}")
            for column in list(live):
                try:
                    line = run(column)
                except (LoadError, ServerDied) as exc:
                    figures.failures[column.name] = str(exc)
                    live.remove(column)
                    continue
                if line:
                    say(out, line)
    for column in live:  # after the load: what each proxy holds once it has served it
        figures.memory[column.name] = {s.name: group_memory_mb(s.proc.pid) for s in column.servers}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(TOOLS, APT_COMMAND):
        return 2
    cli.exit_on_sigterm()
    out = cli.console(140)
    pin = Pinning.if_possible(args.pin)
    now = datetime.now(UTC)
    tools = {"nginx": machine.command_output(["nginx", "-v"]), "wrk": machine.wrk_version()}
    info = machine.info(tools)
    figures = Figures(rate=args.rate)
    with tempfile.TemporaryDirectory(prefix="garrison-bench-mesh-") as tmp, ExitStack() as stack:
        columns = start_columns(stack, Path(tmp), pin, figures)
        measure(columns, measurements(args, pin, figures), figures, out)
    lines = report.render(figures, now, info, args, pin.describe(args.pin))
    out.file.flush()
    print("\n".join(lines), flush=True)  # not through rich: table rows must not wrap
    if args.markdown:
        print("\n" + "\n".join(report.markdown(lines)), flush=True)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    cli.write_results(out, args.json, "mesh", now, figures.to_json(info, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
