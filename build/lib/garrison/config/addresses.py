"""Listen addresses as garrison.yaml writes them, apart from the pydantic models.

Plain functions with no pydantic, so that a process holding a compact, already validated copy of
its configuration (the mesh sidecar, mesh/sidecar/settings.py) binds and checks addresses with the
same code as the models validate them with. ``config.common`` re-exports both names.
"""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_host", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``127.0.0.1:8443`` / ``[::1]:8443`` / ``0.0.0.0:0`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8443, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"listen host must be an IP address or localhost, got {host!r}") from None
    return host, int(port_text)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal: the one test of "on this machine only" (admin
    listener, JWKS URLs over http)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
