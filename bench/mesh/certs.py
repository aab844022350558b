"""The run's certificates, made with garrison.pki.authority in the run's temporary directory.

One root and one intermediate for the trust domain; workload certificates (SPIFFE ID only) for the
two sidecars, and for the nginx pair a client certificate (orders) and a server certificate for the
inbound half that also names ``localhost``: nginx checks the server's name, not a SPIFFE ID. Keys are
written 0600 and removed with the directory at the end of the run; none is ever committed.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from garrison.pki.authority import (
    Authority,
    new_intermediate,
    new_key,
    new_root,
    pem,
    request_for,
    sign_server,
    sign_workload,
    workload_id,
)

TRUST_DOMAIN = "bench.local"
LIFETIME = dt.timedelta(hours=2)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, ca: Authority) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(_key_pem(key))
    (directory / "cert.pem").write_bytes(pem(cert, *ca.chain()))


def make_certificates(certs: Path) -> None:
    """certs/bundle.pem, and cert.pem + key.pem (+ bundle.pem) in certs/orders, certs/payments and
    certs/payments-nginx."""
    now = dt.datetime.now(dt.UTC)
    root = new_root(TRUST_DOMAIN, now=now)
    ca = new_intermediate(root, TRUST_DOMAIN, now=now)
    bundle = pem(root.certificate)
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "bundle.pem").write_bytes(bundle)
    for service in ("orders", "payments"):
        key = new_key()
        spiffe_id = workload_id(TRUST_DOMAIN, service)
        cert = sign_workload(ca, request_for(key), spiffe_id, now=now, lifetime=LIFETIME)
        _write(certs / service, key, cert, ca)
        (certs / service / "bundle.pem").write_bytes(bundle)
    key = new_key()
    server = sign_server(
        ca,
        key.public_key(),
        workload_id(TRUST_DOMAIN, "payments"),
        dns_names=["localhost"],
        addresses=["127.0.0.1"],
        now=now,
        lifetime=LIFETIME,
    )
    _write(certs / "payments-nginx", key, server, ca)
