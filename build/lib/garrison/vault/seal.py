"""The seal: the root key split with Shamir's secret sharing, and the unseal that puts it back together.

Keys, from the outside in (as Vault does it):

- the **unseal key** (256 bits) exists only as shares: ``sys/init`` splits it into ``secret_shares``
  shares of which any ``secret_threshold`` rebuild it, hands them to the operator and forgets it;
- the **root key** (256 bits) is stored sealed under the unseal key (AES-256-GCM);
- the **keyring** (barrier.py) is stored sealed under the root key.

Shamir's scheme is pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` (GF(2^128), 16-byte
secrets), not ours: the 32-byte unseal key is shared as two halves, each with its own random
polynomial and the same x-coordinates, so fewer than ``threshold`` shares say nothing about either
half. A share is its index (one byte) then the two 16-byte half-shares: 33 bytes, as long as Vault's.

Unsealing gathers distinct shares (a share sent twice is not counted twice); at the threshold they are
combined, and only a root key that opens (GCM authenticates it) unseals the vault. A wrong share
therefore fails the whole attempt, which is forgotten (progress back to zero), as in Vault.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

from Crypto.Protocol.SecretSharing import Shamir

from garrison.vault.barrier import KEY_BYTES, BarrierError, Keyring, open_sealed, seal_with
from garrison.vault.storage import CoreStorage

__all__ = ["MAX_SHARES", "Seal", "SealConfig", "UnsealError", "combine_shares", "split_key"]

MAX_SHARES = 255  # one byte of share index
_HALF = KEY_BYTES // 2
_ROOT_PURPOSE = "garrison-vault root key"
_KEYRING_PURPOSE = "garrison-vault keyring"


class UnsealError(Exception):
    """An unseal key share is malformed, or the shares do not rebuild the unseal key."""


@dataclass(frozen=True)
class SealConfig:
    shares: int
    threshold: int

    def check(self) -> None:
        if not 1 <= self.shares <= MAX_SHARES:
            raise ValueError(f"secret_shares must be between 1 and {MAX_SHARES}")
        if not 1 <= self.threshold <= self.shares:
            raise ValueError("secret_threshold must be between 1 and secret_shares")
        if self.shares > 1 and self.threshold < 2:
            raise ValueError("secret_threshold must be at least 2 when there is more than one share")


def split_key(key: bytes, threshold: int, shares: int) -> list[bytes]:
    """``shares`` shares of the 32-byte ``key``, any ``threshold`` of which rebuild it."""
    assert len(key) == KEY_BYTES
    first = Shamir.split(threshold, shares, key[:_HALF])
    second = Shamir.split(threshold, shares, key[_HALF:])
    return [bytes([i]) + a + b for (i, a), (j, b) in zip(first, second, strict=True) if i == j]


def combine_shares(shares: list[bytes]) -> bytes:
    first = [(share[0], share[1 : 1 + _HALF]) for share in shares]
    second = [(share[0], share[1 + _HALF :]) for share in shares]
    try:
        return Shamir.combine(first) + Shamir.combine(second)
    except ValueError:
        raise UnsealError("the unseal key shares do not combine") from None


class Seal:
    """The seal's state: initialised or not, sealed or not, the shares gathered so far."""

    def __init__(self, storage: CoreStorage) -> None:
        self.storage = storage
        self.config: SealConfig | None = None
        self.keyring: Keyring | None = None
        self._root_key: bytes | None = None
        self._shares: list[bytes] = []
        self.nonce = ""

    def __repr__(self) -> str:
        return f"Seal(initialized={self.initialized}, sealed={self.sealed})"

    @property
    def initialized(self) -> bool:
        return self.config is not None

    @property
    def sealed(self) -> bool:
        return self.keyring is None

    @property
    def progress(self) -> int:
        return len(self._shares)

    async def load(self) -> None:
        raw = await self.storage.get("seal-config")
        if raw is not None:
            data = json.loads(raw)
            self.config = SealConfig(int(data["secret_shares"]), int(data["secret_threshold"]))

    async def initialize(self, config: SealConfig) -> tuple[list[bytes], Keyring]:
        """New keys: returns the unseal key's shares and the (new, unsealed) keyring. Stored in one
        transaction; the caller seals again once it has written what init writes (the root token)."""
        config.check()
        unseal_key, root_key, keyring = os.urandom(KEY_BYTES), os.urandom(KEY_BYTES), Keyring.new()
        shares = split_key(unseal_key, config.threshold, config.shares)
        await self.storage.put_many(
            {
                "seal-config": json.dumps(
                    {"type": "shamir", "secret_shares": config.shares, "secret_threshold": config.threshold}
                ).encode(),
                "root-key": seal_with(unseal_key, root_key, _ROOT_PURPOSE),
                "keyring": seal_with(root_key, keyring.to_bytes(), _KEYRING_PURPOSE),
            }
        )
        self.config, self.keyring, self._root_key = config, keyring, root_key
        return shares, keyring

    def reset(self) -> None:
        self._shares = []
        self.nonce = ""

    async def submit(self, share: bytes) -> bool:
        """Count one share; at the threshold, unseal. True once unsealed. Raises UnsealError."""
        assert self.config is not None
        if len(share) != 1 + KEY_BYTES or share[0] == 0:
            raise UnsealError(f"an unseal key share is {1 + KEY_BYTES} bytes (hex or base64)")
        if not self.sealed:
            return True
        if share in self._shares:
            return False  # counted once, as Vault does
        if not self._shares:
            self.nonce = str(uuid.uuid4())
        self._shares.append(share)
        if len(self._shares) < self.config.threshold:
            return False
        shares, self._shares, self.nonce = self._shares, [], ""
        if len({share[0] for share in shares}) != len(shares):
            raise UnsealError("two different shares carry the same index")
        await self.unseal_with(combine_shares(shares))
        return True

    async def unseal_with(self, unseal_key: bytes) -> None:
        sealed_root, sealed_keyring = await self.storage.get("root-key"), await self.storage.get("keyring")
        if sealed_root is None or sealed_keyring is None:
            raise UnsealError("the vault's sealed keys are missing from its storage")
        try:
            root_key = open_sealed(unseal_key, sealed_root, _ROOT_PURPOSE)
            keyring = Keyring.from_bytes(open_sealed(root_key, sealed_keyring, _KEYRING_PURPOSE))
        except BarrierError:
            raise UnsealError("unseal failed: the key shares do not open the root key") from None
        self._root_key, self.keyring = root_key, keyring

    def seal(self) -> None:
        self.keyring, self._root_key = None, None
        self.reset()

    async def rotate(self) -> int:
        """A new keyring term, stored sealed under the root key before it is used."""
        assert self.keyring is not None and self._root_key is not None
        rotated = Keyring.from_bytes(self.keyring.to_bytes())
        term = rotated.rotate()
        await self.storage.put_many(
            {"keyring": seal_with(self._root_key, rotated.to_bytes(), _KEYRING_PURPOSE)}
        )
        self.keyring.keys, self.keyring.installed, self.keyring.active = rotated.keys, rotated.installed, term
        return term
