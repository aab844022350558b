"""What the sidecar needs from a workload identity, and a static one read from files.

The sidecar uses ``garrison.pki.workload.WorkloadIdentity`` (joined to the CA, renewed in place,
following the CA's state) through the ``SidecarIdentity`` protocol only. ``FileIdentity`` is the same
shape from a directory of PEM files (``--cert-dir``: ``cert.pem``, ``key.pem``, ``bundle.pem``):
``reload()`` loads the files again INTO the live contexts, so new handshakes use the new certificate
and open connections stay up; ``publish`` hands a state to the callbacks (tests, tools).

The sidecar never copies a context: listeners and pools hold the identity's own objects (or ask it
again for each new connection), which is what makes rotation in place work.
"""

from __future__ import annotations

import datetime as dt
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from garrison.pki.certinfo import leaf_info

__all__ = ["FileIdentity", "MeshView", "SidecarIdentity", "StateCallback"]


class MeshView(Protocol):
    """The part of the CA's published state (pki/workload.MeshState) the sidecar acts on."""

    @property
    def revoked(self) -> frozenset[str]: ...  # SPIFFE IDs

    @property
    def quarantined(self) -> frozenset[str]: ...  # service names


StateCallback = Callable[[MeshView], None]


class SidecarIdentity(Protocol):
    @property
    def spiffe_id(self) -> str: ...

    def server_context(self) -> ssl.SSLContext: ...

    def client_context(self) -> ssl.SSLContext: ...

    def on_state(self, callback: Callable[[MeshView], None]) -> None: ...


@dataclass(frozen=True)
class StaticState:
    """A state published by hand (``FileIdentity.publish``)."""

    revoked: frozenset[str] = field(default_factory=frozenset)
    quarantined: frozenset[str] = field(default_factory=frozenset)


def _contexts(bundle: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED  # a peer without a verified certificate never gets in
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # SVIDs carry no DNS name: the SPIFFE ID is checked by the caller
    client.verify_mode = ssl.CERT_REQUIRED
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_verify_locations(cafile=str(bundle))
    return server, client


def certificate_expiry(identity: SidecarIdentity) -> float | None:
    """When the identity's certificate expires (Unix time), where it says (WorkloadIdentity and
    FileIdentity do); the sidecar's metrics report it."""
    not_after = getattr(identity, "not_after", None)
    return not_after.timestamp() if isinstance(not_after, dt.datetime) else None


class FileIdentity:
    """A workload identity from files; see the module docstring."""

    def __init__(self, cert: Path, key: Path, bundle: Path) -> None:
        self._cert, self._key = cert, key
        self._server, self._client = _contexts(bundle)
        self._callbacks: list[StateCallback] = []
        self._state: MeshView | None = None
        self._spiffe_id = ""
        self._not_after = dt.datetime.min.replace(tzinfo=dt.UTC)
        self.reload()

    @classmethod
    def from_directory(cls, directory: Path) -> FileIdentity:
        return cls(directory / "cert.pem", directory / "key.pem", directory / "bundle.pem")

    def __repr__(self) -> str:
        return f"FileIdentity({self._spiffe_id!r})"

    @property
    def spiffe_id(self) -> str:
        return self._spiffe_id

    def reload(self) -> None:
        """Load the certificate and key again, into the live contexts (rotation in place).

        The pair is read once and checked before a live context sees it: OpenSSL, given a key that
        does not match (files caught half-replaced), drops the certificate it had just loaded and
        the context would serve none. So the pair goes first into a scratch context, where OpenSSL
        checks that the key matches the certificate; a pair that does not match raises, and the
        live contexts keep the certificate they have.
        """
        cert_pem, key_pem = self._cert.read_bytes(), self._key.read_bytes()
        info = leaf_info(cert_pem)
        found = info.spiffe_id
        if found is None:
            raise ValueError(f"{self._cert} is not a workload certificate (no single SPIFFE ID)")
        with tempfile.TemporaryDirectory(prefix="garrison-identity-") as scratch:  # 0700
            cert_file, key_file = Path(scratch) / "cert.pem", Path(scratch) / "key.pem"
            cert_file.write_bytes(cert_pem)
            key_file.touch(0o600)
            key_file.write_bytes(key_pem)
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert_file), str(key_file))
            except ssl.SSLError as exc:  # KEY_VALUES_MISMATCH, or a file OpenSSL cannot read
                raise ValueError(
                    f"{self._key} does not match {self._cert} (being replaced?): {exc.reason or exc}"
                ) from None
            for context in (self._server, self._client):
                context.load_cert_chain(str(cert_file), str(key_file))
        self._spiffe_id = found
        self._not_after = info.not_after

    @property
    def not_after(self) -> dt.datetime:
        """When the loaded certificate expires."""
        return self._not_after

    def server_context(self) -> ssl.SSLContext:
        return self._server

    def client_context(self) -> ssl.SSLContext:
        return self._client

    def on_state(self, callback: StateCallback) -> None:
        self._callbacks.append(callback)
        if self._state is not None:
            callback(self._state)

    def publish(self, state: MeshView) -> None:
        self._state = state
        for callback in self._callbacks:
            callback(state)
