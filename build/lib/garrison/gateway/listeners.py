"""The gateway's admin listener: bound (core/sockets.py) and guarded (admin/listener.py, admin/auth.py).

Shared by a single gateway process (server.py) and the worker supervisor (workers.py), which bind
the same listeners in two different process layouts. ``bind_socket`` and ``address_of`` are
re-exported from core/sockets.py for code that still imports them from here.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from garrison.admin.auth import AdminGuard, admin_token_path
from garrison.admin.auth import Handler as AdminHandler
from garrison.admin.listener import guarded_socket
from garrison.config.model import GarrisonConfig
from garrison.core.sockets import address_of, bind_socket

__all__ = ["address_of", "bind_socket", "open_admin_listener"]


def open_admin_listener(
    config: GarrisonConfig, source: Path, handler: AdminHandler
) -> tuple[socket.socket, AdminGuard, ssl.SSLContext | None]:
    """Bind the admin listener and wrap ``handler`` in its guard, creating the admin token file on
    first use. Raises AdminTokenError for an unusable token file."""
    sock = bind_socket(config.gateway.admin.listen, reuse_port=False)
    try:
        guard, context = guarded_socket(
            config.gateway.admin, admin_token_path(config), source.parent, handler, sock
        )
    except BaseException:
        sock.close()
        raise
    return sock, guard, context
