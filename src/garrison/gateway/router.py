"""The route table: compiled once per config load, matched per request in O(path segments).

Exact routes and prefix routes live in two dicts keyed by path. A request path is looked up as a
whole, then at each shorter segment boundary (``/a/b/c``, ``/a/b``, ``/a``, ``/``), so the longest
matching path wins without scanning the route list. A prefix matches only at a segment boundary:
``/api`` covers ``/api`` and ``/api/x`` but never ``/apix``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# RouteEntry and RouteTable are plain classes, not dataclasses: mypyc cannot compile a generic
# dataclass (mypyc/mypyc#1061, "attribute '__dict__' of 'type' objects is not writable").


class RouteEntry(Generic[T]):
    """A route as the table sees it: match conditions plus the caller's payload."""

    __slots__ = ("hosts", "methods", "path", "payload", "prefix")

    def __init__(
        self,
        path: bytes,
        prefix: bool,
        methods: frozenset[bytes] | None,
        hosts: tuple[bytes, ...] | None,
        payload: T,
    ) -> None:
        self.path = path
        self.prefix = prefix
        self.methods = methods
        self.hosts = hosts
        self.payload = payload

    def __repr__(self) -> str:
        return f"RouteEntry(path={self.path!r}, prefix={self.prefix}, payload={self.payload!r})"

    def host_matches(self, host: bytes) -> bool:
        if self.hosts is None:
            return True
        for pattern in self.hosts:
            if pattern.startswith(b"*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return True
            elif host == pattern:
                return True
        return False


@dataclass(slots=True)
class RouteMiss:
    """No route: 404, or 405 with the methods that would have matched."""

    status: int
    allowed: tuple[bytes, ...] = ()


class RouteTable(Generic[T]):
    __slots__ = ("exact", "prefix_lengths", "prefixes")

    def __init__(self) -> None:
        self.exact: dict[bytes, list[RouteEntry[T]]] = {}
        self.prefixes: dict[bytes, list[RouteEntry[T]]] = {}
        self.prefix_lengths: tuple[int, ...] = ()

    @classmethod
    def compile(cls, entries: Sequence[RouteEntry[T]]) -> RouteTable[T]:
        table: RouteTable[T] = cls()
        # Host-specific routes are tried before host-agnostic ones at the same path.
        ordered = sorted(entries, key=lambda e: e.hosts is None)
        for entry in ordered:
            if entry.prefix and entry.path != b"/" and entry.path.endswith(b"/"):
                # Prefixes match at segment boundaries, so "/api/" and "/api" mean the same.
                entry.path = entry.path.rstrip(b"/")
            bucket = table.prefixes if entry.prefix else table.exact
            bucket.setdefault(entry.path, []).append(entry)
        table.prefix_lengths = tuple(sorted({len(p) for p in table.prefixes}, reverse=True))
        return table

    def match(self, path: bytes, method: bytes, host: bytes) -> RouteEntry[T] | RouteMiss:
        allowed: set[bytes] = set()
        exact = self.exact.get(path)
        if exact is not None:
            found = _pick(exact, method, host, allowed)
            if found is not None:
                return found
        # Prefixes are tried longest first, only at lengths some route uses and only where the
        # path has a segment boundary, so a deep path costs one slice per distinct prefix length.
        if not allowed:
            size = len(path)
            for length in self.prefix_lengths:
                if length > size or (length < size and length > 1 and path[length] != 0x2F):
                    continue
                entries = self.prefixes.get(path[:length])
                if entries is not None:
                    found = _pick(entries, method, host, allowed)
                    if found is not None:
                        return found
                    if allowed:
                        break
        if allowed:
            return RouteMiss(405, tuple(sorted(allowed)))
        return RouteMiss(404)


def _pick(
    entries: list[RouteEntry[T]], method: bytes, host: bytes, allowed: set[bytes]
) -> RouteEntry[T] | None:
    for entry in entries:
        if not entry.host_matches(host):
            continue
        if entry.methods is None or method in entry.methods:
            return entry
        allowed.update(entry.methods)
    return None
