"""Brute-force protection for passwords, one-time codes and client credentials (client_throttle.py)
that holds under parallel guessing.

An attempt is counted *before* its password or code is checked, by one atomic statement per key::

    INSERT INTO identity_throttle ... ON CONFLICT (key) DO UPDATE SET failures = failures + 1 ...
    RETURNING failures, window_start, locked_until

(SQLite >= 3.35 and PostgreSQL both run it as one step), so a burst of N parallel wrong guesses lets at
most ``max_failures`` reach the check: the others read a count past the limit, or a lock, and are
refused without a check. Only then does the caller check, and report back:

- success takes the reservation back: an account key (``user:...``, ``otp:...``, ``client:...``) is
  reset, an address key (``ip:...``) gives back this one attempt only, so one good account cannot
  launder an address that guesses at others;
- failure keeps the count, and the failure that finds the limit reached locks the key until
  ``now + lock_for``; an attempt arriving beyond the limit locks it too (so an abandoned check cannot
  leave a key stuck without a lock end);
- a refused attempt counts on none of its keys, and a locked key refuses without checking anything,
  so the answer says nothing about whether the password was right.

Failures are counted in a fixed window that starts at the first counted attempt and is forgotten after
``window``. Keys are touched in sorted order inside one transaction, so two attempts on the same keys
cannot deadlock on PostgreSQL. Lockout lets anyone lock a known username for ``lock_for``: the
per-address limit, the audit events and short ``lock_for`` values are the operator's levers.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

from sqlalchemy import Row, case, delete, literal, null, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from garrison.identity.tables import throttle as throttle_table
from garrison.store.db import UTCDateTime, dialect_insert
from garrison.telemetry import logging as log

IP_PREFIX = "ip:"
CLIENT_PREFIX = "client:"
_KEY_MAX = 200
_IPV6_NETWORK = 64  # one host usually holds a whole /64: counting single addresses would be no limit


class LockoutSettings(Protocol):
    """What ``config.model.LockoutConfig`` provides."""

    @property
    def max_failures(self) -> int: ...
    @property
    def ip_max_failures(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def lock_for(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Counted:
    """One key's share of a reservation: its count after this attempt, in which window."""

    key: str
    failures: int
    window_start: datetime


@dataclass(frozen=True, slots=True)
class Reservation:
    """An attempt counted on every key; report it with ``succeeded`` or ``failed``."""

    counted: tuple[Counted, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(item.key for item in self.counted)


@dataclass(frozen=True, slots=True)
class Locked:
    """A key that refuses attempts until ``until``; ``started`` when this attempt locked it (audit it)."""

    key: str
    until: datetime
    started: bool


class LockedOut(Exception):
    """Raised by ``Throttle.attempt`` when a key is locked. Answer as for a wrong password."""

    def __init__(self, locked: Locked) -> None:
        super().__init__(f"{locked.key} is locked until {locked.until.isoformat()}")
        self.locked = locked


def user_key(username: str) -> str:
    """The throttle key of a username as typed (existing or not), case-folded like usernames are."""
    return _bounded("user:", username.strip().lower())


def client_key(client_id: str) -> str:
    """The throttle key of a registered client (failed client authentication, client_throttle.py)."""
    return _bounded(CLIENT_PREFIX, client_id)


@functools.lru_cache(maxsize=4096)  # every client authentication asks; the same few addresses repeat
def ip_key(address: str) -> str:
    """The throttle key of a client address: the address for IPv4, its /64 network for IPv6."""
    try:
        parsed = ipaddress.ip_address(address.strip())
    except ValueError:
        return _bounded(IP_PREFIX, address.strip())
    if parsed.version == 6:
        return IP_PREFIX + str(ipaddress.ip_network(f"{parsed}/{_IPV6_NETWORK}", strict=False))
    return IP_PREFIX + str(parsed)


def _bounded(prefix: str, value: str) -> str:
    """``prefix + value``, or a digest of it when too long or not plain text, to fit the key column."""
    if len(prefix) + len(value) <= _KEY_MAX and value.isprintable() and value.isascii():
        return prefix + value
    return prefix + "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Throttle:
    """Per-key failure counters and locks in ``identity_throttle``; ``clock`` is injectable for tests."""

    def __init__(
        self, engine: AsyncEngine, settings: LockoutSettings, clock: Callable[[], datetime] = _utcnow
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.clock = clock
        # Told the kind of key ("user", "ip", "otp", "client") each time a locked key refuses an
        # attempt unchecked: the provider's metrics (identity/admin.py wires it).
        self.on_refused: Callable[[str], None] = lambda limit: None
        # Told every lock an attempt starts: the provider's audit events (service.py wires it).
        self.on_lockout: Callable[[Locked], None] = lambda locked: None

    def refused(self, key: str) -> None:
        """Report an attempt the lock on ``key`` refused (flows.py, client_throttle.py)."""
        self.on_refused(key.split(":", 1)[0])

    def _started(self, locked: Locked) -> None:
        log.warn("identity.lockout", key=locked.key, until=locked.until.isoformat())
        self.on_lockout(locked)

    def limit_for(self, key: str) -> int:
        return self.settings.ip_max_failures if key.startswith(IP_PREFIX) else self.settings.max_failures

    def attempt(self, keys: Iterable[str]) -> Attempt:
        """``async with throttle.attempt(keys) as attempt:`` check, then ``attempt.succeed()`` if right."""
        return Attempt(self, keys)

    async def reserve(self, keys: Iterable[str]) -> Reservation | Locked:
        """Count an attempt on every key before it is checked, or say which key refuses it."""
        ordered = sorted(set(keys))
        if not ordered:
            raise ValueError("an attempt needs at least one throttle key")
        now = self.clock()
        lock_until = now + timedelta(seconds=self.settings.lock_for)
        counted: list[Counted] = []
        async with self.engine.begin() as connection:
            for key in ordered:
                locked = await self._count(connection, key, now, lock_until, counted)
                if locked is not None:
                    await self._give_back(connection, counted)
                    break
            else:
                return Reservation(tuple(counted))
        if locked.started:
            self._started(locked)
        return locked

    async def succeeded(self, reservation: Reservation) -> None:
        """The check passed: reset account keys, give this attempt back to address keys."""
        async with self.engine.begin() as connection:
            for item in reservation.counted:
                if item.key.startswith(IP_PREFIX):
                    await self._give_back(connection, [item])
                else:
                    await connection.execute(delete(throttle_table).where(throttle_table.c.key == item.key))

    async def failed(self, reservation: Reservation) -> list[Locked]:
        """The check failed: the count stays; lock each key whose limit is now reached. The locks started."""
        until = self.clock() + timedelta(seconds=self.settings.lock_for)
        async with self.engine.begin() as connection:
            started = [
                Locked(item.key, until, started=True)
                for item in reservation.counted
                if await self._lock(connection, item, until)
            ]
        for locked in started:
            self._started(locked)
        return started

    async def purge(self) -> int:
        """Delete counters whose window and lock are over (they would be reset on next use anyway)."""
        now = self.clock()
        table = throttle_table
        async with self.engine.begin() as connection:
            result = await connection.execute(
                delete(table).where(
                    table.c.window_start <= now - timedelta(seconds=self.settings.window),
                    or_(table.c.locked_until.is_(None), table.c.locked_until <= now),
                )
            )
        return int(result.rowcount)

    async def admit(self, keys: Iterable[str]) -> Locked | None:
        """A credential that was checked and is right, on keys that may have failures (client_throttle.py:
        a client secret costs nothing to check, so it is checked first). ``None``: go ahead.

        It is not counted, so any number of parallel good attempts pass. It is refused (``Locked``) when
        a key is locked, or its failures reached the limit — which locks it now, as an attempt beyond
        the limit would. Otherwise its account keys are reset, as ``succeeded`` does. An account key
        with failures is read again in a transaction that holds its row, so the answer comes after
        every failure counted before it: a plain read could overtake guesses queued for the row. An
        address key with failures below its limit is only read (no write, so good clients behind one
        address are not serialized): a good credential racing failures in flight from it may pass.
        """
        ordered = sorted(set(keys))
        now = self.clock()
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(select(throttle_table).where(throttle_table.c.key.in_(ordered)))
            ).all()
        verdicts = {row.key: self._verdict(row, now) for row in rows}
        locked = [Locked(row.key, row.locked_until, False) for row in rows if verdicts[row.key] == "locked"]
        if locked:
            return locked[0]
        must_hold = any(
            verdict == "limit" or (verdict == "counting" and not key.startswith(IP_PREFIX))
            for key, verdict in verdicts.items()
        )
        return await self._admit_holding_rows(ordered, now) if must_hold else None

    async def _admit_holding_rows(self, ordered: list[str], now: datetime) -> Locked | None:
        """``admit`` for keys with failures: each row read by a no-op update (which waits for and holds
        it), in sorted order like ``reserve``; account keys reset if nothing refuses."""
        table = throttle_table
        until = now + timedelta(seconds=self.settings.lock_for)
        refused: Locked | None = None
        async with self.engine.begin() as connection:
            for key in ordered:
                row = (
                    await connection.execute(
                        update(table)
                        .where(table.c.key == key)
                        .values(failures=table.c.failures)
                        .returning(table.c.key, table.c.failures, table.c.window_start, table.c.locked_until)
                    )
                ).first()
                verdict = self._verdict(row, now) if row is not None else "clear"
                if row is not None and verdict == "locked":
                    refused = Locked(key, row.locked_until, started=False)
                elif row is not None and verdict == "limit":
                    started = await self._lock(
                        connection, Counted(key, row.failures, row.window_start), until
                    )
                    refused = Locked(key, until, started)
                if refused is not None:
                    break
            else:
                if accounts := [key for key in ordered if not key.startswith(IP_PREFIX)]:
                    await connection.execute(delete(table).where(table.c.key.in_(accounts)))
        if refused is not None and refused.started:
            self._started(refused)
        return refused

    def _verdict(self, row: Row[Any], now: datetime) -> str:
        """What a key's row says about one more attempt: locked, at its limit, counting, or clear."""
        if row.locked_until is not None:
            return "locked" if row.locked_until > now else "clear"  # a lock that ended: failures forgotten
        if row.window_start <= now - timedelta(seconds=self.settings.window) or row.failures <= 0:
            return "clear"
        return "limit" if row.failures >= self.limit_for(row.key) else "counting"

    async def active(
        self, prefixes: Sequence[str], limit: int
    ) -> list[tuple[str, datetime, datetime | None]]:
        """Keys under ``prefixes`` that have failures in their window or a lock: each with the moment
        after which it has neither, and its lock's end if locked; at most ``limit`` of them, the latest
        windows first."""
        now = self.clock()
        table = throttle_table
        window = timedelta(seconds=self.settings.window)
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(table.c.key, table.c.window_start, table.c.locked_until)
                    .where(
                        or_(*(table.c.key.startswith(prefix, autoescape=True) for prefix in prefixes)),
                        or_(
                            table.c.locked_until > now,
                            (table.c.failures > 0) & (table.c.window_start > now - window),
                        ),
                    )
                    .order_by(table.c.window_start.desc())
                    .limit(limit)
                )
            ).all()
        return [
            (row.key, max(row.window_start + window, row.locked_until or now), row.locked_until)
            for row in rows
        ]

    async def _count(
        self,
        connection: AsyncConnection,
        key: str,
        now: datetime,
        lock_until: datetime,
        counted: list[Counted],
    ) -> Locked | None:
        """Count the attempt on ``key`` (appending to ``counted``), or say why the key refuses it.

        One statement counts (see the module docstring); it leaves a locked key as it is, and starts a
        new window when the last one or the last lock is over. An attempt beyond the limit locks the key
        in the same transaction, which holds the row, so exactly one attempt starts each lock.
        """
        table = throttle_table
        still_locked = table.c.locked_until > now
        starts_over = or_(
            table.c.locked_until.is_not(None),
            table.c.window_start <= now - timedelta(seconds=self.settings.window),
        )
        insert = dialect_insert(connection.dialect.name)(table).values(
            key=key, failures=1, window_start=now, locked_until=None
        )
        statement = insert.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "failures": case(
                    (still_locked, table.c.failures), (starts_over, 1), else_=table.c.failures + 1
                ),
                "window_start": case(
                    (still_locked, table.c.window_start),
                    (starts_over, literal(now, UTCDateTime())),
                    else_=table.c.window_start,
                ),
                "locked_until": case((still_locked, table.c.locked_until), else_=null()),
            },
        ).returning(table.c.failures, table.c.window_start, table.c.locked_until)
        row = (await connection.execute(statement)).one()
        if row.locked_until is not None:
            return Locked(key, row.locked_until, started=False)
        item = Counted(key, row.failures, row.window_start)
        if row.failures > self.limit_for(key):
            return Locked(key, lock_until, started=await self._lock(connection, item, lock_until))
        counted.append(item)
        return None

    async def _lock(self, connection: AsyncConnection, item: Counted, until: datetime) -> bool:
        """Lock ``item.key`` until ``until`` if its window reached the limit and it is not locked yet."""
        result = await connection.execute(
            update(throttle_table)
            .where(
                throttle_table.c.key == item.key,
                throttle_table.c.window_start == item.window_start,
                throttle_table.c.failures >= self.limit_for(item.key),
                throttle_table.c.locked_until.is_(None),
            )
            .values(locked_until=until)
        )
        return result.rowcount == 1

    async def _give_back(self, connection: AsyncConnection, counted: Sequence[Counted]) -> None:
        """Take back one counted attempt per key, unless its window has started over since."""
        for item in counted:
            await connection.execute(
                update(throttle_table)
                .where(
                    throttle_table.c.key == item.key,
                    throttle_table.c.window_start == item.window_start,
                    throttle_table.c.failures > 0,
                )
                .values(failures=throttle_table.c.failures - 1)
            )


@dataclass
class Attempt:
    """One guarded check. Entering reserves (or raises ``LockedOut``: then do not check); leaving
    reports success if ``succeed()`` was called and nothing was raised, failure otherwise (fail
    closed). ``lockouts`` then lists the locks this failure started, for the audit log."""

    throttle: Throttle
    keys: Iterable[str]
    reservation: Reservation | None = None
    lockouts: list[Locked] = field(default_factory=list)
    _ok: bool = False

    def succeed(self) -> None:
        self._ok = True

    async def __aenter__(self) -> Attempt:
        result = await self.throttle.reserve(self.keys)
        if isinstance(result, Locked):
            raise LockedOut(result)
        self.reservation = result
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self.reservation is not None
        if self._ok and error is None:
            await self.throttle.succeeded(self.reservation)
        else:
            self.lockouts = await self.throttle.failed(self.reservation)
