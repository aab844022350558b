"""The barrier and the seal without I/O: envelope encryption bound to the path, keyring terms, Shamir."""

from __future__ import annotations

import itertools
import os

import pytest

from garrison.vault.barrier import BarrierError, Keyring, open_sealed, seal_with
from garrison.vault.seal import SealConfig, UnsealError, combine_shares, split_key


def test_an_entry_decrypts_at_its_own_path_only() -> None:
    keyring = Keyring.new()
    blob = keyring.encrypt("kv/secret/data/orders#1", b'{"password":"s3cret"}')
    assert b"s3cret" not in blob
    assert keyring.decrypt("kv/secret/data/orders#1", blob) == b'{"password":"s3cret"}'
    with pytest.raises(BarrierError, match="moved"):
        keyring.decrypt("kv/secret/data/payments#1", blob)


@pytest.mark.parametrize("position", [0, 5, 20, 70, -1])
def test_a_modified_entry_does_not_decrypt(position: int) -> None:
    keyring = Keyring.new()
    blob = bytearray(keyring.encrypt("p", b"value"))
    blob[position] ^= 0x01
    with pytest.raises(BarrierError):
        keyring.decrypt("p", bytes(blob))


def test_each_entry_has_its_own_data_key_and_nonces() -> None:
    keyring = Keyring.new()
    assert keyring.encrypt("p", b"same") != keyring.encrypt("p", b"same")


def test_rotation_adds_a_term_and_old_entries_still_decrypt() -> None:
    keyring = Keyring.new()
    old = keyring.encrypt("p", b"old")
    assert keyring.rotate() == 2
    new = keyring.encrypt("p", b"new")
    assert new[1:5] == (2).to_bytes(4, "big") and old[1:5] == (1).to_bytes(4, "big")
    restored = Keyring.from_bytes(keyring.to_bytes())
    assert restored.decrypt("p", old) == b"old" and restored.decrypt("p", new) == b"new"
    assert keyring.keys[1].hex() not in repr(keyring)


def test_an_entry_of_another_keyring_does_not_decrypt() -> None:
    with pytest.raises(BarrierError):
        Keyring.new().decrypt("p", Keyring.new().encrypt("p", b"x"))


def test_sealed_values_are_bound_to_key_and_purpose() -> None:
    key = os.urandom(32)
    sealed = seal_with(key, b"root key", "garrison-vault root key")
    assert open_sealed(key, sealed, "garrison-vault root key") == b"root key"
    with pytest.raises(BarrierError):
        open_sealed(key, sealed, "garrison-vault keyring")
    with pytest.raises(BarrierError):
        open_sealed(os.urandom(32), sealed, "garrison-vault root key")


def test_any_threshold_of_the_shares_rebuild_the_key() -> None:
    key = os.urandom(32)
    shares = split_key(key, 3, 5)
    assert len(shares) == 5 and all(len(share) == 33 for share in shares)
    for chosen in itertools.combinations(shares, 3):
        assert combine_shares(list(chosen)) == key


def test_fewer_shares_or_a_wrong_one_give_another_key() -> None:
    key = os.urandom(32)
    shares = split_key(key, 3, 5)
    assert combine_shares(shares[:2]) != key
    forged = bytes([shares[2][0]]) + os.urandom(32)
    assert combine_shares([shares[0], shares[1], forged]) != key
    with pytest.raises(UnsealError):
        combine_shares([shares[0], shares[0], shares[1]])


@pytest.mark.parametrize(("shares", "threshold"), [(0, 0), (5, 6), (5, 1), (256, 3), (3, 0)])
def test_seal_configurations_vault_refuses_are_refused(shares: int, threshold: int) -> None:
    with pytest.raises(ValueError):
        SealConfig(shares, threshold).check()


def test_one_share_of_one_is_allowed() -> None:
    SealConfig(1, 1).check()
    key = os.urandom(32)
    assert combine_shares(split_key(key, 1, 1)) == key
