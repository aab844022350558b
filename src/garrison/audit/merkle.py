"""RFC 9162 (Certificate Transparency 2.0) Merkle tree hashing, tree heads and proofs, section 2.1.

The audit log is a Merkle tree whose leaves are the logged events' exact bytes: a signed tree head
(a checkpoint) commits to every entry before it, an inclusion proof shows that one event is in the
tree, and a consistency proof shows that a later tree extends an earlier one (the log only grew).

Hand-written rather than taken from a library: the Python packages that implement RFC 6962/9162
(``merkle-tools``, ``pymerkle``) either hash differently (no 0x00/0x01 domain separation), keep every
node in memory, or are unmaintained; the algorithms below are the RFC's, line for line, and the tests
check them against the RFC's recursive definition (``mth``) on random trees.

- ``leaf_hash(entry) = SHA-256(0x00 || entry)``, ``node_hash(l, r) = SHA-256(0x01 || l || r)``,
  the hash of the empty tree is ``SHA-256()``.
- ``CompactRange`` keeps the roots of the perfect subtrees covering the entries so far (at most
  log2(n) + 1 hashes): an append costs O(log n) amortised, the root O(log n); this is the log's running
  tree head.
- Proof generation works on a list of leaf hashes (``LeafHashes``); verification needs only the proof.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "LeafHashes",
    "ProofError",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "mth",
    "node_hash",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof that does not verify (the message says why), or a request for an impossible proof."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n > 1): RFC 9162's ``k``."""
    return 1 << ((n - 1).bit_length() - 1)


class LeafHashes:
    """Leaf hashes held contiguously (32 bytes each in one bytearray: a log of ten million entries
    takes 320 MB, not the several GB of ten million ``bytes`` objects)."""

    __slots__ = ("_data",)

    def __init__(self, hashes: Sequence[bytes] = ()) -> None:
        self._data = bytearray(b"".join(hashes))

    def append(self, value: bytes) -> None:
        self._data += value

    def __len__(self) -> int:
        return len(self._data) // HASH_SIZE

    def __getitem__(self, index: int) -> bytes:
        return bytes(self._data[index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def subtree_root(self, start: int, end: int) -> bytes:
        """MTH of the leaves [start, end) (RFC 9162 2.1.1), from their hashes."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n == 1:
            return self[start]
        k = _split(n)
        return node_hash(self.subtree_root(start, start + k), self.subtree_root(start + k, end))


def mth(entries: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of a list of entries, by the RFC's recursive definition (2.1.1)."""
    n = len(entries)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hash(entries[0])
    k = _split(n)
    return node_hash(mth(entries[:k]), mth(entries[k:]))


class CompactRange:
    """The running tree head: the roots of the perfect subtrees that cover the first ``size`` leaves,
    largest first (one per set bit of ``size``)."""

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count():
            raise ValueError("a compact range holds one hash per set bit of its size")
        self._size = size
        self._hashes = list(hashes)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def copy(self) -> CompactRange:
        return CompactRange(self._size, self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash: merge equal-sized perfect subtrees, as a binary counter carries."""
        value = leaf
        size = self._size
        while size & 1:
            value = node_hash(self._hashes.pop(), value)
            size >>= 1
        self._hashes.append(value)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the leaves so far: fold the subtree roots from the right (the smallest subtree is
        the rightmost, and RFC 9162's split puts the largest power of two on the left)."""
        if not self._hashes:
            return EMPTY_ROOT
        value = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            value = node_hash(left, value)
        return value


def inclusion_proof(index: int, size: int, leaves: LeafHashes) -> list[bytes]:
    """PATH(index, D[size]) (RFC 9162 2.1.3.1): the audit path of leaf ``index`` in the tree of the
    first ``size`` leaves."""
    if not 0 <= index < size <= len(leaves):
        raise ProofError(f"no leaf {index} in a tree of {size} (the log holds {len(leaves)})")
    return _path(index, 0, size, leaves)


def _path(m: int, start: int, end: int, leaves: LeafHashes) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, start, start + k, leaves), leaves.subtree_root(start + k, end)]
    return [*_path(m - k, start + k, end, leaves), leaves.subtree_root(start, start + k)]


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that an inclusion proof implies (RFC 9162 2.1.3.2, steps 1-6)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        _check_hash(p)
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ``ProofError`` unless ``proof`` shows leaf hash ``leaf`` at ``index`` under ``root``."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError("the inclusion proof leads to another root")


def consistency_proof(old_size: int, new_size: int, leaves: LeafHashes) -> list[bytes]:
    """PROOF(m, D[n]) (RFC 9162 2.1.4.1): shows the tree of ``new_size`` leaves extends the tree of
    ``old_size`` leaves."""
    if not 0 < old_size <= new_size <= len(leaves):
        raise ProofError(f"no consistency proof from {old_size} to {new_size} (the log holds {len(leaves)})")
    return _subproof(old_size, 0, new_size, True, leaves)


def _subproof(m: int, start: int, end: int, whole: bool, leaves: LeafHashes) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if whole else [leaves.subtree_root(start, end)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, start, start + k, whole, leaves), leaves.subtree_root(start + k, end)]
    return [*_subproof(m - k, start + k, end, False, leaves), leaves.subtree_root(start, start + k)]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 2.1.4.2: raise ``ProofError`` unless ``proof`` shows that the tree of ``new_size``
    leaves under ``new_root`` extends the tree of ``old_size`` leaves under ``old_root``."""
    if not 0 < old_size <= new_size:
        raise ProofError(f"no consistency from size {old_size} to size {new_size}")
    for p in proof:
        _check_hash(p)
    if old_size == new_size:
        if proof:
            raise ProofError("a consistency proof between equal sizes is empty")
        if old_root != new_root:
            raise ProofError("equal sizes with different roots")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the trees need")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the trees need")
    if fr != old_root:
        raise ProofError("the consistency proof does not lead to the old root")
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the new root")


def _check_hash(value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"a proof node is {HASH_SIZE} bytes")
