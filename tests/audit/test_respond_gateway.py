"""block_ip against a real gateway process (two workers behind one admin listener, over admin TLS):
the block reaches every worker, the address gets 403, and the block expires by itself; dry run, a
wrong credential, a certificate that is not the pinned one and a replica that is down change nothing
there and are recorded."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from certs import TestCA
from cryptography.x509.oid import ExtendedKeyUsageOID
from gateway_harness import GatewayProcess, RecordingUpstream, get, one_request
from prometheus_client import CollectorRegistry, generate_latest
from responder_harness import Trail, alert, config, eventually, write_token

from garrison.audit.respond import responder_for

ATTACKER = "203.0.113.7"

pytestmark = pytest.mark.process  # real processes


@dataclass(frozen=True)
class AdminTls:
    tls: dict[str, str]  # gateway.admin.tls: the chain and key the listener serves
    trust: ssl.SSLContext  # what a test client trusts (the issuer; the name is not checked)
    directory: Path


@pytest.fixture(scope="module")
def admin_tls(tmp_path_factory: pytest.TempPathFactory) -> AdminTls:
    directory = tmp_path_factory.mktemp("admin-tls")
    issuer = TestCA.create("admin server CA")
    cert, key = issuer.issue(
        directory, "admin", common_name="admin", dns=("localhost",), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    chain = directory / "admin-chain.pem"
    chain.write_bytes(cert.read_bytes() + issuer.write(directory / "issuer.pem").read_bytes())
    trust = ssl.create_default_context(cafile=directory / "issuer.pem")
    trust.check_hostname = False  # the certificate names localhost; the tests dial 127.0.0.1
    return AdminTls({"cert": str(chain), "key": str(key)}, trust, directory)


@pytest.fixture(scope="module")
def gw(
    module_gateway_factory: Any, module_upstream: RecordingUpstream, admin_tls: AdminTls
) -> GatewayProcess:
    """Two workers behind one admin listener, with TLS. X-Forwarded-For from loopback is believed, so
    each test request can come "from" any address."""
    overrides = {
        "gateway": {
            "workers": 2,
            "trusted_proxies": ["127.0.0.1/32"],
            "admin": {"listen": "127.0.0.1:0", "tls": admin_tls.tls},
        }
    }
    gateway: GatewayProcess = module_gateway_factory(module_upstream, overrides)
    return gateway


def admin_url(gw: GatewayProcess) -> str:
    return f"https://127.0.0.1:{gw.admin_port}"


def status_from(gw: GatewayProcess, ip: str) -> int:
    """One request on a fresh connection (the kernel spreads those over both workers)."""
    return one_request(gw.port, get("/orders", headers={"X-Forwarded-For": ip})).status


def blocked(gw: GatewayProcess, admin_tls: AdminTls) -> list[dict[str, Any]]:
    answer = httpx.get(f"{admin_url(gw)}/blocklist", verify=admin_tls.trust, timeout=10)
    entries: list[dict[str, Any]] = answer.json()["blocked"]
    return entries


def responder_config(gw: GatewayProcess, admin_tls: AdminTls, **responses: Any) -> Any:
    """The collector's view: the gateway's state dir (its admin token), its admin listener's TLS (the
    pinned chain) and URL (port 0 in its config)."""
    return config(
        gw.state_dir,
        {"gateways": [admin_url(gw)], **responses},
        gateway={"admin": {"listen": "127.0.0.1:0", "tls": admin_tls.tls}},
    )


def test_block_ip_reaches_every_worker_and_expires(
    gw: GatewayProcess, admin_tls: AdminTls, tmp_path: Path
) -> None:
    trail = Trail()
    registry = CollectorRegistry()
    cfg = responder_config(gw, admin_tls, block_ip={"for": "1500ms"})

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail, registry)
        await responder.start()
        assert status_from(gw, ATTACKER) == 200
        await responder.respond(alert(["block_ip"], rule="web.scan", ip=ATTACKER))
        await responder.drain()
        assert [s for s in (status_from(gw, ATTACKER) for _ in range(8)) if s != 403] == []
        assert status_from(gw, "198.51.100.1") == 200
        [entry] = blocked(gw, admin_tls)
        assert entry["ip"] == ATTACKER and "web.scan" in entry["reason"]
        await eventually(lambda: status_from(gw, ATTACKER) == 200, what="the block to expire")
        await responder.stop()

    asyncio.run(body())
    done = trail.only("block_ip", "done")
    assert done.outcome == "success" and done.target == ATTACKER
    assert done.details["status"] == 200 and done.details["dry_run"] is False
    assert done.details["for_seconds"] == 1.5 and done.details["expiry"].endswith("Z")
    assert done.actor.ip == ATTACKER and done.details["rule"] == "web.scan"
    assert blocked(gw, admin_tls) == []
    labels = {"action": "block_ip", "outcome": "success"}
    assert registry.get_sample_value("garrison_audit_responses_total", labels) == 1.0
    check_exposition(generate_latest(registry))


def check_exposition(exposition: bytes) -> None:
    """promtool accepts the responder's metrics (skipped where it is not installed, never on CI)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI (apt-get install -y prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install -y prometheus)")
    assert b"garrison_audit_responses_total{" in exposition
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_dry_run_blocks_nothing_and_says_what_it_would_do(
    gw: GatewayProcess, admin_tls: AdminTls, tmp_path: Path
) -> None:
    trail = Trail()
    cfg = responder_config(gw, admin_tls, block_ip={"dry_run": True})

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail)
        await responder.start()
        await responder.respond(alert(["block_ip"], ip=ATTACKER))
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    assert trail.only("block_ip", "dry_run").details["would"].startswith(f"POST /blocklist?ip={ATTACKER}&")
    assert blocked(gw, admin_tls) == [] and status_from(gw, ATTACKER) == 200


def test_a_wrong_admin_token_is_a_recorded_failure(
    gw: GatewayProcess, admin_tls: AdminTls, tmp_path: Path
) -> None:
    trail = Trail()
    wrong = write_token(tmp_path / "wrong.token", "w" * 43)
    cfg = config(
        tmp_path,
        {"gateways": [admin_url(gw)]},
        gateway={"admin": {"listen": "127.0.0.1:0", "tls": admin_tls.tls, "token_file": str(wrong)}},
    )

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail)
        await responder.start()
        await responder.respond(alert(["block_ip"], ip=ATTACKER))
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    failed = trail.only("block_ip", "failed")
    assert failed.details["status"] == 401 and "admin token" in failed.details["error"]
    assert blocked(gw, admin_tls) == []


def test_a_listener_whose_certificate_is_not_the_pinned_chain_is_refused(
    gw: GatewayProcess, admin_tls: AdminTls, tmp_path: Path
) -> None:
    """Over https the admin listener's own chain (its `admin.tls.cert`) is the only trust anchor: a
    responder pinning another certificate fails the handshake, and nothing is blocked."""
    other_cert, other_key = TestCA.create("another CA").issue(
        tmp_path, "other", common_name="admin", dns=("localhost",), usage=ExtendedKeyUsageOID.SERVER_AUTH
    )
    trail = Trail()
    cfg = config(
        gw.state_dir,
        {"gateways": [admin_url(gw)], "attempts": 1},
        gateway={"admin": {"listen": "127.0.0.1:0", "tls": {"cert": str(other_cert), "key": str(other_key)}}},
    )

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail)
        await responder.start()
        await responder.respond(alert(["block_ip"], ip="192.0.2.5"))
        await responder.drain()
        await responder.stop()

    asyncio.run(body())
    refused = trail.only("block_ip", "failed")
    assert "status" not in refused.details and "CERTIFICATE_VERIFY_FAILED" in refused.details["error"]
    assert blocked(gw, admin_tls) == []


def test_every_listed_gateway_is_called_and_one_down_is_a_failure(
    gw: GatewayProcess, admin_tls: AdminTls, tmp_path: Path, refused_port: int
) -> None:
    """Two replicas listed, one of them down: the live one blocks, the record says 1 of 2 and fails."""
    trail = Trail()
    down = f"http://127.0.0.1:{refused_port}"
    cfg = responder_config(gw, admin_tls, gateways=[admin_url(gw), down], attempts=1)

    async def body() -> None:
        responder = responder_for(cfg, tmp_path, trail)
        await responder.start()
        await responder.respond(alert(["block_ip"], ip="198.51.100.99"))
        await responder.drain()
        await responder.stop()

    try:
        asyncio.run(body())
        failed = trail.only("block_ip", "failed")
        assert (failed.details["succeeded"], failed.details["attempted"]) == (1, 2)
        assert failed.details["error"].startswith(down) and "status" not in failed.details
        assert [entry["ip"] for entry in blocked(gw, admin_tls)] == ["198.51.100.99"]
    finally:
        httpx.delete(
            f"{admin_url(gw)}/blocklist?ip=198.51.100.99", headers=gw.admin_headers(), verify=admin_tls.trust
        )
