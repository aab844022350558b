"""A TLS listener that verifies optional client certificates against the mesh trust bundle, followed
without a restart: the vault's listener (cert logins) and the audit collector's intake (emitters
authenticated by their workload certificate) share it.

- The context asks every client for a certificate (``CERT_OPTIONAL``: a client with a token sends
  none) and verifies one that is sent against ``state_dir/ca/bundle.pem``, the file the mesh CA
  publishes: a certificate from another CA, an expired one, or one not for client authentication
  fails the handshake. Without a bundle (no mesh CA yet) no certificate can pass.
- OpenSSL cannot forget a root in a live context, so a bundle change (a root rotation) builds a new
  context and the listening context's SNI callback, called for every handshake, moves each new
  connection onto the current one (as the mesh CA's own listener does). ``refresh`` is called every
  second by the component; connections already open are untouched.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from garrison.pki.server_tls import ask_for_client_certificates, server_context
from garrison.telemetry import logging as log

__all__ = ["ListenerTls", "peer_certificate_pem"]


class ListenerTls:
    """``listening`` is given to the server once; ``refresh`` follows the trust bundle."""

    def __init__(
        self, cert: Path, key: Path, min_version: str, bundle: Path, component: str = "vault"
    ) -> None:
        self._cert, self._key, self._min_version, self._bundle_file = cert, key, min_version, bundle
        self._component = component
        self._bundle = self._read_bundle()
        self._current = self._build()
        self.listening = self._current
        self.listening.sni_callback = self._choose

    @property
    def verifies_clients(self) -> bool:
        return self._bundle is not None

    def _read_bundle(self) -> bytes | None:
        try:
            return self._bundle_file.read_bytes()
        except FileNotFoundError:
            return None

    def _build(self) -> ssl.SSLContext:
        context = server_context(self._cert, self._key, self._min_version)
        if self._bundle is not None:
            ask_for_client_certificates(context, self._bundle_file)
        else:
            # Asked for, but with no root to verify against, no certificate passes. The listening
            # context asks anyway because a connection moved to a later context (SNI callback) keeps
            # the verify mode it started with: a bundle published after start must still apply.
            context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def refresh(self) -> bool:
        """A new context when the bundle changed; True when it did. A bundle that does not load keeps
        the current context (and says so): a half-written file must not cut logins off."""
        bundle = self._read_bundle()
        if bundle == self._bundle:
            return False
        previous = self._bundle
        self._bundle = bundle
        try:
            self._current = self._build()
        except (ssl.SSLError, OSError) as exc:
            self._bundle = previous
            log.warn(
                f"{self._component}.tls.bundle_unusable",
                path=str(self._bundle_file),
                error=type(exc).__name__,
            )
            return False
        log.log(
            f"{self._component}.tls.bundle_reloaded",
            path=str(self._bundle_file),
            verifies_clients=bundle is not None,
        )
        return True

    def _choose(
        self, connection: ssl.SSLObject | ssl.SSLSocket, name: str | None, context: ssl.SSLContext
    ) -> None:
        if self._current is not context:
            connection.context = self._current


def peer_certificate_pem(transport: asyncio.BaseTransport) -> str | None:
    """The verified client certificate of a TLS connection (PEM), or None."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der) if der else None
