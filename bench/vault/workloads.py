"""The vault benchmark's workloads: what each request asks, how each vault is made ready for it, and
wrk's environment for vault.lua.

A workload whose set-up a vault refuses with 404 (an engine that commit of Garrison does not have,
e.g. transit on a `--baseline` from before it) is left out of the run for every vault and reported as
not measured, with the reason. To add one: a ``Workload`` in WORKLOADS, its set-up, its target in
report.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.loadgen import WrkResult, parse_wrk, run_tool, wrk_argv
from common.processes import StartError
from servers import Vault

SCRIPT = Path(__file__).with_name("vault.lua")
WRITE_SPREAD = 100  # KV writes cycle through this many secrets (each keeps its max_versions, 10 by default)
PLAINTEXT = base64.b64encode(b"a card number, say 4111 1111 1111 1111").decode()

Setup = Callable[[Vault], str | None]  # None when the vault is ready, else why the workload cannot run


@dataclass(frozen=True)
class Workload:
    name: str
    what: str  # in words, for the report's method line
    method: str
    path: str  # after /v1/
    body: dict[str, object] | None = None
    spread: int = 0
    setup: Setup | None = field(default=None, compare=False)

    def environment(self, token: str, paced_mean_ms: float | None = None) -> dict[str, str]:
        """wrk's environment: vault.lua reads the request, and the token, from it."""
        env = {
            **os.environ,
            "VAULT_TOKEN": token,
            "BENCH_METHOD": self.method,
            "BENCH_PATH": f"/v1/{self.path}",
            "BENCH_BODY": json.dumps(self.body, separators=(",", ":")) if self.body is not None else "",
            "BENCH_SPREAD": str(self.spread),
        }
        if paced_mean_ms is not None:
            env["PACED_MEAN_MS"] = f"{paced_mean_ms:.3f}"
        return env


def run(
    workload: Workload, vault: Vault, seconds: int, prefix: list[str], paced_mean_ms: float | None = None
) -> WrkResult:
    """wrk -t1 -c50 --latency with vault.lua against the vault, for `seconds` (paced if asked)."""
    argv = wrk_command(f"https://{vault.address}", seconds, prefix)
    return parse_wrk(run_tool("wrk", argv, seconds, workload.environment(vault.token, paced_mean_ms)))


def wrk_command(url: str, seconds: int, prefix: list[str]) -> list[str]:
    """wrk with vault.lua (which reads the request from its environment) against url."""
    return [*wrk_argv(prefix, seconds), "-s", str(SCRIPT), url]


def _transit_key(vault: Vault) -> str | None:
    """The transit engine mounted (OpenBao; Garrison has it at transit/ when it has it) and a key."""
    if vault.name == "openbao":
        vault.must("POST", "sys/mounts/transit", {"type": "transit"}, vault.root_token)
    status, answer = vault.call("POST", "transit/keys/bench", {"type": "aes256-gcm96"}, vault.root_token)
    if status == 404:
        return f"{vault.name} has no transit engine on this commit"
    if status not in (200, 204):
        raise StartError(f"POST /v1/transit/keys/bench answered {status}: {answer}")
    return None


def check(workload: Workload, vault: Vault) -> None:
    """One request as the load sends it must succeed before the workload is measured."""
    path = workload.path + ("0" if workload.spread else "")
    status, answer = vault.call(workload.method, path, workload.body)
    if status not in (200, 204):
        raise StartError(f"{workload.name}: {workload.method} /v1/{path} answered {status}: {answer}")


WORKLOADS = (
    Workload("kv-read", "GET secret/data/bench/read (one secret)", "GET", "secret/data/bench/read"),
    Workload(
        "kv-write",
        f"POST secret/data/bench/w<n> ({WRITE_SPREAD} secrets in turn, a new version each)",
        "POST",
        "secret/data/bench/w",
        {"data": {"user": "bench", "password": "rotated-by-the-benchmark"}},
        spread=WRITE_SPREAD,
    ),
    Workload("token-lookup", "GET auth/token/lookup-self", "GET", "auth/token/lookup-self"),
    Workload(
        "transit-encrypt",
        "POST transit/encrypt/bench (aes256-gcm96, 38 bytes)",
        "POST",
        "transit/encrypt/bench",
        {"plaintext": PLAINTEXT},
        setup=_transit_key,
    ),
    # Hook: "database-creds" (GET database/creds/<role>, a PostgreSQL role created per request) goes
    # here: its set-up configures a connection to a database of its own and a role on both vaults, and
    # the run must revoke every lease at the end (sys/leases/revoke-prefix) before OpenBao's raft data
    # goes with the temporary directory, or the roles stay behind in PostgreSQL.
)
NAMES = tuple(w.name for w in WORKLOADS)
