"""Pushing revocations to gateways that do not share Redis: the identity provider calls each
gateway's admin API (`POST /revocations?jti=...&until=...`, the same call `garrison revoke` makes).

With `revocations.storage: redis` the provider publishes through Redis instead and every
gateway sees it within milliseconds; this push is for the one-machine setup (`garrison up`) and for
gateways without Redis. It is best effort with a few quick retries: a gateway that is down misses the
push, and honours the token until its `exp` (minutes) — which is why the Redis feed is the one to
use across replicas. Failures are logged, never raised into the revocation request.

Each push carries the gateways' admin token (``Authorization: Bearer``), read from its 0600 file at
every push, so a gateway that creates or replaces its token later is still reached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import httpx

from garrison.admin.auth import AdminTokenError, read_admin_token
from garrison.telemetry import logging as log

ATTEMPTS = 3
TIMEOUT = 2.0


class GatewayPush:
    def __init__(self, admin_urls: Sequence[str], token_file: Path) -> None:
        self.admin_urls = [url.rstrip("/") for url in admin_urls]
        self.token_file = token_file
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.admin_urls:
            self._client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False, follow_redirects=False)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()

    def publish(self, jti: str, until: float) -> None:
        """Start pushing to every gateway; returns at once (the revocation request does not wait)."""
        for url in self.admin_urls:
            task = asyncio.get_running_loop().create_task(self._push(url, jti, until))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _push(self, url: str, jti: str, until: float) -> None:
        assert self._client is not None
        try:
            token = read_admin_token(self.token_file)
        except AdminTokenError as exc:
            log.warn("identity.revocation.push_failed", gateway=url, error=str(exc))
            return
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self._client.post(
                    f"{url}/revocations",
                    params={"jti": jti, "until": f"{until:.3f}"},
                    headers={"authorization": f"Bearer {token}"},
                )
                if response.status_code == 200:
                    return
                log.warn("identity.revocation.push_refused", gateway=url, status=response.status_code)
                return  # the gateway understood and refused: retrying would not change its mind
            except httpx.HTTPError as exc:
                if attempt == ATTEMPTS:
                    log.warn("identity.revocation.push_failed", gateway=url, error=type(exc).__name__)
                    return
                await asyncio.sleep(0.2 * attempt)
