"""The command line both benchmarks share: the common flags, SIGTERM, missing tools, the results file."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from datetime import datetime
from pathlib import Path
from types import FrameType

from rich.console import Console

from common.render import say

OUT_DIR = Path(__file__).resolve().parent.parent / "out"
LIMITS = "--duration and --rounds must be at least 1, --warmup at least 0"


def new_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the run script's docstring as written."""
    return argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_timing_arguments(parser: argparse.ArgumentParser, warmup_help: str) -> None:
    """--duration, --rounds, --warmup."""
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help=warmup_help)


def add_selection_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...], what: str) -> None:
    """--quick, --only (`what`: "proxies", "providers"); by default every one of `names`."""
    parser.add_argument("--quick", action="store_true", help="3 s x 1 round, 1 s warm-up")
    parser.add_argument("--only", default=",".join(names), help=f"{what} to measure, comma-separated")


def add_output_arguments(parser: argparse.ArgumentParser, bench: str) -> None:
    """--markdown, --json (`bench` names the default file)."""
    parser.add_argument("--markdown", action="store_true", help="also print a snippet for bench/RESULTS.md")
    parser.add_argument(
        "--json", type=Path, help=f"where to write results (default bench/out/{bench}-<date>.json)"
    )


def settle_arguments(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    names: tuple[str, ...],
    more_valid: bool = True,
    more_limits: str = "",
) -> None:
    """Apply --quick, split --only, and refuse values out of range (with the benchmark's own limits)."""
    if args.quick:
        args.duration, args.rounds, args.warmup = 3, 1, 1
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(names))
    if unknown or not args.only:
        parser.error(f"--only takes names from {', '.join(names)}; got {', '.join(unknown) or 'none'}")
    if min(args.duration, args.rounds) < 1 or args.warmup < 0 or not more_valid:
        parser.error(LIMITS + more_limits)


def missing_tools(tools: tuple[str, ...], apt_command: str) -> bool:
    """Say which tools are not installed and how to install them; True if any is missing."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}; install with:\n  {apt_command}", file=sys.stderr)
    return bool(missing)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack, which stops every server


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C does, so that every server is stopped."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def console(width: int) -> Console:
    """The run's console: the terminal's width, or `width` when output goes to a file or pipe."""
    return Console(width=None if sys.stdout.isatty() else width)


def write_results(out: Console, path: Path | None, bench: str, now: datetime, document: object) -> None:
    """Write the JSON document to path (default bench/out/<bench>-<date>-<time>.json) and say where."""
    path = path or OUT_DIR / f"{bench}-{now:%Y-%m-%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    say(out, f"results written to {path}")
