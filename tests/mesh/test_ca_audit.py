"""A real `garrison ca serve` sending ``ca.join``, ``ca.renew`` (refused), ``ca.revoke`` and
``ca.quarantine`` to an intake that follows the contract (tests/helpers/audit_receiver.py), with the
emit token, over TLS verified against the mesh CA's bundle: the collector's ``auto`` certificate is
issued by the CA here, with pki/tls.py as the collector gets it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from audit_receiver import IntakePki, Receiver, ThreadedReceiver, write_token
from ca_harness import CaProcess
from cryptography.hazmat.primitives import serialization
from waiting import wait_until

from garrison.config.loader import load_config
from garrison.events.schema import Event
from garrison.pki.authority import new_key, request_for
from garrison.pki.tls import CaIssuer, ensure_ca_certificate

pytestmark = pytest.mark.process


@pytest.fixture
def ca_and_receiver(tmp_path: Path) -> Iterator[tuple[CaProcess, ThreadedReceiver]]:
    ca = CaProcess(tmp_path).init()
    issuer = CaIssuer.for_config(load_config(ca.config_path).config, "audit")
    assert issuer is not None
    cert, key = ensure_ca_certificate(ca.state_dir / "audit" / "tls", ["localhost"], issuer)
    pki = IntakePki(None, cert, key, write_token(ca.state_dir))
    receiver = ThreadedReceiver(Receiver(pki)).start()
    config = yaml.safe_load(ca.config_path.read_text())
    config["audit"] = {"listen": f"127.0.0.1:{receiver.receiver.port}", "emitter": {"flush_interval": 0.05}}
    ca.config_path.write_text(yaml.safe_dump(config))
    ca.start()
    try:
        yield ca, receiver
    finally:
        ca.stop()
        receiver.stop()


def test_the_ca_reports_joins_refused_renewals_revocations_and_quarantines(
    ca_and_receiver: tuple[CaProcess, ThreadedReceiver],
) -> None:
    ca, receiver = ca_and_receiver
    member = ca.member_cert()  # inventory joins
    csr = request_for(new_key()).public_bytes(serialization.Encoding.PEM).decode()
    assert ca.api("POST", "/v1/join", {"token": "not-a-token", "csr": csr}).status_code == 403
    inventory = "spiffe://shop.local/svc/inventory"
    assert ca.admin("POST", "/revocations?service=inventory&reason=compromised").status_code == 200
    assert ca.api("POST", "/v1/renew", {"csr": csr}, cert=member).status_code == 403
    assert ca.admin("POST", "/quarantine?service=payments&reason=lateral").status_code == 200
    assert ca.admin("DELETE", "/quarantine?service=payments").status_code == 200

    def kinds() -> list[tuple[str, str]]:
        return [(event.type, event.outcome) for event in receiver.events()]

    expected = [
        ("ca.join", "success"),
        ("ca.join", "failure"),
        ("ca.revoke", "success"),
        ("ca.renew", "failure"),
        ("ca.quarantine", "success"),
        ("ca.quarantine", "success"),
    ]
    wait_until(lambda: kinds() == expected, timeout=30, what=lambda: f"{kinds()}\n{ca.stderr()}")
    joined, refused, revoked, renewal, quarantined, released = receiver.events()
    assert (joined.actor.service, joined.details) == (inventory, {"attestor": "join_token"})
    assert refused.details == {"reason": "token", "attestor": "join_token"}
    assert (revoked.target, revoked.details) == (inventory, {"action": "revoke", "reason": "compromised"})
    assert (renewal.actor.service, renewal.details) == (inventory, {"reason": "revoked"})
    assert (quarantined.target, quarantined.details["action"]) == ("payments", "quarantine")
    assert released.details == {"action": "release"}
    assert all(isinstance(event, Event) and event.component == "ca" for event in receiver.events())
    assert {batch.origin for batch in receiver.receiver.batches} == {"token"}
