"""Opening the log after a stop or a crash: rebuild the writer's state from the segment files.

From the tail snapshot (``tailstate``) when it matches the lines it claims to end at, else from the
first line: every line from there on is checked (form, seq, chain) and absorbed into the chain head,
the Merkle compact range and the sparse index. The last segment's torn end (bytes after the last
newline, or zeros a power cut left) was never acknowledged and is cut off; any other damage raises
``LogDamaged``. Blocking: the log runs it in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from garrison.audit.merkle import CompactRange, leaf_hash
from garrison.audit.segments import (
    CHAIN_GENESIS,
    ParsedLine,
    chain_next,
    list_segments,
    parse_line,
    read_lines,
    segment_first,
    segment_name,
)
from garrison.audit.tailstate import TailSnapshot, load_snapshot, save_snapshot

__all__ = ["LogDamaged", "Tail", "fsync_directory", "recover", "snapshot_of", "walk"]


class LogDamaged(Exception):
    """A line other than a torn last one is not what the log wrote: the log refuses to open."""


@dataclass(slots=True)
class Tail:
    """The writer's state; a published one is replaced, never mutated."""

    size: int
    chain: bytes
    tree: CompactRange
    segment: Path
    segment_bytes: int
    index: list[tuple[int, int]] = field(default_factory=list)  # seq i*every -> (segment, offset)

    def copy(self) -> Tail:
        return Tail(self.size, self.chain, self.tree.copy(), self.segment, self.segment_bytes)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def snapshot_of(tail: Tail, index: list[tuple[int, int]], every: int) -> TailSnapshot:
    return TailSnapshot(
        tail.size,
        tail.chain,
        tail.tree.hashes,
        every,
        tuple(index),
        segment_first(tail.segment),
        tail.segment_bytes,
    )


def walk(directory: Path, segment: int, offset: int, seq: int) -> Iterator[tuple[Path, int, bytes, bool]]:
    """Lines from ``offset`` in the segment starting at ``segment`` (whose line there is ``seq``),
    on into the next segments, each found by the seq it must start with."""
    path = directory / segment_name(segment)
    while path.exists():
        with path.open("rb") as file:
            for position, raw, complete in read_lines(file, offset):
                yield path, position, raw, complete
                seq += 1
        path, offset = directory / segment_name(seq), 0


def recover(directory: Path, every: int, snapshots: bool = True) -> Tail:
    """The writer's state for the log in ``directory`` (created if absent), the torn end cut off;
    from the tail snapshot when ``snapshots`` and it matches the lines."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    segments = list_segments(directory)
    if not segments:
        path = directory / segment_name(0)
        path.touch(mode=0o600)
        fsync_directory(directory)
        segments = [(0, path)]
    snapshot = load_snapshot(directory) if snapshots else None
    tail = _resume(directory, snapshot, every) if snapshot is not None and snapshot.every == every else None
    if tail is None:
        tail, todo, offset = Tail(0, CHAIN_GENESIS, CompactRange(), segments[0][1], 0), segments, 0
    else:
        todo = [(first, path) for first, path in segments if first >= segment_first(tail.segment)]
        offset = tail.segment_bytes
    resumed_at = tail.size
    for number, (first, path) in enumerate(todo):
        if number > 0 or offset == 0:
            _check_start(path, first, tail.size)
        tail.segment = path
        tail.segment_bytes = _replay(path, tail, every, path == segments[-1][1], offset if number == 0 else 0)
    if snapshots and tail.size > resumed_at:
        save_snapshot(directory, snapshot_of(tail, tail.index, every))
    return tail


def _check_start(path: Path, first: int, size: int) -> None:
    if first != size:
        raise LogDamaged(
            f"audit log segment {path.name} starts at seq {first}, expected {size}: "
            "run `garrison audit verify` for details"
        )


def _resume(directory: Path, snapshot: TailSnapshot, every: int) -> Tail | None:
    """The snapshot's state if the lines agree with it: entry ``size - 1`` is where it says, with its
    chain value (at most ``every`` lines read); None otherwise."""
    last = snapshot.size - 1
    slot = last // every
    segment, offset = snapshot.index[slot]
    seq = slot * every
    try:
        for path, position, raw, complete in walk(directory, segment, offset, seq):
            parsed = parse_line(raw) if complete else None
            if parsed is None or parsed.seq != seq:
                return None
            if seq == last:
                matches = (
                    parsed.chain == snapshot.chain
                    and segment_first(path) == snapshot.segment
                    and position + len(raw) + 1 == snapshot.end
                )
                if not matches:
                    return None
                tree = CompactRange(snapshot.size, snapshot.tree)
                return Tail(snapshot.size, snapshot.chain, tree, path, snapshot.end, list(snapshot.index))
            seq += 1
    except OSError:
        return None
    return None


def _replay(path: Path, tail: Tail, every: int, last: bool, start: int) -> int:
    """Check and absorb one segment's lines from ``start`` into ``tail``; its good length in bytes."""
    good = start
    with path.open("rb") as file:
        for offset, raw, complete in read_lines(file, start):
            parsed = parse_line(raw) if complete else None
            if parsed is None and last and _is_torn_tail(file, offset, complete, raw):
                break
            _absorb(path, offset, parsed, tail, every)
            good = offset + len(raw) + 1
    if last and path.stat().st_size != good:
        with path.open("r+b") as file:  # never acknowledged: cut it so appends start on a line
            file.truncate(good)
            os.fsync(file.fileno())
    return good


def _absorb(path: Path, offset: int, parsed: ParsedLine | None, tail: Tail, every: int) -> None:
    if parsed is None or parsed.seq != tail.size:
        raise LogDamaged(_damage(path, offset, tail.size, "not a well-formed line in sequence"))
    leaf = leaf_hash(parsed.entry)
    chain = chain_next(tail.chain, leaf)
    if chain != parsed.chain:
        raise LogDamaged(_damage(path, offset, tail.size, "the hash chain breaks"))
    if tail.size % every == 0:
        tail.index.append((segment_first(path), offset))
    tail.chain = chain
    tail.tree.append(leaf)
    tail.size += 1


def _is_torn_tail(file: BinaryIO, offset: int, complete: bool, raw: bytes) -> bool:
    """A write the crash interrupted: bytes after the last newline, or nothing but zeros (what some
    file systems leave of unwritten blocks after a power cut) from here to the end of the file."""
    if not complete:
        return True
    if raw.strip(b"\x00"):
        return False
    position = file.tell()
    file.seek(offset)
    rest = file.read()
    file.seek(position)
    return not rest.strip(b"\x00\n")


def _damage(path: Path, offset: int, seq: int, why: str) -> str:
    return (
        f"the audit log is damaged at seq {seq} ({path.name}, byte {offset}): {why}; "
        "it refuses to open: run `garrison audit verify` to see where tampering starts"
    )
