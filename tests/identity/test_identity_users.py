"""Users, roles and second factors, on SQLite and PostgreSQL: argon2id passwords checked in constant work,
username and password rules, roles to scopes, TOTP enrolment and replay protection, recovery codes, and
single use under parallel submission. Time is passed in explicitly, never read from the wall clock.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyotp
import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.identity.mfa import MfaError, MfaStore, mfa_required
from garrison.identity.roles import RoleStore
from garrison.identity.tables import recovery_codes, users
from garrison.identity.users import UserExists, UserNotFound, UserStore
from garrison.pki.kek import KeyEncryption, KeyEncryptionError

if TYPE_CHECKING:
    from conftest import Backend

KEK = KeyEncryption(b"u" * 32)
PASSWORD = "correct horse battery"
T0 = datetime(2031, 5, 17, 9, 30, 7, 250_000, tzinfo=UTC)


class CountingHasher(PasswordHasher):
    """The default parameters, counting verifications: proves every path pays for one."""

    def __init__(self) -> None:
        super().__init__(
            time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID
        )
        self.verifications = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verifications += 1
        return super().verify(hash, password)


async def _row(engine: AsyncEngine, user_id: str) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(select(users).where(users.c.user_id == user_id))).one()


# -- passwords --------------------------------------------------------------------------------------------


def test_passwords_are_argon2id_and_only_the_right_one_of_an_enabled_user_verifies(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        store = UserStore(engine, KEK)
        alice = await store.create("alice", PASSWORD, email="alice@example.com", roles=["reader"])
        stored = (await _row(engine, alice.user_id)).password_hash
        assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert "$argon2" not in repr(alice) and PASSWORD not in repr(alice)

        assert await store.verify_password("alice", PASSWORD) == alice
        assert await store.verify_password("ALICE", PASSWORD) == alice  # usernames ignore case
        assert await store.verify_password("alice", PASSWORD + "!") is None
        assert await store.verify_password("alice", "") is None
        assert await store.verify_password("nobody", PASSWORD) is None
        assert await store.verify_password("not a valid name", PASSWORD) is None

        await store.disable(alice.user_id)
        assert await store.verify_password("alice", PASSWORD) is None
        assert (await store.get(alice.user_id)).disabled
        await store.enable(alice.user_id)
        assert await store.verify_password("alice", PASSWORD) is not None

    backend.run(body)


def test_every_verification_costs_one_argon2_check_whether_or_not_the_user_exists(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> dict[str, int]:
        hasher = CountingHasher()
        store = UserStore(engine, KEK, hasher=hasher)
        alice = await store.create("alice", PASSWORD)
        await store.create("bob", PASSWORD)
        await store.disable((await store.get_by_username("bob") or alice).user_id)
        cases = {
            "right": ("alice", PASSWORD),
            "wrong": ("alice", "wrong password!!"),
            "unknown": ("carol", PASSWORD),
            "malformed": ("Not A Name!", PASSWORD),
            "disabled": ("bob", PASSWORD),
            "overlong": ("alice", "x" * 5000),
        }
        calls = {}
        for name, (username, password) in cases.items():
            before = hasher.verifications
            await store.verify_password(username, password)
            calls[name] = hasher.verifications - before
        return calls

    assert backend.run(body) == dict.fromkeys(
        ["right", "wrong", "unknown", "malformed", "disabled", "overlong"], 1
    )


def test_a_hash_with_old_parameters_is_upgraded_on_the_next_successful_login(backend: Backend) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID)

    async def body(engine: AsyncEngine) -> None:
        alice = await UserStore(engine, KEK, hasher=weak).create("alice", PASSWORD)
        old = (await _row(engine, alice.user_id)).password_hash
        assert "$m=8192,t=1,p=1$" in old

        store = UserStore(engine, KEK)  # today's parameters
        assert await store.verify_password("alice", "wrong password!!") is None
        assert (await _row(engine, alice.user_id)).password_hash == old  # a failure changes nothing
        assert await store.verify_password("alice", PASSWORD) is not None
        new = (await _row(engine, alice.user_id)).password_hash
        assert new.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert await store.verify_password("alice", PASSWORD) is not None

    backend.run(body)


def test_username_rules_and_uniqueness(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        store = UserStore(engine, KEK)
        first = await store.create("Alice.Smith@example.com", PASSWORD)
        assert first.username == "alice.smith@example.com"
        assert (await store.get_by_username("ALICE.SMITH@EXAMPLE.COM")) == first
        with pytest.raises(UserExists, match="taken"):
            await store.create("alice.smith@EXAMPLE.com", PASSWORD)
        for bad in ["", "a b", "x" * 101, "al!ce", "ålice", "\u212aate", "bob\n"]:
            with pytest.raises(ValueError, match="username"):
                await store.create(bad, PASSWORD)
        assert len((await store.create("x" * 100, PASSWORD)).username) == 100
        for bad_email in [
            "no-at-sign",
            "two@@example.com",
            "a b@example.com",
            "a@" + "d" * 253,
            "nul\x00@x.org",
        ]:
            with pytest.raises(ValueError, match="email"):
                await store.create("emily", PASSWORD, email=bad_email)

    backend.run(body)


def test_password_policy_errors_are_clear_and_never_quote_the_password(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        store = UserStore(engine, KEK)
        cases = {
            "short-pass1": "at least 12",
            "y" * 1025: "at most 1024",
            "Long.Username.Here": "must not be the username",
        }
        for password, message in cases.items():
            with pytest.raises(ValueError, match=message) as caught:
                await store.create("long.username.here", password)
            assert password not in str(caught.value)
        user = await store.create("long.username.here", "exactly12chr")
        with pytest.raises(ValueError, match="must not be the username"):
            await store.set_password(user.user_id, "LONG.USERNAME.HERE")
        await store.set_password(user.user_id, "a brand new secret")
        assert await store.verify_password("long.username.here", "exactly12chr") is None
        assert await store.verify_password("long.username.here", "a brand new secret") == await store.get(
            user.user_id
        )
        with pytest.raises(UserNotFound):
            await store.set_password("no-such-id", "a brand new secret")

    backend.run(body)


def test_passwords_are_compared_in_nfkc_form(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        store = UserStore(engine, KEK)
        await store.create("dora", "\ufb01le cabinet 42")  # the "fi" ligature
        assert await store.verify_password("dora", "file cabinet 42") is not None

    backend.run(body)


def test_user_ids_are_random_url_safe_and_accounts_list_and_carry_roles(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        store = UserStore(engine, KEK)
        created = [await store.create(name, PASSWORD) for name in ("carol", "alice", "bob")]
        ids = {user.user_id for user in created}
        assert len(ids) == 3
        for user_id in ids:
            assert len(user_id) == 22 and len(base64.urlsafe_b64decode(user_id + "==")) == 16
        assert [user.username for user in await store.list()] == ["alice", "bob", "carol"]
        await store.set_roles(created[0].user_id, ["admin", "reader", "admin"])
        assert (await store.get(created[0].user_id)).roles == ("admin", "reader")
        with pytest.raises(ValueError, match="role name"):
            await store.set_roles(created[0].user_id, ["Bad Role"])
        with pytest.raises(UserNotFound):
            await store.get("missing")
        assert await store.get_by_username("nobody") is None

    backend.run(body)


# -- roles ------------------------------------------------------------------------------------------------


def test_roles_map_to_scopes_and_unknown_roles_grant_nothing(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        roles = RoleStore(engine)
        await roles.put("reader", ["orders:read", "profile"], "read things")
        await roles.put("writer", ["orders:write", "orders:read"])
        assert await roles.scopes_for(["reader", "writer", "ghost"]) == {
            "orders:read",
            "orders:write",
            "profile",
        }
        assert await roles.scopes_for(["ghost"]) == frozenset()
        assert await roles.scopes_for([]) == frozenset()

        replaced = await roles.put("reader", ["profile"], "less")
        assert replaced.scopes == ("profile",) and replaced.description == "less"
        assert await roles.scopes_for(["reader"]) == {"profile"}
        assert [role.name for role in await roles.list()] == ["reader", "writer"]
        assert await roles.delete("writer") and not await roles.delete("writer")
        assert await roles.scopes_for(["writer"]) == frozenset()
        with pytest.raises(ValueError, match="scope"):
            await roles.put("bad", ['has"quote'])
        with pytest.raises(ValueError, match="scope"):
            await roles.put("bad", "orders:read")  # a string, not a list
        with pytest.raises(ValueError, match="role name"):
            await roles.put("Has Space", [])

    backend.run(body)


# -- TOTP -------------------------------------------------------------------------------------------------


async def _enrolled(engine: AsyncEngine, username: str = "alice") -> tuple[str, str, MfaStore]:
    """A user with a confirmed authenticator (confirmed at T0, so T0's step is spent)."""
    user = await UserStore(engine, KEK).create(username, PASSWORD)
    mfa = MfaStore(engine, KEK)
    secret, _ = await mfa.begin_enrollment(user.user_id)
    assert await mfa.confirm_enrollment(user.user_id, pyotp.TOTP(secret).at(T0), now=T0)
    return user.user_id, secret, mfa


def test_enrolment_seals_the_seed_and_needs_a_code_to_switch_on(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        user = await UserStore(engine, KEK).create("alice", PASSWORD)
        mfa = MfaStore(engine, KEK, issuer_name="Shop")
        secret, uri = await mfa.begin_enrollment(user.user_id)
        assert (
            len(secret) == 32 and uri.startswith("otpauth://totp/Shop:alice?") and f"secret={secret}" in uri
        )
        row = await _row(engine, user.user_id)
        assert not row.totp_confirmed
        stored = bytes(row.totp_encrypted)
        assert secret.encode() not in stored and base64.b32decode(secret) not in stored
        assert secret.encode() not in repr(row).encode()

        totp = pyotp.TOTP(secret)
        assert not await mfa.verify(user.user_id, totp.at(T0), now=T0)  # not confirmed yet
        window = {totp.at(T0 + timedelta(seconds=s)) for s in (-30, 0, 30)}
        wrong = next(code for code in ("000000", "000001", "000002", "000003") if code not in window)
        assert not await mfa.confirm_enrollment(user.user_id, wrong, now=T0)
        assert await mfa.confirm_enrollment(user.user_id, totp.at(T0), now=T0)
        assert (await UserStore(engine, KEK).get(user.user_id)).mfa_enrolled
        assert not await mfa.verify(user.user_id, totp.at(T0), now=T0)  # the confirming code is spent

        with pytest.raises(MfaError, match="already"):
            await mfa.begin_enrollment(user.user_id)
        new_secret, _ = await mfa.begin_enrollment(user.user_id, replace=True)
        later = T0 + timedelta(seconds=90)
        assert not await mfa.verify(user.user_id, totp.at(later), now=later)  # the old app is off
        assert await mfa.confirm_enrollment(user.user_id, pyotp.TOTP(new_secret).at(later), now=later)

    backend.run(body)


def test_totp_accepts_one_step_of_drift_and_each_step_once(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        user_id, secret, mfa = await _enrolled(engine)
        totp = pyotp.TOTP(secret)

        now = T0 + timedelta(seconds=30)
        assert await mfa.verify(user_id, totp.at(now), now=now)
        assert not await mfa.verify(user_id, totp.at(now), now=now)  # replay in the same step
        later = now + timedelta(seconds=30)
        assert not await mfa.verify(user_id, totp.at(now), now=later)  # still in the window, still spent

        now = T0 + timedelta(seconds=300)
        assert await mfa.verify(user_id, totp.at(now - timedelta(seconds=30)), now=now)  # one step behind
        assert await mfa.verify(user_id, " ".join([totp.at(now)[:3], totp.at(now)[3:]]), now=now)
        assert await mfa.verify(user_id, totp.at(now + timedelta(seconds=30)), now=now)  # one step ahead
        assert not await mfa.verify(user_id, totp.at(now), now=now)  # older than a step already used

        now = T0 + timedelta(seconds=900)
        for offset in (-60, 60):
            code = totp.at(now + timedelta(seconds=offset))
            if code not in {totp.at(now + timedelta(seconds=s)) for s in (-30, 0, 30)}:
                assert not await mfa.verify(user_id, code, now=now)  # two steps off
        for bad in ["", "12345", "1234567", "abcdef", "\uff11\uff12\uff13\uff14\uff15\uff16"]:
            assert not await mfa.verify(user_id, bad, now=now)
        assert not await mfa.verify("no-such-user", totp.at(now), now=now)

    backend.run(body)


def test_a_disabled_user_verifies_no_code(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        user_id, secret, mfa = await _enrolled(engine)
        await UserStore(engine, KEK).disable(user_id)
        now = T0 + timedelta(seconds=60)
        assert not await mfa.verify(user_id, pyotp.TOTP(secret).at(now), now=now)
        codes = await mfa.issue_recovery_codes(user_id)
        assert not await mfa.use_recovery_code(user_id, codes[0])

    backend.run(body)


def test_parallel_submissions_of_one_code_let_exactly_one_through(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> list[bool]:
        user_id, secret, mfa = await _enrolled(engine)
        now = T0 + timedelta(seconds=60)
        code = pyotp.TOTP(secret).at(now)
        return await asyncio.gather(*(mfa.verify(user_id, code, now=now) for _ in range(12)))

    assert sorted(backend.run(body)) == [False] * 11 + [True]


def test_a_seed_copied_to_another_users_row_does_not_open(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        alice_id, secret, mfa = await _enrolled(engine, "alice")
        mallory_id, _, _ = await _enrolled(engine, "mallory")
        sealed = (await _row(engine, alice_id)).totp_encrypted
        async with engine.begin() as connection:
            await connection.execute(
                update(users).where(users.c.user_id == mallory_id).values(totp_encrypted=sealed)
            )
        now = T0 + timedelta(seconds=60)
        with pytest.raises(KeyEncryptionError):
            await mfa.verify(mallory_id, pyotp.TOTP(secret).at(now), now=now)

    backend.run(body)


# -- recovery codes ---------------------------------------------------------------------------------------


def test_recovery_codes_are_single_use_stored_as_digests_and_replaced_on_reissue(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        user_id, _, mfa = await _enrolled(engine)
        other_id, _, _ = await _enrolled(engine, "bob")
        codes = await mfa.issue_recovery_codes(user_id)
        assert len(set(codes)) == 10
        assert all(len(code) == 19 and code.count("-") == 3 for code in codes)
        async with engine.connect() as connection:
            digests = (await connection.execute(select(recovery_codes.c.code_digest))).scalars().all()
        assert len(digests) == 10
        assert set(digests).isdisjoint({code.replace("-", "") for code in codes} | set(codes))

        assert await mfa.use_recovery_code(user_id, codes[0])
        assert not await mfa.use_recovery_code(user_id, codes[0])
        assert await mfa.use_recovery_code(user_id, codes[1].upper().replace("-", " "))
        assert not await mfa.use_recovery_code(other_id, codes[2])  # another user's code
        assert not await mfa.use_recovery_code(user_id, "not-a-code")
        assert await mfa.remaining_recovery_codes(user_id) == 8

        fresh = await mfa.issue_recovery_codes(user_id, count=3)
        assert not await mfa.use_recovery_code(user_id, codes[2])  # replaced
        assert await mfa.remaining_recovery_codes(user_id) == 3
        assert await mfa.use_recovery_code(user_id, fresh[0])
        with pytest.raises(UserNotFound):
            await mfa.issue_recovery_codes("no-such-user")

        await mfa.reset(user_id)
        assert await mfa.remaining_recovery_codes(user_id) == 0
        assert not (await UserStore(engine, KEK).get(user_id)).mfa_enrolled

    backend.run(body)


def test_parallel_use_of_one_recovery_code_lets_exactly_one_through(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> list[bool]:
        user_id, _, mfa = await _enrolled(engine)
        code = (await mfa.issue_recovery_codes(user_id, count=1))[0]
        return await asyncio.gather(*(mfa.use_recovery_code(user_id, code) for _ in range(12)))

    assert sorted(backend.run(body)) == [False] * 11 + [True]


def test_mfa_is_required_by_the_client_or_by_a_role() -> None:
    assert mfa_required(["admin"], False, ["admin"])
    assert mfa_required([], True, [])
    assert not mfa_required(["reader"], False, ["admin"])
    assert not mfa_required([], False, ["admin"])
