"""Binding a component's listening sockets: the one place a Garrison process binds a TCP port.

``host:port`` as the config writes it (``parse_listen``: IPv4, ``[v6]``, port 0 for "any free port"),
SO_REUSEADDR always (a restarted process rebinds a port whose old connections are in TIME_WAIT), and
SO_REUSEPORT only when several processes must share the port (the gateway's ``workers: N``: the kernel
spreads connections over them). The socket is bound but not listening: the server that serves it
calls ``listen`` with its own backlog. ``address_of`` reads back where the socket landed, which is what
the ready file announces (with port 0 the config does not know it).
"""

from __future__ import annotations

import socket

from garrison.config.addresses import parse_listen

__all__ = ["BACKLOG", "address_of", "bind_socket"]

BACKLOG = 2048  # pending connections per listener: a burst of clients is queued, not refused


def bind_socket(address: str, reuse_port: bool = False, inheritable: bool = False) -> socket.socket:
    """A non-blocking TCP socket bound to ``address`` ("host:port" or "[v6]:port").

    ``inheritable``: the descriptor survives ``exec`` (for a child process handed the socket)."""
    host, port = parse_listen(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP said outright: asyncio's standard loop turns Nagle off (TCP_NODELAY) only for sockets
    # whose protocol is IPPROTO_TCP, and with protocol 0 every small response waited ~40 ms for a
    # delayed ACK (uvloop sets TCP_NODELAY either way).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    sock.set_inheritable(inheritable)
    return sock


def address_of(sock: socket.socket) -> str:
    """Where ``sock`` is bound, as "host:port" ("[v6]:port" for IPv6): the port 0 resolved."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
