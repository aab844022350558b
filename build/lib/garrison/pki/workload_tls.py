"""TLS for workload identities: mutual-TLS contexts on a certificate file, and the SPIFFE peer check.

A workload certificate names no host, so ``check_hostname`` is off; OpenSSL verifies the chain against
the trust bundle (and refuses an expired certificate), and ``require_spiffe_id`` then compares the
peer's SPIFFE ID (its single URI SAN, ``pki/identity.spiffe_id``) with the one the caller meant to
reach. Files are written whole and replaced atomically, mode 0600.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from garrison.pki.identity import spiffe_id

__all__ = [
    "Files",
    "PeerIdentityMismatch",
    "client_context",
    "peer_spiffe_id",
    "require_spiffe_id",
    "server_context",
    "write_private",
]


class PeerIdentityMismatch(ssl.SSLError):
    """The peer's certificate verified, but names another SPIFFE ID than the one required."""


Files = tuple[Path, Path | None]  # the certificate chain, and the key (None: in the chain's file)


def server_context(files: Files, bundle: bytes) -> ssl.SSLContext:
    """Serves ``files`` (chain and key) and requires a client certificate under ``bundle``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(context, files, bundle)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(files: Files, bundle: bytes) -> ssl.SSLContext:
    """Presents ``files`` and verifies the server's chain under ``bundle`` (not its name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # SPIFFE: the peer's ID is checked by require_spiffe_id
    _common(context, files, bundle)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _common(context: ssl.SSLContext, files: Files, bundle: bytes) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(*files)
    context.load_verify_locations(cadata=bundle.decode("ascii"))
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The verified peer's SPIFFE ID, or None (no certificate, or not an X.509-SVID)."""
    if ssl_object is None:
        return None
    return spiffe_id(ssl_object.getpeercert())


def require_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> str:
    """The verified peer's SPIFFE ID, which must be ``expected``: raises ``PeerIdentityMismatch``."""
    found = peer_spiffe_id(ssl_object)
    if found != expected:
        raise PeerIdentityMismatch(f"the peer is {found or 'no SPIFFE identity'}, not {expected}")
    return expected


def write_private(path: Path, data: bytes) -> None:
    """``data`` to ``path``, mode 0600, replaced atomically (a reader sees the old file or the new)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
