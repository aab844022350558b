"""The CA as a real process on port 0: join, renew over mTLS, refusals, revocation and quarantine pushed
through the /v1/state long-poll, the admin API's guard, and a kill -9 that loses nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ca_harness import CaProcess
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from garrison.pki.authority import (
    new_intermediate,
    new_key,
    new_root,
    pem,
    request_for,
    sign_workload,
    spiffe_id_of_certificate,
)
from garrison.pki.workload import JoinTokenNeeded, WorkloadError, WorkloadIdentity

pytestmark = pytest.mark.process  # real CA processes (or an in-process CA) and TLS listeners

ORDERS = "spiffe://shop.local/svc/orders"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaProcess]:
    process = CaProcess(tmp_path_factory.mktemp("ca")).init().start()
    yield process
    process.stop()


def csr_pem() -> str:
    return request_for(new_key()).public_bytes(serialization.Encoding.PEM).decode()


def workload(ca: CaProcess, directory: Path, token: str | None = None) -> WorkloadIdentity:
    return WorkloadIdentity(ca.url, directory, ca_bundle=ca.bundle_file, join_token=token, follow_state=False)


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_join_gives_the_services_identity_and_the_token_is_spent(ca: CaProcess, tmp_path: Path) -> None:
    token = ca.join_token("orders")

    async def body() -> None:
        identity = workload(ca, tmp_path / "orders", token)
        await identity.start()
        try:
            assert identity.spiffe_id == ORDERS
            assert (tmp_path / "orders" / "identity.pem").stat().st_mode & 0o777 == 0o600
        finally:
            await identity.close()
        again = workload(ca, tmp_path / "again", token)
        with pytest.raises(JoinTokenNeeded, match="unknown, already used or expired"):
            await again.start()

    run(body())
    answer = ca.api("POST", "/v1/join", {"token": token, "csr": csr_pem()})
    assert answer.status_code == 403 and answer.json()["error"] == "forbidden"


def test_malformed_requests_are_400_and_large_bodies_413(ca: CaProcess) -> None:
    assert ca.api("POST", "/v1/join", {"token": "gjt_x"}).status_code == 400
    unknown = ca.api("POST", "/v1/join", {"attestor": "aws_iid", "csr": csr_pem()})
    assert unknown.status_code == 400 and "join_token" in unknown.json()["message"]
    assert ca.api("POST", "/v1/join", {"attestor": 7, "token": "gjt_x", "csr": csr_pem()}).status_code == 400
    assert ca.api("POST", "/v1/join", ["not", "an", "object"]).status_code == 400
    assert ca.api("POST", "/v1/join", {"token": "gjt_x", "csr": "not a csr"}).json()["error"] == "bad_request"
    assert ca.api("POST", "/v1/join", {"token": "gjt_x", "csr": "x" * 20_000}).status_code == 413
    assert ca.api("GET", "/v1/state?after=-1").status_code == 401  # published to workloads only
    assert ca.api("GET", "/v1/state?after=abc", cert=ca.member_cert()).status_code == 400
    with httpx.Client(verify=ca.api_context(), timeout=10) as client:
        chunked = client.post(f"{ca.url}/v1/join", content=iter([b'{"token": "gjt_x", ', b'"csr": "x"}']))
    assert chunked.status_code == 411
    assert ca.api("GET", "/v1/nothing").status_code == 404
    bundle = ca.api("GET", "/v1/bundle")
    assert bundle.status_code == 200 and bundle.content == ca.bundle_file.read_bytes()


def test_renewal_over_mtls_keeps_the_identity(ca: CaProcess, tmp_path: Path) -> None:
    token = ca.join_token("orders")

    async def body() -> tuple[int, int]:
        identity = workload(ca, tmp_path, token)
        await identity.start()
        first = identity.not_after, _serial(tmp_path)
        await identity.renew()
        await identity.close()
        assert identity.spiffe_id == ORDERS
        return first[1], _serial(tmp_path)

    before, after = run(body())
    assert before != after
    assert ca.api("POST", "/v1/renew", {"csr": csr_pem()}).status_code == 401  # no client certificate
    renewed = ca.api("POST", "/v1/renew", {"csr": csr_pem()}, cert=tmp_path / "identity.pem")
    assert renewed.status_code == 200 and renewed.json()["spiffe_id"] == ORDERS


def test_a_certificate_of_another_ca_cannot_renew(ca: CaProcess, tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    root = new_root("shop.local", now=now)
    intermediate = new_intermediate(root, "shop.local", now=now)
    key = new_key()
    forged = sign_workload(intermediate, request_for(key), ORDERS, now=now)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "forged.pem").write_bytes(pem(forged, intermediate.certificate) + key_pem)
    try:
        answer = ca.api("POST", "/v1/renew", {"csr": csr_pem()}, cert=tmp_path / "forged.pem")
    except httpx.HTTPError:
        return  # the handshake refused it: fine
    assert answer.status_code in (401, 403)


def _serial(directory: Path) -> int:
    return x509.load_pem_x509_certificates((directory / "identity.pem").read_bytes())[0].serial_number


def _version(ca: CaProcess) -> int:
    return int(ca.state().json()["version"])


class LongPoll(threading.Thread):
    """``GET /v1/state?after=N`` in the background; ``answer`` once the CA replied."""

    def __init__(self, ca: CaProcess, after: int) -> None:
        super().__init__(daemon=True)
        self.ca, self.after = ca, after
        self.answer: dict[str, Any] = {}
        self.started_request = threading.Event()

    def run(self) -> None:
        self.started_request.set()
        self.answer = self.ca.state(self.after).json()


def test_revocation_refuses_renewal_and_reaches_the_long_poll(ca: CaProcess, tmp_path: Path) -> None:
    token = ca.join_token("payments")

    async def joined() -> None:
        identity = workload(ca, tmp_path, token)
        await identity.start()
        await identity.close()

    run(joined())
    poll = LongPoll(ca, _version(ca))
    poll.start()
    poll.started_request.wait()
    assert ca.admin("POST", "/revocations?service=payments&reason=compromised").status_code == 200
    poll.join(timeout=10)
    assert "spiffe://shop.local/svc/payments" in poll.answer["revoked"]
    refused = ca.api("POST", "/v1/renew", {"csr": csr_pem()}, cert=tmp_path / "identity.pem")
    assert refused.status_code == 403 and "revoked" in refused.json()["message"]

    async def renew() -> None:
        identity = workload(ca, tmp_path)
        await identity.start()  # loads the saved certificate
        try:
            with pytest.raises(WorkloadError, match="revoked"):
                await identity.renew()
        finally:
            await identity.close()

    run(renew())
    assert ca.admin("DELETE", "/revocations?service=payments").json() == {"reinstated": True}
    assert ca.api("POST", "/v1/renew", {"csr": csr_pem()}, cert=tmp_path / "identity.pem").status_code == 200


def test_quarantine_through_the_admin_api_reaches_the_long_poll(ca: CaProcess) -> None:
    poll = LongPoll(ca, _version(ca))
    poll.start()
    poll.started_request.wait()
    assert ca.admin("POST", "/quarantine?service=inventory&reason=scan").status_code == 200
    poll.join(timeout=10)
    assert poll.answer["quarantined"] == ["inventory"]
    assert ca.admin("GET", "/quarantine").json() == {"quarantined": ["inventory"]}
    assert ca.admin("DELETE", "/quarantine?service=inventory").json() == {"released": True}
    assert ca.state().json()["quarantined"] == []


def test_admin_changes_need_the_credential_and_the_same_origin(ca: CaProcess) -> None:
    for method, path in (
        ("POST", "/join-tokens?service=orders"),
        ("POST", "/revocations?service=orders&reason=x"),
        ("POST", "/quarantine?service=orders"),
        ("DELETE", "/quarantine?service=orders"),
    ):
        assert ca.admin(method, path, token=False).status_code == 401
        assert ca.admin(method, path, Origin="https://evil.example").status_code == 403
    assert ca.admin("GET", "/live", token=False).status_code == 200
    metrics = ca.admin("GET", "/metrics", token=False).text
    assert "garrison_mesh_ca_certificates_issued_total" in metrics
    assert ca.admin("POST", "/join-tokens?service=../x").status_code == 400


def test_a_killed_ca_keeps_its_tokens_and_revocations(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path / "ca").init().start()
    try:
        token = ca.join_token("orders")
        assert ca.admin("POST", "/revocations?service=payments&reason=gone").status_code == 200
        version = _version(ca)
        ca.kill()
        ca.start()
        state = ca.state().json()
        assert state["revoked"] == ["spiffe://shop.local/svc/payments"] and state["version"] >= version
        joined = ca.api("POST", "/v1/join", {"token": token, "csr": csr_pem()})
        assert joined.status_code == 200
        leaf = x509.load_pem_x509_certificates(joined.json()["certificate_chain"].encode())[0]
        assert spiffe_id_of_certificate(leaf) == ORDERS
    finally:
        ca.stop()


def test_the_ca_refuses_to_start_without_init(tmp_path: Path) -> None:
    ca = CaProcess(tmp_path)
    with pytest.raises(RuntimeError, match=r"run `garrison ca init"):
        ca.start()


def test_an_expired_certificate_of_this_ca_cannot_renew(ca: CaProcess, tmp_path: Path) -> None:
    from garrison.pki.authority_files import AuthorityFiles
    from garrison.pki.kek import KeyEncryption

    files = AuthorityFiles(ca.state_dir / "ca", KeyEncryption.load(ca.state_dir))
    issuing = files.issuing()
    key = new_key()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    expired = sign_workload(issuing, request_for(key), ORDERS, now=past, lifetime=dt.timedelta(hours=1))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "expired.pem").write_bytes(pem(expired, *issuing.chain()) + key_pem)
    try:
        answer = ca.api("POST", "/v1/renew", {"csr": csr_pem()}, cert=tmp_path / "expired.pem")
    except httpx.HTTPError:
        return  # the handshake refused it
    assert answer.status_code in (401, 403)
