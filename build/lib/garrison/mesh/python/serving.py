"""Serving an ASGI app with uvicorn over mTLS with a Garrison identity, the peer's certificate in scope.

uvicorn has no option that puts the client certificate in the ASGI scope. The supported seams it does
have are its ``http`` protocol class (``Config(http=...)`` takes a class) and ``ssl_context_factory``;
this module uses both:

- ``TlsHttpToolsProtocol`` / ``TlsH11Protocol``: uvicorn's own protocols, which, once the handshake
  is done (``connection_made``), wrap the connection's app so that every scope carries the ASGI
  ``tls`` extension (``client_cert_chain``: the verified peer leaf as PEM, ``tls_version``,
  ``cipher_suite``), which ``GarrisonMiddleware`` reads;
- ``ssl_context_factory`` returns the identity's live server context (not files): a renewal is
  loaded into it in place and a bundle change moves new handshakes to the new context (the
  identity's SNI hook), so the server never restarts for a rotation. The context requires a client
  certificate verified against the trust bundle.

``uvicorn_config(app, identity, host=..., port=...)`` builds such a ``uvicorn.Config``; run it with
``uvicorn.Server(config).serve()``, or ``serve(sockets=[listening_socket(host, 0)])`` to know the port
before serving. (A socket made with plain ``socket.socket()`` has protocol 0, and asyncio then leaves
``TCP_NODELAY`` off on its connections: every response waits ~40 ms for a delayed ACK.)
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from garrison.mesh.python.asgi import ASGIApp, Receive, Scope, Send
from garrison.pki.workload import WorkloadIdentity

__all__ = ["TlsH11Protocol", "TlsHttpToolsProtocol", "listening_socket", "tls_extension", "uvicorn_config"]


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI ``tls`` extension for a connection, or None for a plain one."""
    ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None if cipher is None else cipher[0],
    }


_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


class _WithTls:
    """One connection's app: adds the connection's ``tls`` extension to each scope."""

    __slots__ = ("_app", "_tls")

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self._app = app
        self._tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self._tls}
        await self._app(scope, receive, send)


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the ASGI ``tls`` extension in every scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTls(self.app, tls)


class TlsH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the ASGI ``tls`` extension in every scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = tls_extension(transport)
        if tls is not None:
            self.app = _WithTls(self.app, tls)


def uvicorn_config(app: ASGIApp, identity: WorkloadIdentity, **options: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``app`` (wrap it in ``GarrisonMiddleware``) with ``identity``'s
    live server context and the ``tls`` extension. ``options`` go to ``uvicorn.Config`` (host, port,
    log_level, ...; ``http="h11"`` picks the h11 protocol)."""
    http = TlsH11Protocol if options.pop("http", "httptools") == "h11" else TlsHttpToolsProtocol
    if any(key.startswith("ssl_") for key in options):
        raise ValueError("TLS comes from the workload identity: no ssl_* options")
    return uvicorn.Config(
        app,
        http=http,
        ssl_context_factory=lambda config, default: identity.server_context(),
        **options,
    )


def listening_socket(host: str = "127.0.0.1", port: int = 0, backlog: int = 128) -> socket.socket:
    """A listening TCP socket for ``uvicorn.Server.serve(sockets=[...])`` (port 0: read it back with
    ``getsockname()``), made with ``IPPROTO_TCP`` so that asyncio turns Nagle off on its connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.bind((host, port))
        listener.listen(backlog)
    except OSError:
        listener.close()
        raise
    return listener
