"""Upstream target URLs: ``http[s]://host[:port]`` and nothing else.

The URL is parsed once, at config load, into exactly what a connection pool needs: the address to
connect to and the Host header bytes. Anything that is not a bare origin (a path, a query, userinfo)
is refused, because silently dropping it would send traffic somewhere the operator did not write.
garrison.yaml's ``services.<name>.targets`` are checked with ``parse_origin`` and the proxy builds
its targets with it, so the two cannot disagree on what is a target.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

__all__ = ["DEFAULT_PORTS", "Origin", "parse_origin"]

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}

# A DNS name or IPv4 literal: letters, digits, '.', '-', '_' (some internal names use '_').
_REG_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
# Whitespace and control characters, which urllib.parse would silently strip or keep.
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")


@dataclass(frozen=True, slots=True)
class Origin:
    """A parsed origin: lower-case scheme, host without IPv6 brackets, port, and the Host header."""

    scheme: str
    host: str
    port: int
    host_header: bytes


def parse_origin(url: str) -> Origin:
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
    return Origin(scheme=scheme, host=host, port=port, host_header=authority.encode("ascii"))


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
