"""CORS for a route: preflights answered by the gateway, allowed origins echoed on real responses.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) carries no
credentials by design, so the gateway answers it itself, before authentication, and never passes it
upstream. The real request that follows goes through the route's whole chain like any other: CORS
only decides which origins a browser lets read the answer, never who may call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from garrison.proxy.http1 import status_line

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[bytes]  # exact origins, lower-case; empty with any_origin
    any_origin: bool
    methods: frozenset[bytes]
    headers: frozenset[bytes]  # lower-case request headers a page may send
    expose: bytes
    credentials: bool
    max_age: int

    @classmethod
    def compile(
        cls,
        origins: Sequence[str],
        methods: Sequence[str],
        headers: Sequence[str],
        expose: Sequence[str],
        credentials: bool,
        max_age: float,
    ) -> CorsPolicy:
        return cls(
            origins=frozenset(o.lower().encode() for o in origins if o != "*"),
            any_origin="*" in origins,
            methods=frozenset(m.encode() for m in methods),
            headers=frozenset(h.lower().encode() for h in headers),
            expose=", ".join(expose).encode(),
            credentials=credentials,
            max_age=int(max_age),
        )

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin.lower() in self.origins

    def response_headers(self, origin: bytes) -> bytes:
        """Headers for a real (non-preflight) response to ``origin``; empty if it is not allowed."""
        if not self.allows(origin):
            return b""
        # With credentials the origin must be echoed, never "*" (Fetch spec); either way the answer
        # varies by Origin, so shared caches must key on it.
        allow = b"*" if self.any_origin and not self.credentials else origin
        lines = [b"access-control-allow-origin: %s\r\nvary: origin\r\n" % allow]
        if self.credentials:
            lines.append(b"access-control-allow-credentials: true\r\n")
        if self.expose:
            lines.append(b"access-control-expose-headers: %s\r\n" % self.expose)
        return b"".join(lines)

    def preflight(self, origin: bytes, method: bytes, requested_headers: bytes) -> bytes | None:
        """The head of a 204 answer to a preflight, or None when it must be refused."""
        if not self.allows(origin) or method not in self.methods:
            return None
        asked = [h.strip().lower() for h in requested_headers.split(b",") if h.strip()]
        if any(not set(h) <= _TOKEN or h not in self.headers for h in asked):
            return None
        lines = [
            status_line(204),
            self.response_headers(origin),
            b"access-control-allow-methods: %s\r\n" % b", ".join(sorted(self.methods)),
            b"access-control-max-age: %d\r\n" % self.max_age,
        ]
        if asked:
            lines.append(b"access-control-allow-headers: %s\r\n" % b", ".join(asked))
        return b"".join(lines)
