"""Binding the gateway's listening sockets: the main, admin and redirect listeners.

Shared by a single gateway process (server.py) and the worker supervisor (workers.py), which bind
the same listeners in two different process layouts.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from garrison.admin.auth import AdminGuard, admin_token_path
from garrison.admin.auth import Handler as AdminHandler
from garrison.admin.listener import guarded_socket
from garrison.config.model import GarrisonConfig, parse_listen

__all__ = ["address_of", "bind_socket", "open_admin_listener"]


def bind_socket(address: str, reuse_port: bool) -> socket.socket:
    host, port = parse_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def open_admin_listener(
    config: GarrisonConfig, source: Path, handler: AdminHandler
) -> tuple[socket.socket, AdminGuard, ssl.SSLContext | None]:
    """Bind the admin listener and wrap ``handler`` in its guard (admin/listener.py), creating the
    admin token file on first use. Raises AdminTokenError for an unusable token file."""
    sock = bind_socket(config.gateway.admin.listen, reuse_port=False)
    guard, context = guarded_socket(
        config.gateway.admin, admin_token_path(config), source.parent, handler, sock
    )
    return sock, guard, context


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
