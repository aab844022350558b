"""Alert suppressions: "stop alerting on rule R for actor A until T", bounded and persisted.

An operator who has looked at an alert (a pentest from a known address, a misbehaving but known
client) silences it with an expiry rather than switching the rule off for everyone. A suppression
names a rule, an actor (``ip:1.2.3.4``, ``subject:alice``, ``client:app``, ``service:spiffe://...``)
or both; ``*`` or an absent name matches any. The set is capped (``audit.detection.max_suppressions``):
whoever holds the admin token must not be able to grow it without limit. It survives restarts in
``state_dir/audit/suppressions.json`` (0600, replaced atomically).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Suppression", "Suppressions", "SuppressionsFull"]

ANY = "*"
MAX_SECONDS = 30 * 86400.0  # a suppression lasts at most 30 days: forgotten ones must lapse


class SuppressionsFull(Exception):
    """The suppression set is at its cap."""


@dataclass(frozen=True, slots=True)
class Suppression:
    rule: str
    actor: str
    until: float
    reason: str
    created: float

    def matches(self, rule: str, actor: str) -> bool:
        return self.rule in (ANY, rule) and self.actor in (ANY, actor)


class Suppressions:
    """The suppressions in force; ``now`` is injected (tests drive expiry without waiting)."""

    def __init__(self, path: Path | None, max_entries: int, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self.max_entries = max_entries
        self.now = now
        self._entries: dict[tuple[str, str], Suppression] = {}
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            rows = json.loads(path.read_text())
            for row in rows[: self.max_entries]:
                entry = Suppression(**row)
                self._entries[(entry.rule, entry.actor)] = entry
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{path} is unreadable ({exc}); move it away to start without suppressions"
            ) from None

    def entries(self) -> list[Suppression]:
        self._expire()
        return sorted(self._entries.values(), key=lambda e: e.until)

    def suppressed(self, rule: str, actor: str) -> bool:
        if not self._entries:
            return False
        now = self.now()
        return any(e.until > now and e.matches(rule, actor) for e in self._entries.values())

    def add(self, rule: str | None, actor: str | None, seconds: float, reason: str) -> Suppression:
        """Suppress (or renew); ValueError for bad input, SuppressionsFull beyond the cap."""
        rule, actor = rule or ANY, actor or ANY
        if rule == ANY and actor == ANY:
            raise ValueError(
                "name a `rule`, an `actor`, or both: suppressing everything is switching detection off"
            )
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"`for` must be positive and at most {MAX_SECONDS / 86400:g} days")
        if len(rule) > 200 or len(actor) > 1100:
            raise ValueError("`rule` is at most 200 characters, `actor` at most 1100")
        if actor != ANY and actor.partition(":")[0] not in ("ip", "subject", "client", "service"):
            raise ValueError("`actor` is ip:ADDRESS, subject:NAME, client:ID or service:NAME")
        self._expire()
        if (rule, actor) not in self._entries and len(self._entries) >= self.max_entries:
            raise SuppressionsFull(f"{self.max_entries} suppressions are in force")
        now = self.now()
        entry = Suppression(rule, actor, now + seconds, reason[:200], now)
        self._entries[(rule, actor)] = entry
        self._save()
        return entry

    def remove(self, rule: str | None, actor: str | None) -> bool:
        removed = self._entries.pop((rule or ANY, actor or ANY), None) is not None
        if removed:
            self._save()
        return removed

    def _expire(self) -> None:
        now = self.now()
        expired = [key for key, entry in self._entries.items() if entry.until <= now]
        for key in expired:
            del self._entries[key]
        if expired:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps([asdict(e) for e in self._entries.values()], separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
