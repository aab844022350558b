"""The sidecar's decisions: may this caller make this call, may this service call out at all?

One object per sidecar, swapped in part on SIGHUP (the policy) and on every state the CA publishes
(revocations, quarantine). Every request asks it, so a quarantine or a revocation applies to the next
request on every open connection too, not only to new handshakes: within a second of the state
reaching the sidecar, whatever keep-alive connections exist.
"""

from __future__ import annotations

from functools import lru_cache

from garrison.mesh.policy import CallPolicy
from garrison.mesh.sidecar.identity import MeshView

__all__ = ["Gate"]

SERVICE_PREFIX = "/svc/"


@lru_cache(maxsize=4096)  # asked on every call, of the few identities a sidecar sees; bounded
def service_of(spiffe_id: str) -> str | None:
    """``orders`` for ``spiffe://td/svc/orders``; None for another kind of identity (the gateway)."""
    _, _, rest = spiffe_id.partition("://")
    _, slash, path = rest.partition("/")
    if not slash or not ("/" + path).startswith(SERVICE_PREFIX):
        return None
    name = path[len(SERVICE_PREFIX) - 1 :]
    return name if name and "/" not in name else None


class Gate:
    """Policy, revocations and quarantine for the sidecar of ``service``."""

    __slots__ = ("policy", "quarantined", "revoked", "service", "version")

    def __init__(self, service: str, policy: CallPolicy) -> None:
        self.service = service
        self.policy = policy
        self.revoked: frozenset[str] = frozenset()
        self.quarantined: frozenset[str] = frozenset()
        self.version = 0  # bumped by every state applied (tests wait on it)

    def apply(self, state: MeshView) -> None:
        self.revoked = frozenset(state.revoked)
        self.quarantined = frozenset(state.quarantined)
        self.version += 1

    @property
    def self_quarantined(self) -> bool:
        return self.service in self.quarantined

    def inbound(self, caller: str | None, method: str, path: str) -> str | None:
        """None when the call is allowed, else the reason it is not (logged, never sent)."""
        if caller is None:
            return "no_identity"
        if caller in self.revoked:
            return "revoked"
        if self.self_quarantined:
            return "quarantined"
        caller_service = service_of(caller)
        if caller_service is not None and caller_service in self.quarantined:
            return "caller_quarantined"
        if not self.policy.allows(caller, self.service, method, path):
            return "policy"
        return None

    def outbound(self, peer: str) -> str | None:
        """None when this service may call ``peer`` now (the peer's sidecar decides the call itself)."""
        if self.self_quarantined:
            return "quarantined"
        if peer in self.quarantined:
            return "peer_quarantined"
        return None
