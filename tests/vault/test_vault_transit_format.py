"""Transit without a server: the ``vault:vN:`` ciphertext format (checked against an independent
AES-GCM/HKDF computation), version floors, strict base64, key material kept out of repr, parameter
conversion and batch status rules."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from garrison.vault.transit_batch import batch_answer, decrypt_items, encrypt_items
from garrison.vault.transit_keys import (
    TransitError,
    TransitKey,
    b64decode,
    format_ciphertext,
    parse_ciphertext,
)
from garrison.vault.transit_misc import hash_data, random_bytes
from garrison.vault.transit_params import as_bool, as_int, refuse_unsupported

NOW = 1_800_000_000.0


def test_ciphertexts_are_vault_v_n_base64_of_nonce_ciphertext_and_tag() -> None:
    key = TransitKey.create("k", "aes256-gcm96", derived=False, now=NOW)
    ciphertext, version = key.encrypt(b"hello", b"")
    assert version == 1
    prefix, number, payload = ciphertext.split(":")
    assert (prefix, number) == ("vault", "v1")
    blob = base64.b64decode(payload, validate=True)
    assert len(blob) == 12 + len(b"hello") + 16
    # Decrypted here with the material itself: the format is nonce || ciphertext || tag, no AAD.
    material = key.versions[1].material
    assert AESGCM(material).decrypt(blob[:12], blob[12:], None) == b"hello"


def test_derived_keys_are_hkdf_sha256_of_the_key_with_the_context_as_info() -> None:
    key = TransitKey.create("k", "chacha20-poly1305", derived=True, now=NOW)
    ciphertext, _ = key.encrypt(b"tenant data", b"tenant-1")
    blob = base64.b64decode(ciphertext.split(":")[2])
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"tenant-1").derive(
        key.versions[1].material
    )
    assert ChaCha20Poly1305(derived).decrypt(blob[:12], blob[12:], None) == b"tenant data"
    with pytest.raises(TransitError, match="chacha20poly1305: message authentication failed"):
        key.decrypt(ciphertext, b"tenant-2")
    with pytest.raises(TransitError, match="missing 'context' for key derivation"):
        key.decrypt(ciphertext, b"")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("garbage", "invalid ciphertext: no prefix"),
        ("vault:v1", "invalid ciphertext: wrong number of fields"),
        ("vault:x1:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v-1:AAAA", "invalid ciphertext: version number could not be decoded"),
        ("vault:v\u0661:AAAA", "invalid ciphertext: version number could not be decoded"),  # not ASCII
        ("vault:v99999999999:AAAA", "invalid ciphertext: version number could not be decoded"),
    ],
)
def test_malformed_ciphertexts_are_refused_with_vaults_messages(text: str, message: str) -> None:
    with pytest.raises(TransitError) as caught:
        parse_ciphertext(text)
    assert str(caught.value) == message


def test_parse_and_format_round_trip() -> None:
    assert parse_ciphertext(format_ciphertext(12, b"\x00\xff")) == (12, "AP8=")


def test_decryption_checks_the_version_then_base64_then_length_then_the_tag() -> None:
    key = TransitKey.create("k", "aes256-gcm96", derived=False, now=NOW)
    key.add_version(NOW + 1)
    key.min_decryption_version = 2
    old = format_ciphertext(1, b"\x00" * 40)
    cases = [
        (old, "ciphertext or signature version is disallowed by policy (too old)"),
        (format_ciphertext(3, b"\x00" * 40), "invalid ciphertext: version is too new"),
        ("vault:v2:!!!!", "invalid ciphertext: could not decode base64"),
        (format_ciphertext(2, b"\x00" * 27), "invalid ciphertext length"),
        (format_ciphertext(2, b"\x00" * 28), "cipher: message authentication failed"),
    ]
    for text, message in cases:
        with pytest.raises(TransitError) as caught:
            key.decrypt(text, b"")
        assert str(caught.value) == message


def test_encryption_versions_follow_the_floors() -> None:
    key = TransitKey.create("k", "aes256-gcm96", derived=False, now=NOW)
    for step in range(3):
        key.add_version(NOW + step)
    key.min_encryption_version = 3
    assert key.encrypt(b"x", b"")[1] == 4
    assert key.encrypt(b"x", b"", version=3)[1] == 3
    with pytest.raises(TransitError, match="less than the minimum encryption key version"):
        key.encrypt(b"x", b"", version=2)
    with pytest.raises(TransitError, match="higher than the latest key version"):
        key.encrypt(b"x", b"", version=5)


def test_key_material_stays_out_of_repr_and_survives_json() -> None:
    key = TransitKey.create("k", "ed25519", derived=False, now=NOW)
    material = key.versions[1].material
    for text in (repr(key), repr(key.versions[1]), str(key)):
        assert material.hex() not in text and base64.b64encode(material).decode() not in text
        assert "material" not in text
    again = TransitKey.from_json(json.loads(json.dumps(key.to_json())))
    assert again.versions[1].material == material and again.type == "ed25519"
    signature, _ = key.sign(b"m")
    assert again.verify(b"m", signature) and not again.verify(b"n", signature)


def test_the_key_read_hides_versions_below_the_decryption_floor() -> None:
    key = TransitKey.create("k", "aes256-gcm96", derived=True, now=NOW)
    key.add_version(NOW + 5)
    key.min_decryption_version = 2
    described = key.describe()
    assert described["keys"] == {"2": int(NOW + 5)} and described["latest_version"] == 2
    assert described["kdf"] == "hkdf_sha256" and described["exportable"] is False
    assert list(described) == sorted(described)  # as Vault's JSON (a Go map): keys in order


def test_base64_is_strict_as_gos_std_encoding() -> None:
    assert b64decode("aGVsbG8=") == b"hello"
    assert b64decode("") == b""
    for text, position in [("aGVsbG8", 4), ("not base64!", 3), ("aGV sbG8=", 3)]:
        with pytest.raises(TransitError) as caught:
            b64decode(text)
        assert str(caught.value) == f"illegal base64 data at input byte {position}"


def test_parameters_convert_as_vaults_field_framework() -> None:
    assert as_int({"v": "3"}, "v") == 3 and as_int({}, "v", 7) == 7 and as_int({"v": 2.0}, "v") == 2
    assert as_bool({"b": "true"}, "b") and not as_bool({"b": "0"}, "b") and as_bool({"b": True}, "b")
    for body, convert in [({"v": "x"}, as_int), ({"v": True}, as_int), ({"v": "yes"}, as_bool)]:
        with pytest.raises(TransitError, match='error converting input for field "v"'):
            convert(body, "v")  # type: ignore[operator]
    refuse_unsupported({"exportable": False, "nonce": ""})
    with pytest.raises(TransitError, match="exportable keys are not supported"):
        refuse_unsupported({"exportable": True})


def test_items_and_batch_statuses() -> None:
    items, batch = encrypt_items({"plaintext": "aGk=", "context": "Y3R4", "key_version": "2"})
    assert not batch and items[0].data == b"hi" and items[0].context == b"ctx" and items[0].key_version == 2
    assert "hi" not in repr(items[0]) and "ctx" not in repr(items[0])
    with pytest.raises(TransitError, match="missing plaintext to encrypt"):
        encrypt_items({})
    with pytest.raises(TransitError, match="missing batch input to process"):
        encrypt_items({"batch_input": []})
    items, batch = decrypt_items({"batch_input": [{"ciphertext": "vault:v1:AAAA"}, {"context": "!"}]})
    assert batch and items[0].error is None and items[1].error == "illegal base64 data at input byte 0"
    ok, bad = {"ciphertext": "c", "reference": ""}, {"error": "e", "reference": ""}
    assert batch_answer({}, [ok, ok], "encrypt") == (200, None)
    assert batch_answer({}, [ok, bad], "encrypt") == (400, None)
    assert batch_answer({"partial_failure_response_code": 207}, [ok, bad], "decrypt") == (207, None)
    assert batch_answer({"partial_failure_response_code": 207}, [bad], "decrypt") == (400, None)
    assert batch_answer({"partial_failure_response_code": 999}, [ok, bad], "encrypt")[0] == 400
    assert batch_answer({}, [ok, bad], "rewrap") == (200, None)


def test_random_and_hash() -> None:
    assert len(base64.b64decode(random_bytes({}, [])["random_bytes"])) == 32
    assert len(bytes.fromhex(random_bytes({"format": "hex"}, ["platform", "8"])["random_bytes"])) == 8
    for body, rest, message in [
        ({"bytes": 0}, [], "'bytes' cannot be less than 1"),
        ({"bytes": 131072}, [], "'bytes' should be less than 131072"),
        ({}, ["abc"], "error parsing url-set byte count"),
        ({"format": "x"}, [], 'unsupported encoding format "x"'),
    ]:
        with pytest.raises(TransitError, match=message):
            random_bytes(body, rest)
    assert hash_data({"input": "aGVsbG8="}, "sha3-256")["sum"] == (
        "3338be694f50c5f338814986cdf0686453a888b84f424d792af4b9202398f392"
    )
    with pytest.raises(TransitError, match="unsupported algorithm md5"):
        hash_data({"input": "aGVsbG8="}, "md5")
    with pytest.raises(TransitError, match="input missing"):
        hash_data({}, None)


@pytest.mark.parametrize("key_type", ["ecdsa-p256", "ed25519"])
def test_signatures_malformed_are_refused_and_wrong_ones_are_invalid(key_type: str) -> None:
    key = TransitKey.create("k", key_type, derived=False, now=NOW)
    signature, _ = key.sign(b"m")
    assert key.verify(b"m", signature) and not key.verify(b"n", signature)
    assert not key.verify(b"m", format_ciphertext(1, b"\x30\x02\x01"))  # not even DER: just not valid
    for text, message in [
        ("garbage", "invalid signature: no prefix"),
        ("vault:v9:AAAA", "invalid signature: version is too new"),
        ("vault:v1:!!", "invalid base64 signature value"),
    ]:
        with pytest.raises(TransitError) as caught:
            key.verify(b"m", text)
        assert str(caught.value) == message
    key.add_version(NOW + 1)
    key.min_decryption_version = 2
    with pytest.raises(TransitError, match="disallowed by policy"):
        key.verify(b"m", signature)
