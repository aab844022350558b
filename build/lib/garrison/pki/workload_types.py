"""What a workload identity hands out and raises (``pki/workload.py``), apart so that users of the
interface (sidecars, the gateway) can import them without the client."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from garrison.pki.workload_tls import require_spiffe_id

__all__ = [
    "ContextsCallback",
    "JoinTokenNeeded",
    "MeshState",
    "StateCallback",
    "WorkloadError",
    "connect",
    "state_of",
]


class WorkloadError(Exception):
    """The workload cannot get or keep its identity; the message says what to do."""


class JoinTokenNeeded(WorkloadError):
    """No usable certificate (none yet, or it lapsed): a new join token is needed."""


@dataclass(frozen=True)
class MeshState:
    """What the CA publishes on ``/v1/state``: pushed to sidecars within a second of a change."""

    version: int
    trust_bundle: bytes
    revoked: frozenset[str]  # SPIFFE IDs
    quarantined: frozenset[str]  # service names


StateCallback = Callable[[MeshState], None]
ContextsCallback = Callable[[ssl.SSLContext, ssl.SSLContext], None]  # (server, client)


def state_of(payload: dict[str, object]) -> MeshState:
    revoked, quarantined = payload["revoked"], payload["quarantined"]
    if not isinstance(revoked, list) or not isinstance(quarantined, list):
        raise ValueError("a malformed state")
    return MeshState(
        int(str(payload["version"])),
        str(payload["trust_bundle"]).encode("ascii"),
        frozenset(map(str, revoked)),
        frozenset(map(str, quarantined)),
    )


class HasClientContext(Protocol):
    def client_context(self) -> ssl.SSLContext: ...


async def connect(
    host: str, port: int, identity: HasClientContext, expected: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open mTLS to ``host:port`` as ``identity`` and require the server to be ``expected``."""
    reader, writer = await asyncio.open_connection(host, port, ssl=identity.client_context())
    try:
        require_spiffe_id(writer.get_extra_info("ssl_object"), expected)
    except ssl.SSLError:
        writer.close()
        raise
    return reader, writer
