"""The CA's own TLS: a server certificate from its issuing intermediate, and a context that follows rotations.

The CA serves with ``spiffe://<td>/ca`` (plus ``localhost``, 127.0.0.1 and ::1, so curl with the bundle
can check the name too), issued by the CA's current intermediate with a fresh key at every start; the
key is written 0600 under ``state_dir/ca/server`` only because OpenSSL loads certificates from files.

Client certificates are optional (a join has none) and, when sent, verified against the trust bundle.
A rotation changes both: a new intermediate means a new server certificate (else a workload that has
already dropped the old root could not verify the CA), and a bundle change means another set of roots
to verify renewals against. OpenSSL cannot forget a root in a live context, so each change builds a new
context and the listening context's SNI callback (called for every handshake, with or without SNI)
moves each new connection onto the current one. Connections already open are untouched.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from garrison.pki.authority import new_key, pem, sign_server, trust_domain_id
from garrison.pki.authority_files import AuthorityFiles
from garrison.telemetry import logging as log

__all__ = ["SERVER_LIFETIME", "CaTls"]

SERVER_LIFETIME = dt.timedelta(days=1)
SERVER_NAMES = ("localhost",)
SERVER_ADDRESSES = ("127.0.0.1", "::1")


class CaTls:
    """The CA listener's TLS contexts: ``listening`` is given to the server once; ``refresh`` keeps
    the certificate and the roots current."""

    def __init__(self, files: AuthorityFiles, trust_domain: str, clock: Callable[[], dt.datetime]) -> None:
        self._files = files
        self._trust_domain = trust_domain
        self._clock = clock
        self._directory = files.directory / "server"
        self._issuer_serial = 0
        self._bundle = b""
        self._certificate: x509.Certificate | None = None
        self._current = self._build()
        self.listening = self._current
        self.listening.sni_callback = self._choose

    @property
    def spiffe_id(self) -> str:
        return f"{trust_domain_id(self._trust_domain)}/ca"

    def refresh(self) -> bool:
        """A new context if the issuing intermediate or the bundle changed, or the server certificate
        is past half its life; True when it did."""
        issuing = self._files.issuing()
        bundle = self._files.bundle_file.read_bytes()
        certificate = self._certificate
        assert certificate is not None
        half_life = (
            certificate.not_valid_before_utc
            + (certificate.not_valid_after_utc - certificate.not_valid_before_utc) / 2
        )
        if (
            issuing.certificate.serial_number == self._issuer_serial
            and bundle == self._bundle
            and self._clock() < half_life
        ):
            return False
        self._current = self._build()
        log.log("mesh.ca.tls_refreshed", issuer=f"{self._issuer_serial:x}")
        return True

    def _choose(
        self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext
    ) -> None:
        if self._current is not context:
            connection.context = self._current

    def _build(self) -> ssl.SSLContext:
        issuing = self._files.issuing()
        bundle = self._files.bundle_file.read_bytes()
        key = new_key()
        addresses = [str(ipaddress.ip_address(address)) for address in SERVER_ADDRESSES]
        certificate = sign_server(
            issuing,
            key.public_key(),
            self.spiffe_id,
            dns_names=SERVER_NAMES,
            addresses=addresses,
            now=self._clock(),
            lifetime=SERVER_LIFETIME,
        )
        cert_file, key_file = self._write(pem(certificate, *issuing.chain()), key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=bundle.decode("ascii"))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        self._issuer_serial = issuing.certificate.serial_number
        self._bundle = bundle
        self._certificate = certificate
        return context

    def _write(self, chain: bytes, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        paths = (self._directory / "cert.pem", self._directory / "key.pem")
        for path, data in zip(paths, (chain, key_pem), strict=True):
            temporary = path.with_name(f".{path.name}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        return paths
