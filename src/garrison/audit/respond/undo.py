"""Actions the collector must undo at expiry, kept on disk so a restart still lifts them.

Only actions whose component keeps no expiry of its own are here (a quarantine: the CA's API has no
``for``); the gateway's blocks and the identity provider's lockouts expire where they are enforced.

The file (``state_dir/audit/responses-undo.json``, 0600) is rewritten whole on every change: it
holds at most ``audit.responses.max_pending_undos`` small entries and changes once per action, so a
write-to-temporary, fsync, rename is simpler than a log and as safe (a crash leaves the old file or
the new one, never a torn one). An entry is written *before* its action is sent: if the collector
dies between the two, the restarted collector still lifts what may have been applied (lifting a
quarantine that never took is harmless; one that stays forever is not).

Each entry stores what was done (action and target), never the undo request itself: the request is
rebuilt from the action (``undo_call``), so whoever can edit this file cannot make the collector
call an arbitrary admin path.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from garrison.audit.respond.actions import Call
from garrison.telemetry import logging as log

__all__ = ["PendingUndo", "UndoStore", "undo_call"]

VERSION = 1


@dataclass(frozen=True, slots=True)
class PendingUndo:
    action: str
    target: str
    until: float  # epoch seconds: when the action expires and is undone
    alert_id: str
    rule: str
    failures: int = 0  # undo attempts that failed so far (each reschedules it, with back-off)

    @property
    def key(self) -> tuple[str, str]:
        return (self.action, self.target)


def undo_call(action: str, target: str) -> Call | None:
    """The request that undoes ``action`` on ``target``; None if the component expires it itself."""
    if action == "quarantine_service":
        return Call("DELETE", "/quarantine", {"service": target})
    return None


class UndoStore:
    """The pending undos in memory, and their file. ``put``/``remove`` return once the file is durable."""

    def __init__(self, path: Path, max_entries: int) -> None:
        self.path = path
        self.max_entries = max_entries
        self.entries: dict[tuple[str, str], PendingUndo] = {}
        self._lock = asyncio.Lock()

    def load(self) -> list[PendingUndo]:
        """Read the file (missing: none pending). Unreadable entries are logged and dropped."""
        try:
            body = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("audit.response.undo_file_unreadable", path=str(self.path), error=type(exc).__name__)
            return []
        for raw in body.get("undos", []) if isinstance(body, dict) else []:
            entry = _entry(raw)
            if entry is None:
                log.error("audit.response.undo_entry_dropped", path=str(self.path))
                continue
            self.entries[entry.key] = entry
        return list(self.entries.values())

    def full(self, key: tuple[str, str]) -> bool:
        return key not in self.entries and len(self.entries) >= self.max_entries

    async def put(self, entry: PendingUndo) -> None:
        self.entries[entry.key] = entry
        await self._save()

    async def remove(self, key: tuple[str, str]) -> None:
        if self.entries.pop(key, None) is not None:
            await self._save()

    async def _save(self) -> None:
        async with self._lock:
            data = json.dumps(
                {"version": VERSION, "undos": [asdict(e) for e in self.entries.values()]},
                separators=(",", ":"),
            ).encode()
            await asyncio.to_thread(_write_atomically, self.path, data)


def _entry(raw: Any) -> PendingUndo | None:
    if not isinstance(raw, dict):
        return None
    try:
        entry = PendingUndo(
            action=str(raw["action"]),
            target=str(raw["target"]),
            until=float(raw["until"]),
            alert_id=str(raw.get("alert_id", "")),
            rule=str(raw.get("rule", "")),
            failures=int(raw.get("failures", 0)),
        )
    except (KeyError, TypeError, ValueError):
        return None
    return entry if undo_call(entry.action, entry.target) is not None else None


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
