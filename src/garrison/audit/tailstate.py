"""The log's tail state saved beside the segments (``tail.json``), so that a restart replays only the
entries written since, not the whole log.

Replaying means parsing and hashing every line (several microseconds each): a log of a hundred
million entries would take minutes to reopen. The snapshot holds what the replay would rebuild: the
size, the chain head, the Merkle compact range, the sparse seq -> offset index, and where the next
line starts. It is written atomically (temporary file, fsync, rename, fsync of the directory) at close
and every ``snapshot_every`` entries.

It is a cache, not a source of truth: opening checks it against the lines it claims to end at (seq
and chain value of the last entry, at the offset recorded) and falls back to a full replay when it
does not match. A forged snapshot cannot hide tampering either: checkpoints signed from a tree head
that does not match the lines fail `garrison audit verify`, which always recomputes from the lines.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["SNAPSHOT_FILE", "TailSnapshot", "load_snapshot", "save_snapshot"]

SNAPSHOT_FILE: Final = "tail.json"


@dataclass(frozen=True, slots=True)
class TailSnapshot:
    size: int
    chain: bytes
    tree: tuple[bytes, ...]  # the compact range, largest subtree first
    every: int  # the index's spacing
    index: tuple[tuple[int, int], ...]  # seq i*every -> (first seq of its segment, byte offset)
    segment: int  # first seq of the segment that holds entry size-1
    end: int  # byte offset in that segment where entry ``size`` starts


def save_snapshot(directory: Path, snapshot: TailSnapshot) -> None:
    body = {
        "size": snapshot.size,
        "chain": snapshot.chain.hex(),
        "tree": [node.hex() for node in snapshot.tree],
        "every": snapshot.every,
        "index": [list(pair) for pair in snapshot.index],
        "segment": snapshot.segment,
        "end": snapshot.end,
    }
    temporary = directory / (SNAPSHOT_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, json.dumps(body, separators=(",", ":")).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / SNAPSHOT_FILE)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_snapshot(directory: Path) -> TailSnapshot | None:
    """The saved snapshot, or None when there is none or it is unreadable (a full replay follows)."""
    try:
        body = json.loads((directory / SNAPSHOT_FILE).read_bytes())
        return _parse(body)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _parse(body: Any) -> TailSnapshot | None:
    snapshot = TailSnapshot(
        size=int(body["size"]),
        chain=bytes.fromhex(body["chain"]),
        tree=tuple(bytes.fromhex(node) for node in body["tree"]),
        every=int(body["every"]),
        index=tuple((int(first), int(offset)) for first, offset in body["index"]),
        segment=int(body["segment"]),
        end=int(body["end"]),
    )
    sane = (
        snapshot.size > 0
        and snapshot.every > 0
        and len(snapshot.chain) == 32
        and len(snapshot.tree) == snapshot.size.bit_count()
        and all(len(node) == 32 for node in snapshot.tree)
        and len(snapshot.index) == (snapshot.size + snapshot.every - 1) // snapshot.every
    )
    return snapshot if sane else None
