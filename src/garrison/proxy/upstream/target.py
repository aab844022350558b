"""One upstream endpoint (scheme, host, port) and the per-endpoint state the policies share.

The URL is parsed once, at config load, into exactly what the connection pool needs: the address to
connect to and the Host header bytes. Anything that is not a bare origin (a path, a query, userinfo)
is refused, because silently dropping it would send traffic somewhere the operator did not write.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from garrison.proxy.upstream.circuit import CircuitBreaker

__all__ = ["DEFAULT_PORTS", "Target"]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}

# A DNS name or IPv4 literal: letters, digits, '.', '-', '_' (some internal names use '_').
_REG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
# Whitespace and control characters, which urllib.parse would silently strip or keep.
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")


@dataclass(eq=False, slots=True)
class Target:
    """An upstream origin; identity equality, so it can key dicts and sets in the pool."""

    url: str
    scheme: str
    host: str
    port: int
    host_header: bytes
    breaker: CircuitBreaker
    in_flight: int = 0
    healthy: bool = True

    @classmethod
    def from_url(cls, url: str, breaker: CircuitBreaker) -> Target:
        """Parse `http[s]://host[:port]` (IPv6 literals in brackets); ValueError says what is wrong."""
        if _BAD_CHARS.search(url):
            raise ValueError(f"upstream URL {url!r} contains whitespace or control characters")
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:  # bad port or unbalanced IPv6 brackets
            raise ValueError(f"upstream URL {url!r} is invalid: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(f"upstream URL {url!r} must use http:// or https://")
        if parts.username is not None or "@" in parts.netloc:
            raise ValueError(f"upstream URL {url!r} must not contain credentials (userinfo)")
        if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
            raise ValueError(f"upstream URL {url!r} must be an origin only, with no path, query or fragment")
        host = _parse_host(url, parts.hostname, bracketed=parts.netloc.startswith("["))
        if port is None:
            port = DEFAULT_PORTS[scheme]
        elif port == 0:
            raise ValueError(f"upstream URL {url!r} has port 0")
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
        return cls(
            url=url,
            scheme=scheme,
            host=host,
            port=port,
            host_header=authority.encode("ascii"),
            breaker=breaker,
        )

    def available(self, now: float) -> bool:
        """Healthy and the breaker would admit a request; takes no half-open probe slot."""
        return self.healthy and self.breaker.would_allow(now)


def _parse_host(url: str, hostname: str | None, *, bracketed: bool) -> str:
    """The host to connect to: lower-case name or IP literal, without IPv6 brackets."""
    if not hostname:
        raise ValueError(f"upstream URL {url!r} has no host")
    if bracketed:
        if "%" in hostname:
            raise ValueError(f"upstream URL {url!r} has an IPv6 zone ID, which is not supported")
        try:
            return str(ipaddress.IPv6Address(hostname))
        except ValueError:
            raise ValueError(f"upstream URL {url!r} has an invalid IPv6 address") from None
    if not hostname.isascii() or not _REG_NAME.match(hostname):
        raise ValueError(f"upstream URL {url!r} has an invalid host {hostname!r} (use ASCII/punycode)")
    return hostname
