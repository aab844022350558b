"""Administrative account locks: ``/lockouts`` on the identity admin API (identity/admin_api.py), the
hook automated responses use to stop a user being guessed at (or a stolen account being used).

A lock names a username (folded as the throttle folds it, so ``Alice `` and ``alice`` are one
account) and lasts until a moment at most ``MAX_LOCK_SECONDS`` ahead. While it holds, sign-in is
refused exactly as a throttle lockout refuses it (flows.py): the password is not checked and the
answer is a wrong password's, so the lock tells a guesser nothing. It is kept in the database, so
every replica and a restart honour it; expired locks are ignored at once and deleted by ``purge``.

The set is bounded (``MAX_LOCKS`` locks in force): whoever holds the admin credential, or an automated
response gone wrong, cannot grow it without limit; one more is refused (``LocksFull``, a 507), while
renewing a lock in force is always allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.tables import account_locks as table
from garrison.identity.throttle import user_key
from garrison.telemetry import logging as log

__all__ = ["MAX_LOCKS", "MAX_LOCK_SECONDS", "AccountLock", "AccountLocks", "LocksFull"]

MAX_LOCKS = 10_000
MAX_LOCK_SECONDS = 24 * 3600.0
REASON_LENGTH = 200


class LocksFull(Exception):
    """``MAX_LOCKS`` accounts are locked already."""


@dataclass(frozen=True, slots=True)
class AccountLock:
    username: str  # folded
    until: datetime
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"username": self.username, "until": self.until.timestamp(), "reason": self.reason}


def folded(username: str) -> str:
    """The account a username names, as the throttle keys it (without its ``user:`` prefix)."""
    return user_key(username).removeprefix("user:")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AccountLocks:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] = _utcnow) -> None:
        self.engine = engine
        self.clock = clock

    async def lock(self, username: str, seconds: float, reason: str) -> AccountLock:
        """Lock ``username`` for ``seconds`` from now (replacing a lock in force)."""
        if not username.strip():
            raise ValueError("the `username` parameter is required")
        if not 0 < seconds <= MAX_LOCK_SECONDS:
            raise ValueError(f"`for` must be positive and at most {MAX_LOCK_SECONDS:g}s (24h)")
        name, now = folded(username), self.clock()
        entry = AccountLock(name, now + timedelta(seconds=seconds), reason[:REASON_LENGTH])
        async with self.engine.begin() as connection:
            await connection.execute(delete(table).where(table.c.until <= now))
            known = await connection.scalar(select(table.c.username).where(table.c.username == name))
            if known is None:
                count = await connection.scalar(select(func.count()).select_from(table))
                if (count or 0) >= MAX_LOCKS:
                    raise LocksFull(f"{MAX_LOCKS} accounts are locked (the cap)")
            await connection.execute(delete(table).where(table.c.username == name))
            await connection.execute(
                insert(table).values(username=name, locked_at=now, until=entry.until, reason=entry.reason)
            )
        log.warn("identity.account.locked", username=name, until=entry.until.isoformat(), reason=entry.reason)
        return entry

    async def unlock(self, username: str) -> bool:
        """Lift the lock on ``username``; False when none was in force."""
        name, now = folded(username), self.clock()
        async with self.engine.begin() as connection:
            gone = await connection.execute(
                delete(table).where(table.c.username == name).returning(table.c.until)
            )
            ends = [row.until for row in gone]
        in_force = any(until > now for until in ends)
        if in_force:
            log.log("identity.account.unlocked", username=name)
        return in_force

    async def locked(self, username: str) -> AccountLock | None:
        """The lock in force on ``username``, if any (asked at every sign-in)."""
        name = folded(username)
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(table.c.until, table.c.reason).where(
                        table.c.username == name, table.c.until > self.clock()
                    )
                )
            ).first()
        return AccountLock(name, row.until, row.reason) if row is not None else None

    async def entries(self) -> list[AccountLock]:
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(table).where(table.c.until > self.clock()).order_by(table.c.until)
                )
            ).all()
        return [AccountLock(row.username, row.until, row.reason) for row in rows]

    async def purge(self) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(delete(table).where(table.c.until <= self.clock()))
