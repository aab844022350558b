"""TLS for Garrison's listeners (gateway, identity provider, admin): a hardened server context, and the
``auto`` certificates.

``cert: auto`` makes a server certificate under ``state_dir/tls`` (private keys 0600), renewed when it
nears expiry or when the configured names change (checked at start and at each reload). When Garrison's
CA exists (``mesh`` configured and ``garrison ca init`` run: ``state_dir/ca``), the certificate comes
from the CA's issuing intermediate (``pki/authority.sign_server``: the component's SPIFFE ID beside the
same DNS and IP names), so clients trust ``state_dir/ca/bundle.pem``; it is also renewed when the
intermediate changed (a rotation). Without a CA, a local self-made CA signs it, as before.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from garrison.config.model import GarrisonConfig, TlsConfig
from garrison.pki.authority import sign_server
from garrison.pki.authority_files import AuthorityFiles
from garrison.pki.kek import KeyEncryption
from garrison.pki.server_tls import MODERN_CIPHERS, ask_for_client_certificates, server_context

__all__ = [
    "MODERN_CIPHERS",
    "CaIssuer",
    "ask_for_client_certificates",
    "auto_trust_file",
    "ensure_auto_certificate",
    "ensure_ca_certificate",
    "mesh_ca_issues_auto",
    "resolve_certificate",
    "server_context",
]

SERVER_CERT_DAYS = 90
CA_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=30)


def mesh_ca_issues_auto(config: GarrisonConfig) -> bool:
    """``auto`` listener certificates come from the mesh CA: the mesh is configured and the CA made."""
    return config.mesh is not None and (config.state_dir / "ca" / "issuing.pem").exists()


@dataclass(frozen=True)
class CaIssuer:
    """Garrison's CA as the issuer of ``auto`` listener certificates: its files and the SPIFFE ID the
    listener's certificate carries (``spiffe://<td>/gateway``, ``spiffe://<td>/identity``)."""

    state_dir: Path  # the deployment's: the CA in state_dir/ca, its key-encryption key as the CA finds it
    spiffe_id: str

    @classmethod
    def for_config(cls, config: GarrisonConfig, component: str) -> CaIssuer | None:
        """The CA when the mesh is configured and the CA has been made, else None (local CA)."""
        if not mesh_ca_issues_auto(config):
            return None
        return cls(config.state_dir, f"spiffe://{config.trust_domain}/{component}")

    def files(self) -> AuthorityFiles:
        return AuthorityFiles(self.state_dir / "ca", KeyEncryption.load(self.state_dir))


def auto_trust_file(config: GarrisonConfig, component_dir: Path) -> Path:
    """What a client trusts for a listener with ``tls.cert: auto`` whose state is ``component_dir``
    (``state_dir`` for the gateway, ``state_dir/identity`` for the provider): the mesh CA's bundle when
    the certificate comes from it (``CaIssuer.for_config``), else the listener's own local CA."""
    if mesh_ca_issues_auto(config):
        return config.state_dir / "ca" / "bundle.pem"
    return component_dir / "tls" / "ca.pem"


def resolve_certificate(
    tls: TlsConfig, state_dir: Path, config_dir: Path, ca: CaIssuer | None = None
) -> tuple[Path, Path]:
    """The (certificate, key) files to serve, creating the ``auto`` ones when needed (from ``ca``
    when given)."""
    if tls.cert != "auto":
        assert tls.key is not None
        return _relative(Path(tls.cert), config_dir), _relative(Path(tls.key), config_dir)
    if ca is not None:
        return ensure_ca_certificate(state_dir / "tls", tls.server_names, ca)
    return ensure_auto_certificate(state_dir / "tls", tls.server_names)


def ensure_ca_certificate(directory: Path, names: list[str], ca: CaIssuer) -> tuple[Path, Path]:
    """``ca-server.pem`` (leaf and intermediate) and ``ca-server.key`` from the CA's issuing
    intermediate; issued again near expiry, when the names change, or after an intermediate rotation."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_file, key_file = directory / "ca-server.pem", directory / "ca-server.key"
    files = ca.files()
    issuing_pem = (files.directory / "issuing.pem").read_bytes()
    current_issuer = x509.load_pem_x509_certificates(issuing_pem)[0]
    if _valid(cert_file, key_file, names=names) and _issued_by(cert_file, current_issuer):
        return cert_file, key_file
    issuing = files.issuing()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = sign_server(
        issuing,
        key.public_key(),
        ca.spiffe_id,
        dns_names=names,
        addresses=["127.0.0.1", "::1"],
        now=dt.datetime.now(dt.UTC),
        lifetime=dt.timedelta(days=SERVER_CERT_DAYS),
    )
    _write_key(key_file, key)
    chain = cert.public_bytes(serialization.Encoding.PEM)
    chain += issuing.certificate.public_bytes(serialization.Encoding.PEM)
    temporary = cert_file.with_name(f".{cert_file.name}.tmp")
    temporary.write_bytes(chain)
    temporary.replace(cert_file)
    return cert_file, key_file


def _issued_by(cert_file: Path, issuer: x509.Certificate) -> bool:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.issuer == issuer.subject


def _relative(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def ensure_auto_certificate(directory: Path, names: list[str]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_file, ca_key_file = directory / "ca.pem", directory / "ca.key"
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    if not _valid(ca_cert_file, ca_key_file, names=None):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(ca_key_file, ca_key)
        ca_cert_file.write_bytes(_ca_certificate(ca_key).public_bytes(serialization.Encoding.PEM))
    if not _valid(cert_file, key_file, names=names):
        loaded_key = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        assert isinstance(loaded_key, ec.EllipticCurvePrivateKey)
        ca_key = loaded_key
        ca_cert = x509.load_pem_x509_certificate(ca_cert_file.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _server_certificate(key, ca_key, ca_cert, names)
        _write_key(key_file, key)
        cert_file.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
        )
    return cert_file, key_file


def _valid(cert_file: Path, key_file: Path, names: list[str] | None) -> bool:
    if not cert_file.exists() or not key_file.exists():
        return False
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    if cert.not_valid_after_utc - RENEW_BEFORE < dt.datetime.now(dt.UTC):
        return False
    if names is None:
        return True
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Garrison local CA")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost")])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
