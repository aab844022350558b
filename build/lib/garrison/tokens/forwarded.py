"""Who the client is: the TCP peer, or what trusted proxies say, read from the right.

X-Forwarded-For is a list each proxy appends to, so only the entries added by proxies we trust can
be believed. Walking from the right, we skip the peer and every trusted hop; the first untrusted
address is the client. A client that forges the header only adds entries to the left of that point,
so it changes nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    def __init__(self, cidrs: Sequence[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
        self._is_trusted = lru_cache(maxsize=4096)(self._check)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _check(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)

    def is_trusted(self, address: str) -> bool:
        return bool(self.networks) and self._is_trusted(address)

    def resolve_client(self, peer: str, forwarded_for: Sequence[bytes]) -> str:
        """The client address given the TCP peer and every X-Forwarded-For header value, in order."""
        if not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(b",")]
        for hop in reversed(hops):
            address = _clean(hop)
            if address is None:
                # Garbage in the trusted part of the chain: stop at the last address we could believe.
                break
            if not self.is_trusted(address):
                return address
            peer = address
        return peer


def _clean(hop: bytes) -> str | None:
    """An IP address from one X-Forwarded-For entry, or None if it is not one."""
    try:
        text = hop.decode("ascii")
    except UnicodeDecodeError:
        return None
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # "1.2.3.4:5678"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def forwarded_element(client: str, proto: str, host: bytes) -> bytes:
    """One RFC 7239 ``Forwarded`` element; IPv6 addresses are quoted and bracketed."""
    node = f'"[{client}]"' if ":" in client else client
    return b"for=%s;proto=%s;host=%s" % (node.encode(), proto.encode(), _quote_host(host))


def _quote_host(host: bytes) -> bytes:
    # Always a quoted-string: a Host may hold ":" and the sub-delims ",", ";", "=", which would
    # otherwise split or extend the element. The Host alphabet has no '"' or '\\' to escape.
    return b'"' + host + b'"'
