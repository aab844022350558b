"""The audit pipeline in `garrison up --demo`: the demo's scripted attack is detected, answered and
recorded, checked from the system itself rather than from what the demo printed.

Starting the whole example costs tens of seconds on two cores, so these checks run inside the demo
run that tests/e2e/test_e2e_up.py already makes (``test_up_runs_the_demo_and_stops_cleanly_on_ctrl_c``
calls ``the_attack_was_detected_and_blocked`` while up runs and ``the_log_verifies`` after it stopped);
this module adds no start-up of its own. The test here checks the example's audit section itself.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from garrison.admin.auth import admin_token_path, read_admin_token
from garrison.cli import app
from garrison.config.loader import load_config
from garrison.pki.tls import auto_trust_file

ROOT = Path(__file__).resolve().parents[2]
ATTACKER = "127.0.0.66"
# The collector's ports in examples/garrison.yaml, by the names the demo test holds them under.
AUDIT_PORTS = {"audit": "127.0.0.1:7400", "audit_admin": "127.0.0.1:9904"}


def _garrison(*args: str) -> Result:
    """``garrison ARGS`` in this process (the same command line, without a second interpreter's
    start-up: the suite's budget is tight)."""
    return CliRunner().invoke(app, list(args))


def _status_from(source: str, url: str, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    transport = httpx.HTTPTransport(verify=context, local_address=source)
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.get(url).status_code


def _alerts(config_file: Path) -> list[dict[str, Any]]:
    """The alerts in the index, once the five the attack raises are there: the demo waited for the
    brute force on the address and its block; the others are in the log before them or in the same
    batch, so this wait is for the index to catch up at most (bounded)."""
    deadline = time.monotonic() + 10
    while True:
        found = _garrison("audit", "search", "-c", str(config_file), "--type", "audit.alert", "--json")
        assert found.exit_code == 0, found.output
        alerts = [json.loads(line) for line in found.stdout.splitlines()]
        if len(alerts) >= 5 or time.monotonic() > deadline:
            return alerts
        time.sleep(0.1)


def the_attack_was_detected_and_blocked(text: str, config_file: Path, gateway_port: int) -> None:
    """What up printed, then the system: alerts in the index (the Sigma probes and the brute force),
    events from every component, the gateway's blocklist holding the attacker, who gets 403 while
    127.0.0.1 gets 200, until the printed `garrison unblock` line lifts the block."""
    assert f"attacker {ATTACKER}: GET /api/hello -> 403 (blocked at the gateway)" in text, text
    assert "you, 127.0.0.1: GET /api/hello -> 200" in text
    assert "garrison audit verify -> exit 0" in text and "intact:" in text
    assert f"unblock {ATTACKER} -c {config_file}" in text

    alerts = _alerts(config_file)
    by_rule = {alert["details"]["rule"]: alert for alert in alerts}
    brute = by_rule["brute_force_ip"]
    assert brute["actor"] == {"ip": ATTACKER} and brute["details"]["responses"] == ["block_ip"]
    summaries = " ".join(a["details"]["summary"] for a in alerts if a["details"]["rule"].startswith("sigma:"))
    for title in ("Path Traversal", "Source Code Enumeration", "Suspicious User-Agents"):
        assert title in summaries, summaries
    assert by_rule["brute_force_account"]["actor"] == {"subject": "demo-user"}

    # Every component of the example delivered its events to the collector, the CA's first ones
    # (before the collector was up) from its spool.
    everything = _garrison("audit", "search", "-c", str(config_file), "--json", "--limit", "10000")
    components = {json.loads(line)["component"] for line in everything.stdout.splitlines()}
    assert components >= {"gateway", "identity", "mesh", "ca", "vault", "audit"}, components

    config = load_config(config_file).config
    admin = f"http://{config.gateway.admin.listen}/blocklist"
    token = read_admin_token(admin_token_path(config))
    listed = httpx.get(admin, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert listed.status_code == 200, listed.text
    assert ATTACKER in [entry["ip"] for entry in listed.json()["blocked"]]
    assert "127.0.0.1" not in [entry["ip"] for entry in listed.json()["blocked"]]
    url, ca = f"https://localhost:{gateway_port}/api/hello", auto_trust_file(config, config.state_dir)
    assert _status_from(ATTACKER, url, ca) == 403
    assert _status_from("127.0.0.1", url, ca) == 200

    # The printed way to lift the block, run as printed: the attacker's address is served again.
    unblock = next(line.split("#")[0].strip() for line in text.splitlines() if f"unblock {ATTACKER}" in line)
    lifted = subprocess.run(["bash", "-c", unblock], capture_output=True, text=True, timeout=60, check=False)
    assert lifted.returncode == 0 and "unblocked" in lifted.stderr, lifted.stderr
    assert _status_from(ATTACKER, url, ca) == 200


def the_log_verifies(config_file: Path) -> None:
    """After up stopped (the collector drained and wrote its last checkpoint): the log is intact."""
    verified = _garrison("audit", "verify", "-c", str(config_file), "--json")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["problems"] == []
    # The last checkpoint covers the whole log, the attack's alerts and responses included.
    assert report["latest"]["size"] == report["entries"] > 0


def test_the_example_runs_the_collector_with_demo_thresholds() -> None:
    """examples/garrison.yaml has an audit section (intake 7400, admin 9904), checked clean, with the
    demo's thresholds: ten failed sign-ins a minute block the address for two minutes."""
    loaded = load_config(ROOT / "examples" / "garrison.yaml")
    audit = loaded.config.audit
    assert audit is not None
    assert audit.listen == AUDIT_PORTS["audit"] and audit.admin.listen == AUDIT_PORTS["audit_admin"]
    rule = audit.detection.rules["brute_force_ip"]
    assert (rule.threshold, rule.window) == (10, 60.0)
    assert audit.responses.block_ip.for_ == 120.0
    checked = _garrison("check", "-c", str(ROOT / "examples" / "garrison.yaml"))
    assert checked.exit_code == 0, checked.output


pytestmark = pytest.mark.process
