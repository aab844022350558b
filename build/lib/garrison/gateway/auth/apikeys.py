"""API keys: ``gk_<prefix>_<secret>``, stored as a lookup prefix and the SHA-256 of the whole key.

- The prefix (8 of ``[a-z0-9]``) is not secret: it finds the row and names the key in listings.
- The secret is ``secrets.token_urlsafe(32)``: 256 bits, so a fast hash is enough (nothing to brute-force)
  and digests are compared with ``hmac.compare_digest``.
- ``ApiKeyStore`` is the database side (create, list, revoke, expire, verify), used by the CLI and admin.
- ``ApiKeyCache`` is the gateway's hot path: a synchronous lookup in an in-memory snapshot, reloaded when
  a poll sees that the table changed, so a key revoked by another worker or the CLI is refused within
  about ``refresh_interval`` seconds. Each write bumps the row's ``version``; the poll compares
  ``(count, sum(version))``, which changes on every committed write whatever the writers' clocks say.
- Plaintext keys are returned once by ``create`` and never stored or logged; ``ApiKeyRecord`` does not
  carry the digest at all.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Integer, String, Table, and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.store.db import UTCDateTime, metadata
from garrison.telemetry import logging as glog

KEY_PREFIX = "gk_"
PREFIX_LENGTH = 8
SECRET_BYTES = 32  # 256 bits
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_LENGTH = 43  # len(token_urlsafe(32))
KEY_LENGTH = len(KEY_PREFIX) + PREFIX_LENGTH + 1 + _SECRET_LENGTH
_KEY_FORMAT = re.compile(rf"gk_([a-z0-9]{{{PREFIX_LENGTH}}})_[A-Za-z0-9_-]{{{_SECRET_LENGTH}}}")
_NAME_FORMAT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")
_SCOPE_FORMAT = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("prefix", String(PREFIX_LENGTH), nullable=False, unique=True),
    Column("digest", String(64), nullable=False),  # hex SHA-256 of the whole key
    Column("name", String(100), nullable=False, index=True),
    Column("scopes", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("version", Integer, nullable=False),  # bumped on every write; see ApiKeyCache
)


class ApiKeyNotFound(LookupError):
    """No key has that name or prefix."""


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What Garrison knows about a key, minus anything secret (the digest is never loaded into it)."""

    id: int
    prefix: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    updated_at: datetime

    def status(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or _utcnow()):
            return "expired"
        return "active"


def generate_api_key() -> tuple[str, str]:
    """A new plaintext key and its lookup prefix."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}", prefix


def parse_api_key(presented: str) -> str | None:
    """The lookup prefix of a well-formed key, or None (checked before any hashing or I/O)."""
    if len(presented) != KEY_LENGTH:  # first: a huge value costs nothing
        return None
    match = _KEY_FORMAT.fullmatch(presented)
    return match.group(1) if match else None


def digest_api_key(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def extract_api_key(authorization_values: list[bytes], x_api_key_values: list[bytes]) -> str | None:
    """The key presented as ``Authorization: ApiKey <key>`` or ``X-API-Key: <key>``, or None.

    Other Authorization schemes (Bearer, Basic) are ignored here. Raises ValueError when the request
    carries two different keys, so the caller answers 400 instead of picking one.
    """
    found: set[str] = set()
    for raw in authorization_values:
        scheme, _, credentials = raw.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "apikey" and credentials.strip():
            found.add(credentials.strip())
    for raw in x_api_key_values:
        for item in raw.decode("latin-1").split(","):  # repeated headers may arrive comma-joined
            if item.strip():
                found.add(item.strip())
    if len(found) > 1:
        raise ValueError("more than one API key in the request")
    return found.pop() if found else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        prefix=row.prefix,
        name=row.name,
        scopes=tuple(row.scopes),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        updated_at=row.updated_at,
    )


_RECORD_COLUMNS = [c for c in api_keys.c if c.name not in ("digest", "version")]


def _check_new_key(name: str, scopes: Sequence[str], expires_in: float | None) -> tuple[str, ...]:
    if not _NAME_FORMAT.fullmatch(name):
        raise ValueError(
            "a key name is 1-100 characters of letters, digits and . _ : @ - (first alphanumeric)"
        )
    if isinstance(scopes, str):
        raise ValueError("scopes must be a list of strings")
    for scope in scopes:
        if not isinstance(scope, str) or not _SCOPE_FORMAT.fullmatch(scope):
            raise ValueError(f"invalid scope {scope!r}: printable ASCII without spaces")
    if expires_in is not None and not expires_in > 0:
        raise ValueError("expires_in must be a positive number of seconds")
    return tuple(dict.fromkeys(scopes))


class ApiKeyStore:
    """API keys in the ``api_keys`` table (migrated by ``garrison.gateway.migrations``)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(
        self, name: str, scopes: Sequence[str], expires_in: float | None = None
    ) -> tuple[str, ApiKeyRecord]:
        """A new key: the plaintext (show it once, it is not stored) and its record."""
        clean_scopes = _check_new_key(name, scopes, expires_in)
        for _attempt in range(5):
            key, prefix = generate_api_key()
            now = _utcnow()
            expires_at = now + timedelta(seconds=expires_in) if expires_in is not None else None
            values: dict[str, Any] = {
                "prefix": prefix,
                "digest": digest_api_key(key),
                "name": name,
                "scopes": list(clean_scopes),
                "created_at": now,
                "expires_at": expires_at,
                "revoked_at": None,
                "updated_at": now,
                "version": 1,
            }
            try:
                async with self.engine.begin() as connection:
                    result = await connection.execute(api_keys.insert().values(**values))
            except IntegrityError:
                continue  # a prefix collision (1 in 2.8e12 per existing key): draw again
            inserted = result.inserted_primary_key
            assert inserted is not None
            record = ApiKeyRecord(
                id=int(inserted[0]),
                prefix=prefix,
                name=name,
                scopes=clean_scopes,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
                updated_at=now,
            )
            return key, record
        raise RuntimeError("could not allocate a unique API key prefix")

    async def list(self) -> list[ApiKeyRecord]:
        """Every key, revoked and expired ones included, oldest first; never the digests."""
        async with self.engine.connect() as connection:
            rows = await connection.execute(select(*_RECORD_COLUMNS).order_by(api_keys.c.id))
            return [_record(row) for row in rows]

    async def revoke(self, name_or_prefix: str) -> builtins.list[ApiKeyRecord]:
        """Revoke the key with this prefix, or else every key with this name. Idempotent."""
        now = _utcnow()
        return await self._change(
            name_or_prefix, api_keys.c.revoked_at.is_(None), {"revoked_at": now, "updated_at": now}
        )

    async def expire(self, name_or_prefix: str) -> builtins.list[ApiKeyRecord]:
        """Make the key (prefix, else every key of that name) expire now, unless revoked or expired."""
        now = _utcnow()
        still_valid = or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > now)
        return await self._change(
            name_or_prefix,
            api_keys.c.revoked_at.is_(None) & still_valid,
            {"expires_at": now, "updated_at": now},
        )

    async def verify(self, presented: str, now: datetime | None = None) -> ApiKeyRecord | None:
        """The record of a valid key, or None (malformed, unknown, wrong secret, revoked, expired)."""
        prefix = parse_api_key(presented)
        if prefix is None:
            return None
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(*_RECORD_COLUMNS, api_keys.c.digest).where(api_keys.c.prefix == prefix)
                )
            ).first()
        if row is None or not hmac.compare_digest(row.digest, digest_api_key(presented)):
            return None
        record = _record(row)
        return record if record.status(now) == "active" else None

    async def _change(
        self, name_or_prefix: str, applies: Any, values: dict[str, Any]
    ) -> builtins.list[ApiKeyRecord]:
        # One condition, so the UPDATE is the transaction's first statement (SQLite then takes the write
        # lock at once instead of upgrading a read snapshot, which can fail with SQLITE_BUSY).
        by_prefix = api_keys.c.prefix == name_or_prefix
        prefix_taken = exists().where(by_prefix)
        target = or_(by_prefix, and_(api_keys.c.name == name_or_prefix, ~prefix_taken))
        async with self.engine.begin() as connection:
            await connection.execute(
                update(api_keys).where(target & applies).values(**values, version=api_keys.c.version + 1)
            )
            rows = await connection.execute(select(*_RECORD_COLUMNS).where(target).order_by(api_keys.c.id))
            records = [_record(row) for row in rows]
        if not records:
            raise ApiKeyNotFound(f"no API key named or prefixed {name_or_prefix!r}")
        return records


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: str
    record: ApiKeyRecord
    expires: float | None  # epoch seconds, so the hot path compares floats


class ApiKeyCache:
    """Synchronous key checks against an in-memory snapshot of ``api_keys``, polled for changes.

    A key created elsewhere becomes usable, and a key revoked elsewhere stops working, within about
    ``refresh_interval`` seconds. If the database cannot be read for ``max_staleness`` seconds, every
    lookup fails (closed): revocations could no longer be seen.
    """

    def __init__(
        self,
        store: ApiKeyStore,
        refresh_interval: float = 1.0,
        *,
        max_staleness: float | None = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.refresh_interval = refresh_interval
        self.max_staleness = max_staleness
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._fingerprint: tuple[int, int] | None = None
        self._refreshed_at: float | None = None  # last successful poll
        self._task: asyncio.Task[None] | None = None

    def lookup(self, presented: str) -> ApiKeyRecord | None:
        prefix = parse_api_key(presented)
        if prefix is None:
            return None
        entry = self._entries.get(prefix)
        if entry is None or not hmac.compare_digest(entry.digest, digest_api_key(presented)):
            return None
        now = self._clock()
        if entry.expires is not None and entry.expires <= now:
            return None
        if self.max_staleness is not None and (
            self._refreshed_at is None or now - self._refreshed_at > self.max_staleness
        ):
            return None
        return entry.record

    async def refresh(self) -> bool:
        """Poll once; reload the snapshot when the table changed. True when it was reloaded."""
        async with self.store.engine.connect() as connection:
            count, versions = (
                await connection.execute(
                    select(func.count(api_keys.c.id), func.coalesce(func.sum(api_keys.c.version), 0))
                )
            ).one()
            fingerprint = (int(count), int(versions))
            reloaded = fingerprint != self._fingerprint
            if reloaded:
                rows = await connection.execute(
                    select(*_RECORD_COLUMNS, api_keys.c.digest).where(api_keys.c.revoked_at.is_(None))
                )
                entries = {}
                for row in rows:
                    record = _record(row)
                    expires = record.expires_at.timestamp() if record.expires_at else None
                    entries[record.prefix] = _Entry(row.digest, record, expires)
                self._entries = entries  # one assignment: lookups see the old or the new snapshot
                self._fingerprint = fingerprint
        self._refreshed_at = self._clock()
        return reloaded

    async def start(self) -> None:
        """Load the snapshot (errors propagate: a gateway must not start without it), then poll."""
        if self._task is not None:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._poll(), name="garrison-apikey-cache")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except (SQLAlchemyError, OSError) as exc:
                if not failing:  # log the first failure of a run, not one line per second
                    glog.warn("apikeys.refresh.failed", error=type(exc).__name__)
                failing = True
            else:
                if failing:
                    glog.log("apikeys.refresh.recovered")
                failing = False
