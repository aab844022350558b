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

Only ``https`` is sent: a plain ``http`` URL is refused, since it would carry no identity at all.
``GarrisonSyncTransport`` does the same for ``httpx.Client`` (thread-safe; the identity still runs
on an event loop, e.g. in a thread of its own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

import httpx

from garrison.mesh.python.pools import PeerPools, PeerRefused, Pool
from garrison.pki.workload import WorkloadIdentity

__all__ = ["GarrisonSyncTransport", "GarrisonTransport", "PeerRefused"]

AsyncTrace = Callable[[str, dict[str, Any]], Awaitable[None]]
SyncTrace = Callable[[str, dict[str, Any]], None]
HANDSHAKE_DONE = "connection.start_tls.complete"  # httpcore's trace event, with the TLS stream


def _pool_options(options: dict[str, Any]) -> dict[str, Any]:
    if "verify" in options or "cert" in options:
        raise ValueError("verify and cert come from the workload identity")
    return options


class GarrisonTransport(httpx.AsyncBaseTransport):
    """See the module docstring. ``peers``: service -> ``host:port`` (e.g. ``mesh.sidecars.<peer>
    .address``); ``pool_options``: passed to each peer's ``httpx.AsyncHTTPTransport`` (limits,
    retries, ...; not ``verify`` or ``cert``, which are the identity's)."""

    def __init__(
        self, identity: WorkloadIdentity, peers: Mapping[str, str] | None = None, **pool_options: Any
    ) -> None:
        options = _pool_options(pool_options)
        self._pools = PeerPools(
            identity, peers, lambda context: httpx.AsyncHTTPTransport(verify=context, **options)
        )

    @property
    def generation(self) -> int:
        """How many times the pools were replaced (trust bundle changes)."""
        return self._pools.generation

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = request.url.host
        expected = self._pools.route(request)
        request.extensions = {**request.extensions, "trace": self._checker(expected, request)}
        pool, idle = self._pools.acquire(service)
        for old in idle:
            await old.transport.aclose()
        try:
            response = await pool.transport.handle_async_request(request)
            self._pools.require_checked(response, request)
        except BaseException:
            self._pools.release(pool)
            raise
        response.stream = _Release(response.stream, pool, self._pools)
        return response

    async def aclose(self) -> None:
        for pool in self._pools.close_all():
            await pool.transport.aclose()

    def _checker(self, expected: str, request: httpx.Request) -> AsyncTrace:
        outer: AsyncTrace | None = request.extensions.get("trace")

        async def trace(event: str, info: dict[str, Any]) -> None:
            if event == HANDSHAKE_DONE:
                stream = info["return_value"]
                try:
                    self._pools.check(stream, expected, request)
                except PeerRefused:
                    await stream.aclose()
                    raise
            if outer is not None:
                await outer(event, info)

        return trace


class GarrisonSyncTransport(httpx.BaseTransport):
    """``GarrisonTransport`` for ``httpx.Client``: same routing, pools and checks."""

    def __init__(
        self, identity: WorkloadIdentity, peers: Mapping[str, str] | None = None, **pool_options: Any
    ) -> None:
        options = _pool_options(pool_options)
        self._pools = PeerPools(
            identity, peers, lambda context: httpx.HTTPTransport(verify=context, **options)
        )

    @property
    def generation(self) -> int:
        return self._pools.generation

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        service = request.url.host
        expected = self._pools.route(request)
        request.extensions = {**request.extensions, "trace": self._checker(expected, request)}
        pool, idle = self._pools.acquire(service)
        for old in idle:
            old.transport.close()
        try:
            response = pool.transport.handle_request(request)
            self._pools.require_checked(response, request)
        except BaseException:
            self._pools.release(pool)
            raise
        response.stream = _SyncRelease(response.stream, pool, self._pools)
        return response

    def close(self) -> None:
        for pool in self._pools.close_all():
            pool.transport.close()

    def _checker(self, expected: str, request: httpx.Request) -> SyncTrace:
        outer: SyncTrace | None = request.extensions.get("trace")

        def trace(event: str, info: dict[str, Any]) -> None:
            if event == HANDSHAKE_DONE:
                stream = info["return_value"]
                try:
                    self._pools.check(stream, expected, request)
                except PeerRefused:
                    stream.close()
                    raise
            if outer is not None:
                outer(event, info)

        return trace


class _Release(httpx.AsyncByteStream):
    """The response body; closing it lets a retired pool close."""

    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, pool: Pool[Any], pools: PeerPools[Any]
    ) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._pool: Pool[Any] | None = pool
        self._pools = pools

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._pool is not None:
                self._pools.release(self._pool)
                self._pool = None


class _SyncRelease(httpx.SyncByteStream):
    def __init__(
        self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, pool: Pool[Any], pools: PeerPools[Any]
    ) -> None:
        assert isinstance(stream, httpx.SyncByteStream)
        self._stream = stream
        self._pool: Pool[Any] | None = pool
        self._pools = pools

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            if self._pool is not None:
                self._pools.release(self._pool)
                self._pool = None
