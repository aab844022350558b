"""What a browser holds at the provider: the single sign-on session, the CSRF cookie, and consents;
``Browser`` bundles them for the page handlers (flows.py, logout.py).

- **Session.** One sign-in serves every client until ``identity.session_ttl`` passes or the user logs
  out. The cookie holds 256 random bits; the table holds only ``kek.digest(id, "session")``, so a read
  of the database does not yield a usable cookie. A new id is issued at every sign-in and second
  factor (the old row is ended), so an id planted before the sign-in is worth nothing after it.
- **Cookies.** Over https the names carry the ``__Host-`` prefix (Secure, Path=/, no Domain: no sibling
  subdomain can set or shadow them). The session cookie is SameSite=Lax because the authorization
  request is a top-level navigation from the client's site, which must carry it for single sign-on;
  the CSRF cookie is SameSite=Strict, as only our own pages post forms.
- **CSRF.** Each form carries ``kek.digest(csrf cookie, "csrf-form")`` in a hidden field and a POST is
  accepted only when field and cookie agree: another site can make the browser send the cookie
  (not with Strict), but cannot read the page to learn the field.
- **Consent.** The scopes a user has granted a client, asked once and remembered.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity import pages
from garrison.identity.tables import consents, sessions
from garrison.identity.web import HttpRequest, HttpResponse
from garrison.pki.kek import KeyEncryption
from garrison.store.db import dialect_insert
from garrison.telemetry import logging as log

SESSION_PURPOSE = "session"
CSRF_PURPOSE = "csrf-form"
CSRF_FIELD = "csrf"  # the hidden form field
_ID_BYTES = 32


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoginSession:
    """A live sign-on session (the cookie's id is not kept here, only its digest)."""

    digest: str = field(repr=False)
    user_id: str
    auth_time: datetime
    amr: tuple[str, ...]
    expires_at: datetime

    def age(self, now: datetime | None = None) -> float:
        return ((now or _utcnow()) - self.auth_time).total_seconds()


class SessionStore:
    """Sessions in ``identity_sessions``, looked up by the keyed digest of the cookie's id."""

    def __init__(self, engine: AsyncEngine, kek: KeyEncryption, ttl: float) -> None:
        self.engine = engine
        self.kek = kek
        self.ttl = ttl

    def __repr__(self) -> str:
        return f"SessionStore(ttl={self.ttl})"

    async def create(self, user_id: str, amr: Iterable[str]) -> tuple[str, LoginSession]:
        """A new session; returns the cookie's id (shown to the browser only) and the session."""
        session_id = secrets.token_urlsafe(_ID_BYTES)
        now = _utcnow()
        session = LoginSession(
            self.kek.digest(session_id, SESSION_PURPOSE),
            user_id,
            now,
            tuple(amr),
            now + timedelta(seconds=self.ttl),
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(sessions).values(
                    session_digest=session.digest,
                    user_id=user_id,
                    auth_time=now,
                    amr=list(session.amr),
                    expires_at=session.expires_at,
                    ended_at=None,
                )
            )
        return session_id, session

    async def find(self, session_id: str | None) -> LoginSession | None:
        if not session_id or len(session_id) > 128:
            return None
        digest = self.kek.digest(session_id, SESSION_PURPOSE)
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(sessions).where(
                        sessions.c.session_digest == digest,
                        sessions.c.ended_at.is_(None),
                        sessions.c.expires_at > _utcnow(),
                    )
                )
            ).first()
        if row is None:
            return None
        return LoginSession(digest, row.user_id, row.auth_time, tuple(row.amr), row.expires_at)

    async def end(self, session_id: str | None) -> str | None:
        """End the session; returns its user_id when one was live."""
        if not session_id or len(session_id) > 128:
            return None
        digest = self.kek.digest(session_id, SESSION_PURPOSE)
        async with self.engine.begin() as conn:
            ended = await conn.execute(
                update(sessions)
                .where(sessions.c.session_digest == digest, sessions.c.ended_at.is_(None))
                .values(ended_at=_utcnow())
                .returning(sessions.c.user_id)
            )
            user_id = ended.scalar()
        return str(user_id) if user_id is not None else None

    async def purge(self) -> int:
        now = _utcnow()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(sessions).where(or_(sessions.c.expires_at <= now, sessions.c.ended_at.is_not(None)))
            )
        return int(result.rowcount)


class ConsentStore:
    """The scopes each user has granted each client (``identity_consents``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def granted(self, user_id: str, client_id: str) -> frozenset[str]:
        async with self.engine.connect() as conn:
            scopes = (
                await conn.execute(
                    select(consents.c.scopes).where(
                        consents.c.user_id == user_id, consents.c.client_id == client_id
                    )
                )
            ).scalar()
        return frozenset(scopes or ())

    async def grant(self, user_id: str, client_id: str, scopes: Iterable[str]) -> None:
        """Add ``scopes`` to what the user has granted the client (a double click is one upsert; a lost
        race between two different grants only means being asked again)."""
        merged = sorted(await self.granted(user_id, client_id) | set(scopes))
        now = _utcnow()
        async with self.engine.begin() as conn:
            upsert = dialect_insert(conn.dialect.name)
            statement = upsert(consents).values(
                user_id=user_id, client_id=client_id, scopes=merged, granted_at=now
            )
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[consents.c.user_id, consents.c.client_id],
                    set_={"scopes": merged, "granted_at": now},
                )
            )


@dataclass(frozen=True, slots=True)
class BrowserCookies:
    """Cookie names and attributes; ``secure`` when the provider is served over https."""

    secure: bool
    session_ttl: float

    @property
    def session_name(self) -> str:
        return "__Host-garrison_session" if self.secure else "garrison_session"

    @property
    def csrf_name(self) -> str:
        return "__Host-garrison_csrf" if self.secure else "garrison_csrf"

    def session(self, session_id: str) -> str:
        return self._cookie(self.session_name, session_id, "Lax", int(self.session_ttl))

    def clear_session(self) -> str:
        return self._cookie(self.session_name, "", "Lax", 0)

    def csrf(self, value: str) -> str:
        return self._cookie(self.csrf_name, value, "Strict", None)

    def _cookie(self, name: str, value: str, same_site: str, max_age: int | None) -> str:
        parts = [f"{name}={value}", "Path=/", "HttpOnly", f"SameSite={same_site}"]
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


class CsrfGuard:
    """Form tokens derived from the CSRF cookie (see the module docstring)."""

    def __init__(self, kek: KeyEncryption) -> None:
        self.kek = kek

    def __repr__(self) -> str:
        return "CsrfGuard(<hidden>)"

    @staticmethod
    def new_cookie() -> str:
        return secrets.token_urlsafe(_ID_BYTES)

    def token(self, cookie: str) -> str:
        return self.kek.digest(cookie, CSRF_PURPOSE)

    def check(self, cookie: str | None, token: str | None) -> bool:
        if not cookie or not token or len(cookie) > 128:
            return False
        return hmac.compare_digest(self.token(cookie), token)


@dataclass(frozen=True)
class Browser:
    """Cookies, CSRF tokens and the session, as every page handler needs them."""

    cookies: BrowserCookies
    csrf: CsrfGuard
    sessions: SessionStore

    async def session(self, http: HttpRequest) -> LoginSession | None:
        return await self.sessions.find(http.cookie(self.cookies.session_name))

    def form_fields(
        self, http: HttpRequest, fields: dict[str, str]
    ) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """``fields`` plus the CSRF token, and the Set-Cookie that starts a CSRF cookie if there is none."""
        cookie = http.cookie(self.cookies.csrf_name)
        headers = []
        if not cookie or len(cookie) > 128:
            cookie = self.csrf.new_cookie()
            headers.append(("set-cookie", self.cookies.csrf(cookie)))
        return {**fields, CSRF_FIELD: self.csrf.token(cookie)}, headers

    def forged(self, http: HttpRequest) -> HttpResponse | None:
        """None when the form's CSRF token matches the browser's cookie; the refusal otherwise."""
        token = http.form.get(CSRF_FIELD)
        if not token:
            return pages.error_page(
                400, "invalid_request", "The form has no CSRF token. Go back and try again."
            )
        if not self.csrf.check(http.cookie(self.cookies.csrf_name), token):
            log.warn("identity.csrf.refused", path=http.path, ip=http.client_ip)
            return pages.error_page(
                403, "access_denied", "The form could not be verified. Go back and try again."
            )
        return None
