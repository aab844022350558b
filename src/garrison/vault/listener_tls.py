"""The vault listener's TLS: optional client certificates verified against the mesh trust bundle, the
bundle followed without a restart, and the verified certificate handed to the app (``auth/cert``).

- ``ListenerTls`` (pki/listener_tls.py, shared with the audit collector's intake) asks every client for
  a certificate, verifies one against ``state_dir/ca/bundle.pem`` and follows that bundle as it changes.
- uvicorn puts no client certificate in the ASGI scope; ``with_tls_extension`` wraps a connection's app
  so that the ASGI ``tls`` extension (``client_cert_chain``: the verified leaf, PEM) is in every scope
  (the listener's protocol, vault/component.py, calls it for each connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

from garrison.pki.listener_tls import ListenerTls, peer_certificate_pem

__all__ = ["ListenerTls", "peer_certificate_pem", "with_tls_extension"]


class _WithTls:
    """One connection's app: adds the connection's ``tls`` extension to each scope."""

    __slots__ = ("_app", "_tls")

    def __init__(self, app: Any, tls: dict[str, Any]) -> None:
        self._app, self._tls = app, tls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), "tls": self._tls}
        await self._app(scope, receive, send)


def with_tls_extension(app: Any, transport: asyncio.BaseTransport) -> Any:
    """``app`` with the ASGI ``tls`` extension (the verified client certificate, if any) added to each
    scope of a TLS connection; called by the listener's protocol once the handshake is done
    (``connection_made`` comes after it). A plaintext connection keeps ``app`` as it is."""
    if transport.get_extra_info("ssl_object") is None:
        return app
    pem = peer_certificate_pem(transport)
    return _WithTls(app, {"client_cert_chain": [pem] if pem else []})
