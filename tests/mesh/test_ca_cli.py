"""`garrison ca ...`, `garrison quarantine`: through the running CA's admin API, or on its files and
database when it is down; `ca status` shows both."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from ca_harness import CaProcess
from cryptography import x509
from ports import reserved_port

pytestmark = pytest.mark.process


def test_cli_with_the_ca_down_then_up(tmp_path: Path) -> None:
    with reserved_port() as port:
        _down_then_up(CaProcess(tmp_path, admin={"listen": f"127.0.0.1:{port}"}, intermediate_ttl="30d"))


def _down_then_up(ca: CaProcess) -> None:
    assert "garrison ca init" in ca.cli("ca", "status").stderr
    ca.init()
    issuing = x509.load_pem_x509_certificates((ca.state_dir / "ca" / "issuing.pem").read_bytes())[0]
    assert issuing.not_valid_after_utc - issuing.not_valid_before_utc <= dt.timedelta(days=30, minutes=1)
    again = ca.cli("ca", "init")
    assert again.returncode == 1 and "already exists" in again.stderr
    # Down: straight to the database.
    token = ca.cli("ca", "join-token", "--service", "orders", "--ttl", "5m").stdout.strip()
    assert token.startswith("gjt_")
    assert ca.cli("ca", "revoke", "--service", "payments", "--reason", "lost laptop").returncode == 0
    assert ca.cli("ca", "join-token", "--service", "../etc", "--ttl", "5m").returncode == 1
    assert "between 1 s and 1 day" in ca.cli("ca", "join-token", "--service", "orders", "--ttl", "2d").stderr
    gateway_token = ca.cli("ca", "join-token", "--spiffe-id", "spiffe://shop.local/gateway").stdout.strip()
    ca.start()
    try:
        state = ca.state().json()
        assert state["revoked"] == ["spiffe://shop.local/svc/payments"]
        assert ca.api("POST", "/v1/join", {"token": token, "csr": _csr()}).status_code == 200
        gateway = ca.api("POST", "/v1/join", {"token": gateway_token, "csr": _csr()})
        assert gateway.json()["spiffe_id"] == "spiffe://shop.local/gateway"
        # Up: through the admin API, published at once.
        version = state["version"]
        assert ca.cli("quarantine", "inventory", "--reason", "alert").returncode == 0
        polled = ca.state(version).json()
        assert polled["quarantined"] == ["inventory"]
        up_token = ca.cli("ca", "join-token", "--service", "orders").stdout.strip()
        assert ca.api("POST", "/v1/join", {"token": up_token, "csr": _csr()}).status_code == 200
        assert ca.cli("ca", "reinstate", "--service", "payments").returncode == 0
        assert ca.cli("unquarantine", "inventory").returncode == 0
        status = ca.cli("ca", "status")
        assert status.returncode == 0, status.stderr
        assert "issuing" in status.stdout and "none" in status.stdout
    finally:
        ca.stop()


def _csr() -> str:
    from cryptography.hazmat.primitives import serialization

    from garrison.pki.authority import new_key, request_for

    return request_for(new_key()).public_bytes(serialization.Encoding.PEM).decode()
