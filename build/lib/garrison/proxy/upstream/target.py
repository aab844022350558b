"""One upstream endpoint (scheme, host, port) and the per-endpoint state the policies share.

The URL is parsed once, at config load, by `garrison.uri.origin` (the same parser that checks
garrison.yaml's targets) into exactly what the connection pool needs: the address to connect to and
the Host header bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from garrison.proxy.upstream.circuit import CircuitBreaker
from garrison.uri.origin import DEFAULT_PORTS, parse_origin

__all__ = ["DEFAULT_PORTS", "Target"]


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
        origin = parse_origin(url)
        return cls(
            url=url,
            scheme=origin.scheme,
            host=origin.host,
            port=origin.port,
            host_header=origin.host_header,
            breaker=breaker,
        )

    def available(self, now: float) -> bool:
        """Healthy and the breaker would admit a request; takes no half-open probe slot."""
        return self.healthy and self.breaker.would_allow(now)
