"""What the async and the sync httpx transports share: routing a request to its peer, one pool per
peer that follows the identity's contexts, and the check of the server's SPIFFE ID.

Thread-safe (one lock around the bookkeeping): a sync client may run in threads while the identity
announces a new bundle from its event loop's thread.
"""

from __future__ import annotations

import ssl
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import httpx

from garrison.pki.workload import WorkloadIdentity
from garrison.pki.workload_tls import PeerIdentityMismatch, peer_spiffe_id

__all__ = ["PeerPools", "PeerRefused", "Pool", "split_address"]

T = TypeVar("T")


class PeerRefused(httpx.ConnectError):
    """The server's certificate verified, but it is not the service the request was meant for (or the
    request would carry no identity at all)."""


class Pool(Generic[T]):
    """One peer's httpx transport and the responses still open on it (to close it when retired)."""

    __slots__ = ("open", "retired", "transport")

    def __init__(self, transport: T) -> None:
        self.transport = transport
        self.open = 0
        self.retired = False


class PeerPools(Generic[T]):
    """service -> pool on the identity's current client context; a bundle change retires them all."""

    def __init__(
        self,
        identity: WorkloadIdentity,
        peers: Mapping[str, str] | None,
        make: Callable[[ssl.SSLContext], T],
    ) -> None:
        self._identity = identity
        self._peers = {service: split_address(address) for service, address in (peers or {}).items()}
        self._make = make
        self._lock = threading.Lock()
        self._pools: dict[str, Pool[T]] = {}
        self._retired: list[Pool[T]] = []
        self._checked: weakref.WeakSet[Any] = weakref.WeakSet()
        self.closed = False
        self.generation = 0  # how many times the pools were replaced (trust bundle changes)
        identity.on_contexts(self._replaced)

    def route(self, request: httpx.Request) -> str:
        """Point ``request`` at its peer's address; the SPIFFE ID its server must have."""
        if request.url.scheme != "https":
            message = f"{request.url.scheme}:// carries no workload identity: use https://"
            raise PeerRefused(message, request=request)
        service = request.url.host
        address = self._peers.get(service)
        if address is not None:
            request.url = request.url.copy_with(host=address[0], port=address[1])
        return f"{self._identity.trust_domain_id}/svc/{service}"

    def acquire(self, service: str) -> tuple[Pool[T], list[Pool[T]]]:
        """The peer's pool (one more response open on it), and retired pools now idle (to close)."""
        with self._lock:
            if self.closed:
                raise RuntimeError("the transport is closed")
            idle = [pool for pool in self._retired if pool.open == 0]
            self._retired = [pool for pool in self._retired if pool.open > 0]
            pool = self._pools.get(service)
            if pool is None:
                pool = self._pools[service] = Pool(self._make(self._identity.client_context()))
            pool.open += 1
            return pool, idle

    def release(self, pool: Pool[T]) -> None:
        with self._lock:
            pool.open -= 1

    def close_all(self) -> list[Pool[T]]:
        with self._lock:
            self.closed = True
            pools = [*self._pools.values(), *self._retired]
            self._pools, self._retired = {}, []
            return pools

    def check(self, stream: Any, expected: str, request: httpx.Request) -> None:
        """Right after a handshake: the server must be ``expected``, else the stream is not used."""
        found = peer_spiffe_id(stream.get_extra_info("ssl_object"))
        if found != expected:
            message = f"the peer is {found or 'no SPIFFE identity'}, not {expected}"
            raise PeerRefused(message, request=request) from PeerIdentityMismatch(message)
        with self._lock:
            self._checked.add(stream)

    def require_checked(self, response: httpx.Response, request: httpx.Request) -> None:
        """Fail closed: a response over a connection whose peer was never checked is refused."""
        stream = response.extensions.get("network_stream")
        with self._lock:
            checked = stream is not None and stream in self._checked
        if not checked:
            message = "the response came over a connection whose peer was not checked"
            raise PeerRefused(message, request=request)

    def _replaced(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.retired = True
                self._retired.append(pool)
            self._pools = {}
            self.generation += 1


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a peer address is host:port, not {address!r}")
    host = host.strip("[]")
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(port)
