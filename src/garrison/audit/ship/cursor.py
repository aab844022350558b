"""A shipper's saved position in the log: the next entry to ship, and the id of the last one shipped.

Written after every acknowledged batch, atomically (a temporary file, fsync, rename, fsync of the
directory), so a crash leaves either the old position or the new one, never half a file: a restart
ships again at most the one batch whose acknowledgement the crash interrupted (Elasticsearch's
``create`` by event id and Loki's identical-entry check make that repeat harmless).

The last id lets a restart notice that the log under it is not the one it was shipping (a fresh
state_dir, a restored backup): the position is then meaningless, and the shipper starts over from 0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from garrison.audit.pipeline import LogReader
from garrison.telemetry import logging as log

__all__ = ["Cursor", "CursorFile"]


@dataclass(frozen=True, slots=True)
class Cursor:
    next: int = 0  # seq of the first entry not yet shipped
    last_id: str | None = None  # event id of entry next - 1


class CursorFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Cursor:
        """The saved cursor; the start of the log when none was saved or the file is unreadable."""
        try:
            body = json.loads(self.path.read_bytes())
            cursor = Cursor(int(body["next"]), body.get("last_id"))
        except FileNotFoundError:
            return Cursor()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warn("audit.ship.cursor_unreadable", path=str(self.path), error=type(exc).__name__)
            return Cursor()
        if cursor.next < 0 or (cursor.next > 0) != (cursor.last_id is not None):
            log.warn("audit.ship.cursor_unreadable", path=str(self.path), error="inconsistent")
            return Cursor()
        return cursor

    async def load_checked(self, reader: LogReader) -> Cursor:
        """The saved cursor if it still points into this log (its last entry has the saved id)."""
        cursor = self.load()
        if cursor.next == 0:
            return cursor
        last = await reader.read(cursor.next - 1, 1) if reader.size() >= cursor.next else []
        if last and last[0].event.id == cursor.last_id:
            return cursor
        log.warn(
            "audit.ship.cursor_reset",
            path=str(self.path),
            saved=cursor.next,
            log_size=reader.size(),
            message="the saved position does not match this log: shipping it again from the start",
        )
        return Cursor()

    def save(self, cursor: Cursor) -> None:
        """Replace the file atomically and durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"next": cursor.next, "last_id": cursor.last_id}).encode()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
