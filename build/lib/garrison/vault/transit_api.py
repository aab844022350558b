"""The transit engine's HTTP paths at ``transit/``, as Vault routes them, with the ACL check of each.

Capabilities, as Vault's: reading a key needs ``read``, listing ``transit/keys/`` needs ``list``,
deleting ``delete``, and every other write (keys, rotate, config, decrypt, rewrap, datakey, sign,
verify, random, hash) ``update``. ``encrypt/<name>`` has Vault's existence check: encrypting with a key
that does not exist creates it (Vault's "upsert"), which needs ``create``; with an existing key,
``update``. So a token holding only ``update`` on ``transit/encrypt/orders`` encrypts with ``orders`` and
can neither decrypt, nor use or make another key.

Batches (``batch_input``) answer item by item, in order, each with its ``reference``; an item that
fails carries Vault's ``error`` text and makes the answer 400 (encrypt and decrypt) with the whole
envelope, unless ``partial_failure_response_code`` says otherwise and some item succeeded.
Parameters Vault offers and this vault does not (exportable keys, convergent encryption, nonces,
associated data, plaintext backups, auto-rotation) are refused rather than ignored.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from garrison.vault.answers import Answer, Call, VaultError, envelope, no_content
from garrison.vault.policy import Acl
from garrison.vault.transit import KEY_NAME, Transit
from garrison.vault.transit_batch import batch_answer, decrypt_items, encrypt_items, rewrap_items
from garrison.vault.transit_keys import AEAD_TYPES, TransitError, TransitKey, b64decode
from garrison.vault.transit_misc import hash_data, random_bytes
from garrison.vault.transit_params import as_bool, as_int, as_str, refuse_unsupported

__all__ = ["MOUNT", "transit_api"]

MOUNT = "transit"
MOUNT_TYPE = "transit"
UNSUPPORTED_PATH = "1 error occurred:\n\t* unsupported path\n\n"
UNSUPPORTED_OPERATION = "1 error occurred:\n\t* unsupported operation\n\n"
DATAKEY_BITS = (128, 256, 512)


async def transit_api(transit: Transit, call: Call, acl: Acl) -> Answer:
    parts = call.path.split("/")[1:]
    try:
        return await _route(transit, call, acl, parts)
    except TransitError as exc:
        raise VaultError(400, str(exc)) from None


async def _route(transit: Transit, call: Call, acl: Acl, parts: list[str]) -> Answer:
    op = call.operation
    section = parts[0] if parts else ""
    if section == "encrypt" and len(parts) == 2 and KEY_NAME.fullmatch(parts[1]):
        if op != "create-or-update":
            _require(acl, call.path, _capability(op))
            raise VaultError(405, UNSUPPORTED_OPERATION)
        return await _encrypt(transit, call, acl, parts[1])
    _require(acl, call.path + ("/" if op == "list" else ""), _capability(op))
    if section == "keys":
        return await _keys(transit, call, parts[1:])
    named = len(parts) == 2 and KEY_NAME.fullmatch(parts[1])
    if section in ("decrypt", "rewrap", "sign", "verify") and named:
        _write_only(call)
        return await _use(transit, call, section, parts[1])
    if section == "sign" and len(parts) == 3 and KEY_NAME.fullmatch(parts[1]):
        _write_only(call)
        return await _use(transit, call, section, parts[1], parts[2])
    if section == "datakey" and len(parts) == 3 and KEY_NAME.fullmatch(parts[2]):
        _write_only(call)
        return await _datakey(transit, call, parts[1], parts[2])
    if section == "random" and len(parts) <= 3:
        _write_only(call)
        return _ok(call, random_bytes(call.body, parts[1:]))
    if section == "hash" and len(parts) <= 2:
        _write_only(call)
        return _ok(call, hash_data(call.body, parts[1] if len(parts) == 2 else None))
    raise VaultError(404, UNSUPPORTED_PATH)


def _capability(op: str) -> str:
    return {"read": "read", "list": "list", "delete": "delete", "patch": "patch"}.get(op, "update")


def _require(acl: Acl, path: str, capability: str) -> None:
    if not acl.allows(path, capability):
        raise VaultError(403, "permission denied")


def _write_only(call: Call) -> None:
    if call.operation != "create-or-update":
        raise VaultError(405, UNSUPPORTED_OPERATION)


def _ok(call: Call, data: dict[str, Any], warnings: list[str] | None = None) -> Answer:
    payload = envelope(call.request_id, data, warnings=warnings or None, mount_type=MOUNT_TYPE)
    return Answer(200, payload, payload)


# -- keys -----------------------------------------------------------------------------------------------


async def _keys(transit: Transit, call: Call, rest: list[str]) -> Answer:
    op = call.operation
    if not rest or rest == [""]:
        if op != "list":
            raise VaultError(405, UNSUPPORTED_OPERATION)
        names = await transit.names()
        if not names:
            raise VaultError(404)  # Vault: an empty listing is a 404 with no errors
        return _ok(call, {"keys": names})
    if not KEY_NAME.fullmatch(rest[0]) or len(rest) > 2:
        raise VaultError(404, UNSUPPORTED_PATH)
    name = rest[0]
    if len(rest) == 2:
        _write_only(call)
        if rest[1] == "rotate":
            return _ok(call, (await transit.rotate(name)).describe())
        if rest[1] == "config":
            return await _config(transit, call, name)
        raise VaultError(404, UNSUPPORTED_PATH)
    if op == "read":
        key = await transit.get(name)
        if key is None:
            raise VaultError(404)
        return _ok(call, key.describe())
    if op == "delete":
        await transit.delete(name)
        return no_content()
    if op != "create-or-update":
        raise VaultError(405, UNSUPPORTED_OPERATION)
    body = call.body
    derived = as_bool(body, "derived")
    if as_bool(body, "convergent_encryption"):
        if not derived:
            raise TransitError("convergent encryption requires derivation to be enabled")
        raise TransitError("convergent encryption is not supported by this vault")
    refuse_unsupported(body)
    key_type = as_str(body, "type") or "aes256-gcm96"
    key, _ = await transit.create(name, key_type, derived)
    return _ok(call, key.describe())


async def _config(transit: Transit, call: Call, name: str) -> Answer:
    body = call.body
    refuse_unsupported(body)
    changes: dict[str, Any] = {}
    for field in ("min_decryption_version", "min_encryption_version"):
        if body.get(field) is not None:
            changes[field] = as_int(body, field)
    if body.get("deletion_allowed") is not None:
        changes["deletion_allowed"] = as_bool(body, "deletion_allowed")
    key, warnings = await transit.configure(name, changes)
    return _ok(call, key.describe(), warnings)


# -- encryption -----------------------------------------------------------------------------------------


async def _encrypt(transit: Transit, call: Call, acl: Acl, name: str) -> Answer:
    body = call.body
    key = await transit.get(name)
    # Vault's existence check, before anything of the body is read: a missing key is made by the first
    # encryption (the upsert), which the token must be allowed to `create`; an existing one takes `update`.
    _require(acl, call.path, "create" if key is None else "update")
    refuse_unsupported(body)
    items, batch = encrypt_items(body)
    if key is None:  # derived when the request carries a context, as Vault's upsert
        derived = bool(items[0].context) if items[0].error is None else False
        key_type = as_str(body, "type") or "aes256-gcm96"
        if key_type not in AEAD_TYPES:  # as Vault: encryption makes encryption keys only
            raise TransitError(f"unknown key type {key_type}")
        key, _ = await transit.create(name, key_type, derived)
    results = []
    for item in items:
        if item.error is not None:
            results.append(item.failed())
            continue
        try:
            ciphertext, version = key.encrypt(item.data, item.context, item.key_version)
        except TransitError as exc:
            results.append(item.failed(str(exc)))
            continue
        results.append({"ciphertext": ciphertext, "key_version": version, "reference": item.reference})
    return _answer(call, body, results, batch, "encrypt")


async def _use(transit: Transit, call: Call, section: str, name: str, hash_algorithm: str = "") -> Answer:
    body = call.body
    refuse_unsupported(body)
    key = await transit.get(name)
    if section in ("sign", "verify"):
        return await _sign_or_verify(call, section, key, hash_algorithm)
    items, batch = decrypt_items(body) if section == "decrypt" else rewrap_items(body)
    if key is None:
        raise TransitError("encryption key not found")
    results = []
    for item in items:
        if item.error is not None:
            results.append(item.failed())
            continue
        try:
            plaintext = key.decrypt(item.text, item.context)
            if section == "decrypt":
                results.append(
                    {"plaintext": base64.b64encode(plaintext).decode(), "reference": item.reference}
                )
                continue
            ciphertext, version = key.encrypt(plaintext, item.context, item.key_version)
        except TransitError as exc:
            results.append(item.failed(str(exc)))
            continue
        results.append({"ciphertext": ciphertext, "key_version": version, "reference": item.reference})
    return _answer(call, body, results, batch, section)


def _answer(
    call: Call, body: dict[str, Any], results: list[dict[str, Any]], batch: bool, section: str
) -> Answer:
    if not batch:
        only = results[0]
        if "error" in only:
            raise TransitError(only["error"])
        return _ok(call, {k: v for k, v in only.items() if k != "reference"})
    status, warnings = batch_answer(body, results, section)
    payload = envelope(call.request_id, {"batch_results": results}, warnings=warnings, mount_type=MOUNT_TYPE)
    return Answer(status, payload, payload)


async def _sign_or_verify(call: Call, section: str, key: TransitKey | None, hash_algorithm: str) -> Answer:
    body = call.body
    if body.get("batch_input") is not None:
        raise TransitError("batch_input is not supported for sign and verify by this vault")
    if as_bool(body, "prehashed"):
        raise TransitError("prehashed input is not supported by this vault")
    if key is None:
        raise TransitError("signing key not found")
    algorithm = hash_algorithm or as_str(body, "hash_algorithm") or "sha2-256"
    if key.type == "ecdsa-p256" and algorithm != "sha2-256":
        raise TransitError(f"hash algorithm {algorithm} is not supported by this vault (sha2-256 only)")
    if (as_str(body, "marshaling_algorithm") or "asn1") != "asn1":
        raise TransitError("only the asn1 marshaling algorithm is supported by this vault")
    message = _b64_field(body, "input")
    if section == "sign":
        signature, version = key.sign(message, as_int(body, "key_version"))
        return _ok(call, {"key_version": version, "signature": signature})
    signature = as_str(body, "signature")
    if not signature:
        raise TransitError("neither a 'signature' nor an 'hmac' were given to verify")
    # A malformed signature is a 400 (as Vault); a well-formed one that does not verify is `valid: false`.
    return _ok(call, {"valid": key.verify(message, signature)})


async def _datakey(transit: Transit, call: Call, kind: str, name: str) -> Answer:
    body = call.body
    refuse_unsupported(body)
    if kind not in ("plaintext", "wrapped"):
        raise TransitError("Invalid path, must be 'plaintext' or 'wrapped'")
    bits = as_int(body, "bits", 256)
    if bits not in DATAKEY_BITS:
        raise TransitError("invalid bit length")
    context = _b64_field(body, "context")
    key = await transit.get(name)
    if key is None:
        raise TransitError("encryption key not found")
    secret = os.urandom(bits // 8)
    ciphertext, version = key.encrypt(secret, context, as_int(body, "key_version"))
    data: dict[str, Any] = {"ciphertext": ciphertext, "key_version": version}
    if kind == "plaintext":
        data["plaintext"] = base64.b64encode(secret).decode()
    return _ok(call, data)


def _b64_field(body: dict[str, Any], name: str) -> bytes:
    return b64decode(as_str(body, name))
