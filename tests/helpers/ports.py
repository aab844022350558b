"""Loopback ports for tests, without the bind-close-reuse race of "find a free port, close it, use it".

Whenever a test can, it starts its server on port 0 and reads the address back (a ready file, the server
object). The two helpers here are for the other cases, and both HOLD the port for the test's duration:

- ``refused_port()``: a port on which nothing listens, so connections to it are refused. It is a socket
  bound to port 0 and never put in the listening state: the kernel refuses connections to it, and neither
  an ephemeral bind (port 0) nor an outgoing connection of anyone else can be given that port meanwhile.
- ``reserved_port()``: the same bound socket, for a server that has to be told a concrete port in its
  configuration (a CLI reading ``gateway.admin.listen``, a peer's URL, redis-server). The socket has
  SO_REUSEADDR, and so does every server we start (Garrison's listeners, redis-server, asyncio and
  ``http.server``): Linux lets such a server bind and listen on the port while our non-listening socket
  holds it, and lets nobody else in between.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def reserved_socket() -> Iterator[socket.socket]:
    """A loopback TCP socket bound to a port of its own (SO_REUSEADDR), never listening; closed at the end."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock
    finally:
        sock.close()


@contextlib.contextmanager
def reserved_port() -> Iterator[int]:
    """A loopback port held for the block: a server with SO_REUSEADDR may bind it, nobody else can."""
    with reserved_socket() as sock:
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for the whole block (held, nothing listens on it)."""
    with reserved_port() as port:
        yield port


__all__ = ["refused_port", "reserved_port", "reserved_socket"]
