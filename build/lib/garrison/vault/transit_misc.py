"""``transit/random`` and ``transit/hash``: random bytes and digests, keyless, as Vault answers them.

Both are thin: the operating system's CSPRNG (``os.urandom``, which is what every ``source`` Vault
offers amounts to here, with no HSM behind the seal) and ``hashlib``.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

from garrison.vault.transit_keys import TransitError, b64decode
from garrison.vault.transit_params import as_int, as_str

__all__ = ["hash_data", "random_bytes"]

MAX_RANDOM = 128 * 1024  # Vault refuses 131072 bytes or more
SOURCES = ("platform", "seal", "all")
HASHES = {
    "sha2-224": "sha224",
    "sha2-256": "sha256",
    "sha2-384": "sha384",
    "sha2-512": "sha512",
    "sha3-224": "sha3_224",
    "sha3-256": "sha3_256",
    "sha3-384": "sha3_384",
    "sha3-512": "sha3_512",
}


def _encode(raw: bytes, output: str, quoted: bool) -> str:
    if output == "hex":
        return raw.hex()
    if output == "base64":
        return base64.b64encode(raw).decode()
    shown = f'"{output}"' if quoted else output
    raise TransitError(f'unsupported encoding format {shown}; must be "hex" or "base64"')


def random_bytes(body: dict[str, Any], rest: list[str]) -> dict[str, Any]:
    """``random``, ``random/<bytes>``, ``random/<source>``, ``random/<source>/<bytes>``."""
    if rest and rest[0] in SOURCES:
        rest = rest[1:]
    if len(rest) > 1:
        raise TransitError(f"unsupported random source {rest[0]}")
    if rest:
        if not rest[0].isdigit() or len(rest[0]) > 9:
            raise TransitError(f'error parsing url-set byte count: parsing "{rest[0][:32]}": invalid syntax')
        count = int(rest[0])
    else:
        count = as_int(body, "bytes", 32)
    if count < 1:
        raise TransitError("'bytes' cannot be less than 1")
    if count >= MAX_RANDOM:
        raise TransitError(f"'bytes' should be less than {MAX_RANDOM}")
    output = as_str(body, "format") or "base64"
    return {"random_bytes": _encode(os.urandom(count), output, quoted=True)}


def hash_data(body: dict[str, Any], algorithm: str | None) -> dict[str, Any]:
    """``hash`` and ``hash/<algorithm>``: the digest of the base64 ``input``, hex by default."""
    name = algorithm or as_str(body, "algorithm") or "sha2-256"
    output = as_str(body, "format") or "hex"
    if output not in ("hex", "base64"):
        _encode(b"", output, quoted=False)
    text = as_str(body, "input")
    if not text:
        raise TransitError("input missing")
    try:
        data = b64decode(text)
    except TransitError as exc:
        raise TransitError(f"unable to decode input as base64: {exc}") from None
    if name not in HASHES:
        raise TransitError(f"unsupported algorithm {name}")
    return {"sum": _encode(hashlib.new(HASHES[name], data).digest(), output, quoted=False)}
