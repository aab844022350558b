"""The plaintext listener's one answer: ``308`` to the same target over HTTPS, on a host we serve.

The redirect's host comes from the request (its absolute-form authority, else ``Host``), and the
client chooses that freely. Echoing it would make the listener an open redirector and let anything
that caches the answer by URL alone (a shared proxy, a CDN) send other users to
``https://evil.example`` (issue 7, item 8). So the host must be one the configuration names: a
route's ``match.hosts`` (``*.example.com`` covering its subdomains, as the router matches it) or
``tls.server_names``. Anything else is answered 400 with no ``Location``. With
``gateway.public_host`` set, every redirect goes there and the request's host is not used at all.

Compiled once per config load (``HttpsRedirect.from_config``); ``answer`` is a plain function of
the request and the HTTPS listener's bound port, which tests drive without sockets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from garrison.config.model import GarrisonConfig
from garrison.gateway.exchange import host_without_port
from garrison.uri.normalize import TargetRejected, parse_request_target
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

__all__ = ["HttpsRedirect"]

# A DNS name, as the config's names are: before a "*." suffix is compared, so that no host with
# URL delimiters in it ("evil.test/x.example.com") can pass as a subdomain.
_DNS_NAME = re.compile(rb"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
BAD_REQUEST = SimpleResponse(400, b"bad request\n")
UNKNOWN_HOST = SimpleResponse(400, b"unknown host: set gateway.public_host or name it in a route\n")


class HttpsRedirect:
    """Where the plaintext listener may send a client: ``public_host``, or a host the config names."""

    __slots__ = ("_names", "_public_host", "_suffixes")

    def __init__(self, public_host: str | None, names: Iterable[str]) -> None:
        self._public_host = public_host.lower().encode() if public_host else None
        exact: set[bytes] = set()
        suffixes: list[bytes] = []
        for name in names:
            if name.startswith("*."):
                suffixes.append(name[1:].lower().encode())  # "*.example.com" -> ".example.com"
            else:
                exact.add(name.lower().encode())
        self._names = frozenset(exact)
        self._suffixes = tuple(suffixes)

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> HttpsRedirect:
        route_hosts = [host for route in config.routes for host in route.match.hosts or ()]
        return cls(config.gateway.public_host, [*route_hosts, *config.gateway.tls.server_names])

    def host_for(self, requested: bytes) -> bytes | None:
        """The host to redirect to for a request that named ``requested`` (port and case as sent),
        or None when it is not one we serve."""
        if self._public_host is not None:
            return self._public_host
        host = host_without_port(requested.lower())
        if _DNS_NAME.fullmatch(host) is None:
            return None
        if host in self._names:
            return host
        for suffix in self._suffixes:
            # As router.RouteEntry.host_matches: a subdomain of any depth, never the bare domain.
            if host.endswith(suffix) and len(host) > len(suffix):
                return host
        return None

    def answer(self, request: SimpleRequest, https_port: int) -> SimpleResponse:
        """308 to ``https://HOST[:PORT]`` + the normalized path and the query, or 400."""
        try:
            target = parse_request_target(request.target)
        except TargetRejected:
            return BAD_REQUEST
        # RFC 9112 §3.2.2: an absolute-form target's authority is the request's host, not Host.
        requested = target.authority if target.authority is not None else request.headers.get(b"host", b"")
        host = self.host_for(requested)
        if host is None:
            return UNKNOWN_HOST
        authority = host if https_port == 443 else b"%s:%d" % (host, https_port)
        location = b"https://%s%s%s%s" % (
            authority,
            target.path,
            b"?" if target.has_query else b"",
            target.query,
        )
        return SimpleResponse(308, b"", headers=b"location: %s\r\n" % location)
