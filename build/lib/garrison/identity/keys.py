"""The identity provider's ES256 signing keys: encrypted at rest, rotated with an announcement.

Each key goes through five states, read off four timestamps of its row in ``identity_signing_keys``::

    created ──> published ──────────> active ──────────> retired ──────────────> unpublished
                (created_at)          (activates_at)     (retired_at)            (unpublish_at)
                in the JWKS,          signs new tokens   signs nothing, still    gone from the JWKS,
                signs nothing                            in the JWKS             then deleted (prune)

Why this order. A relying party caches the JWKS (often for minutes, sometimes hours) and fetches it
again only when it meets an unknown ``kid``, if at all. Hydra and Keycloak switch the signing key and
the JWKS at the same moment, so tokens signed by a new key are rejected by every cache that has not
caught up, and when the old key is removed at once, tokens it signed a moment ago fail before they
expire. Here:

- a new key is *published* ``publish_ahead`` seconds before it signs anything (set that longer than
  every relying party's JWKS cache), so every cache already holds it when the first token arrives;
- the key it replaces *retires* at that same instant (``retired_at = successor.activates_at``), and
  stays published for ``max_token_lifetime`` plus ``UNPUBLISH_MARGIN`` (clock skew, verifier leeway),
  so every token it signed expires before its key leaves the JWKS.

All four times are written in one transaction when the rotation is decided, so the lifecycle is a
pure function of the rows and the clock: ``signing_key(now)`` and ``jwks(now)`` read an in-memory
snapshot and change over at the right instant in every process, without a process having to be
awake at ``activates_at``. Processes share rotations through the database: each ``refresh`` (by
``maintain`` every ``min(60 s, publish_ahead / 4)``) picks up a key another process announced, long
before it activates. Clocks must agree (NTP) to within a small fraction of ``publish_ahead``.

Rotation is decided under a write lock on the table (PostgreSQL ``LOCK TABLE``; on SQLite the first
statement of the transaction is a write, which takes the database's write lock), so two processes
starting together create one first key, and two ``rotate`` calls never leave two pending keys: while
a key is pending, ``rotate`` is a no-op that returns it (``Rotation.created`` is False).

At rest: the private key is PKCS#8 DER sealed with the KEK (AES-256-GCM, ``pki/kek.py``),
the associated data naming the row's ``kid``, so a ciphertext copied to another row does not open.
The ``kid`` is the RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key, so the kid, the
sealed private key and the published public key are bound together: ``refresh`` opens every row and
refuses one whose stored public JWK or kid does not match its private key, so a row edited in the
database cannot publish a foreign key. Private material never appears in repr(), logs or errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from garrison.identity.tables import signing_keys
from garrison.pki.kek import KeyEncryption, KeyEncryptionError
from garrison.telemetry import logging as log

ALG = "ES256"
UNPUBLISH_MARGIN = 60.0  # seconds a retired key outlives the last token it signed in the JWKS
MAINTAIN_INTERVAL = 60.0
_STATUS_COLUMNS = (
    signing_keys.c.kid,
    signing_keys.c.created_at,
    signing_keys.c.activates_at,
    signing_keys.c.retired_at,
    signing_keys.c.unpublish_at,
)


class SigningKeyError(Exception):
    """No key can sign, or a stored key does not open or does not match its row. Never holds key material."""


@dataclass(frozen=True, slots=True)
class KeyStatus:
    """A key's public facts (for the CLI, logs and tests); no key material."""

    kid: str
    created_at: datetime
    activates_at: datetime
    retired_at: datetime | None
    unpublish_at: datetime | None

    def state(self, now: float) -> str:
        """``created`` (not yet published), ``published``, ``active``, ``retired`` or ``unpublished``."""
        if now < self.created_at.timestamp():
            return "created"
        if self.unpublish_at is not None and now >= self.unpublish_at.timestamp():
            return "unpublished"
        if self.retired_at is not None and now >= self.retired_at.timestamp():
            return "retired"
        return "active" if now >= self.activates_at.timestamp() else "published"


@dataclass(frozen=True, slots=True)
class Rotation:
    """The pending key after ``rotate``; ``created`` is False when one was already pending (a no-op)."""

    key: KeyStatus
    created: bool


class SigningKey:
    """A key that signs: its kid, the ``cryptography`` private key, and joserfc forms of it."""

    __slots__ = ("alg", "key_set", "kid", "private_key", "public_jwk")

    def __init__(self, kid: str, private_key: ec.EllipticCurvePrivateKey, public_jwk: dict[str, str]) -> None:
        self.kid = kid
        self.alg = ALG
        self.private_key = private_key
        self.public_jwk = public_jwk
        # A set of one key: joserfc (and Authlib's token generators) pick it and put its kid in the header.
        self.key_set = KeySet([ECKey.import_key(private_key, {"kid": kid, "alg": ALG, "use": "sig"})])

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One row of the snapshot, its times as POSIX seconds."""

    status: KeyStatus
    created: float
    activates: float
    retired: float | None
    unpublish: float | None
    public_jwk: Mapping[str, str]
    key: SigningKey

    def signs_at(self, now: float) -> bool:
        return self.activates <= now and (self.retired is None or now < self.retired)

    def published_at(self, now: float) -> bool:
        return self.created <= now and (self.unpublish is None or now < self.unpublish)


class SigningKeys:
    """The signing keys of one identity provider: rotation in the database, an in-memory snapshot to sign."""

    def __init__(
        self,
        engine: AsyncEngine,
        kek: KeyEncryption,
        *,
        publish_ahead: float,
        rotation_interval: float,
        max_token_lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(publish_ahead, rotation_interval, max_token_lifetime) <= 0:
            raise ValueError("publish_ahead, rotation_interval and max_token_lifetime must be positive")
        self._engine = engine
        self._kek = kek
        self.publish_ahead = publish_ahead
        self.rotation_interval = rotation_interval
        self.max_token_lifetime = max_token_lifetime
        self._clock = clock
        self._entries: tuple[_Entry, ...] = ()  # by activates_at, oldest first; replaced whole
        self._last_step: float | None = None

    def __repr__(self) -> str:
        return f"SigningKeys(keys={[entry.status.kid for entry in self._entries]!r})"

    # -- the hot path: pure functions of the snapshot and the time -------------------------------------

    def signing_key(self, now: float | None = None) -> SigningKey:
        """The key that signs at ``now``: the newest one activated and not retired. Fails closed."""
        at = self._clock() if now is None else now
        for entry in reversed(self._entries):
            if entry.signs_at(at):
                return entry.key
        raise SigningKeyError("no signing key is active (has SigningKeys.ensure() run?)")

    def jwks(self, now: float | None = None) -> dict[str, Any]:
        """The public JWKS at ``now``: every key published and not yet unpublished, newest first."""
        at = self._clock() if now is None else now
        return {
            "keys": [dict(entry.public_jwk) for entry in reversed(self._entries) if entry.published_at(at)]
        }

    def signing_jwk(self, now: float | None = None) -> KeySet:
        """The signing key as a joserfc KeySet of one private key (what Authlib's generators take)."""
        return self.signing_key(now).key_set

    def public_jwks(self, now: float | None = None) -> dict[str, Any]:
        return self.jwks(now)

    def statuses(self) -> list[KeyStatus]:
        """The keys in the snapshot, oldest activation first."""
        return [entry.status for entry in self._entries]

    # -- the database ---------------------------------------------------------------------------------

    async def ensure(self, now: float | None = None) -> Rotation | None:
        """At startup and on schedule: create the first key, or announce the next one when it is due.

        The first key signs at once (no JWKS can have been cached before it). The next key is announced
        ``publish_ahead`` before the active one has signed for ``rotation_interval``, so keys take over
        every ``rotation_interval`` (every ``publish_ahead`` if that is longer). Then refreshes.
        """
        at = self._clock() if now is None else now
        rotation = await self._rotate(at, force=False)
        await self.refresh()
        return rotation

    async def rotate(self, now: float | None = None) -> Rotation:
        """Announce the next key, to sign from ``now + publish_ahead`` (``garrison identity rotate-keys``).

        A no-op while a key is already pending: returns that key with ``created=False``.
        """
        at = self._clock() if now is None else now
        rotation = await self._rotate(at, force=True)
        assert rotation is not None
        await self.refresh()
        return rotation

    async def refresh(self) -> None:
        """Load every key and replace the snapshot; raises ``SigningKeyError`` (keeping the old snapshot)
        when a row does not open with the KEK or does not match its private key."""
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(select(signing_keys).order_by(signing_keys.c.activates_at))
            ).all()
        self._entries = tuple(self._entry(row._mapping) for row in rows)

    async def prune(self, now: float | None = None) -> list[str]:
        """Delete the keys past ``unpublish_at``; returns their kids."""
        at = _datetime(self._clock() if now is None else now)
        gone = signing_keys.c.unpublish_at.is_not(None) & (signing_keys.c.unpublish_at <= at)
        async with self._engine.begin() as connection:
            kids = list(
                (
                    await connection.execute(delete(signing_keys).where(gone).returning(signing_keys.c.kid))
                ).scalars()
            )
        for kid in kids:
            log.log("identity.key.deleted", kid=kid)
        return kids

    async def maintain_once(self) -> None:
        """One round of ``maintain``: prune, rotate when due, refresh, log activations and retirements."""
        now = self._clock()
        await self.prune(now)
        await self.ensure(now)
        previous, self._last_step = self._last_step, now
        if previous is None:
            return  # states found at startup are not transitions
        # Each process logs what it sees change between two rounds (replicas each log it once).
        for entry in self._entries:
            if previous < entry.activates <= now:
                log.log("identity.key.activated", kid=entry.status.kid)
        for entry in self._entries:
            if entry.retired is not None and previous < entry.retired <= now:
                log.log("identity.key.retired", kid=entry.status.kid)

    async def maintain(self, interval: float | None = None) -> None:
        """Run ``maintain_once`` forever (a task of the server); failures are logged, the snapshot kept.

        The interval must stay well under ``publish_ahead``, so every process loads a key another one
        announced before it activates; the default is ``min(60 s, publish_ahead / 4)``.
        """
        period = min(MAINTAIN_INTERVAL, self.publish_ahead / 4) if interval is None else interval
        if not 0 < period < self.publish_ahead:
            raise ValueError("the maintenance interval must be positive and shorter than publish_ahead")
        while True:
            try:
                await self.maintain_once()
            except Exception as exc:  # keep signing with the snapshot; say why every round
                log.warn("identity.keys.maintain_failed", error=type(exc).__name__, detail=str(exc)[:500])
            await asyncio.sleep(period)

    # -- inside ---------------------------------------------------------------------------------------

    async def _rotate(self, now: float, *, force: bool) -> Rotation | None:
        async with self._engine.begin() as connection:
            await _lock(connection)
            rows = (await connection.execute(select(*_STATUS_COLUMNS))).all()
            statuses = [KeyStatus(*row) for row in rows]
            pending = [
                s for s in statuses if s.state(now) in ("created", "published") and s.retired_at is None
            ]
            if pending:
                return Rotation(max(pending, key=lambda s: s.activates_at), created=False) if force else None
            active = [s for s in statuses if s.state(now) == "active"]
            if active:
                newest = max(active, key=lambda s: s.activates_at).activates_at.timestamp()
                due = newest + max(self.rotation_interval - self.publish_ahead, 0.0)
                if not force and now < due:
                    return None
                activates = now + self.publish_ahead
            else:
                if statuses:  # keys exist, none signs: the active row was removed by hand
                    log.warn("identity.keys.no_active_key", known=len(statuses))
                activates = now
            status, sealed, public_jwk = self._new_key(now, activates)
            retire = {"retired_at": status.activates_at}
            retire["unpublish_at"] = _datetime(activates + self.max_token_lifetime + UNPUBLISH_MARGIN)
            retiring = list(
                (
                    await connection.execute(
                        update(signing_keys)
                        .where(signing_keys.c.retired_at.is_(None))
                        .values(**retire)
                        .returning(signing_keys.c.kid)
                    )
                ).scalars()
            )
            await connection.execute(
                insert(signing_keys).values(
                    kid=status.kid,
                    alg=ALG,
                    private_encrypted=sealed,
                    public_jwk=public_jwk,
                    created_at=status.created_at,
                    activates_at=status.activates_at,
                )
            )
        log.log(
            "identity.key.rotated",
            kid=status.kid,
            previous_kids=retiring,
            activates_at=status.activates_at.isoformat(),
        )
        return Rotation(status, created=True)

    def _new_key(self, now: float, activates: float) -> tuple[KeyStatus, bytes, dict[str, str]]:
        private_key = ec.generate_private_key(ec.SECP256R1())
        public_jwk = _public_jwk(private_key.public_key())
        kid = public_jwk["kid"]
        der = private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        sealed = self._kek.seal(der, context=_context(kid))
        return KeyStatus(kid, _datetime(now), _datetime(activates), None, None), sealed, public_jwk

    def _entry(self, row: RowMapping) -> _Entry:
        kid: str = row["kid"]
        if row["alg"] != ALG:
            raise SigningKeyError(f"signing key {kid}: unsupported algorithm {row['alg']!r}")
        try:
            der = self._kek.open(row["private_encrypted"], context=_context(kid))
        except KeyEncryptionError:
            raise SigningKeyError(
                f"signing key {kid} does not open with this key-encryption key "
                "(a different GARRISON_IDENTITY_KEK or kek file, or a row copied from another key)"
            ) from None
        try:
            private_key = serialization.load_der_private_key(der, password=None)
        except ValueError:
            raise SigningKeyError(f"signing key {kid} is not a readable PKCS#8 key") from None
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or private_key.curve.name != "secp256r1":
            raise SigningKeyError(f"signing key {kid} is not a P-256 key")
        public_jwk = _public_jwk(private_key.public_key())
        if public_jwk["kid"] != kid or row["public_jwk"] != public_jwk:
            raise SigningKeyError(
                f"signing key {kid}: the stored kid or public key does not match the private key"
            )
        status = KeyStatus(
            kid, row["created_at"], row["activates_at"], row["retired_at"], row["unpublish_at"]
        )
        return _Entry(
            status,
            status.created_at.timestamp(),
            status.activates_at.timestamp(),
            None if status.retired_at is None else status.retired_at.timestamp(),
            None if status.unpublish_at is None else status.unpublish_at.timestamp(),
            public_jwk,
            SigningKey(kid, private_key, public_jwk),
        )


async def _lock(connection: AsyncConnection) -> None:
    """Serialise rotations: the first statement of the transaction takes a write lock, then reads."""
    if connection.dialect.name == "postgresql":
        # Conflicts with itself, not with readers: JWKS and refresh reads go on meanwhile.
        await connection.execute(text("LOCK TABLE identity_signing_keys IN SHARE ROW EXCLUSIVE MODE"))
    else:
        # SQLite: a write (even of no rows) as the first statement begins the transaction with the
        # database's write lock, waiting up to the busy timeout; reads after it see the latest commit.
        await connection.execute(update(signing_keys).where(text("1 = 0")).values(kid=signing_keys.c.kid))


def _public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK with ``kid`` = its RFC 7638 thumbprint, ``alg`` ES256, ``use`` sig."""
    numbers = public_key.public_numbers()
    members = {"crv": "P-256", "kty": "EC", "x": _b64(numbers.x.to_bytes(32, "big"))}
    members["y"] = _b64(numbers.y.to_bytes(32, "big"))
    # RFC 7638 §3: the required members only, sorted, no whitespace, UTF-8; SHA-256.
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return {**members, "kid": _b64(hashlib.sha256(canonical).digest()), "alg": ALG, "use": "sig"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _context(kid: str) -> str:
    return f"signing-key:{kid}"


def _datetime(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
