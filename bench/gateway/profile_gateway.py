"""Where a saturated Garrison gateway spends its time: a py-spy flame graph and profile under wrk.

Starts one Garrison column as bench/gateway/run.py does (the nginx upstream and wrk on core 1, the
gateway alone on core 0), loads it with wrk, and while wrk runs records with py-spy (pinned to core 1,
next to wrk): first a flame graph (`--format flamegraph`, an SVG), then the same length again as
collapsed stacks (`--format raw`: one line per stack, "frame;frame;... count"). Two recorders cannot
attach to one process at once, hence one after the other. It prints the leaf functions that took the
largest share of the samples (where the CPU is, not who called it) and writes them next to the
recordings. py-spy needs root (or ptrace rights) and pauses the gateway for each sample: read the
req/s under profiling as lower than a benchmark's.

    .venv/bin/python bench/gateway/profile_gateway.py --out bench/profiles    # the plain column, 10 s
    .venv/bin/python bench/gateway/profile_gateway.py --column garrison-chain --seconds 20 --out DIR
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `common`, as run.py does

import servers
from common import cli
from common.loadgen import GRACE, parse_wrk, wrk_argv
from common.processes import StartError
from issuer import Issuer
from servers import Pinning, Server

PY_SPY = servers.REPO / ".venv" / "bin" / "py-spy"
COLUMNS = ("garrison", "garrison-chain", "garrison-pure")
WARMUP = 2  # seconds of wrk before recording: token cache, pools, the JIT-free hot path settled


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    parser.add_argument(
        "--column", choices=COLUMNS, default="garrison", help="the Garrison column to profile"
    )
    parser.add_argument("--seconds", type=int, default=10, help="seconds of each recording (default 10)")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second (default 500)")
    parser.add_argument(
        "--out", type=Path, required=True, help="directory for the SVG, raw profile and top list"
    )
    parser.add_argument("--top", type=int, default=25, help="how many leaf functions to print (default 25)")
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native: C frames (httptools, uvloop) too"
    )
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    if min(args.seconds, args.rate, args.top) < 1:
        parser.error("--seconds, --rate and --top must be at least 1")
    return args


def start_column(name: str, stack: ExitStack, tmp: Path, pin: Pinning, upstream_port: int) -> Server:
    if name == "garrison-chain":
        variant = servers.chain_variant(stack.enter_context(Issuer()))
    else:
        variant = servers.PURE if name == "garrison-pure" else servers.PLAIN
    return stack.enter_context(servers.start_garrison(tmp, pin, upstream_port, variant))


def header_flags(headers: dict[str, str]) -> list[str]:
    return [flag for name, value in headers.items() for flag in ("-H", f"{name}: {value}")]


def record(pid: int, output: Path, fmt: str, args: argparse.Namespace, prefix: list[str]) -> None:
    argv = [*prefix, str(PY_SPY), "record", "--format", fmt, "-o", str(output), "--pid", str(pid)]
    argv += ["-r", str(args.rate), "--duration", str(args.seconds), *(["--native"] if args.native else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + GRACE, check=False)
    if done.returncode != 0 or not output.exists():
        raise RuntimeError(f"py-spy exited with {done.returncode}:\n{done.stderr}{done.stdout}")


def leaf_shares(raw: str) -> tuple[int, list[tuple[str, int]]]:
    """(samples, [(leaf function, samples)] most first) from py-spy's raw format.

    Each line is "frame;frame;...;leaf count", a frame "function (file:line)"; leaves are grouped by
    function and file, whatever the line.
    """
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        function, _, where = leaf.partition(" (")
        file = where.rstrip(")").rsplit(":", 1)[0]
        leaves[f"{function} ({file})" if file else function] += int(count)
    return sum(leaves.values()), leaves.most_common()


def by_file(leaves: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The leaves' samples summed per file (module), most first."""
    files: Counter[str] = Counter()
    for leaf, count in leaves:
        files[leaf.rpartition(" (")[2].rstrip(")") or leaf] += count
    return files.most_common()


def top_lines(raw: str, top: int) -> list[str]:
    total, leaves = leaf_shares(raw)
    if not total:
        return ["no samples (was the gateway busy? py-spy leaves idle threads out)"]
    lines = [f"{total:,} samples; the {min(top, len(leaves))} leaf functions with the largest share:"]
    lines += [f"{count / total:6.1%}  {leaf}" for leaf, count in leaves[:top]]
    files = by_file(leaves)
    lines.append(f"the same samples by the leaf's file, the {min(top, len(files))} largest:")
    lines += [f"{count / total:6.1%}  {file}" for file, count in files[:top]]
    return lines


def profile(args: argparse.Namespace, out: Path, stem: str) -> list[str]:
    pin = Pinning.if_possible(args.pin)
    total = WARMUP + 2 * args.seconds + 2  # wrk outlasts both recordings
    with tempfile.TemporaryDirectory(prefix="garrison-profile-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        upstream = stack.enter_context(servers.start_upstream(tmp, pin))
        gateway = start_column(args.column, stack, tmp, pin, int(upstream.address.rsplit(":", 1)[1]))
        argv = [*wrk_argv(pin.client(), total), *header_flags(gateway.headers), f"http://{gateway.address}/"]
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # Wait out the warm-up on wrk itself: an exit now would be a failure worth seeing at once.
            if _exited_within(wrk, WARMUP):
                raise RuntimeError(f"wrk exited early:\n{wrk.communicate()[0]}")
            record(gateway.proc.pid, out / f"{stem}.svg", "flamegraph", args, pin.client())
            record(gateway.proc.pid, out / f"{stem}.txt", "raw", args, pin.client())
            printed, _ = wrk.communicate(timeout=total + GRACE)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
    result = parse_wrk(printed)
    return [
        f"{args.column}: {result.rps:,.0f} req/s under wrk -t1 -c50 while profiled ({result.errors} errors); "
        f"py-spy at {args.rate} Hz, {args.seconds} s per recording" + (", --native" if args.native else ""),
        pin.describe(args.pin) + ("; py-spy on core 1 with wrk" if pin.enabled else ""),
    ]


def _exited_within(proc: subprocess.Popen[str], seconds: float) -> bool:
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cli.missing_tools(("wrk", "nginx"), "apt-get install -y wrk nginx-light"):
        return 2
    if not PY_SPY.exists():
        print(f"{PY_SPY} not found: pip install py-spy into the venv", file=sys.stderr)
        return 2
    cli.exit_on_sigterm()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.column}-{datetime.now():%Y-%m-%d-%H%M%S}"
    try:
        lines = profile(args, args.out, stem)
    except StartError as exc:
        print(f"{args.column}: failed to start: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    lines += top_lines((args.out / f"{stem}.txt").read_text(), args.top)
    (args.out / f"{stem}-top.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {args.out / stem}.svg (flame graph), .txt (raw stacks), -top.txt (this summary)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
