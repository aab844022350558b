"""Token families: authorization codes, refresh tokens and the access tokens they led to, kept together
so that one replayed credential revokes everything it ever produced.

A family is born when a code is redeemed (its ``family_id`` was drawn when the code was issued) and
lives ``refresh_token_ttl`` from then; rotation never extends it. Every access token issued inside it
is recorded by ``jti`` so that revoking the family can revoke them too (through ``Provider.revoke``,
which the gateways follow).

Single use is decided by the database, in the same transaction that records what the use produced:

- redeeming a code runs ``UPDATE identity_codes SET used_at = :now WHERE code_digest = :d AND
  client_id = :c AND used_at IS NULL`` and goes on only if that changed one row;
- rotating a refresh token runs the same statement on ``identity_refresh_tokens``, then touches the
  family row (``... WHERE revoked_at IS NULL``), which both checks that the family still lives and
  holds its lock until the new tokens are committed, so a revocation running at the same moment
  either sees them or makes the rotation fail: no token escapes a revoked family.

Whoever loses that race, or presents a spent credential later, gets ``invalid_grant`` and the family is
revoked (RFC 6749 §4.1.2 for codes, OAuth 2.0 Security BCP §4.14.2 for refresh tokens). Ten parallel
refreshes with one token thus give one success, and then a revoked family: a client that refreshes in
parallel is indistinguishable from a thief racing it, and only the family's owner can start over.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oidc.core import AuthorizationCodeMixin
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.auditing import IdentityAudit
from garrison.identity.tables import access_tokens, codes, refresh_tokens, token_families
from garrison.pki.kek import KeyEncryption
from garrison.telemetry import logging as log

CODE_PURPOSE = "authorization-code"
REFRESH_PURPOSE = "refresh-token"
Revoke = Callable[[str, float], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Refused(Exception):
    """Rolls a redemption or rotation back; ``spent`` when the credential had been used already."""

    def __init__(self, spent: bool) -> None:
        super().__init__()
        self.spent = spent


@dataclass(frozen=True)
class CodeRecord(AuthorizationCodeMixin):  # type: ignore[misc]
    """An unspent, unexpired authorization code, as Authlib's (OIDC) ``AuthorizationCodeMixin``."""

    code_digest: str = field(repr=False)
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    code_challenge_method: str
    auth_time: datetime
    amr: tuple[str, ...]
    family_id: str

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return int(self.auth_time.timestamp())

    def get_amr(self) -> list[str] | None:
        return list(self.amr) or None


@dataclass(frozen=True)
class RefreshRecord(TokenMixin):  # type: ignore[misc]
    """An unspent refresh token of a live family, as Authlib's ``TokenMixin``."""

    token_digest: str = field(repr=False)
    family_id: str
    client_id: str
    user_id: str
    scope: str
    expires_at: datetime  # the family's end: rotation does not extend it
    user: Any = None  # the EndUser, once the grant has loaded it

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return max(0, int((self.expires_at - _utcnow()).total_seconds()))

    def is_expired(self) -> bool:
        return _utcnow() >= self.expires_at

    def is_revoked(self) -> bool:
        return False


def access_token_id(access_token: str) -> tuple[str, float]:
    """``(jti, exp)`` of an access token this process has just signed (so read without verifying)."""
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"]), float(claims["exp"])


_CODE_COLUMNS = [item.name for item in fields(CodeRecord) if item.name != "amr"]


class TokenFamilies:
    """Codes, refresh tokens and families in the database; see the module docstring for the rules."""

    def __init__(
        self,
        engine: AsyncEngine,
        kek: KeyEncryption,
        *,
        code_ttl: float,
        refresh_ttl: float,
        revoke: Revoke,
        audit: IdentityAudit | None = None,
    ) -> None:
        self.engine, self.kek, self.revoke_jti = engine, kek, revoke
        self.code_ttl, self.refresh_ttl = code_ttl, refresh_ttl
        self.audit = audit if audit is not None else IdentityAudit()

    def __repr__(self) -> str:
        return f"TokenFamilies(code_ttl={self.code_ttl}, refresh_ttl={self.refresh_ttl})"

    async def save_code(self, code: str, **values: Any) -> None:
        """Store a new code (by digest) with what it grants; ``values`` are columns of identity_codes."""
        now = _utcnow()
        row = {**values, "amr": list(values["amr"]), "family_id": secrets.token_urlsafe(24)}
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(codes).values(
                    code_digest=self.kek.digest(code, CODE_PURPOSE),
                    expires_at=now + timedelta(seconds=self.code_ttl),
                    used_at=None,
                    **row,
                )
            )

    async def find_code(self, code: str, client_id: str) -> CodeRecord | None:
        """The code if ``client_id`` may redeem it now. A spent code revokes its family (a replay)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(codes).where(codes.c.code_digest == self.kek.digest(code, CODE_PURPOSE))
                )
            ).first()
        if row is None:
            return None
        if row.client_id != client_id:
            log.warn("identity.code.wrong_client", client_id=client_id, issued_to=row.client_id)
            return None
        if row.used_at is not None:
            await self._replayed("authorization_code", client_id, row.user_id, row.family_id)
            return None
        if row.expires_at <= _utcnow():
            return None
        columns = {name: row._mapping[name] for name in _CODE_COLUMNS}
        return CodeRecord(**columns, amr=tuple(row.amr))

    async def nonce_used(self, client_id: str, nonce: str) -> bool:
        """Whether a code still on record for this client carries ``nonce`` (OIDC replay check)."""
        async with self.engine.connect() as conn:
            found = await conn.execute(
                select(codes.c.family_id)
                .where(codes.c.client_id == client_id, codes.c.nonce == nonce)
                .limit(1)
            )
            return found.first() is not None

    async def redeem(self, code: CodeRecord, token: Mapping[str, Any]) -> bool:
        """Spend ``code`` and record the family and tokens it produced, atomically; False if spent."""
        now = _utcnow()
        try:
            async with self.engine.begin() as conn:
                spent = await conn.execute(
                    update(codes)
                    .where(
                        codes.c.code_digest == code.code_digest,
                        codes.c.client_id == code.client_id,
                        codes.c.used_at.is_(None),
                    )
                    .values(used_at=now)
                )
                if spent.rowcount != 1:
                    raise _Refused(spent=True)
                expires = now + timedelta(seconds=self.refresh_ttl)
                await conn.execute(
                    insert(token_families).values(
                        family_id=code.family_id,
                        client_id=code.client_id,
                        user_id=code.user_id,
                        created_at=now,
                        expires_at=expires,
                    )
                )
                await self._record(conn, code.family_id, code.client_id, code.user_id, token, now, expires)
        except _Refused:
            await self._replayed("authorization_code", code.client_id, code.user_id, code.family_id)
            return False
        return True

    async def find_refresh(self, token: str, client_id: str) -> RefreshRecord | None:
        """The refresh token if ``client_id`` may use it now. A spent one revokes its family (a replay)."""
        row = await self._refresh_row(token)
        if row is None:
            return None
        if row.client_id != client_id:
            log.warn("identity.refresh.wrong_client", client_id=client_id, issued_to=row.client_id)
            return None
        if row.used_at is not None:
            await self._replayed("refresh_token", client_id, row.user_id, row.family_id)
            return None
        if row.expires_at <= _utcnow():
            return None
        return RefreshRecord(row.token_digest, row.family_id, row.client_id, row.user_id, row.scope, row.ends)

    async def lookup_refresh(self, token: str) -> RefreshRecord | None:
        """A refresh token of a live family, spent or not (for revocation, RFC 7009 §2.1)."""
        row = await self._refresh_row(token)
        if row is None:
            return None
        return RefreshRecord(row.token_digest, row.family_id, row.client_id, row.user_id, row.scope, row.ends)

    async def _refresh_row(self, token: str) -> Any:
        """The token's row with its family's end, if the family is neither revoked nor over."""
        digest = self.kek.digest(token, REFRESH_PURPOSE)
        family = token_families.c
        query = (
            select(refresh_tokens, family.expires_at.label("ends"))
            .select_from(refresh_tokens.join(token_families))
            .where(
                refresh_tokens.c.token_digest == digest,
                family.revoked_at.is_(None),
                family.expires_at > _utcnow(),
            )
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).first()

    async def rotate(self, old: RefreshRecord, token: Mapping[str, Any]) -> bool:
        """Spend ``old`` and record its successor and the new access token, atomically; False if refused."""
        now = _utcnow()
        try:
            async with self.engine.begin() as conn:
                spent = await conn.execute(
                    update(refresh_tokens)
                    .where(
                        refresh_tokens.c.token_digest == old.token_digest, refresh_tokens.c.used_at.is_(None)
                    )
                    .values(used_at=now)
                )
                if spent.rowcount != 1:
                    raise _Refused(spent=True)
                family = token_families.c
                alive = await conn.execute(
                    update(token_families)
                    .where(
                        family.family_id == old.family_id,
                        family.revoked_at.is_(None),
                        family.expires_at > now,
                    )
                    .values(
                        client_id=family.client_id
                    )  # no change: takes the row lock (see module docstring)
                )
                if alive.rowcount != 1:
                    raise _Refused(spent=False)
                await self._record(
                    conn, old.family_id, old.client_id, old.user_id, token, now, old.expires_at
                )
        except _Refused as refused:
            if refused.spent:
                await self._replayed("refresh_token", old.client_id, old.user_id, old.family_id)
            return False
        return True

    async def _replayed(self, credential: str, client_id: str, user_id: str, family_id: str) -> None:
        """A spent code or refresh token was presented: revoke its family, and say so (``token.reuse``)."""
        kind = "code" if credential == "authorization_code" else "refresh"
        log.warn(f"identity.{kind}.reuse_detected", client_id=client_id, user_id=user_id)
        revoked = await self.revoke_family(family_id, f"{kind}_reuse")
        self.audit.emit(
            "token.reuse",
            "denied",
            subject=user_id,
            client=client_id,
            target=self.audit.hint(family_id),
            credential=credential,
            family_revoked=True,
            access_tokens_revoked=revoked,
        )

    async def revoke_all(
        self, reason: str, *, user_id: str | None = None, client_id: str | None = None
    ) -> tuple[int, int]:
        """Revoke every live family of a user or of a client (the admin API's ``/token-families``):
        how many families, and how many of their access tokens, were revoked."""
        family = token_families.c
        match = family.user_id == user_id if user_id is not None else family.client_id == client_id
        query = select(family.family_id).where(
            match, family.revoked_at.is_(None), family.expires_at > _utcnow()
        )
        async with self.engine.connect() as conn:
            live = (await conn.scalars(query)).all()
        families = tokens = 0
        for family_id in live:
            revoked = await self._revoke(family_id, reason[:64])
            if revoked is not None:  # else revoked meanwhile (a replay, the client), with its tokens
                families, tokens = families + 1, tokens + revoked
        return families, tokens

    async def revoke_family(self, family_id: str, reason: str) -> int:
        """Revoke a family: its refresh tokens stop working, its access tokens are revoked by jti.
        How many access tokens were revoked (0 when the family was unknown or revoked before)."""
        return await self._revoke(family_id, reason) or 0

    async def _revoke(self, family_id: str, reason: str) -> int | None:
        """``revoke_family``; None when this call did not revoke it (unknown, or revoked before)."""
        now = _utcnow()
        family = token_families.c
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(token_families)
                .where(family.family_id == family_id, family.revoked_at.is_(None))
                .values(revoked_at=now, revoked_reason=reason)
            )
            if result.rowcount != 1:
                return None  # unknown, or revoked before (and its tokens with it)
            issued = (
                await conn.execute(
                    select(access_tokens.c.jti, access_tokens.c.expires_at).where(
                        access_tokens.c.family_id == family_id, access_tokens.c.expires_at > now
                    )
                )
            ).all()
        for jti, expires_at in issued:
            await self.revoke_jti(jti, expires_at.timestamp())
        log.warn("identity.family.revoked", family_id=family_id, reason=reason, access_tokens=len(issued))
        return len(issued)

    async def purge(self) -> None:
        """Forget expired unredeemed codes and expired families (with their tokens and codes)."""
        now = _utcnow()
        async with self.engine.begin() as conn:
            await conn.execute(delete(codes).where(codes.c.expires_at <= now, codes.c.used_at.is_(None)))
            ended = select(token_families.c.family_id).where(token_families.c.expires_at <= now)
            await conn.execute(delete(refresh_tokens).where(refresh_tokens.c.family_id.in_(ended)))
            await conn.execute(delete(access_tokens).where(access_tokens.c.family_id.in_(ended)))
            await conn.execute(delete(codes).where(codes.c.family_id.in_(ended)))
            await conn.execute(delete(token_families).where(token_families.c.expires_at <= now))

    async def _record(
        self,
        conn: Any,
        family_id: str,
        client_id: str,
        user_id: str,
        token: Mapping[str, Any],
        now: datetime,
        family_expires: datetime,
    ) -> None:
        jti, exp = access_token_id(token["access_token"])
        await conn.execute(
            insert(access_tokens).values(
                jti=jti, family_id=family_id, expires_at=datetime.fromtimestamp(exp, UTC)
            )
        )
        refresh = token.get("refresh_token")
        if refresh:
            await conn.execute(
                insert(refresh_tokens).values(
                    token_digest=self.kek.digest(refresh, REFRESH_PURPOSE),
                    family_id=family_id,
                    client_id=client_id,
                    user_id=user_id,
                    scope=token.get("scope", ""),
                    issued_at=now,
                    expires_at=family_expires,
                )
            )
