"""X.509 for workload identity: a root, intermediates, and short-lived SPIFFE certificates (SVIDs).

This is the certificate arithmetic of Garrison's CA, kept apart from where the CA runs (its service,
join tokens and storage live in the mesh) because the gateway's and the identity provider's ``auto``
certificates come from the same authority when one is configured. ``cryptography`` builds and signs
every certificate; this module only decides what goes in them, after the X.509-SVID specification:

- a workload certificate has exactly one URI SAN, its SPIFFE ID, which the CA sets: whatever names a
  CSR asks for are ignored, so a workload cannot name itself; it is not a CA, and it is valid for both
  ends of mutual TLS (``serverAuth`` and ``clientAuth``), ECDSA P-256 only;
- a signing certificate (root, intermediate) carries the trust domain's SPIFFE ID, is a CA with a path
  length that stops a workload certificate from signing others, and may sign certificates only;
- no certificate outlives the one that signed it: a lifetime is cut to the issuer's ``not_after``.

Clocks are passed in (``now``) so that expiry and rotation are tested without waiting.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from garrison.pki.identity import spiffe_id

__all__ = [
    "Authority",
    "CsrRefused",
    "authority_domain",
    "check_request",
    "new_intermediate",
    "new_key",
    "new_root",
    "pem",
    "request_for",
    "sign_server",
    "sign_workload",
    "spiffe_id_of_certificate",
    "trust_domain_id",
    "workload_id",
]

ROOT_LIFETIME = dt.timedelta(days=3650)
INTERMEDIATE_LIFETIME = dt.timedelta(days=365)
WORKLOAD_LIFETIME = dt.timedelta(hours=1)
MAX_WORKLOAD_LIFETIME = dt.timedelta(days=1)
# Backdated so that a peer whose clock runs a little behind the CA's accepts a certificate at once.
CLOCK_SKEW = dt.timedelta(minutes=1)

_SEGMENT = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


class CsrRefused(ValueError):
    """A certificate signing request the CA will not sign; the message says why."""


def trust_domain_id(trust_domain: str) -> str:
    """``spiffe://<trust domain>``: the ID a signing certificate of that domain carries."""
    if not _TRUST_DOMAIN.match(trust_domain):
        raise ValueError(f"not a trust domain (a lower-case DNS name): {trust_domain!r}")
    return f"spiffe://{trust_domain}"


def workload_id(trust_domain: str, service: str) -> str:
    """``spiffe://<trust domain>/svc/<service>``, the one identity a service's certificates carry."""
    if not _SEGMENT.match(service) or service in {".", ".."}:
        raise ValueError(f"not a service name usable in a SPIFFE ID: {service!r}")
    return f"{trust_domain_id(trust_domain)}/svc/{service}"


@dataclass(frozen=True)
class Authority:
    """A signing certificate with its key, and the certificates above it up to (not including) the root.

    ``repr`` shows the subject and expiry only: the key never reaches a log line."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    parents: tuple[x509.Certificate, ...] = ()

    def __repr__(self) -> str:
        subject = self.certificate.subject.rfc4514_string()
        return f"Authority({subject!r}, not_after={self.certificate.not_valid_after_utc.isoformat()})"

    @property
    def is_root(self) -> bool:
        return self.certificate.issuer == self.certificate.subject

    def chain(self) -> tuple[x509.Certificate, ...]:
        """What a workload sends after its own certificate: this one and its parents, roots excluded."""
        if self.is_root:
            return ()
        return (self.certificate, *(parent for parent in self.parents if parent.issuer != parent.subject))


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key: for workloads, generated where it is used and never sent anywhere."""
    return ec.generate_private_key(ec.SECP256R1())


def spiffe_id_of_certificate(certificate: x509.Certificate) -> str | None:
    """``pki/identity.spiffe_id`` for a parsed certificate (the CA's renewal path, where DER arrives,
    not peercert). Here, with the rest of ``cryptography``'s X.509, so that pki/identity.py stays
    light for the processes that only read peers' certificates."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return spiffe_id({"subjectAltName": [("URI", uri) for uri in uris]})


def request_for(key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    """A CSR proving possession of ``key``. It names nothing: the CA decides the identity."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Garrison workload")])
    return x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())


def new_root(trust_domain: str, *, now: dt.datetime, lifetime: dt.timedelta = ROOT_LIFETIME) -> Authority:
    """A self-signed root for ``trust_domain``: it signs intermediates, they sign workloads."""
    key = new_key()
    name = _authority_name(trust_domain, "root", key.public_key())
    certificate = _signing_certificate(name, name, key.public_key(), key, trust_domain, now, lifetime, 1)
    return Authority(certificate, key)


def new_intermediate(
    parent: Authority,
    trust_domain: str,
    *,
    now: dt.datetime,
    lifetime: dt.timedelta = INTERMEDIATE_LIFETIME,
) -> Authority:
    """An intermediate under ``parent`` (path length 0: what it signs cannot sign)."""
    key = new_key()
    name = _authority_name(trust_domain, "intermediate", key.public_key())
    lifetime = _within(parent.certificate, now, lifetime)
    certificate = _signing_certificate(
        name, parent.certificate.subject, key.public_key(), parent.key, trust_domain, now, lifetime, 0
    )
    return Authority(certificate, key, (parent.certificate, *parent.parents))


def sign_workload(
    authority: Authority,
    csr: x509.CertificateSigningRequest,
    spiffe_id: str,
    *,
    now: dt.datetime,
    lifetime: dt.timedelta = WORKLOAD_LIFETIME,
) -> x509.Certificate:
    """An X.509-SVID for ``spiffe_id`` on the CSR's public key, signed by ``authority``.

    Refused: a CSR whose signature does not verify (the requester does not hold the key), a key that
    is not P-256, a lifetime over a day, and an authority that is not an intermediate (roots stay
    offline and sign intermediates only)."""
    if authority.is_root:
        raise CsrRefused("a root signs intermediates only: sign workloads with an intermediate")
    domain = authority_domain(authority.certificate)
    if not spiffe_id.startswith(domain + "/") or spiffe_id.rstrip("/") == domain:
        raise CsrRefused(f"{spiffe_id!r} is not a workload of this authority's trust domain ({domain})")
    public_key = check_request(csr)
    if not dt.timedelta(seconds=1) <= lifetime <= MAX_WORKLOAD_LIFETIME:
        raise CsrRefused(f"a workload certificate lives between 1 s and {MAX_WORKLOAD_LIFETIME}")
    lifetime = _within(authority.certificate, now, lifetime)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Garrison workload")]))
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )


def sign_server(
    authority: Authority,
    public_key: ec.EllipticCurvePublicKey,
    spiffe_id: str,
    *,
    dns_names: Sequence[str] = (),
    addresses: Sequence[str] = (),
    now: dt.datetime,
    lifetime: dt.timedelta = WORKLOAD_LIFETIME,
) -> x509.Certificate:
    """A certificate for a Garrison server of the trust domain itself (the CA's API: its SPIFFE ID
    ``spiffe://<td>/ca``), with DNS and IP names beside the SPIFFE ID so that ordinary HTTPS clients
    (curl with the bundle) can check the name too. Signed by an intermediate, never a root."""
    if authority.is_root:
        raise CsrRefused("a root signs intermediates only")
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    lifetime = _within(authority.certificate, now, lifetime)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Garrison server")]))
        .issuer_name(authority.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()), critical=False
        )
        .sign(authority.key, hashes.SHA256())
    )


def authority_domain(certificate: x509.Certificate) -> str:
    """The ``spiffe://<trust domain>`` a signing certificate of this module carries."""
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise ValueError("not a Garrison signing certificate (no single spiffe:// URI SAN)")
    return uris[0]


def check_request(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey:
    """The CSR's public key if the CA would sign it: proof of possession, ECDSA P-256. Callers that
    spend something to get a certificate (a join token) check first, so a bad CSR spends nothing."""
    if not csr.is_signature_valid:
        raise CsrRefused("the CSR's signature does not verify")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise CsrRefused("workload keys are ECDSA P-256")
    return public_key


def pem(*certificates: x509.Certificate) -> bytes:
    """Certificates as one PEM bundle, in the order given (leaf first for a chain)."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)


def _within(issuer: x509.Certificate, now: dt.datetime, lifetime: dt.timedelta) -> dt.timedelta:
    """``lifetime``, cut so the certificate does not outlive its issuer."""
    return min(lifetime, issuer.not_valid_after_utc - now)


def _authority_name(trust_domain: str, role: str, public_key: ec.EllipticCurvePublicKey) -> x509.Name:
    # The key identifier in the name tells two generations apart in a bundle, in logs and in openssl's
    # output, and keeps two roots made in the same second from sharing a subject.
    key_id = x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()[:12]
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Garrison"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} {role} {key_id}"),
        ]
    )


def _usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _signing_certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signing_key: ec.EllipticCurvePrivateKey,
    trust_domain: str,
    now: dt.datetime,
    lifetime: dt.timedelta,
    path_length: int,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain_id(trust_domain))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False
        )
        .sign(signing_key, hashes.SHA256())
    )
