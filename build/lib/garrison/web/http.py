"""Request and response types of the small HTTP app layer (web/app.py), and the answers it gives
by itself: the body limit, strict parameter parsing and JSON errors.

Errors are JSON ``{"error": <code>, "error_description": <text>}`` (the OAuth 2.0 shape, RFC 6749
§5.2, which the identity provider answers with); a handler raises ``HttpError`` to give one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

__all__ = [
    "MAX_BODY",
    "Handler",
    "Headers",
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "json_response",
    "parse_params",
]

MAX_BODY = 64 * 1024


class Headers(dict[str, str]):
    """Request headers by lower-cased name, with case-insensitive lookups (Authlib reads
    ``Authorization``); a repeated header keeps its last value."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class HttpError(Exception):
    """Raised by a handler (or the app) to answer ``status`` with a JSON error."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    client_ip: str
    form: dict[str, str] = field(default_factory=dict)

    def cookie(self, name: str) -> str | None:
        """The first cookie called ``name`` (RFC 6265 §5.4 sends the most specific first)."""
        header: str = self.headers.get("cookie", "")
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                return value.strip().strip('"')
        return None


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(status: int, payload: Any, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(payload, separators=(",", ":")).encode(), headers=headers or [])


def error_response(error: HttpError) -> HttpResponse:
    return json_response(error.status, {"error": error.error, "error_description": error.description})


def parse_params(raw: str) -> dict[str, str]:
    """Query or form parameters; a repeated parameter is an error, never a silent first-or-last pick
    (RFC 6749 §3.1, §3.2: no two components may read different copies of one parameter)."""
    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError:
        raise HttpError(400, "invalid_request", "Parameters must be UTF-8.") from None
    for name, value in pairs:
        if name in params:
            raise HttpError(400, "invalid_request", f"Parameter {name!r} is repeated.")
        params[name] = value
    return params
