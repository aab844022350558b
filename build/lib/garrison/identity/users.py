"""Users of the identity provider: accounts and argon2id passwords (their roles are roles.py's).

- ``user_id`` (the token ``sub``) is 128 random bits, url-safe: it says nothing about the user and is
  never handed to anyone else, whatever happens to the username.
- Passwords are hashed with argon2id (``argon2-cffi``) at OWASP's recommended parameters (19 MiB,
  2 passes, 1 lane, 16-byte salt, 32-byte tag; RFC 9106 §4 allows them for memory-constrained
  servers). About 20 ms per check on one core, 19 MiB each: cheap enough that many parallel logins do
  not exhaust a small machine, slow enough that a stolen table resists offline guessing. Hashing runs
  in a worker thread so the event loop keeps serving.
- ``verify_password`` spends one argon2 verification on every call, whether or not the user exists or
  is disabled (an unknown user is checked against a dummy hash), so timing does not tell which
  usernames exist. Hashes made with older parameters are upgraded on the next successful login.
- Passwords are normalised to Unicode NFKC before hashing (NIST SP 800-63B §5.1.1.2), so the same
  password typed on two keyboards matches.
- ``User`` carries no password hash at all, so none can reach a log, a repr or a template.
"""

from __future__ import annotations

import asyncio
import builtins
import re
import secrets
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Row, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.roles import check_roles
from garrison.identity.tables import users as users_table
from garrison.pki.kek import KeyEncryption
from garrison.telemetry import logging as log

USER_ID_BYTES = 16  # 128 bits
USERNAME_MAX = 100
PASSWORD_MIN = 12
PASSWORD_MAX = 1024
_USERNAME = re.compile(r"[a-z0-9._@-]{1,100}")
_EMAIL = re.compile(r"[^\s@]{1,64}@[^\s@]{1,252}")


def default_hasher() -> PasswordHasher:
    """argon2id, OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1 (see the module docstring)."""
    return PasswordHasher(
        time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID
    )


class UserNotFound(LookupError):
    """No user has that id."""


class UserExists(ValueError):
    """The username is taken."""


@dataclass(frozen=True, slots=True)
class User:
    """An account as the rest of Garrison sees it: no password hash, no TOTP seed."""

    user_id: str
    username: str
    email: str | None
    roles: tuple[str, ...]
    disabled: bool
    mfa_enrolled: bool
    created_at: datetime
    updated_at: datetime


def normalize_username(username: str) -> str:
    """The stored form of a username (lower-cased); raises ValueError when it breaks the rules."""
    lowered = username.lower()
    if not username.isascii() or not _USERNAME.fullmatch(lowered):
        raise ValueError(f"a username is 1-{USERNAME_MAX} characters of a-z 0-9 . _ @ - (case is ignored)")
    return lowered


def check_password(password: str, username: str) -> str:
    """The NFKC form of an acceptable password; ValueError (never quoting it) otherwise."""
    if len(password) > PASSWORD_MAX:  # before normalising, which would cost time on a huge value
        raise ValueError(f"a password has at most {PASSWORD_MAX} characters")
    normalized = unicodedata.normalize("NFKC", password)
    if len(normalized) < PASSWORD_MIN:
        raise ValueError(f"a password needs at least {PASSWORD_MIN} characters")
    if len(normalized) > PASSWORD_MAX:
        raise ValueError(f"a password has at most {PASSWORD_MAX} characters")
    if normalized.casefold() == username.casefold():
        raise ValueError("the password must not be the username")
    return normalized


def _check_email(email: str | None) -> str | None:
    if email is not None and (len(email) > 254 or not email.isprintable() or not _EMAIL.fullmatch(email)):
        raise ValueError("an email address is local@domain, without spaces, at most 254 characters")
    return email


def _utcnow() -> datetime:
    return datetime.now(UTC)


_USER_COLUMNS = [c for c in users_table.c if c.name not in ("password_hash", "totp_encrypted")]


def _user(row: Row[Any]) -> User:
    return User(
        user_id=row.user_id,
        username=row.username,
        email=row.email,
        roles=tuple(row.roles),
        disabled=bool(row.disabled),
        mfa_enrolled=bool(row.totp_confirmed),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class UserStore:
    """Accounts in ``identity_users``. ``kek`` is kept for what is sealed per user (see mfa.py)."""

    def __init__(
        self, engine: AsyncEngine, kek: KeyEncryption, *, hasher: PasswordHasher | None = None
    ) -> None:
        self.engine = engine
        self.kek = kek
        self.hasher = hasher or default_hasher()
        # Verified against when the user does not exist, so that path costs one argon2 check too.
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(32))

    def __repr__(self) -> str:
        return f"UserStore({self.engine.url.render_as_string(hide_password=True)!r})"

    async def create(
        self, username: str, password: str, email: str | None = None, roles: Iterable[str] = ()
    ) -> User:
        """A new enabled user; raises ValueError for a rule broken, UserExists for a taken username."""
        name = normalize_username(username)
        password_hash = await self._hash(check_password(password, name))
        values: dict[str, Any] = {
            "user_id": secrets.token_urlsafe(USER_ID_BYTES),
            "username": name,
            "email": _check_email(email),
            "password_hash": password_hash,
            "roles": check_roles(roles),
            "disabled": False,
            "totp_encrypted": None,
            "totp_confirmed": False,
            "totp_last_step": None,
            "created_at": _utcnow(),
            "updated_at": _utcnow(),
        }
        try:
            async with self.engine.begin() as connection:
                await connection.execute(users_table.insert().values(**values))
        except IntegrityError:
            # The user_id is 128 random bits: a clash means the username is taken.
            raise UserExists(f"the username {name!r} is taken") from None
        return await self.get(values["user_id"])

    async def get(self, user_id: str) -> User:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(select(*_USER_COLUMNS).where(users_table.c.user_id == user_id))
            ).first()
        if row is None:
            raise UserNotFound("no such user")
        return _user(row)

    async def get_by_username(self, username: str) -> User | None:
        try:
            name = normalize_username(username)
        except ValueError:
            return None
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(select(*_USER_COLUMNS).where(users_table.c.username == name))
            ).first()
        return _user(row) if row is not None else None

    async def list(self) -> builtins.list[User]:
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(*_USER_COLUMNS).order_by(users_table.c.username))
            return [_user(row) for row in rows]

    async def set_password(self, user_id: str, password: str) -> None:
        user = await self.get(user_id)
        password_hash = await self._hash(check_password(password, user.username))
        await self._update(user_id, password_hash=password_hash)

    async def disable(self, user_id: str) -> None:
        """The user can no longer sign in; sessions and tokens are the caller's to revoke."""
        await self._update(user_id, disabled=True)

    async def enable(self, user_id: str) -> None:
        await self._update(user_id, disabled=False)

    async def set_roles(self, user_id: str, roles: Iterable[str]) -> None:
        await self._update(user_id, roles=check_roles(roles))

    async def verify_password(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account enabled; None otherwise.

        Every call costs one argon2 verification, so an unknown, malformed or disabled username answers
        in the same time as a wrong password.
        """
        row = await self._credentials(username)
        # A password the policy cannot have accepted is not normalised (a huge one would cost time).
        normalized = unicodedata.normalize("NFKC", password) if len(password) <= PASSWORD_MAX else ""
        if row is None or not normalized:
            await self._verify(self._dummy_hash, "not the password")
            return None
        stored_hash: str = row.password_hash
        ok = await self._verify(stored_hash, normalized, row.user_id)
        if not ok or row.disabled:
            return None
        if self.hasher.check_needs_rehash(stored_hash):
            await self._rehash(row.user_id, stored_hash, normalized)
        return _user(row)

    async def _credentials(self, username: str) -> Row[Any] | None:
        try:
            name = normalize_username(username)
        except ValueError:
            return None
        columns = [*_USER_COLUMNS, users_table.c.password_hash]
        async with self.engine.connect() as connection:
            return (await connection.execute(select(*columns).where(users_table.c.username == name))).first()

    async def _rehash(self, user_id: str, old_hash: str, normalized_password: str) -> None:
        """Store a hash with today's parameters, unless the password changed in the meantime."""
        new_hash = await self._hash(normalized_password)
        async with self.engine.begin() as connection:
            await connection.execute(
                update(users_table)
                .where(users_table.c.user_id == user_id, users_table.c.password_hash == old_hash)
                .values(password_hash=new_hash, updated_at=_utcnow())
            )
        log.log("identity.password.rehashed", user_id=user_id)

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    async def _verify(self, stored_hash: str, password: str, user_id: str | None = None) -> bool:
        try:
            return await asyncio.to_thread(self.hasher.verify, stored_hash, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            log.error("identity.password.hash_unusable", user_id=user_id)  # fail closed, say why
            return False

    async def _update(self, user_id: str, **values: Any) -> None:
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(users_table)
                .where(users_table.c.user_id == user_id)
                .values(**values, updated_at=_utcnow())
            )
        if result.rowcount != 1:
            raise UserNotFound("no such user")
