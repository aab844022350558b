"""Proof documents: an event's inclusion under a signed checkpoint, and the consistency of two signed
checkpoints, as JSON a third party checks with the public key alone (`garrison audit verify-proof`).

An inclusion document carries the event's exact line (the Merkle leaf's entry), its index, the audit
path and the signed checkpoint whose root the path must reach; a consistency document carries both
checkpoints and the RFC 9162 consistency path. Generating reads the leaf hashes of the log up to the
newer checkpoint (32 bytes an entry); verifying needs no log at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from garrison.audit.checkpoints import Checkpoint, CheckpointError, read_checkpoints
from garrison.audit.merkle import (
    LeafHashes,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from garrison.audit.paths import CHECKPOINTS_FILE
from garrison.audit.segments import list_segments, parse_line, read_lines

__all__ = ["consistency_document", "inclusion_document", "verify_document"]

INCLUSION: Final = "garrison.audit.inclusion/v1"
CONSISTENCY: Final = "garrison.audit.consistency/v1"


def _scan(directory: Path, limit: int, event_id: str | None) -> tuple[LeafHashes, tuple[int, bytes] | None]:
    """The first ``limit`` leaf hashes, and the (seq, entry) of the event ``event_id`` among them."""
    leaves = LeafHashes()
    needle = b'"id":' + json.dumps(event_id).encode() if event_id is not None else None
    found: tuple[int, bytes] | None = None
    for _, path in list_segments(directory):
        with path.open("rb") as file:
            for _, raw, complete in read_lines(file):
                if len(leaves) >= limit:
                    return leaves, found
                parsed = parse_line(raw) if complete else None
                if parsed is None or parsed.seq != len(leaves):
                    raise ProofError(f"the log is damaged at seq {len(leaves)}: run `garrison audit verify`")
                if found is None and _is_event(parsed.entry, needle, event_id):
                    found = (parsed.seq, parsed.entry)
                leaves.append(leaf_hash(parsed.entry))
    if len(leaves) < limit:
        raise ProofError(f"the log holds {len(leaves)} entries, fewer than the {limit} a checkpoint covers")
    return leaves, found


def _is_event(entry: bytes, needle: bytes | None, event_id: str | None) -> bool:
    """Whether ``entry`` is event ``event_id`` (a byte search first: JSON is parsed only on a hit)."""
    return needle is not None and needle in entry and json.loads(entry).get("id") == event_id


def inclusion_document(directory: Path, event_id: str) -> dict[str, Any]:
    """The inclusion proof of event ``event_id`` under the latest checkpoint."""
    checkpoints = read_checkpoints(directory / CHECKPOINTS_FILE)
    if not checkpoints:
        raise ProofError("the log has no checkpoint yet")
    latest = checkpoints[-1]
    leaves, found = _scan(directory, latest.size, event_id)
    if found is None:
        raise ProofError(
            f"no event {event_id} in the {latest.size} entries the latest checkpoint covers "
            "(a newer event is covered by the next checkpoint: audit.checkpoint_interval)"
        )
    seq, entry = found
    proof = inclusion_proof(seq, latest.size, leaves)
    return {
        "type": INCLUSION,
        "seq": seq,
        "tree_size": latest.size,
        "entry": entry.decode(),
        "proof": [node.hex() for node in proof],
        "checkpoint": latest.to_dict(),
    }


def consistency_document(directory: Path, old_size: int, new_size: int) -> dict[str, Any]:
    """The consistency proof between the checkpoints at ``old_size`` and ``new_size``."""
    checkpoints = read_checkpoints(directory / CHECKPOINTS_FILE)
    by_size = {checkpoint.size: checkpoint for checkpoint in checkpoints}
    missing = [size for size in (old_size, new_size) if size not in by_size]
    if missing:
        raise ProofError(
            f"no checkpoint at size {missing[0]}; checkpoints exist at sizes "
            f"{', '.join(str(c.size) for c in checkpoints[-10:]) or 'none'}"
        )
    leaves, _ = _scan(directory, new_size, None)
    return {
        "type": CONSISTENCY,
        "proof": [node.hex() for node in consistency_proof(old_size, new_size, leaves)],
        "old": by_size[old_size].to_dict(),
        "new": by_size[new_size].to_dict(),
    }


def verify_document(
    document: Any, public_key: Ed25519PublicKey, known: list[Checkpoint] | None = None
) -> str:
    """Check a proof document; a one-line summary, or ``ProofError``/``CheckpointError`` saying why not.
    With ``known`` (the log's checkpoints), its checkpoints must also be among them."""
    if not isinstance(document, dict):
        raise ProofError("a proof is a JSON object")
    kind = document.get("type")
    if kind == INCLUSION:
        return _verify_inclusion(document, public_key, known)
    if kind == CONSISTENCY:
        return _verify_consistency(document, public_key, known)
    raise ProofError(f"unknown proof type {kind!r}")


def _signed(body: Any, public_key: Ed25519PublicKey, known: list[Checkpoint] | None) -> Checkpoint:
    checkpoint = Checkpoint.from_dict(body)
    checkpoint.verify(public_key)
    if known is not None and checkpoint not in known:
        raise CheckpointError(f"the checkpoint at size {checkpoint.size} is not among the log's checkpoints")
    return checkpoint


def _nodes(document: dict[str, Any]) -> list[bytes]:
    proof = document.get("proof")
    if not isinstance(proof, list) or not all(isinstance(node, str) for node in proof):
        raise ProofError("proof is a list of hex hashes")
    try:
        return [bytes.fromhex(node) for node in proof]
    except ValueError:
        raise ProofError("proof is a list of hex hashes") from None


def _verify_inclusion(document: dict[str, Any], key: Ed25519PublicKey, known: list[Checkpoint] | None) -> str:
    checkpoint = _signed(document.get("checkpoint"), key, known)
    seq, size, entry = document.get("seq"), document.get("tree_size"), document.get("entry")
    if not isinstance(seq, int) or not isinstance(size, int) or not isinstance(entry, str):
        raise ProofError("an inclusion proof has an integer seq and tree_size and a text entry")
    if size != checkpoint.size:
        raise ProofError(f"the proof is for a tree of {size}, the checkpoint signs {checkpoint.size}")
    verify_inclusion(seq, size, leaf_hash(entry.encode()), _nodes(document), checkpoint.root)
    return f"entry {seq} is in the log of {size} entries signed at {checkpoint.time}"


def _verify_consistency(
    document: dict[str, Any], key: Ed25519PublicKey, known: list[Checkpoint] | None
) -> str:
    old = _signed(document.get("old"), key, known)
    new = _signed(document.get("new"), key, known)
    verify_consistency(old.size, new.size, old.root, new.root, _nodes(document))
    return f"the log of {new.size} entries ({new.time}) extends the log of {old.size} entries ({old.time})"
