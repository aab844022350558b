"""Gateway benchmark: nginx, a bare and an aiohttp Python proxy and Garrison, in front of the same upstream.

Garrison runs as several columns: plain (`garrison`), with the full security chain (`garrison-chain`:
IP rules, JWT, rate limit), with a Redis-backed rate limit (`garrison-redis`), on its pure-Python path
(`garrison-pure`). All columns run in ONE invocation and are measured in interleaved rounds (direct,
nginx, aiohttp, garrison, ..., direct, nginx, ...), so machine noise hits every column alike. Two
sections follow, each against its own nginx and with shorter rounds: TLS termination (keep-alive, and
a new connection per request) and `workers: 2` on both cores. See bench/README.md.

    .venv/bin/python bench/gateway/run.py [--quick] [--only nginx,garrison,garrison-chain] [--markdown]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

# Run as a script, Python puts bench/gateway/ on sys.path, not bench/: add bench/ so that the code this
# benchmark shares with bench/identity/ imports as the package `common` (bench/common/).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import servers
from common import cli
from common.loadgen import LoadError, run_paced
from common.processes import (
    ServerDied,
    StartError,
    Unavailable,
    still_alive,
    tcp_passive_opens,
    with_cpu_share,
)
from common.render import progress_line, say, to_json
from issuer import Issuer
from loadgen import LoadShape, run_load
from results import (
    BASELINES,
    COLUMNS,
    DIRECT,
    SCALING,
    SECTIONS,
    TLS_FULL,
    TLS_NEW,
    Column,
    Run,
    Settings,
    fixed_rate_basis,
    summarize,
)
from rich.console import Console
from servers import Pinning, Server
from tls import TlsFiles, closes_after_answer, make_certificate, negotiated, resumes

TOOLS = ("wrk", "nginx", "hey")
APT_COMMAND = "apt-get install -y wrk nginx-light hey"

Measure = Callable[[str, Server], str]  # runs one measurement, stores it, returns a progress line
NAME_WIDTH = max(len(name) for name in COLUMNS + BASELINES)
UNPINNED = Pinning(False)
SCALING_SHAPE = LoadShape(threads=2, connections=100)  # two workers: a wrk thread and 50 connections each
TLS_SHAPE = LoadShape(scheme="https")
FULL_HANDSHAKES = LoadShape(scheme="https", full_handshakes=True)  # hey -c 50 -disable-keepalive
SECTION_WARMUP = 1  # seconds at most of warm-up per column in the TLS and scaling sections
CLOSE = {"Connection": "close"}  # wrk then opens a new connection (a new TLS handshake) per request


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    cli.add_timing_arguments(parser, "seconds of wrk per column before round 1")
    parser.add_argument(
        "--latency-duration", type=int, help="seconds per paced wrk run (default: --duration)"
    )
    cli.add_selection_arguments(parser, COLUMNS, "proxies")
    parser.add_argument(
        "--section-duration",
        type=int,
        default=4,
        help="seconds per wrk run in the TLS and workers: 2 sections (default 4; --quick: 2); their "
        "warm-up is at most 1 s per column",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    parser.add_argument("--aiohttp-loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (with its own .venv) whose Garrison runs as extra columns garrison@base "
        "and garrison-chain@base in the same interleaved rounds: before/after a change in one run",
    )
    cli.add_output_arguments(parser, "gateway")
    args = parser.parse_args(argv)
    if args.baseline is not None and args.only == ",".join(COLUMNS):
        args.only += "," + ",".join(BASELINES)  # the default selection, plus the baseline's columns
    quick, valid = args.quick, args.section_duration >= 1
    cli.settle_arguments(parser, args, COLUMNS + BASELINES if args.baseline else COLUMNS, valid)
    if quick:
        args.section_duration = 2
    return args


def make_settings(args: argparse.Namespace, pin: Pinning) -> Settings:
    columns = [name for name in COLUMNS + BASELINES if name in args.only]
    pinning = pin.describe(args.pin)
    if any(name in SECTIONS["tls"] for name in columns):
        pinning += "; the TLS columns are placed as the main ones"
    if any(name in SCALING for name in columns):
        pinning += (
            "; nginx-w2 and garrison-w2 NOT pinned: each proxy (2 workers), wrk -t2 and a 2-worker upstream "
            "share both cores (only 2 here), so no column has a core to itself"
        )
    return Settings(
        duration=args.duration,
        rounds=args.rounds,
        warmup=args.warmup,
        latency_seconds=args.latency_duration or args.duration,
        columns=[DIRECT, *columns],
        pinning=pinning,
        aiohttp_loop=args.aiohttp_loop,
        baseline=str(args.baseline.resolve()) if args.baseline else None,
        section_duration=args.section_duration,
    )


def start_section_proxy(
    name: str, tmp: Path, pin: Pinning, upstream_port: int, tls: TlsFiles | None
) -> Server:
    """A column of the TLS or the scaling section, with how wrk loads it."""
    if name in SCALING:
        if name == "nginx-w2":
            server = servers.start_nginx_proxy(tmp, UNPINNED, upstream_port, name, workers=2)
        else:
            server = servers.start_garrison(tmp, UNPINNED, upstream_port, servers.WORKERS_2)
        server.shape = SCALING_SHAPE
        return server
    assert tls is not None
    if name.startswith("nginx"):
        server = servers.start_nginx_tls(tmp, pin, upstream_port, name, tls)
    else:
        server = servers.start_garrison(tmp, pin, upstream_port, servers.tls_variant(name, tls))
    server.shape = FULL_HANDSHAKES if name in TLS_FULL else TLS_SHAPE
    if name in TLS_NEW:
        server.headers = dict(CLOSE)
        refusal = closes_after_answer(server.address, tls.ca, CLOSE)
        if refusal is not None:
            server.stop()
            raise StartError(
                f"asked for Connection: close, it {refusal}: wrk would not reconnect per request"
            )
    return server


def start_proxy(
    name: str, stack: ExitStack, tmp: Path, pin: Pinning, upstream_port: int, settings: Settings
) -> Server:
    loop = settings.aiohttp_loop
    if name.endswith("@base") and settings.baseline:
        plain = name == "garrison@base"
        variant = servers.PLAIN if plain else servers.chain_variant(stack.enter_context(Issuer()))
        baseline = servers.as_baseline(variant, Path(settings.baseline))
        return servers.start_garrison(tmp, pin, upstream_port, baseline)
    if name == "nginx":
        return servers.start_nginx_proxy(tmp, pin, upstream_port)
    if name == "bare":
        return servers.start_bare(tmp, pin, upstream_port)
    if name == "aiohttp":
        return servers.start_aiohttp(tmp, pin, upstream_port, loop)
    if name == "garrison-chain":
        issuer = stack.enter_context(Issuer())  # serves the JWKS until the run ends
        return servers.start_garrison(tmp, pin, upstream_port, servers.chain_variant(issuer))
    if name == "garrison-redis":
        servers.check_redis()
        return servers.start_garrison(tmp, pin, upstream_port, servers.redis_variant())
    if name == "garrison-pure":
        return servers.start_garrison(tmp, pin, upstream_port, servers.PURE)
    return servers.start_garrison(tmp, pin, upstream_port)


def port_of(server: Server) -> int:
    return int(server.address.rsplit(":", 1)[1])


def start_all(
    stack: ExitStack,
    tmp: Path,
    pin: Pinning,
    settings: Settings,
    run: Run,
    names: list[str],
    upstream: Server,
) -> dict[str, Server]:
    """Each proxy of `names` in front of upstream (a failure only drops that column)."""
    live: dict[str, Server] = {}
    tls: TlsFiles | None = None
    for name in names:
        try:
            if name in SECTIONS["tls"]:
                tls = tls or make_certificate(tmp / "tls")
            if name in SCALING or name in SECTIONS["tls"]:
                started = start_section_proxy(name, tmp, pin, port_of(upstream), tls)
            else:
                started = start_proxy(name, stack, tmp, pin, port_of(upstream), settings)
            live[name] = stack.enter_context(started)
        except Unavailable as exc:
            run.columns[name].failure = f"skipped: {exc}"
            print(f"{name}: skipped: {exc}", flush=True)
            continue
        except StartError as exc:
            run.columns[name].failure = f"failed to start: {exc}"
            print(f"{name}: failed to start: {exc}", flush=True)
            continue
        if "Authorization" in live[name].headers:
            print(f"{name}: GET / with the bench token: 200; without it: 401", flush=True)
        if tls is not None and live[name].ca is not None:
            run.tls[name] = describe_tls(live[name].address, tls.ca)
            print(f"{name}: TLS {run.tls[name]}", flush=True)
    return live


def describe_tls(address: str, ca: Path) -> str:
    """What a fresh connection negotiates, and whether a reconnect resumes the session (as wrk's do)."""
    try:
        again = "yes" if resumes(address, ca) else "no"
    except OSError as exc:
        again = f"unknown ({exc})"
    return f"{negotiated(address, ca)}; resumes a session offered again: {again}"


def interleave(console: Console, run: Run, live: dict[str, Server], rounds: int, measure: Measure) -> None:
    """Rounds of one measurement per column, in column order; a column that breaks leaves the rounds."""
    for number in range(1, rounds + 1):
        for name, server in live.items():
            column = run.columns[name]
            if column.failure:
                continue
            try:
                line = measure(name, server)
            except ServerDied as exc:
                column.failure = str(exc)
                line = f"{name}: died; this round's figures are dropped"
            except LoadError as exc:
                column.failure = f"measurement failed: {exc}"
                line = f"{name}: measurement failed"
            say(console, f"  round {number}/{rounds}  {line}")


def client(name: str, pin: Pinning) -> list[str]:
    """wrk's placement: with the upstream on core 1, or anywhere for the unpinned scaling columns."""
    return UNPINNED.client() if name in SCALING else pin.client()


def warm_up(console: Console, run: Run, live: dict[str, Server], seconds: int, pin: Pinning) -> None:
    if seconds:
        console.print(f"warm-up: {seconds} s of wrk per column", highlight=False)

        def measure(name: str, server: Server) -> str:
            result = run_load(server.address, seconds, client(name, pin), server.headers, server.shape)
            still_alive(server)
            return f"{name:<{NAME_WIDTH}} warm-up {result.rps:>9,.0f} req/s"

        interleave(console, run, live, 1, measure)


def measure_throughput(
    console: Console, run: Run, live: dict[str, Server], settings: Settings, pin: Pinning, seconds: int
) -> None:
    console.print(f"throughput: wrk for {seconds} s per column per round", highlight=False)

    def measure(name: str, server: Server) -> str:
        measured = (server.address, seconds, client(name, pin), server.headers, server.shape)
        opens = tcp_passive_opens()
        result, cpu = with_cpu_share(server, run_load, *measured)
        still_alive(server)
        run.columns[name].throughput.append(result)
        run.columns[name].cpu.append(cpu)
        opened = tcp_passive_opens()
        if opens is not None and opened is not None and result.requests:
            run.columns[name].connections.append((opened - opens) / result.requests)
        return progress_line(name, NAME_WIDTH, result, result.errors, cpu)

    interleave(console, run, live, settings.rounds, measure)


def measure_latency(
    console: Console, run: Run, live: dict[str, Server], settings: Settings, pin: Pinning
) -> None:
    basis = fixed_rate_basis(run)
    if basis is None:
        console.print("latency at a fixed rate: skipped (no proxy saturation rate to base it on)")
        return
    run.rate_basis, run.target_rps = basis
    console.print(
        f"latency: paced wrk (independent arrivals) at {run.target_rps:,.0f} req/s "
        f"(¼ of {run.rate_basis}'s median) "
        f"for {settings.latency_seconds} s per column per round",
        highlight=False,
    )
    rate = run.target_rps

    def measure(name: str, server: Server) -> str:
        result = run_paced(server.address, "/", settings.latency_seconds, rate, pin.client(), server.headers)
        still_alive(server)
        run.columns[name].latency.append(result)
        return progress_line(name, NAME_WIDTH, result, result.errors + result.non_2xx)

    interleave(console, run, live, settings.rounds, measure)


def own_dir(tmp: Path) -> Path:
    """The scaling section's upstream's directory: its config, pid file and logs apart from the first's."""
    directory = tmp / "scaling"
    directory.mkdir()
    return directory


def measure_all(console: Console, run: Run, settings: Settings, pin: Pinning) -> None:
    """The main columns (with the pinned upstream as `direct`), then the TLS section against the same
    upstream, then the scaling section against an unpinned two-worker upstream of its own; each
    section's servers are stopped before the next one starts."""
    tls, scaling = SECTIONS["tls"], SECTIONS["scaling"]
    main = [name for name in settings.columns[1:] if name not in tls + scaling]
    with tempfile.TemporaryDirectory(prefix="garrison-bench-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        upstream = stack.enter_context(servers.start_upstream(tmp, pin))
        with ExitStack() as section:
            live = {DIRECT: upstream, **start_all(section, tmp, pin, settings, run, main, upstream)}
            warm_up(console, run, live, settings.warmup, pin)
            measure_throughput(console, run, live, settings, pin, settings.duration)
            measure_latency(console, run, live, settings, pin)
        for names, title in ((tls, "TLS"), (scaling, "workers: 2, unpinned")):
            selected = [name for name in settings.columns if name in names]
            if not selected:
                continue
            console.print(f"section {title}: {', '.join(selected)}", highlight=False)
            with ExitStack() as section:
                if names is scaling:
                    try:
                        upstream = section.enter_context(
                            servers.start_upstream(own_dir(tmp), UNPINNED, workers=2)
                        )
                    except StartError as exc:
                        for name in selected:
                            run.columns[name].failure = f"its upstream failed to start: {exc}"
                        continue
                live = start_all(section, tmp, pin, settings, run, selected, upstream)
                warm_up(console, run, live, min(settings.warmup, SECTION_WARMUP), pin)
                measure_throughput(console, run, live, settings, pin, settings.section_duration)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(TOOLS, APT_COMMAND):
        return 2
    cli.exit_on_sigterm()
    console = cli.console(140)
    pin = Pinning.if_possible(args.pin)
    settings = make_settings(args, pin)
    now = datetime.now().astimezone()
    machine = report.machine_info()
    header = report.header_lines(now.isoformat(timespec="seconds"), machine, settings)
    for line in header:
        say(console, line)
    run = Run({name: Column(name) for name in settings.columns})
    try:
        measure_all(console, run, settings, pin)
    except StartError as exc:
        print(f"upstream: failed to start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; every server was stopped", file=sys.stderr)
        return 130
    summary = summarize(run)
    report.print_report(console, summary)
    document = to_json(now.isoformat(), machine, settings, summary, dataclasses.asdict(run))
    cli.write_results(console, args.json, "gateway", now, document)
    if args.markdown:
        print(report.markdown(summary, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
