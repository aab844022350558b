"""A hardened server context for Garrison's listeners, apart from the ``auto`` certificates.

Apart from pki/tls.py (which makes certificates, with ``cryptography``) so that a process that only
serves certificates it is given (a sidecar's admin listener) does not load ``cryptography``.
pki/tls.py re-exports these names.
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["MODERN_CIPHERS", "ask_for_client_certificates", "server_context"]

MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert_file: Path, key_file: Path, min_version: str = "1.2") -> ssl.SSLContext:
    """TLS 1.2+ (or 1.3 only), ECDHE + AEAD ciphers, no compression or renegotiation, ALPN http/1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    context.set_ciphers(MODERN_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file)
    return context


def ask_for_client_certificates(context: ssl.SSLContext, ca_file: Path) -> None:
    """Ask every client for a certificate (routes with ``require: mtls`` need one) and verify any
    that is sent against ``ca_file``: a certificate that does not chain to it, has expired, or is not
    for client authentication (extended key usage) fails the handshake. A client that sends none
    still connects; routes that require one refuse its requests with 403."""
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cafile=ca_file)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
