"""Routing by method and path, for the app layer (web/app.py) and the admin API (admin/api.py).

Exact paths, plus prefixes that own a whole subtree (``/blocklist`` answers ``/blocklist`` and
``/blocklist/...``). A path nobody routes is 404; a routed path with another method is 405 with
the ``Allow`` header listing what it takes (RFC 9110 §15.5.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["RouteMiss", "Router"]

H = TypeVar("H")
ANY_METHOD = "*"


@dataclass(frozen=True, slots=True)
class RouteMiss:
    """No handler: ``status`` 404, or 405 with ``allow`` (a comma-separated method list)."""

    status: int
    allow: str = ""


@dataclass
class Router(Generic[H]):
    exact: dict[tuple[str, str], H] = field(default_factory=dict)
    prefixes: dict[str, H] = field(default_factory=dict)  # prefix -> handler taking every method

    def route(self, method: str, path: str, handler: H) -> None:
        self.exact[(method, path)] = handler

    def mount(self, prefix: str, handler: H) -> None:
        """``handler`` answers every method on ``prefix`` and below it (it does its own 405s)."""
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"a mount prefix starts with / and does not end with one: {prefix!r}")
        self.prefixes[prefix] = handler

    def match(self, method: str, path: str) -> H | RouteMiss:
        handler = self.exact.get((method, path))
        if handler is not None:
            return handler
        for prefix, mounted in self.prefixes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return mounted
        allowed = sorted(m for (m, p) in self.exact if p == path)
        return RouteMiss(405, ", ".join(allowed)) if allowed else RouteMiss(404)
