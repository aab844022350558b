"""The collector's append-only event log: hash-chained segment files, group commit, crash recovery.

``append`` returns only once its events are on disk (written and fsync'd): that is what lets the
intake acknowledge a batch. Callers that arrive while a write is in flight are queued and share the
next write and its one fsync (group commit), so the fsync cost is paid once per burst, not per batch.
Blocking I/O (write, fsync, reads) runs in worker threads, never on the event loop; the writer works on
copies of the tail state (chain head, compact range) and the loop publishes them when the fsync
returns, so ``head()`` never sees a half-written batch.

Opening replays every segment: it checks each line's format, seq and chain, rebuilds the Merkle tree
head and a sparse seq -> file offset index (one entry per ``index_every`` entries: ``read`` seeks,
it never loads the log). A torn last line (bytes after the last newline, or zeros a crash left) was
never acknowledged and is cut off; any other damage refuses to open (``LogDamaged``): a line that
changed after it was acknowledged is tampering, and `garrison audit verify` says where it starts.
A failed write leaves the log refusing appends until it is reopened (fail closed).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from garrison.audit.merkle import CompactRange, leaf_hash
from garrison.audit.pipeline import LoggedEvent
from garrison.audit.segments import (
    CHAIN_GENESIS,
    chain_next,
    format_line,
    list_segments,
    parse_line,
    read_lines,
    segment_name,
)
from garrison.events.schema import Event

__all__ = ["EventLog", "LogClosed", "LogDamaged", "LogError", "LogHead"]

SEGMENT_BYTES: Final = 64 * 1024 * 1024
INDEX_EVERY: Final = 1024


class LogError(Exception):
    """The log cannot take appends (closed, or a write failed)."""


class LogClosed(LogError):
    pass


class LogDamaged(Exception):
    """A line other than a torn last one is not what the log wrote: the log refuses to open."""


@dataclass(frozen=True, slots=True)
class LogHead:
    """What a checkpoint signs: the first ``size`` entries' Merkle root and the chain value of the
    last of them (``CHAIN_GENESIS`` for an empty log)."""

    size: int
    root: bytes
    chain: bytes


@dataclass(slots=True)
class _Tail:
    """The writer's state; replaced, never mutated, once published."""

    size: int
    chain: bytes
    tree: CompactRange
    segment: Path
    segment_bytes: int
    index: list[tuple[Path, int]] = field(default_factory=list)  # seq i*every -> (file, offset)

    def copy(self) -> _Tail:
        return _Tail(self.size, self.chain, self.tree.copy(), self.segment, self.segment_bytes)


@dataclass(slots=True)
class _Waiter:
    events: Sequence[Event]
    future: asyncio.Future[list[LoggedEvent]]


class EventLog:
    """The durable, chained, Merkle-hashed log; one writer per directory (one collector process)."""

    def __init__(self, directory: Path, tail: _Tail, segment_limit: int, index_every: int) -> None:
        self.directory = directory
        self._tail = tail
        self._index = tail.index
        tail.index = []
        self._segment_limit = segment_limit
        self._every = index_every
        self._fd = os.open(tail.segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._waiting: list[_Waiter] = []
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, directory: Path, *, segment_bytes: int = SEGMENT_BYTES, index_every: int = INDEX_EVERY
    ) -> EventLog:
        """Open (or create) the log in ``directory``, recovering from a crash; ``LogDamaged`` if
        a line other than a torn last one is damaged."""
        tail = await asyncio.to_thread(_recover, directory, index_every)
        return cls(directory, tail, segment_bytes, index_every)

    def size(self) -> int:
        """Entries committed (durable) so far."""
        return self._tail.size

    def head(self) -> LogHead:
        tail = self._tail
        return LogHead(tail.size, tail.tree.root(), tail.chain)

    async def append(self, events: Sequence[Event]) -> list[LoggedEvent]:
        """Log ``events`` in order; returns them as logged once they are durable."""
        if self._closed:
            raise LogClosed("the audit log is closed")
        if self._failed is not None:
            raise LogError(f"the audit log failed a write and takes no appends: {self._failed}")
        if not events:
            return []
        future: asyncio.Future[list[LoggedEvent]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiter(events, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop())
        return await future

    async def _write_loop(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    tail, logged = await asyncio.to_thread(self._write_group, group)
                except BaseException as exc:  # the disk's error reaches every caller
                    self._failed = exc
                    for waiter in group + self._waiting:
                        if not waiter.future.done():
                            waiter.future.set_exception(LogError(f"audit log write failed: {exc}"))
                    self._waiting = []
                    return
                self._index.extend(tail.index)
                tail.index = []
                self._tail = tail
                for waiter, entries in zip(group, logged, strict=True):
                    if not waiter.future.done():
                        waiter.future.set_result(entries)
        finally:
            self._writer = None

    def _write_group(self, group: list[_Waiter]) -> tuple[_Tail, list[list[LoggedEvent]]]:
        """In a worker thread: encode, chain and hash every event, write them in one call, fsync."""
        tail = self._tail.copy()
        if tail.segment_bytes >= self._segment_limit:
            self._roll(tail)
        lines: list[bytes] = []
        logged: list[list[LoggedEvent]] = []
        offset = tail.segment_bytes
        for waiter in group:
            entries = []
            for event in waiter.events:
                entry = event.to_json()
                leaf = leaf_hash(entry)
                tail.chain = chain_next(tail.chain, leaf)
                tail.tree.append(leaf)
                line = format_line(tail.size, tail.chain, entry)
                if tail.size % self._every == 0:
                    tail.index.append((tail.segment, offset))
                offset += len(line)
                lines.append(line)
                entries.append(LoggedEvent(tail.size, event, entry))
                tail.size += 1
            logged.append(entries)
        _write_all(self._fd, b"".join(lines))
        os.fsync(self._fd)
        tail.segment_bytes = offset
        return tail, logged

    def _roll(self, tail: _Tail) -> None:
        """Start a new segment at the next seq (between groups, so a group never spans two)."""
        path = self.directory / segment_name(tail.size)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        _fsync_directory(self.directory)
        os.close(self._fd)
        self._fd = fd
        tail.segment = path
        tail.segment_bytes = 0

    async def read(self, start: int, limit: int) -> list[LoggedEvent]:
        """Up to ``limit`` committed entries from ``start`` on (fewer at the end of the log)."""
        end = min(start + max(limit, 0), self._tail.size)
        if start < 0 or start >= end:
            return []
        slot = start // self._every
        path, offset = self._index[slot]
        return await asyncio.to_thread(self._read_range, path, offset, start, end)

    def _read_range(self, path: Path, offset: int, start: int, end: int) -> list[LoggedEvent]:
        out: list[LoggedEvent] = []
        expected = (start // self._every) * self._every
        while expected < end:
            with path.open("rb") as file:
                for _, raw, complete in read_lines(file, offset):
                    parsed = parse_line(raw) if complete else None
                    if parsed is None or parsed.seq != expected:
                        raise LogDamaged(f"audit log line for seq {expected} in {path.name} is damaged")
                    if expected >= start:
                        out.append(LoggedEvent(expected, Event.from_json(parsed.entry), parsed.entry))
                    expected += 1
                    if expected >= end:
                        return out
            path, offset = self.directory / segment_name(expected), 0
            if not path.exists():
                raise LogDamaged(f"audit log segment for seq {expected} is missing")
        return out

    async def close(self) -> None:
        """Finish the writes in flight; later appends raise ``LogClosed``."""
        self._closed = True
        while self._writer is not None:
            await asyncio.shield(self._writer)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover(directory: Path, every: int) -> _Tail:
    """Replay the segments (blocking; run in a thread): the tail state, with the torn end cut."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    segments = list_segments(directory)
    if not segments:
        path = directory / segment_name(0)
        path.touch(mode=0o600)
        _fsync_directory(directory)
        segments = [(0, path)]
    tail = _Tail(0, CHAIN_GENESIS, CompactRange(), segments[0][1], 0)
    for number, (first, path) in enumerate(segments):
        if first != tail.size:
            raise LogDamaged(
                f"audit log segment {path.name} starts at seq {first}, expected {tail.size}: "
                "run `garrison audit verify` for details"
            )
        last = number == len(segments) - 1
        tail.segment, tail.segment_bytes = path, _replay_segment(path, tail, every, last)
    return tail


def _replay_segment(path: Path, tail: _Tail, every: int, last: bool) -> int:
    """Check and absorb one segment's lines into ``tail``; the segment's good length in bytes."""
    good = 0
    with path.open("rb") as file:
        for offset, raw, complete in read_lines(file):
            parsed = parse_line(raw) if complete else None
            if parsed is None and last and _is_torn_tail(file, offset, complete, raw):
                break
            if parsed is None or parsed.seq != tail.size:
                raise LogDamaged(_damage(path, offset, tail.size, "not a well-formed line in sequence"))
            leaf = leaf_hash(parsed.entry)
            chain = chain_next(tail.chain, leaf)
            if chain != parsed.chain:
                raise LogDamaged(_damage(path, offset, tail.size, "the hash chain breaks"))
            if tail.size % every == 0:
                tail.index.append((path, offset))
            tail.chain = chain
            tail.tree.append(leaf)
            tail.size += 1
            good = offset + len(raw) + 1
    if last and path.stat().st_size != good:
        with path.open("r+b") as file:  # never acknowledged: cut it so appends start on a line
            file.truncate(good)
            os.fsync(file.fileno())
    return good


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
