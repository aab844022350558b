"""Transit keys: a named key ring of versions, its ciphertext format, and the AEAD and signing it does.

Vault's transit engine calls a named key a "policy": versions 1..latest, each with its own key
material, and two floors. ``min_decryption_version`` refuses ciphertexts (and signatures) made with an
older version, which is how an operator retires a version after rewrapping; ``min_encryption_version``
(0: always the latest) bounds ``key_version`` on encryption. Ciphertexts are Vault's
``vault:v<N>:<base64(nonce || ciphertext || tag)>`` with a 96-bit random nonce, so a Garrison
ciphertext and a Vault one look alike and a client's parsing of them works unchanged.

``derived`` keys never encrypt with the stored material itself: each request's ``context`` gives its
own key, HKDF-SHA256(key, salt none, info=context) as Vault's ``hkdf_sha256`` KDF does, so one
tenant's context cannot decrypt another's ciphertext.

All of the cryptography is the ``cryptography`` package's (AESGCM, ChaCha20Poly1305, HKDF, ECDSA,
Ed25519); this module only keeps versions and formats. Key material never appears in ``repr()``,
in an error or in a log line: errors carry Vault's fixed messages only.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from garrison.vault.durations import rfc3339

__all__ = [
    "AEAD_TYPES",
    "KEY_TYPES",
    "SIGNING_TYPES",
    "TransitError",
    "TransitKey",
    "b64decode",
    "format_ciphertext",
    "parse_ciphertext",
]

AEAD_TYPES = ("aes256-gcm96", "chacha20-poly1305")
SIGNING_TYPES = ("ecdsa-p256", "ed25519")
KEY_TYPES = AEAD_TYPES + SIGNING_TYPES
NONCE_BYTES, TAG_BYTES = 12, 16
PREFIX = "vault:"
AUTH_FAILED = {
    "aes256-gcm96": "cipher: message authentication failed",  # Go's crypto/cipher wording, as Vault
    "chacha20-poly1305": "chacha20poly1305: message authentication failed",
}
MISSING_CONTEXT = (
    "missing 'context' for key derivation; the key was created using a derived key, which means "
    "additional, per-request information must be included in order to perform operations with the key"
)
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class TransitError(Exception):
    """A refusal with Vault's message (always a user error: HTTP 400); never holds key material."""


def b64decode(text: str) -> bytes:
    """Strict standard base64, as Go's ``StdEncoding`` (padding required), with Go's error message."""
    if not _B64.fullmatch(text) or len(text) % 4:
        bad = next(
            (i for i, ch in enumerate(text) if not (ch.isascii() and (ch.isalnum() or ch in "+/="))), None
        )
        position = bad if bad is not None else len(text) - len(text) % 4
        raise TransitError(f"illegal base64 data at input byte {position}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise TransitError("illegal base64 data at input byte 0") from None


def format_ciphertext(version: int, blob: bytes) -> str:
    return f"{PREFIX}v{version}:{base64.b64encode(blob).decode()}"


def parse_ciphertext(text: str, what: str = "ciphertext") -> tuple[int, str]:
    """``vault:v<N>:<base64>`` -> (N, the base64 part, not decoded yet: Vault checks the version first).
    ``what`` names it in errors: a ciphertext, or a signature (the same format)."""
    if not text.startswith(PREFIX):
        raise TransitError(f"invalid {what}: no prefix")
    fields = text[len(PREFIX) :].split(":", 1)
    if len(fields) != 2:
        raise TransitError(f"invalid {what}: wrong number of fields")
    version_text, payload = fields
    digits = version_text[1:]
    if not version_text.startswith("v") or not digits.isascii() or not digits.isdigit() or len(digits) > 9:
        raise TransitError(f"invalid {what}: version number could not be decoded")
    return int(digits), payload


@dataclass
class KeyVersion:
    material: bytes = field(repr=False)  # AEAD: the raw key; signing: the private key, PKCS#8 DER
    created: float

    def __repr__(self) -> str:
        return f"KeyVersion(created={self.created})"


@dataclass
class TransitKey:
    name: str
    type: str
    derived: bool = False
    deletion_allowed: bool = False
    min_decryption_version: int = 1
    min_encryption_version: int = 0
    versions: dict[int, KeyVersion] = field(default_factory=dict, repr=False)
    _ciphers: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"TransitKey(name={self.name!r}, type={self.type!r}, latest_version={self.latest_version})"

    # -- life cycle ------------------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, key_type: str, derived: bool, now: float) -> TransitKey:
        key = cls(name=name, type=key_type, derived=derived)
        key.add_version(now)
        return key

    @property
    def latest_version(self) -> int:
        return max(self.versions)

    def add_version(self, now: float) -> None:
        self.versions[(max(self.versions) if self.versions else 0) + 1] = KeyVersion(
            _new_material(self.type), now
        )

    def to_json(self) -> dict[str, Any]:
        """What the barrier stores (encrypted at rest by the barrier, never written elsewhere)."""
        return {
            "name": self.name,
            "type": self.type,
            "derived": self.derived,
            "deletion_allowed": self.deletion_allowed,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "versions": {
                str(n): {"key": base64.b64encode(v.material).decode(), "created": v.created}
                for n, v in self.versions.items()
            },
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TransitKey:
        versions = {
            int(n): KeyVersion(base64.b64decode(v["key"]), float(v["created"]))
            for n, v in raw["versions"].items()
        }
        return cls(
            name=raw["name"],
            type=raw["type"],
            derived=bool(raw["derived"]),
            deletion_allowed=bool(raw["deletion_allowed"]),
            min_decryption_version=int(raw["min_decryption_version"]),
            min_encryption_version=int(raw["min_encryption_version"]),
            versions=versions,
        )

    def describe(self) -> dict[str, Any]:
        """The key read's ``data`` as Vault answers it (key versions below min_decryption_version hidden)."""
        shown = {n: v for n, v in sorted(self.versions.items()) if n >= self.min_decryption_version}
        keys: dict[str, Any]
        if self.type in AEAD_TYPES:
            keys = {str(n): int(v.created) for n, v in shown.items()}
        else:
            keys = {str(n): self._public(v) for n, v in shown.items()}
        data: dict[str, Any] = {
            "allow_plaintext_backup": False,
            "auto_rotate_period": 0,
            "deletion_allowed": self.deletion_allowed,
            "derived": self.derived,
            "exportable": False,
            "imported_key": False,
            "keys": keys,
            "latest_version": self.latest_version,
            "min_available_version": 0,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "name": self.name,
            "supports_decryption": self.type in AEAD_TYPES,
            "supports_derivation": self.type != "ecdsa-p256",
            "supports_encryption": self.type in AEAD_TYPES,
            "supports_signing": self.type in SIGNING_TYPES,
            "type": self.type,
        }
        if self.derived:
            data |= {"convergent_encryption": False, "kdf": "hkdf_sha256"}
        return dict(sorted(data.items()))

    def _public(self, version: KeyVersion) -> dict[str, Any]:
        private = serialization.load_der_private_key(version.material, None)
        public = private.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            name, text = "ed25519", base64.b64encode(raw).decode()
        else:
            pem = public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            name, text = "P-256", pem.decode()
        return {
            "certificate_chain": "",
            "creation_time": rfc3339(version.created),
            "name": name,
            "public_key": text,
        }

    # -- versions and derivation -----------------------------------------------------------------------

    def encryption_version(self, requested: int) -> int:
        if requested == 0:
            return self.latest_version
        if requested > self.latest_version:
            raise TransitError("requested version for encryption is higher than the latest key version")
        if requested < self.min_encryption_version:
            raise TransitError(
                "requested version for encryption is less than the minimum encryption key version"
            )
        if requested < self.min_decryption_version or requested not in self.versions:
            raise TransitError("no such key version")
        return requested

    def check_decryption_version(self, version: int, what: str = "ciphertext") -> None:
        if version < self.min_decryption_version:
            raise TransitError("ciphertext or signature version is disallowed by policy (too old)")
        if version > self.latest_version or version not in self.versions:
            raise TransitError(f"invalid {what}: version is too new")

    def _cipher(self, version: int, context: bytes) -> AESGCM | ChaCha20Poly1305:
        if not self.derived:
            cipher = self._ciphers.get(version)
            if cipher is None:
                cipher = self._ciphers[version] = _aead(self.type, self.versions[version].material)
            return cipher
        if not context:
            raise TransitError(MISSING_CONTEXT)
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context)
        return _aead(self.type, hkdf.derive(self.versions[version].material))

    # -- operations ------------------------------------------------------------------------------------

    def encrypt(self, plaintext: bytes, context: bytes, version: int = 0) -> tuple[str, int]:
        if self.type not in AEAD_TYPES:
            raise TransitError(f"message encryption not supported for key type {self.type}")
        number = self.encryption_version(version)
        cipher = self._cipher(number, context)
        nonce = os.urandom(NONCE_BYTES)
        return format_ciphertext(number, nonce + cipher.encrypt(nonce, plaintext, None)), number

    def decrypt(self, ciphertext: str, context: bytes) -> bytes:
        if self.type not in AEAD_TYPES:
            raise TransitError(f"message decryption not supported for key type {self.type}")
        version, payload = parse_ciphertext(ciphertext)
        self.check_decryption_version(version)
        try:
            blob = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise TransitError("invalid ciphertext: could not decode base64") from None
        cipher = self._cipher(version, context)
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise TransitError("invalid ciphertext length")
        try:
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
        except InvalidTag:
            raise TransitError(AUTH_FAILED[self.type]) from None

    def sign(self, message: bytes, version: int = 0) -> tuple[str, int]:
        if self.type not in SIGNING_TYPES:
            raise TransitError(f"key type {self.type} does not support signing")
        number = self.encryption_version(version)
        private = serialization.load_der_private_key(self.versions[number].material, None)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            signature = private.sign(message)
        else:
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            signature = private.sign(message, ec.ECDSA(hashes.SHA256()))  # ASN.1 DER, Vault's default
        return format_ciphertext(number, signature), number

    def verify(self, message: bytes, signature: str) -> bool:
        if self.type not in SIGNING_TYPES:
            raise TransitError(f"key type {self.type} does not support verification")
        version, payload = parse_ciphertext(signature, "signature")
        self.check_decryption_version(version, "signature")
        try:
            raw = base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise TransitError("invalid base64 signature value") from None
        public = serialization.load_der_private_key(self.versions[version].material, None).public_key()
        try:
            if isinstance(public, ed25519.Ed25519PublicKey):
                public.verify(raw, message)
            else:
                assert isinstance(public, ec.EllipticCurvePublicKey)
                public.verify(raw, message, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True


def _aead(key_type: str, material: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(material) if key_type == "aes256-gcm96" else ChaCha20Poly1305(material)


def _new_material(key_type: str) -> bytes:
    if key_type in AEAD_TYPES:
        return os.urandom(32)
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    private = (
        ed25519.Ed25519PrivateKey.generate()
        if key_type == "ed25519"
        else ec.generate_private_key(ec.SECP256R1())
    )
    return private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
