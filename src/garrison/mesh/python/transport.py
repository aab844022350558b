"""An httpx transport that calls peer services over mTLS as this workload, verifying who answers.

``GarrisonTransport(identity, peers={"payments": "payments.internal:15002"})`` serves
``httpx.AsyncClient(transport=...)``: a request to ``https://payments/charges`` is sent to the peer's
address (or, for a service not in ``peers``, to the URL's own host and port), with the ``Host``
header left as the service name. Each peer has its own ``httpx.AsyncHTTPTransport`` (its own
connection pool) on the identity's current client context, so:

- renewal: the identity loads a new certificate into that same context; every new connection
  presents it, open connections finish what they carry; nothing is rebuilt and no request fails;
- trust bundle change: ``on_contexts`` announces a new client context; the pools are replaced (new
  requests go to new pools on the new context) and an old pool is closed once its last response is
  closed;
- the server is checked on every new connection, right after its handshake and before any request
  byte is sent (httpcore's public ``trace`` extension, event ``connection.start_tls.complete``): its
  certificate chain is verified against the bundle by OpenSSL, and its SPIFFE ID must be exactly
  ``spiffe://<td>/svc/<peer>``, otherwise the connection is closed and ``PeerRefused`` (an
  ``httpx.ConnectError``) is raised. A pool per peer means a connection checked for one peer is never
  reused for another, even when two peers share an address. As a second line, a response that came
  over a connection this transport did not check is refused too (fail closed).

Only ``https`` (or scheme-less service names mapped through ``peers``) is sent: a plain ``http`` URL
is refused, since it would carry no identity at all.
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from garrison.pki.workload import WorkloadIdentity
from garrison.pki.workload_tls import PeerIdentityMismatch, peer_spiffe_id

__all__ = ["GarrisonTransport", "PeerRefused"]

TraceCallback = Callable[[str, dict[str, Any]], Awaitable[None]]


class PeerRefused(httpx.ConnectError):
    """The server's certificate verified, but it is not the service the request was meant for."""


class _Pool:
    """One peer's httpx transport and the responses still open on it (to close it when retired)."""

    __slots__ = ("open", "retired", "transport")

    def __init__(self, transport: httpx.AsyncHTTPTransport) -> None:
        self.transport = transport
        self.open = 0
        self.retired = False

    @property
    def idle_retired(self) -> bool:
        return self.retired and self.open == 0


class GarrisonTransport(httpx.AsyncBaseTransport):
    """See the module docstring. ``peers``: service -> ``host:port`` (e.g. ``mesh.sidecars.<peer>
    .address``); ``pool_options``: passed to each peer's ``httpx.AsyncHTTPTransport`` (limits,
    retries, ...; not ``verify`` or ``cert``, which are the identity's)."""

    def __init__(
        self,
        identity: WorkloadIdentity,
        peers: Mapping[str, str] | None = None,
        **pool_options: Any,
    ) -> None:
        if "verify" in pool_options or "cert" in pool_options:
            raise ValueError("verify and cert come from the workload identity")
        self._identity = identity
        self._peers = {service: _split_address(address) for service, address in (peers or {}).items()}
        self._pool_options = pool_options
        self._pools: dict[str, _Pool] = {}
        self._retired: list[_Pool] = []
        self._checked: weakref.WeakSet[object] = weakref.WeakSet()
        self._closed = False
        self.generation = 0  # how many times the pools were replaced (trust bundle changes)
        identity.on_contexts(self._contexts_replaced)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        await self._close_idle_retired()
        if request.url.scheme != "https":
            raise PeerRefused(
                f"{request.url.scheme}:// carries no workload identity: use https://", request=request
            )
        service = request.url.host
        expected = f"{self._identity.trust_domain_id}/svc/{service}"
        address = self._peers.get(service)
        if address is not None:
            request.url = request.url.copy_with(host=address[0], port=address[1])
        request.extensions = {**request.extensions, "trace": self._checker(expected, request)}
        pool = self._pool_for(service)
        pool.open += 1
        try:
            response = await pool.transport.handle_async_request(request)
            self._require_checked(response, request)
        except BaseException:
            pool.open -= 1
            raise
        response.stream = _Release(response.stream, pool)
        return response

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = [*self._pools.values(), *self._retired], {}
        self._retired = []
        for pool in pools:
            await pool.transport.aclose()

    def _pool_for(self, service: str) -> _Pool:
        pool = self._pools.get(service)
        if pool is None:
            context = self._identity.client_context()
            pool = _Pool(httpx.AsyncHTTPTransport(verify=context, **self._pool_options))
            self._pools[service] = pool
        return pool

    def _contexts_replaced(self, server: object, client: object) -> None:
        """A new trust bundle: new requests get new pools; old ones close when their last response does."""
        for pool in self._pools.values():
            pool.retired = True
            self._retired.append(pool)
        self._pools = {}
        self.generation += 1

    async def _close_idle_retired(self) -> None:
        if not self._retired:
            return
        idle = [pool for pool in self._retired if pool.idle_retired]
        self._retired = [pool for pool in self._retired if not pool.idle_retired]
        for pool in idle:
            await pool.transport.aclose()

    def _checker(self, expected: str, request: httpx.Request) -> TraceCallback:
        outer: TraceCallback | None = request.extensions.get("trace")

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event == "connection.start_tls.complete":
                stream = info["return_value"]
                found = peer_spiffe_id(stream.get_extra_info("ssl_object"))
                if found != expected:
                    await stream.aclose()
                    mismatch = PeerIdentityMismatch(
                        f"the peer is {found or 'no SPIFFE identity'}, not {expected}"
                    )
                    raise PeerRefused(str(mismatch), request=request) from mismatch
                self._checked.add(stream)
            if outer is not None:
                await outer(event, info)

        return trace

    def _require_checked(self, response: httpx.Response, request: httpx.Request) -> None:
        stream = response.extensions.get("network_stream")
        if stream is None or stream not in self._checked:
            raise PeerRefused(
                "the response came over a connection whose peer was not checked", request=request
            )


class _Release(httpx.AsyncByteStream):
    """The response body; closing it lets a retired pool close."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, pool: _Pool) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._pool: _Pool | None = pool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._pool is not None:
                self._pool.open -= 1
                self._pool = None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a peer address is host:port, not {address!r}")
    host = host.strip("[]")
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(port)
