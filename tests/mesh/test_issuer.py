"""The CA's decisions on SQLite and PostgreSQL: join once, renew as yourself, nothing for the revoked."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from db_backend import Backend
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.mesh.ca import tables
from garrison.mesh.ca.attestors import AttestationRefused
from garrison.mesh.ca.issuer import Issuer, Refused
from garrison.mesh.ca.join_tokens import JoinTokens
from garrison.pki.authority import new_key, request_for
from garrison.pki.authority_files import AuthorityFiles
from garrison.pki.kek import KeyEncryption
from garrison.telemetry import logging as log

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)
ORDERS = "spiffe://shop.local/svc/orders"


@pytest.fixture
def events() -> Iterator[Callable[[], list[dict[str, object]]]]:
    """What the code under test logged so far, one dict per line."""
    stream = io.StringIO()
    log.configure("test", stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    log.configure("garrison", sys.stderr)


def make_issuer(engine: AsyncEngine, state: Path) -> tuple[Issuer, JoinTokens]:
    kek = KeyEncryption(os.urandom(32))
    files = AuthorityFiles(state / "ca", kek)
    if not files.exists():
        files.init("shop.local", now=NOW)
    tokens = JoinTokens(engine, kek, lambda: NOW)
    return Issuer(files, tokens, engine, lambda: NOW), tokens


def test_join_then_renew_keeps_the_identity(backend: Backend, tmp_path: Path) -> None:
    async def body(engine: AsyncEngine) -> None:
        issuer, tokens = make_issuer(engine, tmp_path)
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        joined = await issuer.join(token, request_for(new_key()))
        assert joined.spiffe_id == ORDERS
        chain = x509.load_pem_x509_certificates(joined.chain_pem)
        assert chain[0] == joined.certificate and len(chain) == 2  # leaf, intermediate
        assert len(x509.load_pem_x509_certificates(joined.bundle_pem)) == 1
        renewed = await issuer.renew(joined.certificate, request_for(new_key()))
        assert renewed.spiffe_id == ORDERS and renewed.certificate != joined.certificate
        with pytest.raises(Refused, match="already used"):
            await issuer.join(token, request_for(new_key()))
        async with engine.connect() as connection:
            rows = (await connection.execute(select(tables.certificates))).all()
        assert sorted(row.obtained_by for row in rows) == ["join", "renewal"]

    backend.run(body)


class ClusterAttestor:
    """An attestor of another kind, as a Kubernetes one would plug in: a signed claim names the service."""

    name = "cluster"
    fields = ("service_account",)

    def __init__(self) -> None:
        self.accounts = {"sa-payments": "spiffe://shop.local/svc/payments"}

    async def attest(self, evidence: Mapping[str, str]) -> str:
        found = self.accounts.get(evidence["service_account"])
        if found is None:
            raise AttestationRefused("unknown service account")
        return found


def test_another_attestor_plugs_in_beside_join_tokens(backend: Backend, tmp_path: Path) -> None:
    async def body(engine: AsyncEngine) -> None:
        kek = KeyEncryption(os.urandom(32))
        files = AuthorityFiles(tmp_path / "ca", kek)
        files.init("shop.local", now=NOW)
        tokens = JoinTokens(engine, kek, lambda: NOW)
        issuer = Issuer(files, tokens, engine, lambda: NOW, attestors=[ClusterAttestor()])
        assert sorted(issuer.attestors) == ["cluster", "join_token"]
        joined = await issuer.attest("cluster", {"service_account": "sa-payments"}, request_for(new_key()))
        assert joined.spiffe_id == "spiffe://shop.local/svc/payments"
        with pytest.raises(Refused, match="unknown service account"):
            await issuer.attest("cluster", {"service_account": "sa-x"}, request_for(new_key()))
        with pytest.raises(Refused, match="unknown attestor"):
            await issuer.attest("aws_iid", {}, request_for(new_key()))
        await issuer.revoke("spiffe://shop.local/svc/payments", "lost")  # revocation holds for every attestor
        with pytest.raises(Refused, match="revoked"):
            await issuer.attest("cluster", {"service_account": "sa-payments"}, request_for(new_key()))
        # The one-time token still works beside it.
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        assert (
            await issuer.attest("join_token", {"token": token}, request_for(new_key()))
        ).spiffe_id == ORDERS

    backend.run(body)


def test_a_revoked_identity_gets_nothing_until_reinstated(backend: Backend, tmp_path: Path) -> None:
    async def body(engine: AsyncEngine) -> None:
        issuer, tokens = make_issuer(engine, tmp_path)
        joined = await issuer.join(
            await tokens.mint(ORDERS, dt.timedelta(minutes=10)), request_for(new_key())
        )
        await issuer.revoke(ORDERS, "compromised host")
        await issuer.revoke(ORDERS, "said twice")  # idempotent
        assert await issuer.revoked() == [ORDERS]
        with pytest.raises(Refused, match="revoked"):
            await issuer.renew(joined.certificate, request_for(new_key()))
        with pytest.raises(Refused, match="revoked"):
            await issuer.join(await tokens.mint(ORDERS, dt.timedelta(minutes=10)), request_for(new_key()))
        assert await issuer.reinstate(ORDERS)
        assert not await issuer.reinstate(ORDERS)
        assert (await issuer.renew(joined.certificate, request_for(new_key()))).spiffe_id == ORDERS

    backend.run(body)


def test_refusals_say_why_are_logged_and_a_bad_csr_spends_no_token(
    backend: Backend, tmp_path: Path, events: Callable[[], list[dict[str, object]]]
) -> None:
    minted: list[str] = []

    async def body(engine: AsyncEngine) -> None:
        issuer, tokens = make_issuer(engine, tmp_path)
        token = await tokens.mint(ORDERS, dt.timedelta(minutes=10))
        minted.append(token)
        rsa_csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
        )
        with pytest.raises(Refused, match="P-256"):
            await issuer.join(token, rsa_csr)
        assert (await issuer.join(token, request_for(new_key()))).spiffe_id == ORDERS
        with pytest.raises(Refused, match="names no workload"):
            await issuer.renew(_certificate_without_uri(), request_for(new_key()))

    backend.run(body)
    logged = events()
    refused = [event for event in logged if event["event"] == "mesh.ca.refused"]
    assert [event["reason"] for event in refused] == ["workload keys are ECDSA P-256", "no SPIFFE ID"]
    issued = [event for event in logged if event["event"] == "mesh.ca.issued"]
    assert issued[0]["spiffe_id"] == ORDERS and issued[0]["how"] == "join" and "serial" in issued[0]
    assert all(minted[0] not in json.dumps(event) for event in logged)


def _certificate_without_uri() -> x509.Certificate:
    key = new_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "orders")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
