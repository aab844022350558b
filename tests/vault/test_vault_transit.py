"""The transit engine driven by hvac (``client.secrets.transit``) against a real `garrison vault` over TLS,
as a service uses Vault's: keys, encryption, rotation and its floors, batches, derived keys, refusals of
foreign and tampered ciphertexts, policies, signing, the audit file, and keys surviving a restart."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import hvac
import hvac.exceptions
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


class Vault:
    def __init__(self, process: VaultProcess, keys: list[str], root: str) -> None:
        self.process, self.keys, self.root = process, keys, root

    def client(self, token: str | None = None) -> hvac.Client:
        return self.process.client(token if token is not None else self.root)

    def transit(self, token: str | None = None) -> Any:
        return self.client(token).secrets.transit

    def post(self, path: str, body: dict[str, Any], token: str | None = None) -> httpx.Response:
        with httpx.Client(
            verify=ssl.create_default_context(cafile=self.process.ca_file), timeout=15
        ) as client:
            return client.post(
                self.process.url + "/v1/" + path,
                headers={"X-Vault-Token": token if token is not None else self.root},
                json=body,
            )

    def token(self, name: str, policy: str) -> str:
        root = self.client()
        root.sys.create_or_update_acl_policy(name, policy)
        return str(root.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"])


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    directory = tmp_path_factory.mktemp("transit")
    process = VaultProcess(directory, vault_config(directory)).start()
    try:
        keys, root = init_and_unseal(process)
        yield Vault(process, keys, root)
    finally:
        process.stop()


def refused(call: Any, *args: Any, **kwargs: Any) -> hvac.exceptions.VaultError:
    with pytest.raises(hvac.exceptions.VaultError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_the_whole_flow(vault: Vault) -> None:
    transit = vault.transit()
    created = transit.create_key("flow")
    assert created["data"]["type"] == "aes256-gcm96" and created["mount_type"] == "transit"
    key = transit.read_key("flow")["data"]
    assert key["latest_version"] == 1 and list(key["keys"]) == ["1"]
    assert key["min_decryption_version"] == 1 and key["min_encryption_version"] == 0
    assert key["deletion_allowed"] is False and key["derived"] is False and key["exportable"] is False
    assert key["supports_encryption"] and not key["supports_signing"]
    assert "flow" in transit.list_keys()["data"]["keys"]

    first = transit.encrypt_data("flow", b64("card 4111"))["data"]
    assert first["key_version"] == 1 and first["ciphertext"].startswith("vault:v1:")
    assert transit.decrypt_data("flow", first["ciphertext"])["data"]["plaintext"] == b64("card 4111")
    again = transit.encrypt_data("flow", b64("card 4111"))["data"]["ciphertext"]
    assert again != first["ciphertext"]  # a fresh nonce each time

    rotated = transit.rotate_key("flow")["data"]
    assert rotated["latest_version"] == 2 and sorted(rotated["keys"]) == ["1", "2"]
    assert transit.encrypt_data("flow", b64("x"))["data"]["key_version"] == 2
    assert transit.encrypt_data("flow", b64("x"), key_version=1)["data"]["ciphertext"].startswith("vault:v1:")
    rewrapped = transit.rewrap_data("flow", first["ciphertext"])["data"]
    assert rewrapped["key_version"] == 2 and rewrapped["ciphertext"].startswith("vault:v2:")
    assert transit.decrypt_data("flow", rewrapped["ciphertext"])["data"]["plaintext"] == b64("card 4111")

    datakey = transit.generate_data_key("flow", key_type="plaintext")["data"]
    assert len(base64.b64decode(datakey["plaintext"])) == 32 and datakey["key_version"] == 2
    assert transit.decrypt_data("flow", datakey["ciphertext"])["data"]["plaintext"] == datakey["plaintext"]
    wrapped = transit.generate_data_key("flow", key_type="wrapped", bits=512)["data"]
    assert "plaintext" not in wrapped
    assert (
        len(base64.b64decode(transit.decrypt_data("flow", wrapped["ciphertext"])["data"]["plaintext"])) == 64
    )
    bad_bits = vault.post("transit/datakey/wrapped/flow", {"bits": 100})  # hvac checks bits itself: raw
    assert bad_bits.status_code == 400 and bad_bits.json() == {"errors": ["invalid bit length"]}

    random = transit.generate_random_bytes(n_bytes=16, output_format="hex")["data"]["random_bytes"]
    assert len(bytes.fromhex(random)) == 16
    digest = transit.hash_data(b64("hello"))["data"]["sum"]
    assert digest == hashlib.sha256(b"hello").hexdigest()
    sha512 = transit.hash_data(b64("hello"), algorithm="sha2-512", output_format="base64")["data"]["sum"]
    assert base64.b64decode(sha512) == hashlib.sha512(b"hello").digest()

    not_allowed = refused(transit.delete_key, "flow")
    assert isinstance(not_allowed, hvac.exceptions.InvalidRequest)
    assert not_allowed.errors == ["error deleting policy flow: deletion is not allowed for this key"]
    assert transit.update_key_configuration("flow", deletion_allowed=True)["data"]["deletion_allowed"] is True
    transit.delete_key("flow")
    assert isinstance(refused(transit.read_key, "flow"), hvac.exceptions.InvalidPath)
    assert refused(transit.decrypt_data, "flow", first["ciphertext"]).errors == ["encryption key not found"]


def test_chacha20_poly1305_keys_and_unknown_types(vault: Vault) -> None:
    transit = vault.transit()
    assert transit.create_key("chacha", key_type="chacha20-poly1305")["data"]["type"] == "chacha20-poly1305"
    ciphertext = transit.encrypt_data("chacha", b64("over chacha"))["data"]["ciphertext"]
    assert transit.decrypt_data("chacha", ciphertext)["data"]["plaintext"] == b64("over chacha")
    odd = vault.post("transit/keys/odd", {"type": "rot13"})  # hvac checks the type itself: raw
    assert odd.status_code == 400 and odd.json() == {"errors": ["unknown key type rot13"]}
    exportable = refused(transit.create_key, "exp", exportable=True)
    assert exportable.errors == ["exportable keys are not supported by this vault"]
    assert isinstance(refused(transit.read_key, "exp"), hvac.exceptions.InvalidPath)  # nothing was made
    upsert = vault.post("transit/encrypt/signer-upsert", {"plaintext": b64("x"), "type": "ed25519"})
    assert upsert.status_code == 400 and upsert.json() == {"errors": ["unknown key type ed25519"]}
    derived = refused(transit.create_key, "derived-signer", key_type="ed25519", derived=True)
    assert derived.errors == ["key derivation is not supported for keys of type ed25519 by this vault"]
    missing = vault.post("transit/rewrap/chacha", {})
    assert missing.status_code == 400 and missing.json() == {"errors": ["missing ciphertext to decrypt"]}


def test_min_decryption_version_refuses_old_ciphertexts(vault: Vault) -> None:
    transit = vault.transit()
    transit.create_key("floors")
    old = transit.encrypt_data("floors", b64("v1 secret"))["data"]["ciphertext"]
    transit.rotate_key("floors")
    transit.rotate_key("floors")
    newer = transit.encrypt_data("floors", b64("v3 secret"))["data"]["ciphertext"]
    config = transit.update_key_configuration("floors", min_decryption_version=3)["data"]
    assert config["min_decryption_version"] == 3 and list(config["keys"]) == ["3"]  # older ones hidden
    too_old = refused(transit.decrypt_data, "floors", old)
    assert too_old.errors == ["ciphertext or signature version is disallowed by policy (too old)"]
    assert refused(transit.rewrap_data, "floors", old).errors == too_old.errors
    assert transit.decrypt_data("floors", newer)["data"]["plaintext"] == b64("v3 secret")
    assert refused(transit.encrypt_data, "floors", b64("x"), key_version=1).errors == ["no such key version"]
    beyond = refused(transit.update_key_configuration, "floors", min_decryption_version=9)
    assert beyond.errors == ["cannot set min decryption version of 9, latest key version is 3"]
    transit.update_key_configuration("floors", min_encryption_version=3)
    crossed = vault.post(
        "transit/keys/floors/config", {"min_decryption_version": 3, "min_encryption_version": 2}
    )
    assert crossed.status_code == 400  # hvac checks this pair itself (more strictly): raw
    assert "must be greater than or equal to min decryption version" in crossed.json()["errors"][0]
    # Lowering the floor again makes the old version usable again: retiring is a setting, not a deletion.
    transit.update_key_configuration("floors", min_decryption_version=1, min_encryption_version=0)
    assert transit.decrypt_data("floors", old)["data"]["plaintext"] == b64("v1 secret")


def test_a_batch_with_one_bad_item(vault: Vault) -> None:
    transit = vault.transit()
    transit.create_key("batch")
    items = [{"plaintext": b64("one"), "reference": "a"}, {"plaintext": "not base64!", "reference": "b"}]
    failed = refused(transit.encrypt_data, "batch", batch_input=items)
    assert isinstance(failed, hvac.exceptions.InvalidRequest)  # 400, and the body holds every item
    results = failed.json["data"]["batch_results"]
    assert results[0]["reference"] == "a" and results[0]["ciphertext"].startswith("vault:v1:")
    assert results[1] == {"error": "illegal base64 data at input byte 3", "reference": "b"}

    good = transit.encrypt_data("batch", batch_input=[{"plaintext": b64("two"), "reference": "c"}])
    ciphertext = good["data"]["batch_results"][0]["ciphertext"]
    decrypt = [
        {"ciphertext": ciphertext, "reference": "c"},
        {"ciphertext": "vault:v1:AAAA", "reference": "d"},
    ]
    failed = refused(transit.decrypt_data, "batch", batch_input=decrypt)
    assert failed.json["data"]["batch_results"] == [
        {"plaintext": b64("two"), "reference": "c"},
        {"plaintext": "", "error": "invalid ciphertext length", "reference": "d"},
    ]
    partial = vault.post(
        "transit/encrypt/batch", {"batch_input": items, "partial_failure_response_code": 207}
    )
    assert partial.status_code == 207 and len(partial.json()["data"]["batch_results"]) == 2
    rewrap = transit.rewrap_data("batch", "", batch_input=decrypt)["data"][
        "batch_results"
    ]  # rewrap: 200 as Vault
    assert rewrap[0]["key_version"] == 1 and rewrap[1]["error"] == "invalid ciphertext length"
    malformed = refused(transit.encrypt_data, "batch", batch_input=[{"plaintext": b64("x")}, {}])
    assert malformed.errors == ["failed to parse batch input: '[1].plaintext' missing plaintext to encrypt"]


def test_derived_keys_need_a_context(vault: Vault) -> None:
    transit = vault.transit()
    key = transit.create_key("tenants", derived=True)["data"]
    assert key["derived"] is True and key["kdf"] == "hkdf_sha256"
    missing = refused(transit.encrypt_data, "tenants", b64("x"))
    assert isinstance(missing, hvac.exceptions.InvalidRequest)
    assert missing.errors[0].startswith("missing 'context' for key derivation")
    alice = transit.encrypt_data("tenants", b64("alice's"), context=b64("alice"))["data"]["ciphertext"]
    assert transit.decrypt_data("tenants", alice, context=b64("alice"))["data"]["plaintext"] == b64("alice's")
    assert refused(transit.decrypt_data, "tenants", alice, context=b64("bob")).errors == [
        "cipher: message authentication failed"
    ]
    assert refused(transit.decrypt_data, "tenants", alice).errors[0].startswith("missing 'context'")
    mixed = [{"plaintext": b64("a"), "context": b64("alice")}, {"plaintext": b64("b")}]
    assert refused(transit.encrypt_data, "tenants", batch_input=mixed).errors == [
        "context should be set either in all the request blocks or in none"
    ]
    # Vault's upsert: encrypting with a new key and a context makes a derived key.
    transit.encrypt_data("tenants-upsert", b64("x"), context=b64("c"))
    assert transit.read_key("tenants-upsert")["data"]["derived"] is True


def test_one_keys_ciphertext_is_refused_by_another_and_tampering_is_caught(vault: Vault) -> None:
    transit = vault.transit()
    transit.create_key("alpha")
    transit.create_key("beta")
    ciphertext = transit.encrypt_data("alpha", b64("alpha only"))["data"]["ciphertext"]
    assert refused(transit.decrypt_data, "beta", ciphertext).errors == [
        "cipher: message authentication failed"
    ]
    blob = bytearray(base64.b64decode(ciphertext.split(":", 2)[2]))
    blob[-1] ^= 1
    tampered = "vault:v1:" + b64(bytes(blob))
    assert refused(transit.decrypt_data, "alpha", tampered).errors == [
        "cipher: message authentication failed"
    ]
    assert refused(transit.decrypt_data, "alpha", "vault:v7:" + ciphertext.split(":", 2)[2]).errors == [
        "invalid ciphertext: version is too new"
    ]
    assert refused(transit.decrypt_data, "alpha", ciphertext[len("vault:") :]).errors == [
        "invalid ciphertext: no prefix"
    ]
    assert transit.decrypt_data("alpha", ciphertext)["data"]["plaintext"] == b64("alpha only")


def test_a_token_for_encrypting_with_orders_does_nothing_else(vault: Vault) -> None:
    transit = vault.transit()
    transit.create_key("orders")
    transit.create_key("payments")
    token = vault.token("orders-encrypt", 'path "transit/encrypt/orders" { capabilities = ["update"] }')
    limited = vault.transit(token)
    ciphertext = limited.encrypt_data("orders", b64("order 17"))["data"]["ciphertext"]
    for call, args in [
        (limited.decrypt_data, ("orders", ciphertext)),
        (limited.encrypt_data, ("payments", b64("x"))),
        (limited.encrypt_data, ("payments", "not base64!")),  # refused before the body is read
        (limited.read_key, ("orders",)),
        (limited.rotate_key, ("orders",)),
        (limited.rewrap_data, ("orders", ciphertext)),
        (limited.generate_data_key, ("orders", "plaintext")),
        (limited.list_keys, ()),
    ]:
        assert isinstance(refused(call, *args), hvac.exceptions.Forbidden), call
    # Encrypting with a key that does not exist would make it: that takes `create`, not `update`.
    creator = vault.token("fresh-update", 'path "transit/encrypt/fresh" { capabilities = ["update"] }')
    assert isinstance(
        refused(vault.transit(creator).encrypt_data, "fresh", b64("x")), hvac.exceptions.Forbidden
    )
    assert isinstance(refused(transit.read_key, "fresh"), hvac.exceptions.InvalidPath)
    maker = vault.token("fresh-create", 'path "transit/encrypt/fresh" { capabilities = ["create"] }')
    assert vault.transit(maker).encrypt_data("fresh", b64("x"))["data"]["key_version"] == 1
    assert transit.decrypt_data("orders", ciphertext)["data"]["plaintext"] == b64("order 17")


def test_signing_keys_sign_and_verify(vault: Vault) -> None:
    transit = vault.transit()
    message = b"ship order 17"
    for key_type in ("ed25519", "ecdsa-p256"):
        name = f"signer-{key_type}"
        key = transit.create_key(name, key_type=key_type)["data"]
        assert key["supports_signing"] and not key["supports_encryption"]
        signed = transit.sign_data(name, b64(message))["data"]
        assert signed["key_version"] == 1 and signed["signature"].startswith("vault:v1:")
        assert transit.verify_signed_data(name, b64(message), signature=signed["signature"])["data"]["valid"]
        assert not transit.verify_signed_data(name, b64(b"other"), signature=signed["signature"])["data"][
            "valid"
        ]
        malformed = refused(transit.verify_signed_data, name, b64(message), signature="garbage")
        assert malformed.errors == ["invalid signature: no prefix"]
        raw = base64.b64decode(signed["signature"].split(":", 2)[2])
        public = key["keys"]["1"]["public_key"]
        # The published public key verifies the signature outside the vault (the formats are Vault's).
        if key_type == "ed25519":
            ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public)).verify(raw, message)
        else:
            loaded = serialization.load_pem_public_key(public.encode())
            assert isinstance(loaded, ec.EllipticCurvePublicKey)
            loaded.verify(raw, message, ec.ECDSA(hashes.SHA256()))
        assert "not supported for key type" in refused(transit.encrypt_data, name, b64("x")).errors[0]
    transit.create_key("not-a-signer")
    assert refused(transit.sign_data, "not-a-signer", b64(message)).errors == [
        "key type aes256-gcm96 does not support signing"
    ]


def test_the_audit_file_holds_no_plaintext_ciphertext_or_context(vault: Vault) -> None:
    transit = vault.transit()
    secret, context = "audit-canary-transit-51c2", "audit-context-9d"
    transit.create_key("audited", derived=True)
    ciphertext = transit.encrypt_data("audited", b64(secret), context=b64(context))["data"]["ciphertext"]
    transit.decrypt_data("audited", ciphertext, context=b64(context))
    transit.encrypt_data("audited", batch_input=[{"plaintext": b64(secret), "context": b64(context)}])
    text = vault.process.audit_path.read_text()
    for clear in (secret, b64(secret), context, b64(context), ciphertext, ciphertext.split(":", 2)[2]):
        assert clear not in text, clear
    entries = [json.loads(line) for line in text.splitlines()]
    encrypts = [
        e for e in entries if e["request"]["path"] == "transit/encrypt/audited" and e["type"] == "response"
    ]
    assert encrypts
    data = encrypts[0]["request"]["data"]
    assert data["plaintext"].startswith("hmac-sha256:") and data["context"].startswith("hmac-sha256:")
    assert encrypts[0]["response"]["data"]["ciphertext"].startswith("hmac-sha256:")
    batch = encrypts[-1]["response"]["data"]["batch_results"][0]["ciphertext"]
    assert batch.startswith("hmac-sha256:")
    assert secret not in vault.process.stderr_text()


def test_key_material_is_encrypted_at_rest_and_survives_a_restart(vault: Vault) -> None:
    transit = vault.transit()
    transit.create_key("durable")
    ciphertext = transit.encrypt_data("durable", b64("kept"))["data"]["ciphertext"]
    database = vault.process.state_dir / "garrison.db"
    with sqlite3.connect(database) as connection:
        (stored,) = connection.execute(
            "SELECT value FROM vault_entries WHERE path = 'transit/policy/durable'"
        ).fetchone()
    assert b"aes256-gcm96" not in stored and b"versions" not in stored  # sealed by the barrier
    vault.process.stop()
    vault.process.start()
    client = vault.process.client()
    for key in vault.keys[:3]:
        client.sys.submit_unseal_key(key)
    assert vault.transit().decrypt_data("durable", ciphertext)["data"]["plaintext"] == b64("kept")
    assert vault.transit().read_key("durable")["data"]["latest_version"] == 1
