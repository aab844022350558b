"""RFC 9162 hashing, tree heads and proofs against the RFC's recursive definition, on random trees;
and every proof mutation a verifier must refuse."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    LeafHashes,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    mth,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

entries_st = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


def leaves_of(entries: list[bytes]) -> LeafHashes:
    return LeafHashes([leaf_hash(e) for e in entries])


def test_the_rfc_hashes() -> None:
    assert EMPTY_ROOT == hashlib.sha256(b"").digest() == mth([])
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # three leaves: the left subtree holds the largest power of two (2)
    assert mth([b"a", b"b", b"c"]) == node_hash(node_hash(a, b), leaf_hash(b"c"))
    # a known value (RFC 6962 test vectors, as in certificate-transparency-go): the empty entry's leaf
    assert leaf_hash(b"").hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"


@given(entries_st)
def test_the_compact_range_is_the_recursive_root_at_every_size(entries: list[bytes]) -> None:
    tree = CompactRange()
    for count, entry in enumerate(entries, start=1):
        tree.append(leaf_hash(entry))
        assert tree.root() == mth(entries[:count])
        assert len(tree.hashes) == count.bit_count()
    assert CompactRange(tree.size, tree.hashes).root() == tree.root()


@given(entries_st, st.data())
def test_inclusion_proofs_verify(entries: list[bytes], data: st.DataObject) -> None:
    size = data.draw(st.integers(1, len(entries)))
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, leaves_of(entries))
    root = mth(entries[:size])
    verify_inclusion(index, size, leaf_hash(entries[index]), proof, root)


@given(entries_st, st.data())
def test_consistency_proofs_verify(entries: list[bytes], data: st.DataObject) -> None:
    new = data.draw(st.integers(1, len(entries)))
    old = data.draw(st.integers(1, new))
    proof = consistency_proof(old, new, leaves_of(entries))
    verify_consistency(old, new, mth(entries[:old]), mth(entries[:new]), proof)


def _mutations(proof: list[bytes]) -> list[list[bytes]]:
    """Modified node, truncated, extended, reordered."""
    out = [proof[:-1], [*proof, leaf_hash(b"extra")], [*proof, proof[0]]] if proof else [[EMPTY_ROOT]]
    for i in range(len(proof)):
        changed = bytearray(proof[i])
        changed[i % 32] ^= 1
        out.append([*proof[:i], bytes(changed), *proof[i + 1 :]])
    if len(proof) > 1 and proof[0] != proof[1]:
        out.append([proof[1], proof[0], *proof[2:]])
    return out


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=4), min_size=2, max_size=40, unique=True), st.data())
def test_a_mutated_inclusion_proof_or_claim_is_refused(entries: list[bytes], data: st.DataObject) -> None:
    size = data.draw(st.integers(2, len(entries)))
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(index, size, leaves_of(entries))
    root, leaf = mth(entries[:size]), leaf_hash(entries[index])
    for bad in _mutations(proof):
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, bad, root)
    wrong_root = node_hash(root, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof, wrong_root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf_hash(entries[index] + b"!"), proof, root)
    with pytest.raises(ProofError):
        verify_inclusion((index + 1) % size, size, leaf, proof, root)
    # the proof does not carry its size: a claimed size is checked through the signed root of that
    # size (a proof document fixes tree_size to its checkpoint's), so a path for another tree fails
    for other_size in range(index + 1, len(entries) + 1):
        if inclusion_proof(index, other_size, leaves_of(entries)) != proof:
            with pytest.raises(ProofError):
                verify_inclusion(index, other_size, leaf, proof, mth(entries[:other_size]))
    with pytest.raises(ProofError):
        verify_inclusion(size, size, leaf, proof, root)


@settings(max_examples=60)
@given(st.lists(st.binary(max_size=4), min_size=3, max_size=40, unique=True), st.data())
def test_a_mutated_consistency_proof_or_claim_is_refused(entries: list[bytes], data: st.DataObject) -> None:
    new = data.draw(st.integers(2, len(entries)))
    old = data.draw(st.integers(1, new - 1))
    proof = consistency_proof(old, new, leaves_of(entries))
    old_root, new_root = mth(entries[:old]), mth(entries[:new])
    for bad in _mutations(proof):
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root, bad)
    with pytest.raises(ProofError):
        verify_consistency(old, new, node_hash(old_root, old_root), new_root, proof)
    with pytest.raises(ProofError):
        verify_consistency(old, new, old_root, node_hash(new_root, new_root), proof)
    with pytest.raises(ProofError):
        verify_consistency(old, new, old_root, new_root, [])
    # a tree that does not extend the old one: a changed old entry
    forked = [entries[0] + b"!", *entries[1:]]
    with pytest.raises(ProofError):
        verify_consistency(
            old, new, old_root, mth(forked[:new]), consistency_proof(old, new, leaves_of(forked))
        )


def test_equal_sizes_and_impossible_requests() -> None:
    entries = [bytes([i]) for i in range(5)]
    root = mth(entries)
    verify_consistency(5, 5, root, root, [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, root, EMPTY_ROOT, [])
    with pytest.raises(ProofError):
        verify_consistency(5, 5, root, root, [root])
    with pytest.raises(ProofError):
        verify_consistency(0, 5, EMPTY_ROOT, root, [root])
    with pytest.raises(ProofError):
        inclusion_proof(5, 5, leaves_of(entries))
    with pytest.raises(ProofError):
        consistency_proof(2, 6, leaves_of(entries))
    with pytest.raises(ProofError):
        verify_inclusion(0, 5, leaf_hash(entries[0]), [b"short"], root)
