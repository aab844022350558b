"""CPU time per request of each sidecar of the pair, under saturation: the figure behind the ratios.

Starts the app and the sidecar pair as bench/mesh/run.py does (same servers, same pinning), then runs
``wrk -t1 -c50`` for ``--seconds`` per round and divides each sidecar's CPU time (utime + stime from
/proc/<pid>/stat) by the requests served. ``--garrison`` runs another tree's sidecar (a script that
execs ``python -m garrison`` with that tree's ``src`` on PYTHONPATH), for before/after comparisons on
the same machine in the same minute.

    .venv/bin/python bench/mesh/cpu_per_request.py [--rounds 3] [--seconds 5] [--garrison PATH]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers
from certs import make_certificates
from servers import Pinning

_REQUESTS = re.compile(r"(\d+) requests in")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, seconds: int, prefix: list[str]) -> int:
    argv = [*prefix, "wrk", "-t1", "-c50", f"-d{seconds}s", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    found = _REQUESTS.search(out)
    if found is None:
        raise SystemExit(f"wrk printed no request count:\n{out}")
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--garrison", type=Path, help="the garrison command to run the sidecars with")
    args = parser.parse_args()
    if args.garrison is not None:
        servers.GARRISON_BIN = args.garrison
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="garrison-bench-cpu-") as tmp:
        directory = Path(tmp)
        make_certificates(directory / "certs")
        pin = Pinning.if_possible(True)
        app = servers.start_app(stack, directory, pin)
        pair = servers.start_sidecar_pair(stack, directory, pin, servers.app_port(app))
        url = f"http://{pair.address}{pair.path}"
        wrk(url, 2, pin.client())  # warm-up: pools filled, caches bound
        for number in range(1, args.rounds + 1):
            before = {server.name: cpu_seconds(server.proc.pid) for server in pair.servers}
            served = wrk(url, args.seconds, pin.client())
            costs = {s.name: 1e6 * (cpu_seconds(s.proc.pid) - before[s.name]) / served for s in pair.servers}
            shown = "  ".join(f"{name} {cost:5.0f} µs" for name, cost in costs.items())
            pair_cost = sum(costs.values())
            print(f"round {number}: {served / args.seconds:7,.0f} req/s  {shown}  pair {pair_cost:5.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
