"""One admin call with the admin token, retried with back-off: what every response action sends.

httpx does the HTTP (it is already a dependency, and the identity provider's revocation push uses it
the same way). What is retried: network errors, timeouts and 5xx answers other than 507 (a full
set stays full) — the component may be restarting. A 4xx answer is the component's decision about
this request and is final. The admin token is read from its file at every call and never appears in
a result, a log line or an exception; httpx's own exceptions are translated here into ``CallResult``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from garrison.admin.auth import AdminTokenError, read_admin_token
from garrison.audit.respond.targets import AdminTarget

__all__ = ["AdminCaller", "CallResult"]

Sleep = Callable[[float], Awaitable[None]]
FINAL_5XX = frozenset({501, 505, 507})


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one admin call came to. ``status`` 0: no HTTP answer (``error`` says why)."""

    url: str
    status: int
    body: Mapping[str, Any]
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class AdminCaller:
    """Admin calls over one httpx client per TLS setting (connections are kept alive per target)."""

    def __init__(self, attempts: int, backoff: float, timeout: float, sleep: Sleep = asyncio.sleep) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._sleep = sleep
        self._clients: dict[int, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    def _client(self, target: AdminTarget) -> httpx.AsyncClient:
        key = id(target.verify) if not isinstance(target.verify, bool) else int(target.verify)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                verify=target.verify, timeout=self.timeout, trust_env=False, follow_redirects=False
            )
            self._clients[key] = client
        return client

    async def call(
        self, target: AdminTarget, method: str, path: str, params: Mapping[str, str]
    ) -> CallResult:
        """``method`` ``path`` on ``target`` with ``params`` in the query string (admin listeners take
        no bodies), up to ``attempts`` times."""
        url = target.url + path
        try:
            token = read_admin_token(target.token_file)
        except AdminTokenError as exc:
            return CallResult(url, 0, {}, str(exc), attempts=0)
        result = CallResult(url, 0, {}, "not attempted", attempts=0)
        for attempt in range(1, self.attempts + 1):
            result = await self._once(target, method, url, params, token, attempt)
            if not _retryable(result) or attempt == self.attempts:
                return result
            await self._sleep(self.backoff * 2 ** (attempt - 1))
        return result

    async def _once(
        self,
        target: AdminTarget,
        method: str,
        url: str,
        params: Mapping[str, str],
        token: str,
        attempt: int,
    ) -> CallResult:
        headers = {"authorization": f"Bearer {token}"}
        try:
            response = await self._client(target).request(method, url, params=dict(params), headers=headers)
        except httpx.HTTPError as exc:
            return CallResult(url, 0, {}, _describe(exc), attempt)
        body = _json_object(response.content)
        error = None if response.is_success else _error_text(body, response.status_code)
        return CallResult(url, response.status_code, body, error, attempt)


def _retryable(result: CallResult) -> bool:
    return result.status == 0 or (result.status >= 500 and result.status not in FINAL_5XX)


def _describe(exc: httpx.HTTPError) -> str:
    """The kind of failure and httpx's message (which names the URL, never a header)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _json_object(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content) if content else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


def _error_text(body: Mapping[str, Any], status: int) -> str:
    for key in ("message", "error"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return value[:300]
    return f"HTTP {status}"
