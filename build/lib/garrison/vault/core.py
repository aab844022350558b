"""The vault's state behind the API: storage, seal, and what exists only while unsealed (the barrier
view of storage, tokens, policies, the KV engine, the audit salt).

Sealing drops every unsealed object, so nothing decrypted outlives the seal in this process's
structures (Python cannot promise to wipe memory; the keys' last references go). Dev mode (``vault.dev``)
initialises with one share and keeps that share in ``state_dir/vault/dev-unseal.key`` (0600) to unseal
at every start, warning loudly each time.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.telemetry import logging as log
from garrison.vault.approle import AppRoleStore
from garrison.vault.audit import SALT_PATH as AUDIT_SALT_PATH
from garrison.vault.audit import AuditLog
from garrison.vault.barrier import Keyring
from garrison.vault.cert_auth import CertLogin
from garrison.vault.database import DatabaseEngine
from garrison.vault.kv import KvV2
from garrison.vault.leases import LeaseManager
from garrison.vault.policy import DEFAULT_POLICY, Acl, Policy, PolicyError, parse_policy
from garrison.vault.seal import Seal, SealConfig
from garrison.vault.service_policies import ServicePolicies
from garrison.vault.storage import BarrierStorage, CoreStorage
from garrison.vault.tokens import TokenEntry, TokenStore

__all__ = ["Unsealed", "VaultCore"]

POLICY_PREFIX = "sys/policy/"
POLICY_NAME = re.compile(r"[a-z0-9_.@-]{1,128}")
KV_MOUNT = "secret"
MAX_ACLS = 1024  # distinct policy sets whose compiled ACL is kept


class Unsealed:
    """What the vault holds while unsealed."""

    def __init__(self, core: VaultCore, keyring: Keyring) -> None:
        self.storage = BarrierStorage(core.engine, keyring)
        self.tokens = TokenStore(self.storage, core.clock, core.default_ttl, core.max_ttl)
        self.kv = KvV2(self.storage, KV_MOUNT, core.clock)
        self.database = DatabaseEngine(self.storage, core.default_ttl, core.max_ttl)
        self.leases = LeaseManager(self.storage, core.clock, {"database": self.database}, self._token_expiry)
        self.tokens.on_revoke.append(self.leases.revoke_token)  # a token's leases end with it
        self.approle = AppRoleStore(self.storage, self.tokens, core.clock)
        self._policies: dict[str, Policy] = {}
        self._acls: dict[tuple[str, ...], Acl] = {}  # compiled once per set of policy names
        self._changes = 0  # policy writes so far: an ACL built across one is not kept

    async def _token_expiry(self, digest: str) -> float | None:
        entry = await self.tokens.by_digest(digest)
        if entry is None:
            return None
        return entry.expire_time if entry.expire_time is not None else float("inf")

    async def policy(self, name: str) -> Policy | None:
        if name == "root":
            return Policy("root", "", ())
        cached = self._policies.get(name)
        if cached is not None:
            return cached
        changes = self._changes
        raw = await self.storage.get(POLICY_PREFIX + name)
        if raw is None:
            return None
        policy = parse_policy(name, raw.decode())
        if changes == self._changes:  # else a write landed while reading: do not keep what may be older
            self._policies[name] = policy
        return policy

    async def policy_names(self) -> list[str]:
        names = {path[len(POLICY_PREFIX) :] for path in await self.storage.list(POLICY_PREFIX)}
        return sorted(names | {"root"})

    async def put_policy(self, name: str, text: str) -> None:
        if name == "root":
            raise PolicyError("cannot update the root policy")
        if not POLICY_NAME.fullmatch(name):
            raise PolicyError("a policy name is 1 to 128 letters, digits, '.', '_', '-' or '@'")
        policy = parse_policy(name, text)
        await self.storage.put(POLICY_PREFIX + name, text.encode())
        self._policies[name] = policy
        self._changes += 1
        self._acls.clear()

    async def delete_policy(self, name: str) -> None:
        if name in ("root", "default"):
            raise PolicyError(f"cannot delete the {name} policy")
        await self.storage.delete(POLICY_PREFIX + name)
        self._policies.pop(name, None)
        self._changes += 1
        self._acls.clear()

    async def acl(self, entry: TokenEntry) -> Acl:
        key = tuple(entry.policies)
        acl = self._acls.get(key)
        if acl is None:
            changes = self._changes
            found = [policy for name in key if (policy := await self.policy(name)) is not None]
            acl = Acl(found)
            if changes == self._changes:
                if len(self._acls) >= MAX_ACLS:
                    self._acls.clear()
                self._acls[key] = acl
        return acl


class VaultCore:
    def __init__(
        self,
        engine: AsyncEngine,
        audit: AuditLog,
        *,
        default_ttl: float,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.clock = clock
        self.default_ttl, self.max_ttl = default_ttl, max_ttl
        self.seal = Seal(CoreStorage(engine))
        self.unsealed: Unsealed | None = None
        self.cert_login = CertLogin(ServicePolicies("", {}, {}), max_ttl, clock)

    async def apply_services(self, services: ServicePolicies, cert_token_ttl: float) -> None:
        """garrison.yaml's per-service policies and cert bindings (start, SIGHUP); written now when
        unsealed, else at the next unseal."""
        self.cert_login.services, self.cert_login.token_ttl = services, cert_token_ttl
        if self.unsealed is not None:
            await services.install(self.unsealed)

    async def load(self) -> None:
        await self.seal.load()

    async def initialize(self, config: SealConfig) -> tuple[list[bytes], str]:
        """New keys, the default policy and a root token; the vault is left sealed, as Vault leaves it."""
        shares, keyring = await self.seal.initialize(config)
        try:
            unsealed = Unsealed(self, keyring)
            await unsealed.put_policy("default", DEFAULT_POLICY)
            root_token, _ = await unsealed.tokens.create_root()
        finally:
            self.seal.seal()
        return shares, root_token

    async def submit_share(self, share: bytes) -> bool:
        """One unseal key share; True once unsealed (UnsealError when the shares do not fit)."""
        if not await self.seal.submit(share):
            return False
        await self._opened()
        return True

    async def _opened(self) -> None:
        assert self.seal.keyring is not None
        unsealed = Unsealed(self, self.seal.keyring)
        salt = await unsealed.storage.get(AUDIT_SALT_PATH)
        if salt is None:
            salt = os.urandom(32)
            await unsealed.storage.put(AUDIT_SALT_PATH, salt)
        self.audit.salt = salt
        await unsealed.leases.start()  # leases stored before a restart: the due ones are revoked now
        await self.cert_login.services.install(unsealed)
        self.unsealed = unsealed
        log.log("vault.unsealed", keyring_term=self.seal.keyring.active)

    def seal_now(self) -> None:
        if self.unsealed is not None:
            self.unsealed.leases.stop()
            self.unsealed.database.close()
        self.unsealed = None
        self.audit.salt = None
        self.seal.seal()
        log.log("vault.sealed")

    async def rotate(self) -> int:
        term = await self.seal.rotate()
        log.log("vault.keyring.rotated", term=term)
        return term

    async def dev_unseal(self, directory: Path) -> None:
        """Dev mode: initialise once with one share kept in a 0600 file, and unseal from it."""
        log.warn(
            "vault.dev_mode",
            message="DEV MODE: the vault unseals itself from a key file next to its data. Anyone who "
            "can read the state directory can read every secret. Never use dev mode in production.",
            key_file=str(directory / "dev-unseal.key"),
        )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_file, token_file = directory / "dev-unseal.key", directory / "dev-root.token"
        if not self.seal.initialized:
            shares, root_token = await self.initialize(SealConfig(1, 1))
            _write_private(key_file, shares[0].hex())
            _write_private(token_file, root_token)
        await self.submit_share(bytes.fromhex(key_file.read_text().strip()))


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
