"""Client authentication at the token endpoint: the methods it accepts, and ``private_key_jwt``.

Authlib does the protocol (RFC 7523 ``private_key_jwt``); this module supplies what it leaves to the
framework: the client's own public keys and a ``jti`` store, so each assertion is accepted once. The
``jti`` check runs inside SQLAlchemy's ``greenlet_spawn`` (see authserver.py) and reaches the async
engine through ``await_only``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc.jwk import KeySet
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from garrison.identity.tables import assertion_jtis
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from garrison.identity.authserver import IdentityServer, OAuthClient

TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


class AssertionAuth(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` (RFC 7523): the client's own JWKS, ``aud`` = issuer or token endpoint, and
    each ``jti`` accepted once (remembered in the database until the assertion expires)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: IdentityServer, engine: AsyncEngine) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server
        self.engine = engine

    def get_audiences(self) -> list[str]:
        return [self.server.issuer, self.server.issuer + "/token"]

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        return KeySet.import_key_set(cast(Any, client.record.jwks or {"keys": []}))

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            return False
        exp = claims.get("exp")
        expires = datetime.fromtimestamp(
            float(exp) if isinstance(exp, int | float) else time.time() + 300, UTC
        )
        return bool(await_only(self._remember(str(claims["sub"]), jti, expires)))

    async def _remember(self, client_id: str, jti: str, expires: datetime) -> bool:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(assertion_jtis).values(client_id=client_id, jti=jti, expires_at=expires)
                )
        except IntegrityError:
            log.warn("identity.assertion.replayed", client_id=client_id)
            return False
        return True


__all__ = ["TOKEN_ENDPOINT_AUTH_METHODS", "AssertionAuth"]
