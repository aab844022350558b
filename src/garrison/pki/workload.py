"""A workload's identity from the Garrison CA: its key, its certificate, and TLS contexts that follow them.

Shared (not in ``mesh/``) because the sidecar, the gateway (``spiffe://<td>/gateway``) and Python
services without a sidecar all hold one. ``WorkloadIdentity``:

- generates its private key locally (it never leaves the process or its directory), joins the CA once
  with a one-time join token (``GARRISON_JOIN_TOKEN`` or an argument), and keeps the certificate, key
  and trust bundle under a directory (files 0600, replaced atomically), so a restart renews with the
  certificate it holds instead of needing a new token;
- renews over mTLS at about half the certificate's life, with jitter so a fleet started together does
  not renew together; the clock and the sleep are injectable;
- keeps one server and one client ``ssl.SSLContext``. A renewal loads the new certificate INTO the
  live contexts (``load_cert_chain``): new handshakes use it, open connections are untouched. A trust
  bundle change cannot be applied in place (OpenSSL cannot forget a CA), so new contexts are built and
  announced through ``on_contexts``; ``server_context()``/``client_context()`` return the current ones;
- follows the CA's ``/v1/state`` long-poll and tells ``on_state`` callbacks which identities are revoked
  and which services quarantined;
- a certificate that lapsed (renewal impossible) raises ``JoinTokenNeeded``.

Peers are verified as SPIFFE says: the chain against the trust bundle (OpenSSL), then the peer's
SPIFFE ID (its single URI SAN) compared by us (``check_hostname`` is off: a workload has no DNS name
in its certificate). ``require_spiffe_id`` and ``connect`` do that for "connect to X, require Y".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "JOIN_TOKEN_ENV",
    "JoinTokenNeeded",
    "MeshState",
    "PeerIdentityMismatch",
    "WorkloadError",
    "WorkloadIdentity",
    "connect",
    "require_spiffe_id",
]

JOIN_TOKEN_ENV = "GARRISON_JOIN_TOKEN"  # noqa: S105 - the variable's name, not a token

Clock = Callable[[], dt.datetime]
Sleep = Callable[[float], Awaitable[None]]


class WorkloadError(Exception):
    """The workload cannot get or keep its identity; the message says what to do."""


class JoinTokenNeeded(WorkloadError):
    """No usable certificate (none yet, or it lapsed): a new join token is needed."""


class PeerIdentityMismatch(ssl.SSLError):
    """The peer's certificate verified, but names another SPIFFE ID than the one required."""


@dataclass(frozen=True)
class MeshState:
    """What the CA publishes on ``/v1/state``: pushed to sidecars within a second of a change."""

    version: int
    trust_bundle: bytes
    revoked: frozenset[str]  # SPIFFE IDs
    quarantined: frozenset[str]  # service names


StateCallback = Callable[[MeshState], None]
ContextsCallback = Callable[[ssl.SSLContext, ssl.SSLContext], None]  # (server, client)


class WorkloadIdentity:
    """One workload identity: see the module docstring."""

    def __init__(
        self,
        ca_url: str,
        directory: Path,
        *,
        ca_bundle: bytes | Path | None = None,
        join_token: str | None = None,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
        jitter: Callable[[], float] | None = None,
        follow_state: bool = True,
    ) -> None:
        """``ca_bundle``: the roots to verify the CA with on the first join (later, the bundle the CA
        hands out is used); ``jitter`` returns a fraction in [0, 1) (default: random) spreading renewals
        between 45 % and 55 % of the lifetime; ``follow_state`` off: no ``/v1/state`` long-poll."""
        raise NotImplementedError

    @classmethod
    def from_files(cls, cert: Path, key: Path, bundle: Path) -> WorkloadIdentity:
        """A static identity from files (tests, tools): no CA, no renewal, no state."""
        raise NotImplementedError

    @property
    def spiffe_id(self) -> str:
        """This workload's SPIFFE ID (``spiffe://<td>/svc/<service>``)."""
        raise NotImplementedError

    @property
    def not_after(self) -> dt.datetime:
        """When the current certificate expires."""
        raise NotImplementedError

    @property
    def state(self) -> MeshState | None:
        """The last state the CA published (None before the first answer)."""
        raise NotImplementedError

    def server_context(self) -> ssl.SSLContext:
        """The current server context: requires a client certificate verified against the bundle."""
        raise NotImplementedError

    def client_context(self) -> ssl.SSLContext:
        """The current client context: presents our certificate, verifies the server's chain; the
        caller checks the server's SPIFFE ID (``require_spiffe_id``)."""
        raise NotImplementedError

    def on_state(self, callback: StateCallback) -> None:
        """Call ``callback`` with every new ``MeshState`` (and at once if one is known)."""
        raise NotImplementedError

    def on_contexts(self, callback: ContextsCallback) -> None:
        """Call ``callback(server, client)`` when the contexts are replaced (trust bundle change)."""
        raise NotImplementedError

    async def start(self) -> None:
        """Load the saved certificate (renewing if past half-life) or join; then renew and follow
        the CA's state in the background. Raises ``JoinTokenNeeded`` without a usable certificate
        or token."""
        raise NotImplementedError

    async def renew(self) -> None:
        """Renew now (the background task calls this at about half-life)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop the background tasks. The contexts stay usable until the certificate expires."""
        raise NotImplementedError


def require_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: str) -> str:
    """The verified peer's SPIFFE ID, which must be ``expected``: raises ``PeerIdentityMismatch``."""
    raise NotImplementedError


async def connect(
    host: str, port: int, identity: WorkloadIdentity, expected: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open mTLS to ``host:port`` as ``identity`` and require the server to be ``expected``."""
    raise NotImplementedError
