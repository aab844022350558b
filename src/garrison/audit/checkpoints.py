"""Signed checkpoints: the log's Merkle tree head and chain head, signed with Ed25519, kept durably.

The hash chain alone shows that lines were not changed *relative to each other*, but anyone who can
write the files can recompute it end to end. A checkpoint binds the first ``size`` entries (their
RFC 9162 root, and the chain value of the last one) under a key the log files do not hold: rewriting
history then needs the key, and removing entries a checkpoint covers shows (``verify`` compares).

The signed text is canonical and line-oriented (in the spirit of C2SP's signed-note checkpoints)::

    garrison.audit.checkpoint/v1
    size 1234
    root <64 hex>
    chain <64 hex>
    time 2026-12-07T10:00:00.000000Z
    key <key id: first 16 hex digits of SHA-256 of the raw public key>

Checkpoints are JSON lines in ``checkpoints.jsonl`` beside the segments, each appended and fsync'd.
The private key is ``state_dir/audit/checkpoint.key`` (PKCS#8 PEM, 0600, made at the collector's
first start), the public key ``checkpoint.pub`` beside it: give the public key, and copies of the
checkpoints, to whoever must be able to check the log without trusting this machine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from garrison.audit.paths import CHECKPOINTS_FILE
from garrison.events.schema import rfc3339

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "key_id",
    "load_or_create_key",
    "load_public_key",
    "read_checkpoints",
]

HEADER: Final = "garrison.audit.checkpoint/v1"


class CheckpointError(Exception):
    """A checkpoint, key or checkpoints file that cannot be used (the message says which and why)."""


class HasHead(Protocol):
    def head(self) -> Any: ...  # a LogHead: size, root, chain


@dataclass(frozen=True, slots=True)
class Checkpoint:
    size: int
    root: bytes
    chain: bytes
    time: str  # RFC 3339, as signed
    key: str  # key id
    signature: bytes

    def signed_text(self) -> bytes:
        return signed_text(self.size, self.root, self.chain, self.time, self.key)

    def verify(self, public_key: Ed25519PublicKey) -> None:
        """Raise ``CheckpointError`` unless ``public_key`` signed this checkpoint."""
        if self.key != key_id(public_key):
            raise CheckpointError(f"checkpoint at size {self.size} names key {self.key}, not this key")
        try:
            public_key.verify(self.signature, self.signed_text())
        except InvalidSignature:
            raise CheckpointError(f"checkpoint at size {self.size} has an invalid signature") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "root": self.root.hex(),
            "chain": self.chain.hex(),
            "time": self.time,
            "key": self.key,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_dict(cls, body: Any) -> Checkpoint:
        try:
            size, root, chain = body["size"], bytes.fromhex(body["root"]), bytes.fromhex(body["chain"])
            signature = base64.b64decode(body["signature"], validate=True)
            checkpoint = cls(size, root, chain, body["time"], body["key"], signature)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError("a checkpoint has a size, root, chain, time, key and signature") from None
        if not isinstance(size, int) or size < 0 or len(root) != 32 or len(chain) != 32:
            raise CheckpointError("a checkpoint's size is a count and its root and chain 32-byte hashes")
        if not isinstance(checkpoint.time, str) or not isinstance(checkpoint.key, str):
            raise CheckpointError("a checkpoint's time and key are text")
        return checkpoint


def signed_text(size: int, root: bytes, chain: bytes, when: str, key: str) -> bytes:
    return (
        f"{HEADER}\nsize {size}\nroot {root.hex()}\nchain {chain.hex()}\ntime {when}\nkey {key}\n"
    ).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path``, made (0600, O_EXCL: two starting processes agree on one) with
    its public key beside it (``.pub``) when there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.with_suffix(".pub").write_bytes(public)
    return key


def _read_key(path: Path) -> Ed25519PrivateKey:
    if path.stat().st_mode & 0o077:
        raise CheckpointError(f"the checkpoint key {path} is accessible to other users: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise CheckpointError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise CheckpointError(f"cannot read the public key {path}: {exc.strerror}") from None
    except ValueError:
        raise CheckpointError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError(f"{path} is not an Ed25519 public key")
    return key


def read_checkpoints(path: Path, *, cut_torn: bool = False) -> list[Checkpoint]:
    """Every checkpoint in the file, in order. A torn last line (no newline) is skipped, or cut off
    when ``cut_torn`` (the writer, at start); any other bad line raises ``CheckpointError``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    good = data.rfind(b"\n") + 1
    if cut_torn and good != len(data):
        with path.open("r+b") as handle:
            handle.truncate(good)
            os.fsync(handle.fileno())
    found = []
    for number, line in enumerate(data[:good].splitlines(), start=1):
        try:
            found.append(Checkpoint.from_dict(json.loads(line)))
        except (ValueError, CheckpointError) as exc:
            raise CheckpointError(f"{path.name} line {number} is not a checkpoint: {exc}") from None
    return found


class Checkpointer:
    """Signs the log's head into the checkpoints file: every ``interval`` seconds while entries
    arrive (``maybe_checkpoint``, called by the collector after commits), and at close
    (``checkpoint``)."""

    def __init__(
        self,
        log: HasHead,
        key: Ed25519PrivateKey,
        path: Path,
        interval: float,
        existing: list[Checkpoint],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log
        self._key = key
        self._key_id = key_id(key.public_key())
        self.path = path
        self.interval = interval
        self._clock = clock
        self._lock = asyncio.Lock()
        self.latest: Checkpoint | None = existing[-1] if existing else None
        self._last_time = clock()
        self.count = 0  # made by this process (garrison_audit_checkpoints_total)

    @classmethod
    async def open(
        cls,
        log: HasHead,
        log_directory: Path,
        key_path: Path,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> Checkpointer:
        """Load (or make) the key and the checkpoints; ``CheckpointError`` when the log is shorter
        than the latest checkpoint (truncated) or differs from it at its size."""
        key = await asyncio.to_thread(load_or_create_key, key_path)
        path = log_directory / CHECKPOINTS_FILE
        existing = await asyncio.to_thread(read_checkpoints, path, cut_torn=True)
        head = log.head()
        if existing:
            latest = existing[-1]
            if latest.size > head.size:
                raise CheckpointError(
                    f"the audit log holds {head.size} entries but a signed checkpoint covers "
                    f"{latest.size}: it was truncated; run `garrison audit verify`"
                )
            if latest.size == head.size and (latest.root, latest.chain) != (head.root, head.chain):
                raise CheckpointError(
                    f"the audit log differs from its latest checkpoint (size {latest.size}); "
                    "run `garrison audit verify`"
                )
        return cls(log, key, path, interval, existing, clock)

    def due(self) -> bool:
        latest = self.latest.size if self.latest else 0
        return self._log.head().size > latest and self._clock() - self._last_time >= self.interval

    async def maybe_checkpoint(self) -> Checkpoint | None:
        """A new checkpoint if entries arrived and ``interval`` passed since the last one."""
        return await self.checkpoint() if self.due() else None

    async def checkpoint(self) -> Checkpoint | None:
        """Sign and store the current head now (unless the latest checkpoint already covers it);
        returns the new checkpoint once it is durable."""
        async with self._lock:
            head = self._log.head()
            if head.size == 0 or (self.latest is not None and self.latest.size >= head.size):
                return None
            now = self._clock()
            when = rfc3339(now)
            text = signed_text(head.size, head.root, head.chain, when, self._key_id)
            made = Checkpoint(head.size, head.root, head.chain, when, self._key_id, self._key.sign(text))
            await asyncio.to_thread(_append_durably, self.path, made)
            self.latest, self._last_time = made, now
            self.count += 1
            return made


def _append_durably(path: Path, checkpoint: Checkpoint) -> None:
    line = json.dumps(checkpoint.to_dict(), separators=(",", ":")).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
