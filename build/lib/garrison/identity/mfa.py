"""Second factors: TOTP (RFC 6238) and single-use recovery codes.

- TOTP uses the parameters every authenticator app understands: HMAC-SHA-1, 6 digits, 30-second
  steps, a 160-bit random seed (RFC 4226 §4 R6). The seed is stored sealed with the KEK under the
  context ``totp:<user_id>``, so a copied row does not open for another user.
- A code is accepted for the current step and one step either side (RFC 6238 §5.2, for clock drift),
  and each step at most once: the step is recorded with
  ``UPDATE ... SET totp_last_step = :step WHERE totp_last_step IS NULL OR totp_last_step < :step``
  and only the caller whose update changed the row passes, so a code seen by a shoulder-surfer or
  submitted twice in parallel is good for exactly one login.
- Recovery codes are 80 random bits each (16 Crockford base32 characters, shown as four groups),
  printed once and stored as keyed digests; one is spent by ``UPDATE ... WHERE used_at IS NULL``.
- Brute force of codes is the throttle's job (identity/throttle.py): use a key per user for the code
  step, apart from the password step's, so a right password does not reset code guessing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

import pyotp
from sqlalchemy import and_, delete, exists, false, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.tables import recovery_codes, users
from garrison.identity.users import UserNotFound
from garrison.pki.kek import KeyEncryption

TOTP_DIGITS = 6
TOTP_INTERVAL = 30
TOTP_DRIFT_STEPS = 1
RECOVERY_CODE_LENGTH = 16  # 16 x 5 bits = 80 bits
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_CROCKFORD_ALIASES = str.maketrans({"i": "1", "l": "1", "o": "0"})
_RECOVERY_PURPOSE = "recovery-code"


class MfaError(Exception):
    """An enrolment step that cannot be done (already enrolled, nothing to confirm)."""


def mfa_required(user_roles: Iterable[str], client_require_mfa: bool, mfa_roles: Iterable[str]) -> bool:
    """Whether this sign-in needs a second factor: the client asks for it, or a role of the user does."""
    return client_require_mfa or not set(user_roles).isdisjoint(mfa_roles)


def _totp(secret_b32: str) -> pyotp.TOTP:
    return pyotp.TOTP(secret_b32, digits=TOTP_DIGITS, digest=hashlib.sha1, interval=TOTP_INTERVAL)


def _clean_code(code: str) -> str | None:
    cleaned = code.replace(" ", "")
    return cleaned if len(cleaned) == TOTP_DIGITS and cleaned.isascii() and cleaned.isdigit() else None


def _matching_step(secret_b32: str, code: str, now: datetime) -> int | None:
    """The latest step within the drift window whose code is ``code``, compared in constant time."""
    totp = _totp(secret_b32)
    current = totp.timecode(now)
    matched = None
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.at(step * TOTP_INTERVAL), code):
            matched = step
    return matched


def _context(user_id: str) -> str:
    return f"totp:{user_id}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


def normalize_recovery_code(code: str) -> str | None:
    """Lower-case, without separators, with Crockford's look-alikes mapped; None when malformed."""
    cleaned = code.strip().lower().replace("-", "").replace(" ", "").translate(_CROCKFORD_ALIASES)
    if len(cleaned) != RECOVERY_CODE_LENGTH or any(c not in _CROCKFORD for c in cleaned):
        return None
    return cleaned


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_CROCKFORD) for _ in range(RECOVERY_CODE_LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, RECOVERY_CODE_LENGTH, 4))


class MfaStore:
    """TOTP enrolment and verification, and recovery codes, for the users in ``identity_users``."""

    def __init__(self, engine: AsyncEngine, kek: KeyEncryption, *, issuer_name: str = "Garrison") -> None:
        self.engine = engine
        self.kek = kek
        self.issuer_name = issuer_name

    def __repr__(self) -> str:
        return f"MfaStore(issuer_name={self.issuer_name!r})"

    async def begin_enrollment(self, user_id: str, *, replace: bool = False) -> tuple[str, str]:
        """A fresh seed for the user: ``(base32 secret, otpauth:// URI)``, to show once as text and QR.

        The seed counts only once ``confirm_enrollment`` has seen a code from it. An enrolled user keeps
        the factor unless ``replace`` is set, which the caller may only do after a fresh second-factor
        check: replacing switches the old authenticator off at once.
        """
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(users.c.username, users.c.totp_confirmed).where(users.c.user_id == user_id)
                )
            ).first()
        if row is None:
            raise UserNotFound("no such user")
        if row.totp_confirmed and not replace:
            raise MfaError("the user already has an authenticator; replace it explicitly")
        secret = pyotp.random_base32()  # 32 characters: 160 bits
        sealed = self.kek.seal(secret.encode("ascii"), _context(user_id))
        condition = [users.c.user_id == user_id]
        if not replace:  # a confirmation landing between the read above and here must not be undone
            condition.append(users.c.totp_confirmed == false())
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(users)
                .where(*condition)
                .values(
                    totp_encrypted=sealed, totp_confirmed=False, totp_last_step=None, updated_at=_utcnow()
                )
            )
        if result.rowcount != 1:
            raise MfaError("the user already has an authenticator; replace it explicitly")
        uri = _totp(secret).provisioning_uri(name=row.username, issuer_name=self.issuer_name)
        return secret, uri

    async def confirm_enrollment(self, user_id: str, code: str, now: datetime | None = None) -> bool:
        """Switch the pending seed on when ``code`` comes from it; the code's step is then spent."""
        return await self._check_code(user_id, code, now or _utcnow(), confirmed=False)

    async def verify(self, user_id: str, code: str, now: datetime | None = None) -> bool:
        """True once per time step for a right code of an enrolled, enabled user."""
        return await self._check_code(user_id, code, now or _utcnow(), confirmed=True)

    async def reset(self, user_id: str) -> None:
        """Remove the authenticator and all recovery codes (an administrator's recovery path)."""
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(users)
                .where(users.c.user_id == user_id)
                .values(totp_encrypted=None, totp_confirmed=False, totp_last_step=None, updated_at=_utcnow())
            )
            if result.rowcount != 1:
                raise UserNotFound("no such user")
            await connection.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))

    async def _check_code(self, user_id: str, code: str, now: datetime, *, confirmed: bool) -> bool:
        cleaned = _clean_code(code)
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(users.c.totp_encrypted, users.c.totp_confirmed, users.c.disabled).where(
                        users.c.user_id == user_id
                    )
                )
            ).first()
        if cleaned is None or row is None or row.totp_encrypted is None or row.disabled:
            return False
        if bool(row.totp_confirmed) != confirmed:
            return False
        secret = self.kek.open(row.totp_encrypted, _context(user_id)).decode("ascii")
        step = _matching_step(secret, cleaned, now)
        if step is None:
            return False
        return await self._spend_step(user_id, row.totp_encrypted, step)

    async def _spend_step(self, user_id: str, sealed: bytes, step: int) -> bool:
        """Record ``step`` as used and confirm the seed; False when a parallel call got there first.

        The seed is part of the condition so that a code checked against a seed replaced meanwhile
        does not count for the new one.
        """
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(users)
                .where(
                    users.c.user_id == user_id,
                    users.c.totp_encrypted == sealed,
                    (users.c.totp_last_step.is_(None)) | (users.c.totp_last_step < step),
                )
                .values(totp_last_step=step, totp_confirmed=True, updated_at=_utcnow())
            )
        return result.rowcount == 1

    async def issue_recovery_codes(self, user_id: str, count: int = 10) -> list[str]:
        """New recovery codes, replacing any earlier ones. Show them once: only digests are kept."""
        if not 1 <= count <= 100:
            raise ValueError("issue between 1 and 100 recovery codes")
        codes = [_new_recovery_code() for _ in range(count)]
        rows = [
            {
                "code_digest": self.kek.digest(normalize_recovery_code(code) or "", _RECOVERY_PURPOSE),
                "user_id": user_id,
                "used_at": None,
            }
            for code in codes
        ]
        async with self.engine.begin() as connection:
            found = await connection.execute(select(users.c.user_id).where(users.c.user_id == user_id))
            if found.first() is None:
                raise UserNotFound("no such user")
            await connection.execute(delete(recovery_codes).where(recovery_codes.c.user_id == user_id))
            await connection.execute(recovery_codes.insert(), rows)
        return codes

    async def use_recovery_code(self, user_id: str, code: str, now: datetime | None = None) -> bool:
        """Spend one recovery code of an enabled user; True for exactly one caller per code."""
        cleaned = normalize_recovery_code(code)
        if cleaned is None:
            return False
        enabled = exists().where(users.c.user_id == user_id, users.c.disabled == false())
        async with self.engine.begin() as connection:
            result = await connection.execute(
                update(recovery_codes)
                .where(
                    recovery_codes.c.code_digest == self.kek.digest(cleaned, _RECOVERY_PURPOSE),
                    recovery_codes.c.user_id == user_id,
                    recovery_codes.c.used_at.is_(None),
                    enabled,
                )
                .values(used_at=now or _utcnow())
            )
        return result.rowcount == 1

    async def remaining_recovery_codes(self, user_id: str) -> int:
        async with self.engine.connect() as connection:
            query = select(func.count()).where(
                and_(recovery_codes.c.user_id == user_id, recovery_codes.c.used_at.is_(None))
            )
            return int((await connection.execute(query)).scalar_one())
