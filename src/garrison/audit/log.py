"""The collector's append-only event log: hash-chained segment files, group commit, crash recovery.

``append`` returns only once its events are on disk (written and fsync'd): that is what lets the
intake acknowledge a batch. Callers that arrive while a write is in flight are queued and share the
next write and its one fsync (group commit), so the fsync cost is paid once per burst, not per batch.
Blocking I/O (write, fsync, reads) runs in worker threads, never on the event loop; the writer works on
copies of the tail state (chain head, compact range) and the loop publishes them when the fsync
returns, so ``head()`` never sees a half-written batch.

Opening (``recovery``) resumes from the saved tail snapshot and replays the lines written since (all
of them without a snapshot): it checks each line's format, seq and chain, rebuilds the Merkle tree head
and a sparse seq -> file offset index (one entry per ``index_every`` entries: ``read`` seeks, it never
loads the log). A torn last line was never acknowledged and is cut off; any other damage refuses to
open (``LogDamaged``): a line that changed after it was acknowledged is tampering, and
`garrison audit verify` (which checks every line, always) says where it starts. A failed write leaves
the log refusing appends until it is reopened (fail closed).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from garrison.audit.merkle import leaf_hash
from garrison.audit.pipeline import LoggedEvent
from garrison.audit.recovery import LogDamaged, Tail, fsync_directory, recover, snapshot_of, walk
from garrison.audit.segments import chain_next, format_line, parse_line, segment_first, segment_name
from garrison.audit.tailstate import save_snapshot
from garrison.events.schema import Event

__all__ = ["EventLog", "LogClosed", "LogDamaged", "LogError", "LogHead"]

SEGMENT_BYTES: Final = 64 * 1024 * 1024
INDEX_EVERY: Final = 1024
LOCK_FILE: Final = ".lock"
SNAPSHOT_EVERY: Final = 100_000  # entries between tail snapshots: the most a restart replays


class LogError(Exception):
    """The log cannot take appends (closed, or a write failed)."""


class LogClosed(LogError):
    pass


@dataclass(frozen=True, slots=True)
class LogHead:
    """What a checkpoint signs: the first ``size`` entries' Merkle root and the chain value of the
    last of them (``CHAIN_GENESIS`` for an empty log)."""

    size: int
    root: bytes
    chain: bytes


@dataclass(slots=True)
class _Waiter:
    events: Sequence[Event]
    future: asyncio.Future[list[LoggedEvent]]


class EventLog:
    """The durable, chained, Merkle-hashed log; one writer per directory (one collector process)."""

    def __init__(
        self, directory: Path, tail: Tail, segment_limit: int, every: int, snapshot_every: int
    ) -> None:
        self.directory = directory
        self._tail = tail
        self._index = tail.index
        tail.index = []
        self._segment_limit = segment_limit
        self._every = every
        self._snapshot_every = snapshot_every
        self._snapshot_size = tail.size
        self._fd = os.open(tail.segment, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._waiting: list[_Waiter] = []
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._closed = False
        self._lock = -1  # the directory's lock file, held while open

    @classmethod
    async def open(
        cls,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        index_every: int = INDEX_EVERY,
        snapshot_every: int = SNAPSHOT_EVERY,
    ) -> EventLog:
        """Open (or create) the log in ``directory``, recovering from a crash; ``LogDamaged`` if
        a line other than a torn last one is damaged. ``snapshot_every=0``: no tail snapshots (every
        open replays, and so checks, every line)."""
        lock = await asyncio.to_thread(_lock, directory)
        try:
            tail = await asyncio.to_thread(recover, directory, index_every, snapshot_every > 0)
            log = cls(directory, tail, segment_bytes, index_every, snapshot_every)
        except BaseException:
            os.close(lock)
            raise
        log._lock = lock
        return log

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

    def _write_group(self, group: list[_Waiter]) -> tuple[Tail, list[list[LoggedEvent]]]:
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
                    tail.index.append((segment_first(tail.segment), offset))
                offset += len(line)
                lines.append(line)
                entries.append(LoggedEvent(tail.size, event, entry))
                tail.size += 1
            logged.append(entries)
        _write_all(self._fd, b"".join(lines))
        os.fsync(self._fd)
        tail.segment_bytes = offset
        if 0 < self._snapshot_every <= tail.size - self._snapshot_size:
            self._save_snapshot(tail, self._index + tail.index)
        return tail, logged

    def _save_snapshot(self, tail: Tail, index: list[tuple[int, int]]) -> None:
        save_snapshot(self.directory, snapshot_of(tail, index, self._every))
        self._snapshot_size = tail.size

    def _roll(self, tail: Tail) -> None:
        """Start a new segment at the next seq (between groups, so a group never spans two)."""
        path = self.directory / segment_name(tail.size)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        fsync_directory(self.directory)
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
        segment, offset = self._index[slot]
        return await asyncio.to_thread(self._read_range, segment, offset, start, end)

    def _read_range(self, segment: int, offset: int, start: int, end: int) -> list[LoggedEvent]:
        out: list[LoggedEvent] = []
        seq = (start // self._every) * self._every
        for path, _, raw, complete in walk(self.directory, segment, offset, seq):
            parsed = parse_line(raw) if complete else None
            if parsed is None or parsed.seq != seq:
                raise LogDamaged(f"audit log line for seq {seq} in {path.name} is damaged")
            if seq >= start:
                out.append(LoggedEvent(seq, Event.from_json(parsed.entry), parsed.entry))
            seq += 1
            if seq >= end:
                return out
        raise LogDamaged(f"audit log segment for seq {seq} is missing")

    async def close(self) -> None:
        """Finish the writes in flight; later appends raise ``LogClosed``."""
        self._closed = True
        while self._writer is not None:
            await asyncio.shield(self._writer)
        tail = self._tail
        if self._snapshot_every > 0 and self._failed is None and tail.size > self._snapshot_size:
            await asyncio.to_thread(self._save_snapshot, tail, self._index)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock >= 0:
            os.close(self._lock)  # releases the flock
            self._lock = -1


def _lock(directory: Path) -> int:
    """Hold an exclusive flock on ``directory/.lock``: two writers would interleave lines and fork the
    chain, so a second process (an old collector still draining) is refused."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LogError(
            f"another process has the audit log in {directory} open (one writer per log)"
        ) from None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
