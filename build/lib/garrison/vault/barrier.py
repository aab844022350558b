"""The barrier: envelope encryption of every stored entry, as plain functions and a keyring (no I/O).

Each entry gets a fresh 256-bit data key; the value is sealed with AES-256-GCM under it, and the data
key is sealed (AES-256-GCM again) under the keyring's active term key. Both seals take the storage path
as associated data, so a ciphertext copied or moved to another path, or changed by one bit, does not
decrypt: the database can hold, but neither swap nor alter, what the vault wrote. Why a data key per
entry rather than the term key directly: a term key then encrypts only 32-byte keys under random
nonces, never bulk data, so the GCM per-key limits (2^32 messages under random nonces) are far away
for any realistic number of writes.

The keyring is the list of term keys; ``sys/rotate`` adds a term and new writes use it, while entries
written under older terms still decrypt (their term number travels in the blob). The keyring itself is
sealed under the root key (seal.py), which only exists in memory while the vault is unsealed.

Blob layout: version (1) | term (4, big-endian) | key nonce (12) | sealed data key (48) | nonce (12) |
ciphertext and tag.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["BarrierError", "Keyring", "open_sealed", "seal_with"]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_VERSION = b"\x01"
_HEAD = struct.Struct(">cI")
_SEALED_KEY = KEY_BYTES + TAG_BYTES
_MIN_BLOB = _HEAD.size + NONCE_BYTES + _SEALED_KEY + NONCE_BYTES + TAG_BYTES


class BarrierError(Exception):
    """A stored value does not decrypt: tampered with, moved from another path, or a foreign key."""


def _entry_aad(path: str) -> bytes:
    return b"garrison-vault-entry\x00" + path.encode()


def _key_aad(term: int, path: str) -> bytes:
    return b"garrison-vault-data-key\x00" + struct.pack(">I", term) + path.encode()


@dataclass
class Keyring:
    """Term number -> 256-bit key; ``active`` encrypts new entries. Never shows a key in repr."""

    keys: dict[int, bytes] = field(repr=False)
    active: int
    installed: dict[int, float] = field(default_factory=dict)

    @classmethod
    def new(cls, now: float | None = None) -> Keyring:
        return cls({1: os.urandom(KEY_BYTES)}, 1, {1: now if now is not None else time.time()})

    def rotate(self, now: float | None = None) -> int:
        """Add a term and make it the active one; the old terms stay for reading."""
        term = self.active + 1
        self.keys[term] = os.urandom(KEY_BYTES)
        self.installed[term] = now if now is not None else time.time()
        self.active = term
        return term

    def encrypt(self, path: str, plaintext: bytes) -> bytes:
        data_key = os.urandom(KEY_BYTES)
        key_nonce, nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
        sealed_key = AESGCM(self.keys[self.active]).encrypt(key_nonce, data_key, _key_aad(self.active, path))
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _entry_aad(path))
        return _HEAD.pack(_VERSION, self.active) + key_nonce + sealed_key + nonce + ciphertext

    def decrypt(self, path: str, blob: bytes) -> bytes:
        if len(blob) < _MIN_BLOB:
            raise BarrierError(f"the entry at {path!r} is not a barrier blob")
        version, term = _HEAD.unpack_from(blob)
        if version != _VERSION:
            raise BarrierError(f"the entry at {path!r} has an unknown format")
        key = self.keys.get(term)
        if key is None:
            raise BarrierError(f"the entry at {path!r} names keyring term {term}, which this keyring lacks")
        at = _HEAD.size
        key_nonce, sealed_key = (
            blob[at : at + NONCE_BYTES],
            blob[at + NONCE_BYTES : at + NONCE_BYTES + _SEALED_KEY],
        )
        at += NONCE_BYTES + _SEALED_KEY
        nonce, ciphertext = blob[at : at + NONCE_BYTES], blob[at + NONCE_BYTES :]
        try:
            data_key = AESGCM(key).decrypt(key_nonce, sealed_key, _key_aad(term, path))
            return AESGCM(data_key).decrypt(nonce, ciphertext, _entry_aad(path))
        except InvalidTag:
            raise BarrierError(
                f"the entry at {path!r} does not decrypt (modified, or moved from another path)"
            ) from None

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "active": self.active,
                "keys": {str(t): base64.b64encode(k).decode() for t, k in self.keys.items()},
                "installed": {str(t): at for t, at in self.installed.items()},
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Keyring:
        raw = json.loads(data)
        keys = {int(t): base64.b64decode(k) for t, k in raw["keys"].items()}
        installed = {int(t): float(at) for t, at in raw.get("installed", {}).items()}
        return cls(keys, int(raw["active"]), installed)


def seal_with(key: bytes, plaintext: bytes, purpose: str) -> bytes:
    """AES-256-GCM under ``key`` with ``purpose`` as associated data (the root key, the keyring)."""
    nonce = os.urandom(NONCE_BYTES)
    return _VERSION + nonce + AESGCM(key).encrypt(nonce, plaintext, purpose.encode())


def open_sealed(key: bytes, sealed: bytes, purpose: str) -> bytes:
    if len(sealed) < 1 + NONCE_BYTES + TAG_BYTES or sealed[:1] != _VERSION:
        raise BarrierError(f"the {purpose} is not a sealed value")
    try:
        return AESGCM(key).decrypt(sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :], purpose.encode())
    except InvalidTag:
        raise BarrierError(f"the {purpose} does not open with this key") from None
