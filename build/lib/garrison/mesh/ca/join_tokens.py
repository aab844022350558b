"""One-time join tokens: how a workload proves, once, that it may have a service's first certificate.

``garrison ca join-token --service orders --ttl 10m`` mints one; the workload presents it with its CSR;
after that it renews with the certificate it holds (over mTLS), and only a lapsed certificate needs a
new token. This is SPIRE's join-token attestor; Kubernetes service-account tokens are another attestor
for later, behind the same "which SPIFFE ID does this proof name" question.

A token is 256 random bits (``gjt_`` + base64url), shown once and stored only as a keyed digest. Every
refusal (unknown, spent, expired) looks the same to the presenter, so a token cannot be probed for which
of the three it is; the CA's own log says which. Outstanding tokens are capped, since each is a row.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.mesh.ca.tables import join_tokens
from garrison.pki.kek import KeyEncryption

__all__ = ["JoinTokenRefused", "JoinTokens", "TooManyJoinTokens"]

PREFIX = "gjt_"
MAX_TTL = dt.timedelta(days=1)
MAX_OUTSTANDING = 10_000
_DIGEST_PURPOSE = "mesh-join-token"


class JoinTokenRefused(Exception):
    """The token is unknown, spent or expired (one message for all three, on purpose)."""

    def __init__(self) -> None:
        super().__init__("join token refused: it is unknown, already used or expired; ask for a new one")


class TooManyJoinTokens(Exception):
    """The cap on outstanding tokens is reached; spend or let some expire first."""


class JoinTokens:
    """Mint and redeem join tokens on the CA's database."""

    def __init__(
        self,
        engine: AsyncEngine,
        kek: KeyEncryption,
        clock: Callable[[], dt.datetime],
        max_outstanding: int = MAX_OUTSTANDING,
    ) -> None:
        self._engine = engine
        self._kek = kek
        self._clock = clock
        self._max_outstanding = max_outstanding

    async def mint(self, spiffe_id: str, ttl: dt.timedelta) -> str:
        """A new token for ``spiffe_id``, valid for ``ttl`` (at most a day). Shown once: only its
        digest is kept."""
        if not dt.timedelta(seconds=1) <= ttl <= MAX_TTL:
            raise ValueError(f"a join token lives between 1 s and {MAX_TTL}")
        now = self._clock()
        token = PREFIX + secrets.token_urlsafe(32)
        async with self._engine.begin() as connection:
            await connection.execute(delete(join_tokens).where(join_tokens.c.expires_at <= now))
            outstanding = await connection.scalar(
                select(func.count()).select_from(join_tokens).where(join_tokens.c.used_at.is_(None))
            )
            if (outstanding or 0) >= self._max_outstanding:
                raise TooManyJoinTokens(
                    f"{outstanding} join tokens are outstanding (the cap): use or let some expire first"
                )
            await connection.execute(
                insert(join_tokens).values(
                    digest=self._digest(token), spiffe_id=spiffe_id, created_at=now, expires_at=now + ttl
                )
            )
        return token

    async def redeem(self, token: str) -> str:
        """Spend ``token`` and return the SPIFFE ID it was minted for; of N concurrent presentations of
        one token, exactly one succeeds."""
        if not token.startswith(PREFIX) or len(token) > 100:
            raise JoinTokenRefused
        now = self._clock()
        digest = self._digest(token)
        live = and_(
            join_tokens.c.digest == digest, join_tokens.c.used_at.is_(None), join_tokens.c.expires_at > now
        )
        async with self._engine.begin() as connection:
            spent = await connection.execute(update(join_tokens).where(live).values(used_at=now))
            if spent.rowcount != 1:
                raise JoinTokenRefused
            spiffe_id = await connection.scalar(
                select(join_tokens.c.spiffe_id).where(join_tokens.c.digest == digest)
            )
        assert isinstance(spiffe_id, str)
        return spiffe_id

    def _digest(self, token: str) -> str:
        return self._kek.digest(token, _DIGEST_PURPOSE)
