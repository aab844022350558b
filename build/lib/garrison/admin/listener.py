"""Binding and serving a component's admin listener: its AdminApi (admin/api.py) behind the guard
(admin/auth.py), on the side-listener responder (web/simplehttp.py), with TLS when configured.

The gateway binds its own socket (it shares the binding code with its worker supervisor) and uses
``guarded_socket``; a component with nothing of the kind calls ``start_admin_listener``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from garrison.admin.auth import (
    AdminGuard,
    Handler,
    admin_server_context,
    guard_for,
    load_or_create_admin_token,
)
from garrison.config.shapes import AdminShape
from garrison.core.sockets import address_of, bind_socket
from garrison.web.headers import API_CSP, DEFAULT_HSTS, render, security_headers
from garrison.web.simplehttp import SimpleHttpProtocol

__all__ = [
    "AdminListener",
    "admin_security_headers",
    "guarded_socket",
    "start_admin_listener",
]


def admin_security_headers(tls: bool) -> bytes:
    """The common security headers (web/headers.py) and the API policy, pre-rendered: an admin
    answer opened in a browser runs nothing and cannot be framed."""
    common = security_headers(hsts=DEFAULT_HSTS if tls else None)
    return render([*common, ("content-security-policy", API_CSP)])


def guarded_socket(
    admin: AdminShape, token_path: Path, config_dir: Path, handler: Handler, sock: socket.socket
) -> tuple[AdminGuard, ssl.SSLContext | None]:
    """The guard around ``handler`` for the listener on ``sock`` and its TLS context, creating the
    admin token file on first use. Raises AdminTokenError for an unusable token file."""
    token = load_or_create_admin_token(token_path)
    context = admin_server_context(admin, config_dir)
    host, port = sock.getsockname()[:2]
    return guard_for(handler, admin, (host, port), token), context


@dataclass(eq=False)
class AdminListener:
    server: asyncio.Server
    address: str  # host:port as bound (port 0 resolved)
    guard: AdminGuard  # its `denied` counts are the admin_denied metric

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def start_admin_listener(
    admin: AdminShape, token_path: Path, config_dir: Path, handler: Handler
) -> AdminListener:
    """Bind ``admin.listen`` and serve ``handler`` (an AdminApi) there behind the guard."""
    sock = bind_socket(admin.listen)
    try:
        guard, context = guarded_socket(admin, token_path, config_dir, handler, sock)
        headers = admin_security_headers(context is not None)
        server = await asyncio.get_running_loop().create_server(
            lambda: SimpleHttpProtocol(guard, headers), sock=sock, ssl=context
        )
    except BaseException:
        sock.close()
        raise
    return AdminListener(server, address_of(sock), guard)
