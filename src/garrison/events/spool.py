"""The emitter's on-disk spool: batches the collector could not take yet, in order, bounded.

A directory per component process (``state_dir/audit/spool/<component>-<instance>/``, 0700) of
segment files, one per batch: ``<sequence>.ndjson``, the batch's events one JSON object per line,
0600. A segment's name is the sequence number its batch drew when it left the emitter's memory, so
a batch that failed in flight and is spooled after newer ones still sorts before them: replay,
oldest first, keeps the emitter's order. Each segment is written to a temporary name and renamed,
so a crash leaves whole segments or none (temporaries are removed at the next start); the spool
survives a restart of the process, which picks up where it stopped. It is not fsync'd: a
power loss may lose the most recent segments (the collector, not the emitter, is the durable side).

The total size is bounded by ``max_bytes``: ``append`` refuses a batch that would pass it (the
emitter counts those events as dropped, reason ``spool_full``). A lock file (``flock``) keeps two
live processes from sharing a directory: the second gets a directory of its own (``locked``).
"""

from __future__ import annotations

import fcntl
import heapq
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Segment", "Spool"]

SUFFIX = ".ndjson"


class Segment:
    """One spooled batch: its sequence number, its path, its size and its number of events."""

    __slots__ = ("events", "path", "sequence", "size")

    def __init__(self, sequence: int, path: Path, size: int, events: int) -> None:
        self.sequence = sequence
        self.path = path
        self.size = size
        self.events = events

    def read(self) -> list[bytes]:
        """The segment's lines, without their newlines (an unreadable file reads as empty)."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return []
        return [line for line in data.split(b"\n") if line]


class Spool:
    """See the module docstring."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.directory = self._claim(directory)
        self.segments: dict[int, Segment] = {}
        self._order: list[int] = []  # a heap of the sequence numbers: the oldest in O(log n)
        self.bytes = 0
        self.events = 0
        self._load()

    def _claim(self, directory: Path) -> Path:
        """Lock ``directory`` for this process; when another live process holds it, use
        ``<directory>.<pid>`` instead (replayed by whoever next starts with that name)."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        self._lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            return self._claim(directory.with_name(f"{directory.name}.{os.getpid()}"))
        return directory

    def _load(self) -> None:
        for path in self.directory.iterdir():
            name = path.name
            if name.startswith(".tmp-"):
                path.unlink(missing_ok=True)  # a segment that was being written when the process died
                continue
            if not name.endswith(SUFFIX) or not name[: -len(SUFFIX)].isdigit():
                continue
            data = path.read_bytes()
            segment = Segment(int(name[: -len(SUFFIX)]), path, len(data), data.count(b"\n"))
            self._add(segment)

    def _add(self, segment: Segment) -> None:
        self.segments[segment.sequence] = segment
        heapq.heappush(self._order, segment.sequence)
        self.bytes += segment.size
        self.events += segment.events

    @property
    def next_sequence(self) -> int:
        """The first sequence number after every spooled segment (where a restarted emitter starts)."""
        return max(self.segments, default=0) + 1

    def __len__(self) -> int:
        return len(self.segments)

    def append(self, sequence: int, lines: Sequence[bytes]) -> bool:
        """Write one batch as segment ``sequence``; False (nothing written) if it would pass the bound
        or cannot be written (the disk is full)."""
        data = b"".join(line + b"\n" for line in lines)
        if not data:
            return True
        if self.bytes + len(data) > self.max_bytes:
            return False
        final = self.directory / f"{sequence:016d}{SUFFIX}"
        temporary = self.directory / f".tmp-{sequence:016d}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(temporary, final)
        except OSError:
            temporary.unlink(missing_ok=True)
            return False
        self._add(Segment(sequence, final, len(data), len(lines)))
        return True

    def oldest(self) -> Segment | None:
        order = self._order
        while order and order[0] not in self.segments:
            heapq.heappop(order)
        return self.segments[order[0]] if order else None

    def remove(self, segment: Segment) -> None:
        """Forget a delivered (or given up) segment."""
        if self.segments.pop(segment.sequence, None) is None:
            return
        self.bytes -= segment.size
        self.events -= segment.events
        segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock >= 0:
            os.close(self._lock)  # releases the flock
            self._lock = -1
