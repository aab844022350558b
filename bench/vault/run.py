"""Vault benchmark: Garrison's `garrison vault` and OpenBao's `bao server`, the same Vault API calls, one run.

Both vaults serve TLS with the same run-time certificate, store on disk with durable writes (SQLite
with synchronous=FULL; OpenBao's raft storage) and audit every request to a file. The load is wrk
(vault.lua: X-Vault-Token of a token with the `bench` policy, JSON bodies, keep-alive) in interleaved
rounds (workload by workload, garrison then openbao), the vault pinned to core 0 and wrk to core 1:

- kv-read: GET secret/data/bench/read;  kv-write: POST secret/data/bench/w<n>, 100 secrets in turn;
- token-lookup: GET auth/token/lookup-self;  transit-encrypt: POST transit/encrypt/bench (when
  Garrison has a transit engine; otherwise reported as not measured).

Saturation (wrk -t1 -c50) gives req/s, p50/p99 and CPU; a second phase at a fixed rate (--rate, or half
the slower vault's saturation if that is lower) gives latency and CPU per 1,000 req/s. See
bench/README.md ("Vault").

    .venv/bin/python bench/vault/run.py [--quick] [--only kv-read,kv-write] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

# Run as a script, Python puts bench/vault/ on sys.path, not bench/: add bench/ for `common`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import report
import servers
import workloads
from common import cli, machine
from common.loadgen import WRK_CONNECTIONS, LoadError
from common.memory import group_memory_mb
from common.processes import ServerDied, StartError, still_alive, with_cpu_share
from common.render import say
from report import BASE, Figures
from rich.console import Console
from servers import Pinning, Vault
from workloads import WORKLOADS, Workload

TOOLS = ("wrk",)
APT_COMMAND = "apt-get install -y wrk"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    cli.add_timing_arguments(parser, "seconds of wrk per workload and vault before round 1 (default 2)")
    cli.add_selection_arguments(parser, workloads.NAMES, "workloads")
    parser.add_argument(
        "--rate",
        type=int,
        default=1000,
        help="req/s of the fixed-rate phase, at most half the slower vault's saturation (default 1000; "
        "0: no fixed-rate phase)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a worktree of main): its src/ also runs, as garrison@base, in the "
        "same rounds (before/after a change)",
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    cli.add_output_arguments(parser, "vault")
    args = parser.parse_args(argv)
    cli.settle_arguments(parser, args, workloads.NAMES, args.rate >= 0, ", --rate at least 0")
    if args.baseline is not None and not (args.baseline / "src" / "garrison").is_dir():
        parser.error(f"--baseline {args.baseline}: no src/garrison there")
    return args


def start_vaults(
    stack: ExitStack, tmp: Path, pin: Pinning, figures: Figures, baseline: Path | None
) -> list[Vault]:
    """The vaults, set up alike; one that does not start is reported and the run goes on without it."""
    certs = servers.make_certificate(tmp / "certs")
    secret = servers.new_secret()
    starters: list[tuple[str, Callable[[], Vault]]] = [
        ("garrison", lambda: servers.start_garrison(stack, tmp, certs, pin.server()))
    ]
    if baseline is not None:
        source = baseline.resolve() / "src"
        starters.append((BASE, lambda: servers.start_garrison(stack, tmp, certs, pin.server(), BASE, source)))
    starters.append(("openbao", lambda: servers.start_openbao(stack, tmp, certs, pin.server())))
    started = []
    for name, start in starters:
        try:
            vault = start()
            servers.prepare(vault, secret)
        except (StartError, OSError) as exc:
            figures.failures[name] = f"failed to start: {exc}"
            continue
        started.append(vault)
    return started


def ready_workloads(chosen: list[str], vaults: list[Vault], figures: Figures) -> list[Workload]:
    """The chosen workloads every started vault can serve (set up, and one request checked). A vault
    that refuses a set-up or a check otherwise than with a 404 drops out of the run (removed from
    `vaults`), with the reason."""
    found = []
    for workload in (w for w in WORKLOADS if w.name in chosen):
        why = None
        for vault in list(vaults):
            try:
                if workload.setup is not None and why is None:
                    why = workload.setup(vault)
                if why is None:
                    workloads.check(workload, vault)
            except (StartError, OSError) as exc:
                figures.failures[vault.name] = f"{workload.name}: {exc}"
                vaults.remove(vault)
        if why is not None:
            figures.skipped[workload.name] = why
        else:
            found.append(workload)
    return found


Measure = Callable[[Workload, Vault], str]


def phases(args: argparse.Namespace, pin: Pinning, figures: Figures) -> list[tuple[str, int, Measure]]:
    """(phase, rounds, measure) in order: warm-up, saturation, fixed rate."""

    def warm_up(workload: Workload, vault: Vault) -> str:
        workloads.run(workload, vault, args.warmup, pin.client())
        return ""

    def saturate(workload: Workload, vault: Vault) -> str:
        result, cpu = with_cpu_share(
            vault.server, workloads.run, workload, vault, args.duration, pin.client()
        )
        still_alive(vault.server)
        figures.add("saturation", workload.name, vault.name, result, cpu)
        return (
            f"{workload.name:<16} {vault.name:<9} {result.rps:>8,.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
            f"p99 {result.p99_ms:7.2f} ms  CPU {cpu:4.0%}  errors {result.errors}"
        )

    def at_rate(workload: Workload, vault: Vault) -> str:
        rate = figures.rates.get(workload.name)
        if rate is None:  # the first time: the same rate for both vaults
            slowest = min((figures.rps(workload.name, v) or 0.0) for v in figures.saturation[workload.name])
            rate = figures.rates[workload.name] = max(1.0, min(float(args.rate), slowest / 2))
        mean_ms = 1000.0 * WRK_CONNECTIONS / rate
        result, cpu = with_cpu_share(
            vault.server, workloads.run, workload, vault, args.duration, pin.client(), mean_ms
        )
        still_alive(vault.server)
        figures.add("paced", workload.name, vault.name, result, cpu)
        return (
            f"{workload.name:<16} {vault.name:<9} {result.rps:>8,.0f} req/s (asked {rate:,.0f})  "
            f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  CPU {cpu:4.0%}"
        )

    found: list[tuple[str, int, Measure]] = [("warm-up", 1, warm_up)] if args.warmup else []
    found.append(("saturation", args.rounds, saturate))
    if args.rate:
        found.append(("fixed rate", args.rounds, at_rate))
    return found


def measure(
    vaults: list[Vault],
    chosen: list[Workload],
    plan: list[tuple[str, int, Measure]],
    figures: Figures,
    out: Console,
) -> None:
    """Every phase in interleaved rounds; a vault whose load or process fails drops out of the run."""
    live = list(vaults)
    for phase, rounds, run in plan:
        for number in range(1, rounds + 1):
            say(out, f"-- {phase} round {number}/{rounds}")
            for workload in chosen:
                for vault in list(live):
                    try:
                        line = run(workload, vault)
                    except (LoadError, ServerDied) as exc:
                        figures.failures[vault.name] = f"{workload.name}: {exc}"
                        live.remove(vault)
                        continue
                    if line:
                        say(out, line)
    for vault in live:  # after the load: what each vault holds once it has served it
        figures.memory[vault.name] = group_memory_mb(vault.server.proc.pid)


def method_lines(args: argparse.Namespace, chosen: list[Workload], pinning: str) -> list[str]:
    what = "; ".join(f"{w.name}: {w.what}" for w in chosen) or "none"
    rate = (
        f"fixed rate: the same wrk with exponential waits at {args.rate:,} req/s or half the slower "
        "vault's saturation, whichever is lower"
        if args.rate
        else "no fixed-rate phase"
    )
    base = []
    if args.baseline:
        argv = ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"]
        commit = machine.command_output(argv, True)
        base = [f"garrison@base: the src/ of {args.baseline} (commit {commit}) on this venv"]
    return [
        f"workloads: {what}",
        *base,
        f"method: {args.rounds} interleaved round(s) per phase; saturation: wrk -t1 -c{WRK_CONNECTIONS} "
        f"--latency -s bench/vault/vault.lua for {args.duration} s per workload and vault; {rate}; "
        f"{args.warmup} s warm-up each",
        "setup: TLS (one run-time EC P-256 certificate for both), durable storage on disk (garrison: "
        "SQLite, synchronous=FULL; openbao: raft), a file audit device on each, a non-root token "
        "with the same `bench` policy",
        pinning,
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(TOOLS, APT_COMMAND):
        return 2
    cli.exit_on_sigterm()
    out = cli.console(160)
    pin = Pinning.if_possible(args.pin)
    now = datetime.now(UTC)
    bao_version = machine.command_output([str(servers.BAO_BIN), "version"]).split(" (")[0]
    info = machine.info({"openbao": bao_version.removeprefix("OpenBao "), "wrk": machine.wrk_version()})
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="garrison-bench-vault-") as tmp, ExitStack() as stack:
        vaults = start_vaults(stack, Path(tmp), pin, figures, args.baseline)
        chosen = ready_workloads(args.only, vaults, figures)
        measure(vaults, chosen, phases(args, pin, figures), figures, out)
    method = method_lines(args, chosen, pin.describe(args.pin))
    lines = report.render(figures, now, info, method, tuple(args.only))
    out.file.flush()
    print("\n".join(lines), flush=True)  # not through rich: table rows must not wrap
    if args.markdown:
        print("\n" + "\n".join(report.markdown(lines)), flush=True)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    cli.write_results(out, args.json, "vault", now, figures.to_json(info, settings))
    return 1 if figures.failures else 0


if __name__ == "__main__":
    sys.exit(main())
