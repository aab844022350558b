"""The processes under test: `garrison audit serve` (TLS, SQLite index, detection; shipping off) and
rsyslogd (imptcp in, omfile out), each started on the server core in the run's temporary directory.

The collector is "done" with a load once its /metrics say that the log holds every event sent
(``garrison_audit_events_total`` of the emitters' components) and the after-commit stages (the
index, detection) have been handed every log entry (``garrison_audit_staged_entries`` equals
``garrison_audit_log_entries``). rsyslog is done once its output file holds every byte sent.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from common.processes import Server, StartError, reserved_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

from garrison.audit.tables import events
from garrison.core.ready import read_ready

REPO = Path(__file__).resolve().parents[2]
GARRISON_BIN = REPO / ".venv" / "bin" / "garrison"
READY_TIMEOUT = 60.0
TRUST_DOMAIN = "bench.test"


@dataclass
class Collector:
    name: str
    server: Server
    admin: str  # host:port of the admin listener (plain HTTP on loopback)
    emitter_config: Path  # a garrison.yaml whose audit.url is the intake's address
    state_dir: Path

    def metrics(self) -> dict[str, float]:
        """The figures the run watches: log entries, stage position, events logged from emitters."""
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=10) as answer:
            text = answer.read().decode()
        found = {"entries": 0.0, "staged": 0.0, "emitted": 0.0, "alerts": 0.0}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "garrison_audit_log_entries":
                    found["entries"] = sample.value
                elif sample.name == "garrison_audit_staged_entries":
                    found["staged"] = sample.value
                elif sample.name == "garrison_audit_events_total":
                    key = "alerts" if sample.labels.get("component") == "audit" else "emitted"
                    found[key] += sample.value
        return found

    def alerts(self, rule: str) -> list[dict[str, Any]]:
        """The index's ``audit.alert`` events for ``rule`` (read-only; SQLite serves readers alongside)."""
        path = self.state_dir / "audit" / "index.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            query = f"SELECT event FROM {events.name} WHERE type = 'audit.alert'"
            rows = db.execute(query).fetchall()
        found = [json.loads(row[0]) for row in rows]
        return [a for a in found if a.get("details", {}).get("rule") == rule]


def _write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def collector_config(state_dir: Path, sigma: bool) -> dict[str, Any]:
    """`garrison audit serve` on port 0: intake TLS (auto certificate), SQLite index, the default
    detection rules (with or without the shipped Sigma rules), no shipping. Responses stay as
    configured by default (nothing to call here: each is logged as skipped). The emitters' queue may
    hold a whole round (memory_max), so that the load never spills to its spool."""
    audit: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0"},
        "emitter": {"memory_max": 1_000_000},
        "detection": {"sigma_builtin": sigma},
    }
    return {"state_dir": str(state_dir), "trust_domain": TRUST_DOMAIN, "audit": audit}


def start_collector(stack: ExitStack, tmp: Path, prefix: list[str], name: str, sigma: bool) -> Collector:
    """The collector in ``tmp/name``; its emitters' config names the intake's address once it listens."""
    if not GARRISON_BIN.exists():
        raise StartError(f"{GARRISON_BIN} not found (make .venv/.installed)")
    home = tmp / name
    home.mkdir(mode=0o700)
    state_dir = home / "state"
    config = collector_config(state_dir, sigma)
    audit = config["audit"]
    path = _write_yaml(home / "garrison.yaml", config)
    ready = home / "ready.json"
    argv = [*prefix, str(GARRISON_BIN), "audit", "serve", "-c", str(path), "--ready-file", str(ready)]
    server = stack.enter_context(Server(name, argv, home / "audit.out"))

    def listeners() -> str | None:
        found = read_ready(ready)
        return None if found is None or "admin" not in found.listeners else json.dumps(found.listeners)

    addresses = json.loads(wait_for(server, listeners, "wrote no ready file", READY_TIMEOUT))
    audit["url"] = f"https://{addresses['audit']}"
    emitters = _write_yaml(home / "emitters.yaml", config)
    return Collector(name, server, addresses["admin"], emitters, state_dir)


RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imptcp")
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="bench") {{
  action(type="omfile" file="{out}" template="raw" {write})
}}
input(type="imptcp" port="{port}" address="127.0.0.1" ruleset="bench")
"""
BUFFERED = 'asyncWriting="on" ioBufferSize="256k"'
SYNCED = 'asyncWriting="off" ioBufferSize="256k" flushOnTXEnd="on" sync="on"'


@dataclass
class Rsyslog:
    name: str
    server: Server
    port: int
    out: Path

    def bytes_written(self) -> int:
        try:
            return self.out.stat().st_size
        except FileNotFoundError:
            return 0


def rsyslog_conf(work: Path, out: Path, port: int, sync: bool) -> str:
    return RSYSLOG_CONF.format(work=work, out=out, port=port, write=SYNCED if sync else BUFFERED)


def rsyslog_version() -> str:
    from common.machine import command_output

    words = command_output(["rsyslogd", "-v"]).split()
    return words[1].rstrip(",") if len(words) > 1 else "unknown"


def start_rsyslog(stack: ExitStack, tmp: Path, prefix: list[str], name: str, sync: bool) -> Rsyslog:
    """rsyslogd in the foreground: JSON lines in over TCP (imptcp), written as received (%rawmsg%) to
    one file, buffered with an async writer, or with ``sync`` flushed and fsync'd per batch."""
    home = tmp / name
    home.mkdir(mode=0o700)
    out = home / "events.jsonl"
    with reserved_port() as port:
        (home / "rsyslog.conf").write_text(rsyslog_conf(home, out, port, sync))
        argv = [*prefix, "rsyslogd", "-n", "-f", str(home / "rsyslog.conf"), "-i", str(home / "rsyslog.pid")]
        server = stack.enter_context(Server(name, argv, home / "rsyslog.out", {**os.environ}))

        def accepting() -> str | None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return None
            return "yes"

        wait_for(server, accepting, "did not accept connections", READY_TIMEOUT)
    return Rsyslog(name, server, port, out)
