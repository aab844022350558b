"""CPU instructions per proxied request, counted by valgrind: a figure other load does not move.

Runs bench/gateway/hotpath.py's in-process request loop (the gateway's real connection objects, stub
transports) under ``valgrind --tool=callgrind`` with counting switched on only around the measured
loop (``callgrind_control -i on/off``), for two request counts, and prints the difference divided by
the difference in requests: instructions per request, without start-up or set-up. The same code,
inputs and ``PYTHONHASHSEED`` give the same count to within a few instructions, whatever else the
machine runs, which makes it the figure to compare two versions of the hot path with; wall-clock
figures on a shared machine move by ±20% (bench/RESULTS.md). Instructions are not time (a cache
miss costs more than an add), so confirm a change that matters with bench/gateway/run.py.

    .venv/bin/python bench/gateway/instructions.py [--variant plain|jwt|"rate limit"|"jwt + rate limit"]
        [--log on|off] [--top N]   # GARRISON_PURE_PYTHON=1 in the environment: the pure-Python path

``--top N`` also prints the N functions with the most instructions per request, callees included
(callgrind_annotate --inclusive): for the compiled modules, whose functions py-spy cannot see, the
profile by function (mypyc names them ``CPyDef_<module>___<Class>___<method>``).

Takes about a minute per variant (valgrind runs Python some 50 times slower).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

HERE = Path(__file__).resolve().parent
SMALL, LARGE = 300, 2300  # requests per run: the difference cancels what both runs share
_COLLECTED = re.compile(r"Collected : (\d+)")


def toggle(on: bool) -> None:
    """Switch callgrind's counting for this process; wait until callgrind_control has returned."""
    command = ["callgrind_control", "-i", "on" if on else "off", str(os.getpid())]
    # Not subprocess.run: valgrind serves the request only while this process runs, not while it
    # blocks in wait(), so poll, sleeping in between (few instructions counted while it waits).
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while child.poll() is None:
        time.sleep(0.001)


def child(requests: int, variant: str, log: str) -> None:
    """Inside valgrind: the hot-path loop of ``requests`` requests, counted and nothing else."""
    sys.path.insert(0, str(HERE))
    import hotpath

    jwk, token = hotpath.bench_token()
    request = hotpath.REQUEST.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer %s\r\n\r\n" % token.encode())
    auth, rate_limit = {label: (auth, limit) for label, auth, limit in hotpath.VARIANTS}[variant]
    calls = 0

    def clock() -> float:  # hotpath.measure reads its clock just before and just after the loop
        nonlocal calls
        calls += 1
        toggle(calls % 2 == 1)
        return 0.0

    hotpath.CLOCKS["counted"] = clock
    with tempfile.TemporaryDirectory() as tmp:
        access_log = "{enabled: false}" if log == "off" else f"{{path: {Path(tmp) / 'access.log'}}}"
        config = hotpath.CONFIG.format(
            state=Path(tmp) / "state", access_log=access_log, auth=auth, rate_limit=rate_limit, audit=""
        )
        uvloop.run(hotpath.measure(config, request, jwk, requests, "counted"))


def counted(requests: int, variant: str, log: str, out: str = "/dev/null") -> int:
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    argv += [sys.executable, __file__, "--child", str(requests), "--variant", variant, "--log", log]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=1800)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="plain", help='plain, jwt, "rate limit" or "jwt + rate limit"')
    parser.add_argument("--log", choices=["on", "off"], default="on", help="the access log")
    parser.add_argument("--top", type=int, default=0, help="also print the N costliest functions")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.variant, args.log)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "callgrind.out")
        small = counted(SMALL, args.variant, args.log)
        large = counted(LARGE, args.variant, args.log, out if args.top else "/dev/null")
        path = "pure Python" if os.environ.get("GARRISON_PURE_PYTHON") else "as installed"
        per_request = (large - small) / (LARGE - SMALL)
        print(f"{args.variant} (access log {args.log}, {path}): {per_request:,.0f} instructions per request")
        if args.top:
            print_top(out, args.top)
    return 0


_ANNOTATED = re.compile(r"^\s*([\d,]+) \([\s\d.]+%\)\s+\*?\s*(\S+)")


def print_top(out: str, count: int) -> None:
    """The functions with the most instructions, callees included, per request of the large run."""
    argv = ["callgrind_annotate", "--inclusive=yes", "--threshold=100", out]
    text = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300).stdout
    seen: set[str] = set()
    for line in text.splitlines():
        found = _ANNOTATED.match(line)
        if found is None or "CPyDef_" not in line:
            continue  # the compiled functions (CPyDef_...) name the code; the rest is the interpreter
        name = found.group(2).rsplit(":", 1)[-1].removesuffix("'2")  # '2: a recursive entry
        if name in seen:
            continue
        seen.add(name)
        print(f"  {int(found.group(1).replace(',', '')) / LARGE:>9,.0f}  {name}")
        if len(seen) == count:
            break


if __name__ == "__main__":
    sys.exit(main())
