"""Signing keys: announced rotation, retirement after the last token expires, encryption at rest, races.

Every test runs on SQLite and on a fresh PostgreSQL schema; time is an injected clock, never the wall.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.keys import UNPUBLISH_MARGIN, SigningKeyError, SigningKeys
from garrison.identity.tables import signing_keys
from garrison.pki.kek import KeyEncryption, KeyEncryptionError
from garrison.store.db import create_all
from garrison.telemetry import logging as log

T0 = 1_700_000_000.0
PUBLISH_AHEAD = 900.0
ROTATION_INTERVAL = 86_400.0
MAX_LIFETIME = 300.0  # max(access_token_ttl, id_token_ttl)
KEK = KeyEncryption(b"k" * 32)


class Backend(Protocol):
    """The ``backend`` fixture of tests/identity/conftest.py: SQLite, or a fresh PostgreSQL schema."""

    def engine(self) -> AsyncEngine: ...


class Seconds:
    """An injected clock in POSIX seconds: time moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def open_keys(
    backend: Backend, *, kek: KeyEncryption = KEK, clock: Seconds | None = None
) -> AsyncIterator[SigningKeys]:
    """SigningKeys on an engine of its own (as another process would have), disposed at the end."""
    engine = backend.engine()
    try:
        await create_all(engine)
        yield SigningKeys(
            engine,
            kek,
            publish_ahead=PUBLISH_AHEAD,
            rotation_interval=ROTATION_INTERVAL,
            max_token_lifetime=MAX_LIFETIME,
            clock=clock or Seconds(),
        )
    finally:
        await engine.dispose()


async def rows(backend: Backend) -> list[dict[str, Any]]:
    engine = backend.engine()
    try:
        async with engine.connect() as connection:
            result = await connection.execute(select(signing_keys).order_by(signing_keys.c.activates_at))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


async def execute(backend: Backend, statement: Any) -> None:
    engine = backend.engine()
    try:
        async with engine.begin() as connection:
            await connection.execute(statement)
    finally:
        await engine.dispose()


def kids(jwks: dict[str, Any]) -> list[str]:
    return [key["kid"] for key in jwks["keys"]]


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def captured() -> Iterator[LogCapture]:
    """The structured log lines written during the test."""
    capture = LogCapture()
    log.configure("garrison", capture.stream)
    try:
        yield capture
    finally:
        log.configure("garrison", sys.stderr)


# -- the first key ----------------------------------------------------------------------------------------


def test_first_key_is_created_active_and_published(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            with pytest.raises(SigningKeyError, match="no signing key is active"):
                keys.signing_key(T0)  # fails closed before ensure()
            rotation = await keys.ensure()
            assert rotation is not None and rotation.created
            key = keys.signing_key(T0)
            assert key.kid == rotation.key.kid and key.alg == "ES256"
            (public,) = keys.jwks(T0)["keys"]
            assert public == {
                **public,
                "kid": key.kid,
                "alg": "ES256",
                "use": "sig",
                "kty": "EC",
                "crv": "P-256",
            }
            assert "d" not in public
            # the kid is the RFC 7638 thumbprint of the public key
            assert key.kid == ECKey.import_key({k: public[k] for k in ("kty", "crv", "x", "y")}).thumbprint()
            assert rotation.key.state(T0) == "active"
            assert await keys.ensure(T0 + 60) is None  # nothing due: no second key
        assert len(await rows(backend)) == 1

    asyncio.run(main())


# -- announced rotation -----------------------------------------------------------------------------------


def test_rotation_announces_the_next_key_before_it_signs(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            old = keys.signing_key(T0).kid
            t1 = T0 + 3600
            rotation = await keys.rotate(t1)
            new = rotation.key.kid
            assert rotation.created and new != old
            assert rotation.key.activates_at == at(t1 + PUBLISH_AHEAD)
            assert kids(keys.jwks(t1 - 1)) == [old]  # not published before it was created
            for now in (t1, t1 + PUBLISH_AHEAD - 1):
                assert kids(keys.jwks(now)) == [new, old]  # announced ...
                assert keys.signing_key(now).kid == old  # ... but not signing yet
            activation = t1 + PUBLISH_AHEAD
            assert keys.signing_key(activation).kid == new
            assert kids(keys.jwks(activation)) == [new, old]  # the old one is still published
            assert keys.signing_jwk(activation).keys[0].kid == new

    asyncio.run(main())


def test_the_old_key_leaves_the_jwks_only_after_its_last_token_expired(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            old = keys.signing_key(T0).kid
            t1 = T0 + 3600
            new = (await keys.rotate(t1)).key.kid
            retired = t1 + PUBLISH_AHEAD
            unpublish = retired + MAX_LIFETIME + UNPUBLISH_MARGIN
            status = {s.kid: s for s in keys.statuses()}
            assert status[old].retired_at == at(retired) and status[old].unpublish_at == at(unpublish)
            assert status[new].retired_at is None and status[new].unpublish_at is None
            assert kids(keys.jwks(unpublish - 1)) == [new, old]
            assert kids(keys.jwks(unpublish)) == [new]
            assert status[old].state(unpublish - 1) == "retired"
            assert status[old].state(unpublish) == "unpublished"
            assert await keys.prune(unpublish - 1) == []
            assert await keys.prune(unpublish) == [old]
            await keys.refresh()
            assert [s.kid for s in keys.statuses()] == [new]

    asyncio.run(main())


def test_a_token_signed_just_before_activation_verifies_until_it_expires(backend: Backend) -> None:
    def verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
        kid = jwt.get_unverified_header(token)["kid"]
        (public,) = [key for key in jwks["keys"] if key["kid"] == kid]
        pyjwk = jwt.PyJWK(public, algorithm="ES256")
        # The clock is ours, not PyJWT's: check the signature here, exp below.
        claims: dict[str, Any] = jwt.decode(
            token, pyjwk, algorithms=["ES256"], options={"verify_exp": False, "verify_aud": False}
        )
        return claims

    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            t1 = T0 + 3600
            await keys.rotate(t1)
            signed_at = t1 + PUBLISH_AHEAD - 1
            old = keys.signing_key(signed_at)
            exp = signed_at + MAX_LIFETIME
            token = jwt.encode(
                {"sub": "u", "iat": int(signed_at), "exp": int(exp)},
                old.private_key,
                algorithm="ES256",
                headers={"kid": old.kid},
            )
            for now in (signed_at, signed_at + 1, signed_at + MAX_LIFETIME / 2, exp - 1, exp):
                assert verify(token, keys.jwks(now))["sub"] == "u"
            # through joserfc, as Authlib signs: a key set of one key puts its kid in the header
            new = keys.signing_key(t1 + PUBLISH_AHEAD)
            issued = jose_jwt.encode({"alg": "ES256"}, {"sub": "v"}, keys.signing_jwk(t1 + PUBLISH_AHEAD))
            assert jwt.get_unverified_header(issued)["kid"] == new.kid
            assert verify(issued, keys.jwks(t1 + PUBLISH_AHEAD))["sub"] == "v"

    asyncio.run(main())


def test_rotate_twice_is_a_noop_that_reports_the_pending_key(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            first = await keys.rotate(T0 + 10)
            second = await keys.rotate(T0 + 20)
            assert first.created and not second.created
            assert second.key == first.key
            assert len(keys.jwks(T0 + 20)["keys"]) == 2
            # once it signs, the next rotate announces another key
            third = await keys.rotate(T0 + 10 + PUBLISH_AHEAD)
            assert third.created and third.key.kid not in (first.key.kid,)
        assert len(await rows(backend)) == 3

    asyncio.run(main())


# -- races ------------------------------------------------------------------------------------------------


def _one_active_at_most_one_pending(table: list[dict[str, Any]], now: float) -> None:
    moment = at(now)
    active = [
        r
        for r in table
        if r["activates_at"] <= moment and (r["retired_at"] is None or moment < r["retired_at"])
    ]
    pending = [r for r in table if r["activates_at"] > moment]
    assert len(active) == 1, table
    assert len(pending) <= 1, table


def test_concurrent_startup_creates_one_first_key(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as a, open_keys(backend) as b, open_keys(backend) as c:
            results = await asyncio.gather(a.ensure(), a.ensure(), b.ensure(), c.ensure(), b.ensure())
            assert sum(1 for r in results if r is not None and r.created) == 1
            kid = a.signing_key(T0).kid
            assert b.signing_key(T0).kid == kid and c.signing_key(T0).kid == kid
        table = await rows(backend)
        assert len(table) == 1
        _one_active_at_most_one_pending(table, T0)

    asyncio.run(main())


def test_concurrent_rotations_leave_one_pending_key(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as a, open_keys(backend) as b:
            await a.ensure(T0)
            now = T0 + 100
            results = await asyncio.gather(a.rotate(now), a.rotate(now), b.rotate(now), b.rotate(now))
            assert [r.created for r in results].count(True) == 1
            assert len({r.key.kid for r in results}) == 1
            await b.refresh()
            assert kids(a.jwks(now)) == kids(b.jwks(now)) and len(kids(a.jwks(now))) == 2
            # and the scheduled path racing the manual one
            late = now + ROTATION_INTERVAL
            more = await asyncio.gather(a.ensure(late), b.ensure(late), a.rotate(late), b.rotate(late))
            assert [r is not None and r.created for r in more].count(True) == 1
        table = await rows(backend)
        assert len(table) == 3
        _one_active_at_most_one_pending(table, late)

    asyncio.run(main())


def test_another_process_sees_an_announced_key_after_refresh(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as a, open_keys(backend) as b:
            await a.ensure(T0)
            await b.ensure(T0)
            new = (await a.rotate(T0 + 100)).key.kid
            assert new not in kids(b.jwks(T0 + 100))  # b's snapshot predates the rotation
            await b.refresh()
            assert new in kids(b.jwks(T0 + 100))
            assert b.signing_key(T0 + 100 + PUBLISH_AHEAD).kid == new

    asyncio.run(main())


# -- at rest ----------------------------------------------------------------------------------------------


def test_the_row_holds_no_plaintext_private_key(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            key = keys.signing_key(T0)
            private = key.private_key
            der = private.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            scalar = private.private_numbers().private_value.to_bytes(32, "big")
            d = str(ECKey.import_key(private).as_dict(private=True)["d"])
            (row,) = await rows(backend)
            stored = row["private_encrypted"]
            dumped = repr(row).encode()
            for secret in (der, pem, scalar, d.encode(), der[-40:]):
                assert secret not in stored and secret not in dumped
            assert "d" not in row["public_jwk"]
            for shown in (repr(key), repr(keys), repr(keys.statuses()), str(keys.jwks(T0))):
                assert d not in shown and "private" not in shown.lower().replace("private_key", "")
            assert KEK.open(stored, context=f"signing-key:{key.kid}") == der

    asyncio.run(main())


def test_a_sealed_key_copied_to_another_row_does_not_open(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            (row,) = await rows(backend)
            with pytest.raises(KeyEncryptionError):
                KEK.open(row["private_encrypted"], context="signing-key:another")
            await execute(backend, insert(signing_keys).values({**row, "kid": "copied" + row["kid"][6:]}))
            with pytest.raises(SigningKeyError, match="does not open") as caught:
                await keys.refresh()
            assert "copied" in str(caught.value)
            assert keys.signing_key(T0).kid == row["kid"]  # the old snapshot still signs

    asyncio.run(main())


def test_a_public_key_swapped_in_the_database_is_refused(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            (row,) = await rows(backend)
            foreign = ECKey.generate_key("P-256").as_dict(private=False)
            await execute(
                backend, update(signing_keys).values(public_jwk={**row["public_jwk"], "x": foreign["x"]})
            )
            with pytest.raises(SigningKeyError, match="does not match"):
                await keys.refresh()

    asyncio.run(main())


def test_a_wrong_kek_is_a_clear_error(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
        async with open_keys(backend, kek=KeyEncryption(os.urandom(32))) as other:
            with pytest.raises(SigningKeyError, match="does not open with this key-encryption key") as caught:
                await other.ensure(T0)
            assert "GARRISON_IDENTITY_KEK" in str(caught.value)
            assert caught.value.__cause__ is None and caught.value.__suppress_context__

    asyncio.run(main())


# -- the schedule -----------------------------------------------------------------------------------------


def test_maintain_rotates_on_schedule_and_logs_the_lifecycle(backend: Backend, captured: LogCapture) -> None:
    clock = Seconds(T0)

    async def main() -> None:
        async with open_keys(backend, clock=clock) as keys:
            await keys.maintain_once()
            first = keys.signing_key().kid
            # announced publish_ahead before the first key has signed for rotation_interval
            due = T0 + ROTATION_INTERVAL - PUBLISH_AHEAD
            clock.now = due - 1
            await keys.maintain_once()
            assert len(keys.statuses()) == 1
            clock.now = due
            await keys.maintain_once()
            (_, second) = keys.statuses()
            assert second.activates_at == at(T0 + ROTATION_INTERVAL)
            assert keys.signing_key().kid == first
            clock.now = T0 + ROTATION_INTERVAL  # takes over exactly rotation_interval after the first
            await keys.maintain_once()
            assert keys.signing_key().kid == second.kid
            clock.now += MAX_LIFETIME + UNPUBLISH_MARGIN
            await keys.maintain_once()
            assert [s.kid for s in keys.statuses()] == [second.kid]
            assert kids(keys.jwks()) == [second.kid]
            # much later (a process that was down): the scheduled rotation happens at the next round
            clock.now += 10 * ROTATION_INTERVAL
            await keys.maintain_once()
            assert len(keys.statuses()) == 2

        lifecycle = [
            (e["event"], e.get("kid")) for e in captured.events() if e["event"].startswith("identity.key.")
        ]
        assert lifecycle[:5] == [
            ("identity.key.rotated", first),
            ("identity.key.rotated", second.kid),
            ("identity.key.activated", second.kid),
            ("identity.key.retired", first),
            ("identity.key.deleted", first),
        ]
        assert lifecycle[5][0] == "identity.key.rotated"
        everything = captured.stream.getvalue()
        assert "private" not in everything and '"d"' not in everything

    asyncio.run(main())


def test_maintain_logs_a_failure_and_keeps_signing(backend: Backend, captured: LogCapture) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            (row,) = await rows(backend)
            await execute(backend, insert(signing_keys).values({**row, "kid": "copied"}))
            task = asyncio.create_task(keys.maintain(interval=0.01))
            try:
                for _ in range(500):
                    if any(e["event"] == "identity.keys.maintain_failed" for e in captured.events()):
                        break
                    await asyncio.sleep(0.01)
            finally:
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            (failure, *_) = [e for e in captured.events() if e["event"] == "identity.keys.maintain_failed"]
            assert failure["level"] == "warning" and failure["error"] == "SigningKeyError"
            assert "copied" in failure["detail"]
            assert keys.signing_key(T0).kid == row["kid"]

    asyncio.run(main())


def test_ensure_on_a_current_key_set_changes_nothing(backend: Backend) -> None:
    async def main() -> None:
        async with open_keys(backend) as keys:
            await keys.ensure(T0)
            await keys.rotate(T0 + 1)
            before = await rows(backend)
            assert await keys.ensure(T0 + 2) is None
            assert await rows(backend) == before
            assert len(before) == 2

    asyncio.run(main())
